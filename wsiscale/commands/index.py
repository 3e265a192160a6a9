"""Commands on the FAISS actor pool: ``cluster`` (k-means), ``index build`` (per-slide prototypes and
slide neighbours) and ``retrieve`` (the slides most like a slide)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from wsiscale.commands.command import Command
from wsiscale.config import WsiscaleConfig


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", help="embedding run directory, tiles mode (default: <output>/embeddings)")
    p.add_argument("--out", help="output directory (default: <output>/clusters)")
    p.add_argument("--k", type=int, help="clusters (default: index.kmeans_k)")
    p.add_argument("--spherical", action="store_true", default=None, help="cosine k-means on normalised vectors")


def run_cluster(cfg: WsiscaleConfig, embeddings: str | None = None, out: str | None = None, k: int | None = None,
                spherical: bool | None = None) -> dict[str, Any]:
    """k-means of every embedding of a run on the FAISS actor pool (:func:`wsiscale.index.stages.run_cluster`)."""
    from wsiscale.index.stages import run_cluster as cluster

    return cluster(cfg, embeddings, out, k=k, spherical=spherical)


def show_cluster(meta: dict[str, Any], out: Console) -> None:
    out.print(f"k-means: {meta['vectors']:,} vectors ({meta['dim']}-d) on {meta['shards']} FAISS pool actors -> "
              f"{meta['k']} clusters, inertia {meta['inertia']:.6g}, {meta['empty_repaired']} empty clusters "
              f"repaired -> [bold]{meta['out']}[/bold]", highlight=False)


CLUSTER = Command(("cluster",), "k-means over an embedding run on the FAISS actor pool", _cluster_arguments,
                  run_cluster, show_cluster, to_json=lambda m: {k: v for k, v in m.items() if k != "sizes"})


def _index_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", help="embedding run directory (default: <output>/embeddings)")
    p.add_argument("--out", help="index directory (default: <output>/slide-index)")
    p.add_argument("--m", type=int, help="prototypes per slide (default: index.prototypes_per_slide)")
    p.add_argument("--min-vectors", type=int, help="leave out slides with fewer embeddings "
                                                   "(default: index.min_regions_per_slide)")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="also write neighbours.parquet: every slide's K nearest slides")


def run_index(cfg: WsiscaleConfig, embeddings: str | None = None, out: str | None = None, m: int | None = None,
              min_vectors: int | None = None, neighbours: int = 0) -> dict[str, Any]:
    """Per-slide prototypes (SLPD) and, with ``neighbours``, every slide's nearest slides."""
    from wsiscale.index.stages import run_slide_index

    return run_slide_index(cfg, embeddings, out, m=m, min_vectors=min_vectors, neighbours=neighbours)


def show_index(meta: dict[str, Any], out: Console) -> None:
    out.print(f"{meta['slides']} slides x {meta['m']} prototypes ({meta['dim']}-d) -> [bold]{meta['out']}[/bold]"
              + (f"; {len(meta['skipped'])} slides with too few embeddings left out" if meta["skipped"] else "")
              + (f"; neighbours -> {meta['neighbours']}" if meta.get("neighbours") else ""), highlight=False)


INDEX = Command(("index", "build"), "compute M prototypes per slide (SLPD) from an embedding run", _index_arguments,
                run_index, show_index, to_json=lambda m: {k: v for k, v in m.items() if k != "files"})


def _retrieve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slide", required=True, help="query slide id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index", help="index directory (default: <output>/slide-index)")


def run_retrieve(cfg: WsiscaleConfig, slide: str, k: int = 10, index: str | None = None) -> dict[str, Any]:
    """The ``k`` slides most similar to ``slide`` (optimal prototype matching, cosine)."""
    from wsiscale.config import ConfigError
    from wsiscale.index.slides import SlideIndex
    from wsiscale.runs.layout import RunLayout

    loaded = SlideIndex.load(index or RunLayout(cfg.output).slide_index, cfg.storage, candidates=cfg.index.candidates,
                             index=cfg.index.index_type, params=cfg.index.search_params)
    try:
        hits = loaded.retrieve(slide, k=k)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    return {"slide": slide, "hits": [{"slide_id": s, "score": sc} for s, sc in hits]}


def show_retrieve(doc: dict[str, Any], out: Console) -> None:
    t = Table(title=f"slides most similar to {doc['slide']} (matched prototypes, cosine)")
    t.add_column("rank", justify="right")
    t.add_column("slide")
    t.add_column("score", justify="right")
    for rank, hit in enumerate(doc["hits"], 1):
        t.add_row(str(rank), hit["slide_id"], f"{hit['score']:.4f}")
    out.print(t)


RETRIEVE = Command(("retrieve",), "the slides most similar to a slide (optimal prototype matching)",
                   _retrieve_arguments, run_retrieve, show_retrieve, to_json=lambda doc: doc["hits"])
