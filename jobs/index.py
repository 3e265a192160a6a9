"""`ray job submit` entrypoint: per-slide prototypes of an embedding run, and every slide's nearest slides.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/index.py --config jobs/configs/index.yaml --neighbours 10

Input: ``--embeddings`` (default ``<output>/embeddings``), a run directory of
``wsiscale embed`` (tile or region embeddings). Ray Data tasks compute
``index.prototypes_per_slide`` prototypes per slide (cosine k-means of its
embeddings), ``index.batch_slides`` slides per task; slides with fewer than
``index.min_regions_per_slide`` embeddings are left out and listed. Output
(``--out``, default ``<output>/slide-index``): ``prototypes/part-*.parquet``
and ``index.json`` - what ``wsiscale retrieve`` reads. With ``--neighbours
K``, also ``neighbours.parquet``: the K most similar slides of every slide
(summary-index candidates re-ranked by optimal prototype matching).

Exit status: 0 on success, 2 for a bad config, a missing run or no usable slide.
"""

from __future__ import annotations

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/index.py", "Per-slide prototypes and slide neighbours.", "jobs/configs/index.yaml",
                   "index.prototypes_per_slide=2")
    p.add_argument("--embeddings", help="embedding run directory (default: <output>/embeddings)")
    p.add_argument("--out", help="index directory (default: <output>/slide-index)")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="also write neighbours.parquet with every slide's K nearest slides")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import print_index_result, run_job
    from wsiscale.index.kmeans import IndexInputError
    from wsiscale.index.stages import run_slide_index

    args = build_parser().parse_args(argv)
    return run_job(args, lambda cfg: run_slide_index(cfg, args.embeddings, args.out, neighbours=args.neighbours),
                   print_index_result, (IndexInputError, FileNotFoundError),
                   lambda m: {k: v for k, v in m.items() if k != "files"})


if __name__ == "__main__":
    sys.exit(main())
