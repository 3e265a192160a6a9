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

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/pipeline.py", "tile -> embed -> regions -> pretrain (SLPD) -> index -> evaluate, one config.",
                   "jobs/configs/pipeline.yaml", "pipeline.stages=[index,evaluate]")
    p.add_argument("--manifest", help="slide manifest (default: ingest.manifest or <output>/manifest.parquet)")
    p.add_argument("--synth", type=int, metavar="N", help="first generate N synthetic slides into <output>/slides "
                   "(synth.* settings) and run on them")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import print_pipeline_summary, run_job
    from wsiscale.config import ConfigError
    from wsiscale.io.manifest import ManifestError
    from wsiscale.models.errors import EncoderError
    from wsiscale.pipeline import run_pipeline

    args = build_parser().parse_args(argv)
    if not any(o.startswith("ray.address") for o in args.overrides):
        args.overrides.append("ray.address=auto")  # a job's driver joins the cluster it was submitted to

    def work(cfg):
        manifest = args.manifest
        if args.synth:
            from wsiscale.io.uri import is_local, join_uri, local_path, normalize_uri
            from wsiscale.synth.cohort import build_cohort

            slides = join_uri(normalize_uri(cfg.output), "slides")
            if not is_local(slides):
                raise ConfigError(f"--synth writes slides to local disk, but output is {cfg.output}: run it with a "
                                  "file:// output (or copy generated slides to object storage and pass --manifest)")
            cfg.synth.n_slides = args.synth
            manifest = str(build_cohort(cfg.synth, local_path(slides)))
        return run_pipeline(cfg, manifest)

    return run_job(args, work, print_pipeline_summary, (FileNotFoundError, ConfigError, ManifestError, EncoderError),
                   to_json=lambda doc: doc)


if __name__ == "__main__":
    sys.exit(main())
