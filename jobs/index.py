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

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/index.py`` driver: :data:`wsiscale.commands.index.INDEX` run as a Ray job."""
    from wsiscale.commands.index import INDEX
    from wsiscale.commands.runner import job_main

    return job_main(INDEX, argv, "jobs/index.py", "jobs/configs/index.yaml",
                    "Per-slide prototypes and slide neighbours.")


if __name__ == "__main__":
    sys.exit(main())
