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

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/five.py`` driver: :data:`wsiscale.commands.training.FIVE` run as a Ray job."""
    from wsiscale.commands.runner import job_main
    from wsiscale.commands.training import FIVE

    return job_main(FIVE, argv, "jobs/five.py", "jobs/configs/five.yaml",
                    "FiVE: train slide features against report texts on Ray Train, then zero-/few-shot.")


if __name__ == "__main__":
    sys.exit(main())
