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

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/cluster.py`` driver: :data:`wsiscale.commands.index.CLUSTER` run as a Ray job."""
    from wsiscale.commands.index import CLUSTER
    from wsiscale.commands.runner import job_main

    return job_main(CLUSTER, argv, "jobs/cluster.py", "jobs/configs/index.yaml",
                    "k-means of an embedding run on the FAISS pool.")


if __name__ == "__main__":
    sys.exit(main())
