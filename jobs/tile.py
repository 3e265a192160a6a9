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

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/tile.py", "Build a manifest (optional) and tile every slide.", "jobs/configs/tile.yaml", "ingest.actors=[4,128]")
    p.add_argument("--prefix", help="list the slides under this prefix or glob first (s3://, gs://, file://, local)")
    p.add_argument("--pattern", help="with --prefix: extra glob relative to the prefix, e.g. 'TCGA-*/*.svs'")
    p.add_argument("--labels", help="with --prefix: CSV/Parquet of labels to join (by slide_id, uri or filename)")
    p.add_argument("--label-key", help="with --prefix: key column of the labels file")
    p.add_argument("--manifest", help="manifest URI (written with --prefix; default <output>/manifest.parquet)")
    p.add_argument("--out", help="run directory (default: <output>/tiles)")
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import job_config, print_tiling_summary
    from wsiscale.data.tiling import run_tiling
    from wsiscale.io.manifest import ManifestError, build_manifest
    from wsiscale.io.uri import join_uri, normalize_uri
    from wsiscale.progress import console

    args = build_parser().parse_args(argv)
    cfg = job_config(args)
    if cfg is None:
        return 2

    manifest = args.manifest
    try:
        if args.prefix:
            manifest = args.manifest or join_uri(cfg.output, "manifest.parquet")
            table, stats = build_manifest(args.prefix, out=manifest, storage=cfg.storage, pattern=args.pattern,
                                          labels=args.labels, label_key=args.label_key)
            total = sum(table.column("size_bytes").to_pylist())
            console.print(f"{stats['slides']} slides ({total / 2**30:.2f} GiB) listed under {args.prefix} -> "
                          f"{normalize_uri(manifest)}", highlight=False)
            if args.labels:
                console.print(f"{stats['labelled']} slides labelled; {stats['n_unmatched_labels']} label rows "
                              "matched no slide", highlight=False)
        summary = run_tiling(cfg, manifest=manifest, out=args.out)
    except ManifestError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    print_tiling_summary(summary)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0 if summary["slides"]["pending"] == 0 and not summary["interrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
