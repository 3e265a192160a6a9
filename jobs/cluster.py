"""`ray job submit` entrypoint: k-means of every tile embedding of an embedding run on the FAISS actor pool.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/cluster.py --config jobs/configs/index.yaml --k 1024

Input: ``--embeddings`` (default ``<output>/embeddings``), a run directory of
``wsiscale embed`` / ``jobs/embed.py``. ``index.shards`` actors each read
their share of the run's Parquet files (the driver only lists them) and run
the map step of every Lloyd iteration; ``index.cpus_per_actor`` /
``index.gpus_per_actor`` size them. Output (``--out``, default
``<output>/clusters``): ``centroids.npy``, ``assignments/part-*.parquet``
(``slide_id, x, y, cluster``, written by the actors) and ``clusters.json``.
Rerunning overwrites the outputs atomically.

Exit status: 0 on success, 2 for a bad config, a missing run or unusable
vectors (NaN/inf rows, mixed dimensions, k larger than the number of vectors).
"""

from __future__ import annotations

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/cluster.py", "k-means of an embedding run on the FAISS pool.", "jobs/configs/index.yaml",
                   "index.shards=8")
    p.add_argument("--embeddings", help="embedding run directory (default: <output>/embeddings)")
    p.add_argument("--out", help="output directory (default: <output>/clusters)")
    p.add_argument("--k", type=int, help="clusters (default: index.kmeans_k)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import print_cluster_result, run_job
    from wsiscale.index.kmeans import IndexInputError
    from wsiscale.index.stages import run_cluster

    args = build_parser().parse_args(argv)
    return run_job(args, lambda cfg: run_cluster(cfg, args.embeddings, args.out, k=args.k), print_cluster_result,
                   (IndexInputError, FileNotFoundError), lambda m: {k: v for k, v in m.items() if k != "sizes"})


if __name__ == "__main__":
    sys.exit(main())
