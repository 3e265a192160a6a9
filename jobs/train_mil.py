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

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/train_mil.py", "MIL slide classification (meanpool, maxpool, ABMIL, WENO) on Ray Train.",
                   "jobs/configs/train_mil.yaml", "mil.num_workers=[2,4]")
    p.add_argument("--method", choices=["meanpool", "maxpool", "abmil", "weno"], help="default: mil.method")
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--labels", help="labels table (default: <output>/manifest.parquet)")
    p.add_argument("--out", help="results directory (default: <output>/mil-<method>)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import mil_inputs, print_mil_result, run_job
    from wsiscale.config import ConfigError
    from wsiscale.demo import ray_session
    from wsiscale.mil.run import run_mil

    args = build_parser().parse_args(argv)

    def work(cfg):
        embeddings, labels, out = mil_inputs(cfg, args.embeddings, args.labels, args.out, args.method)
        with ray_session(cfg):
            return run_mil(cfg, embeddings, labels, out)

    return run_job(args, work, print_mil_result, (FileNotFoundError, ConfigError),
                   to_json=lambda doc: {k: doc[k] for k in ("method", "summary", "slides")})


if __name__ == "__main__":
    sys.exit(main())
