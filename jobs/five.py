"""`ray job submit` entrypoint: FiVE vision-language slide classification (train on reports, then evaluate).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/five.py --config jobs/configs/five.yaml

Input: a tiles-mode embedding run (``--embeddings``, default
``<output>/embeddings``) and a manifest with each slide's free-text report
(``five.report_column``) and class name (``five.label_column``; ``--manifest``,
default ``<output>/manifest.parquet``). Reports become fine-grained fields with
the offline rule extractor unless ``five.extractor.kind=llm`` names an
OpenAI-compatible endpoint. ``five.num_workers`` Ray Train workers (``[min,
max]`` is elastic) train the TFS module (and LoRA adapters of the text encoder
when ``five.text.lora_rank > 0``); checkpoints go to ``<out>/train``, so
submitting the same job again resumes, and a failed worker group restarts from
the last checkpoint up to ``five.max_failures`` times. The model is written to
``<out>/five.safetensors`` and ``<out>/five.json``. Then, unless
``--skip-eval``, zero-shot and few-shot results on the labelled slides of
``--eval-manifest`` (default: the training manifest) with the tile embeddings of
``--eval-embeddings`` go to ``<out>/five_eval.json``.

Exit status: 0 on success, 2 for a bad config or a missing run/manifest.
"""

from __future__ import annotations

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/five.py", "FiVE: train slide features against report texts on Ray Train, then zero-/few-shot.",
                   "jobs/configs/five.yaml", "five.num_workers=[2,8]")
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--manifest", help="manifest with reports and class names (default: <output>/manifest.parquet)")
    p.add_argument("--out", help="model directory (default: <output>/five)")
    p.add_argument("--eval-embeddings", help="embedding run of the evaluation slides (default: --embeddings)")
    p.add_argument("--eval-manifest", help="manifest of the evaluation slides (default: --manifest)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip-train", action="store_true", help="evaluate the model already in --out")
    g.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import five_inputs, print_five_eval, print_five_train, run_job
    from wsiscale.config import ConfigError
    from wsiscale.demo import ray_session
    from wsiscale.five.run import eval_five, train_five

    args = build_parser().parse_args(argv)

    def work(cfg):
        embeddings, manifest, out = five_inputs(cfg, args.embeddings, args.manifest, args.out)
        doc: dict = {"model": out}
        with ray_session(cfg):
            if not args.skip_train:
                doc["train"] = train_five(cfg, embeddings, manifest, out)
        if not args.skip_eval:
            doc["eval"] = eval_five(cfg, out, args.eval_embeddings or embeddings, args.eval_manifest or manifest)
        return doc

    def printer(doc):
        if "train" in doc:
            print_five_train(doc["train"])
        if "eval" in doc:
            print_five_eval(doc["eval"])

    def to_json(doc):
        return {"model": doc["model"], "final": doc.get("train", {}).get("final"),
                "zero_shot": doc.get("eval", {}).get("zero_shot"),
                "few_shot": {k: {m: v[m] for m in ("five_accuracy", "linear_probe_accuracy")}
                             for k, v in doc.get("eval", {}).get("few_shot", {}).items()}}

    return run_job(args, work, printer, (FileNotFoundError, ConfigError), to_json=to_json)


if __name__ == "__main__":
    sys.exit(main())
