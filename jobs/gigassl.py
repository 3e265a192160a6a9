"""`ray job submit` entrypoint: Giga-SSL slide representations (train the slide encoder, then embed every slide).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/gigassl.py --config jobs/configs/gigassl.yaml

Input: a tiles-mode embedding run with augmented tile embeddings
(``wsiscale embed --set embed.augmentations=25``; ``--embeddings``, default
``<output>/embeddings``). ``gigassl.num_workers`` Ray Train workers (``[min,
max]`` is elastic) train SparseConvMIL with SimCLR; checkpoints go to
``<out>/train``, so submitting the same job again resumes, and a failed
worker group restarts from the last checkpoint up to ``gigassl.max_failures``
times. The model is written to ``<out>/model.safetensors`` and
``<out>/gigassl.json``; then every slide's vector goes to
``<out>/vectors/slide_vectors.parquet`` (``--skip-embed`` to train only,
``--skip-train`` to embed with an existing model) with ``summary.json``
(bytes per slide, compression ratio versus the source slides). Evaluate with
``jobs/eval_linear_probe.py`` / ``wsiscale eval linear-probe``.

Exit status: 0 on success, 2 for a bad config or a missing run.
"""

from __future__ import annotations

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/gigassl.py", "Giga-SSL: train the slide encoder on Ray Train and embed every slide.",
                   "jobs/configs/gigassl.yaml", "gigassl.num_workers=[2,8]")
    p.add_argument("--embeddings", help="augmented tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--out", help="model directory (default: <output>/gigassl)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip-train", action="store_true", help="embed with the model already in --out")
    g.add_argument("--skip-embed", action="store_true", help="train only")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import gigassl_paths, print_gigassl_embed, print_gigassl_train, run_job
    from wsiscale.config import ConfigError
    from wsiscale.demo import ray_session
    from wsiscale.gigassl.run import embed_gigassl, train_gigassl
    from wsiscale.io.uri import join_uri

    args = build_parser().parse_args(argv)

    def work(cfg):
        embeddings, out = gigassl_paths(cfg, args.embeddings, args.out)
        doc: dict = {"model": out}
        with ray_session(cfg):
            if not args.skip_train:
                doc["train"] = train_gigassl(cfg, embeddings, out)
            if not args.skip_embed:
                doc["embed"] = embed_gigassl(cfg, embeddings, out, join_uri(out, "vectors"))
        return doc

    def printer(doc):
        if "train" in doc:
            print_gigassl_train(doc["train"])
        if "embed" in doc:
            print_gigassl_embed(doc["embed"])

    def to_json(doc):
        return {"model": doc["model"], "steps": doc.get("train", {}).get("steps"),
                "final_loss": doc.get("train", {}).get("final_loss"),
                "embed": {k: v for k, v in doc.get("embed", {}).items() if k != "failures"}}

    return run_job(args, work, printer, (FileNotFoundError, ConfigError), to_json=to_json)


if __name__ == "__main__":
    sys.exit(main())
