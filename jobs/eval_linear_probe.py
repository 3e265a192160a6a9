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

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser, linear_probe_arguments

    p = job_parser("jobs/eval_linear_probe.py", "Linear probe of slide vectors: repeated k-fold and few-label draws.",
                   "jobs/configs/eval_linear_probe.yaml", "eval.probe_train_sizes=[25,50,100]")
    linear_probe_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import linear_probe_inputs, print_linear_probe, run_job
    from wsiscale.config import ConfigError
    from wsiscale.eval.linear_probe import run_linear_probe

    args = build_parser().parse_args(argv)

    def work(cfg):
        return run_linear_probe(cfg, *linear_probe_inputs(cfg, args))

    printer = (lambda doc: None) if args.json else print_linear_probe
    return run_job(args, work, printer, (FileNotFoundError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())
