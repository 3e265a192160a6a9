"""`ray job submit` entrypoint: linear probe of slide vectors (Giga-SSL's evaluation).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/eval_linear_probe.py --config jobs/configs/eval_linear_probe.yaml

Input: a slide-vector Parquet table (``--vectors``: ``slide_id`` and a vector column, e.g.
``wsiscale gigassl embed``'s ``slide_vectors.parquet``, the default
``<output>/gigassl/vectors/slide_vectors.parquet``), or a tiles-mode embedding run whose tile
embeddings are mean-pooled per slide (the baseline); and a labels table (``--labels``: a
manifest, CSV or Parquet with ``slide_id`` and ``eval.label_column``; default
``<output>/manifest.parquet``). Runs on the driver (scikit-learn, no Ray workers): logistic
regression (``eval.probe_c``, balanced classes) with ``eval.probe_repeats`` x
``eval.probe_folds``-fold stratified cross-validation and, per ``eval.probe_train_sizes``,
``eval.probe_draws`` draws of that many labelled slides tested on all others. Writes
``linear_probe.json`` and ``linear_probe.md`` under ``--out`` (default ``<output>/linear-probe``).

Exit status: 0 on success, 2 for a bad config, a missing input or unusable labels (a single
class, fewer than 4 labelled slides, no slide id shared by the two tables).
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/eval_linear_probe.py`` driver: :data:`wsiscale.commands.evaluation.PROBE` run as a Ray job."""
    from wsiscale.commands.evaluation import PROBE
    from wsiscale.commands.runner import job_main

    return job_main(PROBE, argv, "jobs/eval_linear_probe.py", "jobs/configs/eval_linear_probe.yaml",
                    "Linear probe of slide vectors: repeated k-fold and few-label draws.")


if __name__ == "__main__":
    sys.exit(main())
