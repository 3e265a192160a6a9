"""`ray job submit` entrypoint for the embedding stage: embed every slide of a tiling run (or a manifest).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed.py --config jobs/configs/embed.yaml

Input: ``--source`` (default ``embed.source``), the run directory of
``wsiscale tile`` / ``jobs/tile.py``: its completed slides' stored tiles are
decoded (``pixels: jpeg``/``raw``) or its coordinates re-read from the slides
(``pixels: none``). Without a source, the manifest (``--manifest``,
``embed.manifest``, ``ingest.manifest`` or ``<output>/manifest.parquet``) is
tiled on the fly. Output: ``--out`` (default ``<output>/embeddings``). The run
is resumable: submitting the same job again skips completed slides.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) the driver joins the running
cluster (``ray.address=auto``); run directly, it starts a local Ray like
``wsiscale embed``. Exit status: 0 when no slide is left pending and the run
was not interrupted (failed slides are listed in ``failures.parquet`` and do
not fail the job), 1 otherwise, 2 for a bad config, an unknown encoder,
missing or unusable weights, or a missing source or manifest.
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/embed.py`` driver: :data:`wsiscale.commands.ingest.EMBED` run as a Ray job."""
    from wsiscale.commands.ingest import EMBED
    from wsiscale.commands.runner import job_main

    return job_main(EMBED, argv, "jobs/embed.py", "jobs/configs/embed.yaml",
                    "Embed every slide of a tiling run (or a manifest) on encoder actors.")


if __name__ == "__main__":
    sys.exit(main())
