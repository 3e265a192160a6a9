"""`ray job submit` entrypoint: the whole chain (tile -> embed -> regions -> SLPD -> region features -> index -> evaluate -> report) from one config.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pipeline.py --config jobs/configs/pipeline.yaml

Reads the manifest (``--manifest``, else ``ingest.manifest``, else ``<output>/manifest.parquet``) and
runs ``pipeline.stages`` in order on the cluster the job was submitted to (``ray.address=auto``
unless set), writing every stage's outputs under ``output`` (see wsiscale/pipeline.py for the
layout). ``<output>/pipeline.json`` tells which stages are done, with their seconds and figures;
submitting the same job again resumes (done slides are skipped, training resumes from its last
checkpoint). ``--synth N`` first generates N synthetic slides with ground truth and reports into
``<output>/slides`` and uses their manifest: a try-out on a fresh cluster, and what the tests submit.

Exit status: 0 on success, 2 for a bad config, a missing manifest or an unusable input.
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/pipeline.py`` driver: :data:`wsiscale.pipeline.PIPELINE` run as a Ray job."""
    from wsiscale.commands.runner import job_main
    from wsiscale.pipeline import PIPELINE

    if argv is None:
        argv = sys.argv[1:]
    if not any("ray.address" in a for a in argv):  # `--set ray.address=X` or `--set=ray.address=X`
        argv = [*argv, "--set", "ray.address=auto"]  # a job's driver joins the cluster it was submitted to
    return job_main(PIPELINE, argv, "jobs/pipeline.py", "jobs/configs/pipeline.yaml",
                    "tile -> embed -> regions -> pretrain (SLPD) -> index -> evaluate, one config.")


if __name__ == "__main__":
    sys.exit(main())
