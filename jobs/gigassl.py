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

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/gigassl.py`` driver: :data:`wsiscale.commands.training.GIGASSL` run as a Ray job."""
    from wsiscale.commands.runner import job_main
    from wsiscale.commands.training import GIGASSL

    return job_main(GIGASSL, argv, "jobs/gigassl.py", "jobs/configs/gigassl.yaml",
                    "Giga-SSL: train the slide encoder on Ray Train and embed every slide.")


if __name__ == "__main__":
    sys.exit(main())
