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
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/cluster.py", description="k-means of an embedding run on the FAISS pool.")
    p.add_argument("--config", "-c", help="YAML config file (e.g. jobs/configs/index.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set index.shards=8 (repeatable)")
    p.add_argument("--embeddings", help="embedding run directory (default: <output>/embeddings)")
    p.add_argument("--out", help="output directory (default: <output>/clusters)")
    p.add_argument("--k", type=int, help="clusters (default: index.kmeans_k)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import load_job_config
    from wsiscale.config import ConfigError, save_config
    from wsiscale.demo import start_ray
    from wsiscale.index.kmeans import IndexInputError
    from wsiscale.index.slides import cluster_embeddings
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
    out = args.out or join_uri(cfg.output, "clusters")
    started = start_ray(cfg)
    try:
        meta = cluster_embeddings(embeddings, out, k=args.k or ix.kmeans_k, iters=ix.kmeans_iters,
                                  restarts=ix.kmeans_restarts, shards=ix.shards, spherical=ix.kmeans_spherical,
                                  num_cpus=ix.cpus_per_actor, num_gpus=ix.gpus_per_actor, storage=cfg.storage)
        save_config(cfg, out, cfg.storage)
    except (IndexInputError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    console.print(f"k-means: {meta['vectors']:,} vectors ({meta['dim']}-d) on {meta['shards']} actors -> {meta['k']} "
                  f"clusters, inertia {meta['inertia']:.6g} -> [bold]{out}[/bold]", highlight=False)
    if args.json:
        print(json.dumps({k: v for k, v in meta.items() if k != "sizes"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
