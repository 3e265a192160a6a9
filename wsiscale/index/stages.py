"""The index stages as the CLI, the jobs and the demo run them: config in, outputs written, summary back.

:func:`run_cluster` (``wsiscale cluster``, ``jobs/cluster.py``) and
:func:`run_slide_index` (``wsiscale index build``, ``jobs/index.py``) read
their settings from the ``index`` config section, join or start Ray
(:func:`wsiscale.runtime.ray_session`), write
their outputs and the resolved config next to them, and return a summary
dict.
"""

from __future__ import annotations

from typing import Any

from wsiscale.config import WsiscaleConfig
from wsiscale.runs.config_file import save_config
from wsiscale.runs.layout import RunLayout
from wsiscale.runtime import ray_session


def run_cluster(cfg: WsiscaleConfig, embeddings: str | None = None, out: str | None = None, k: int | None = None,
                spherical: bool | None = None, shards: int | None = None,
                num_cpus: float | None = None) -> dict[str, Any]:
    """k-means of every tile embedding of a run (default ``<output>/embeddings``) into ``out`` (``<output>/clusters``)."""
    from wsiscale.index.slides import cluster_embeddings

    ix = cfg.index
    embeddings = embeddings or RunLayout(cfg.output).embeddings
    out = out or RunLayout(cfg.output).clusters
    with ray_session(cfg):
        meta = cluster_embeddings(embeddings, out, k=k or ix.kmeans_k, iters=ix.kmeans_iters,
                                  restarts=ix.kmeans_restarts, shards=shards or ix.shards,
                                  spherical=ix.kmeans_spherical if spherical is None else spherical,
                                  num_cpus=num_cpus or ix.cpus_per_actor, num_gpus=ix.gpus_per_actor,
                                  storage=cfg.storage)
    save_config(cfg, out, cfg.storage)
    return meta | {"out": out}


def run_slide_index(cfg: WsiscaleConfig, embeddings: str | None = None, out: str | None = None, m: int | None = None,
                    min_vectors: int | None = None, neighbours: int = 0) -> dict[str, Any]:
    """Per-slide prototypes of a run into ``out`` (``<output>/slide-index``); with ``neighbours``, every slide's nearest."""
    from wsiscale.index.slides import build_slide_index, write_neighbours

    ix = cfg.index
    embeddings = embeddings or RunLayout(cfg.output).embeddings
    out = out or RunLayout(cfg.output).slide_index
    with ray_session(cfg):
        meta = build_slide_index(embeddings, out, m=m or ix.prototypes_per_slide, iters=ix.kmeans_iters,
                                 min_vectors=ix.min_regions_per_slide if min_vectors is None else min_vectors,
                                 batch_slides=ix.batch_slides, restarts=ix.prototype_restarts, storage=cfg.storage)
        if neighbours:
            meta["neighbours"] = write_neighbours(out, neighbours, candidates=ix.candidates, index=ix.index_type,
                                                  params=ix.search_params, storage=cfg.storage)
    save_config(cfg, out, cfg.storage)
    return meta | {"out": out}
