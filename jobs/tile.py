"""`ray job submit` entrypoint for the ingest stage: list a slide prefix, then tile every slide.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tile.py --config jobs/configs/tile.yaml --prefix s3://my-bucket/slides/

With ``--prefix`` the manifest is built first (written to ``--manifest``, or
``<output>/manifest.parquet``); without it an existing manifest is tiled
(``--manifest``, ``ingest.manifest`` or ``<output>/manifest.parquet``). The
run is resumable: submitting the same job again skips completed slides.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) the driver joins the running
cluster (``ray.address=auto``); run directly, it starts a local Ray like
``wsiscale tile``. Exit status: 0 when no slide is left pending (failed slides
are listed in ``failures.parquet`` and do not fail the job), 1 otherwise, 2
for a bad config or manifest.
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/tile.py`` driver: :data:`wsiscale.commands.ingest.TILE` run as a Ray job."""
    from wsiscale.commands.ingest import TILE
    from wsiscale.commands.runner import job_main

    return job_main(TILE, argv, "jobs/tile.py", "jobs/configs/tile.yaml",
                    "Build a manifest (optional) and tile every slide.")


if __name__ == "__main__":
    sys.exit(main())
