"""`ray job submit` entrypoint: MIL slide classification (mean/max pooling, ABMIL, WENO) on tile embeddings.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_mil.py --config jobs/configs/train_mil.yaml --method weno

Input: a tiles-mode embedding run (``--embeddings``, default
``<output>/embeddings``) and a labels table (``--labels``: a manifest, CSV or
Parquet with ``slide_id`` and ``mil.label_column``; default
``<output>/manifest.parquet``). ``mil.num_workers`` Ray Train workers
(``[min, max]`` is elastic) train ``mil.folds`` stratified folds by slide in
turn, with early stopping on a validation share of each training fold.
Checkpoints go to ``<out>/train``: submitting the same job again resumes, and
a failed worker group restarts from the last checkpoint up to
``mil.max_failures`` times. Writes ``results.json`` / ``results.md`` (bag and
instance AUC per fold, mean +- std), ``predictions/``, ``instances/``,
``models/`` and ``heatmaps/`` under ``--out`` (default
``<output>/mil-<method>``).

Exit status: 0 on success, 2 for a bad config or a missing run/labels table.
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/train_mil.py`` driver: :data:`wsiscale.commands.training.MIL` run as a Ray job."""
    from wsiscale.commands.runner import job_main
    from wsiscale.commands.training import MIL

    return job_main(MIL, argv, "jobs/train_mil.py", "jobs/configs/train_mil.yaml",
                    "MIL slide classification (meanpool, maxpool, ABMIL, WENO) on Ray Train.")


if __name__ == "__main__":
    sys.exit(main())
