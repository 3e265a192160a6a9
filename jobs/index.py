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
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/index.py", description="Per-slide prototypes and slide neighbours.")
    p.add_argument("--config", "-c", help="YAML config file (e.g. jobs/configs/index.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set index.prototypes_per_slide=2 (repeatable)")
    p.add_argument("--embeddings", help="embedding run directory (default: <output>/embeddings)")
    p.add_argument("--out", help="index directory (default: <output>/slide-index)")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="also write neighbours.parquet with every slide's K nearest slides")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import load_job_config
    from wsiscale.config import ConfigError, save_config
    from wsiscale.demo import start_ray
    from wsiscale.index.kmeans import IndexInputError
    from wsiscale.index.slides import build_slide_index, write_neighbours
    from wsiscale.io.uri import join_uri
    from wsiscale.progress import console

    args = build_parser().parse_args(argv)
    try:
        cfg = load_job_config(args.config, args.overrides)
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/bold red] {exc}", highlight=False)
        return 2
    ix = cfg.index
    embeddings = args.embeddings or join_uri(cfg.output, "embeddings")
    out = args.out or join_uri(cfg.output, "slide-index")
    started = start_ray(cfg)
    try:
        meta = build_slide_index(embeddings, out, m=ix.prototypes_per_slide, iters=ix.kmeans_iters,
                                 min_vectors=ix.min_regions_per_slide, batch_slides=ix.batch_slides,
                                 restarts=ix.prototype_restarts, storage=cfg.storage)
        save_config(cfg, out, cfg.storage)
        if args.neighbours:
            meta["neighbours"] = write_neighbours(out, args.neighbours, candidates=ix.candidates,
                                                  index=ix.index_type, params=ix.search_params,
                                                  storage=cfg.storage)
    except (IndexInputError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    console.print(f"{meta['slides']} slides x {meta['m']} prototypes ({meta['dim']}-d) -> [bold]{out}[/bold]"
                  + (f"; {len(meta['skipped'])} slides with too few embeddings left out" if meta["skipped"] else "")
                  + (f"; neighbours -> {meta['neighbours']}" if args.neighbours else ""), highlight=False)
    if args.json:
        print(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
