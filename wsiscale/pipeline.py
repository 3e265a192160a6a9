"""The whole chain from one config: tile -> embed -> regions -> pretrain (SLPD) -> index -> evaluate.

``run_pipeline(cfg, manifest)`` runs ``cfg.pipeline.stages`` in order on one Ray session (the local one
or the cluster a ``ray job submit`` driver joins), every stage with its own config section and its
own resumable, idempotent outputs under ``cfg.output``:

=========  =====================================================  ==============================
stage      what                                                   output
=========  =====================================================  ==============================
tile       manifest -> tissue tiles on CPU actors (``ingest``)    ``<output>/tiles``
embed      tile shards -> tile embeddings (``embed``, tiles)      ``<output>/embeddings``
regions    manifest -> ``[D, g, g]`` patch grids per region       ``<output>/regions``
pretrain   SLPD (or DINO) region encoder on Ray Train             ``<output>/pretrain``
features   the pretrained encoder's feature of every region       ``<output>/region-features``
index      k-means + per-slide prototypes + slide neighbours      ``<output>/clusters``,
                                                                  ``<output>/slide-index``
evaluate   retrieval@k and linear probe on the manifest labels    ``<output>/eval``
           (both on ``pipeline.index_on``: region features or tiles)
report     the run report (:mod:`wsiscale.report`)                ``<output>/report.html``
=========  =====================================================  ==============================

Resubmitting the same job resumes: done slides are skipped by tiling and embedding, training resumes
from its last checkpoint, the index and evaluation are recomputed (cheap). ``<output>/pipeline.json``
is rewritten atomically after every stage with each stage's status, seconds and key figures, so a
monitor (or a person) can see how far a run got; the resolved config is saved beside it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from wsiscale.config import ConfigError, WsiscaleConfig, save_config
from wsiscale.io.uri import join_uri, normalize_uri, write_bytes_atomic

log = logging.getLogger(__name__)

SUMMARY_FILE = "pipeline.json"


class Paths:
    """Where each stage reads and writes, under the run's output URI."""

    def __init__(self, output: str, manifest: str | None) -> None:
        self.output = normalize_uri(output)
        self.manifest = normalize_uri(manifest) if manifest else join_uri(self.output, "manifest.parquet")
        self.tiles = join_uri(self.output, "tiles")
        self.embeddings = join_uri(self.output, "embeddings")
        self.regions = join_uri(self.output, "regions")
        self.pretrain = join_uri(self.output, "pretrain")
        self.features = join_uri(self.output, "region-features")
        self.clusters = join_uri(self.output, "clusters")
        self.slide_index = join_uri(self.output, "slide-index")
        self.eval = join_uri(self.output, "eval")


def _stage_tile(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    from wsiscale.data.tiling import run_tiling

    s = run_tiling(cfg, manifest=paths.manifest, out=paths.tiles)
    return {"out": paths.tiles, "slides": s["slides"], "tiles": s["tiles"]}


def _stage_embed(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    from wsiscale.data.embedding import run_embedding

    tiles_cfg = cfg.model_copy(deep=True)
    tiles_cfg.embed.mode = "tiles"
    s = run_embedding(tiles_cfg, source=paths.tiles, out=paths.embeddings)
    return {"out": paths.embeddings, "slides": s["slides"], "tiles": s["tiles"]}


def _stage_regions(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    from wsiscale.data.embedding import run_embedding

    regions_cfg = cfg.model_copy(deep=True)
    regions_cfg.embed.mode = "regions"
    regions_cfg.embed.augmentations = 0  # augmented embeddings are a tiles-mode (Giga-SSL) output
    s = run_embedding(regions_cfg, manifest=paths.manifest, out=paths.regions)
    return {"out": paths.regions, "slides": s["slides"], "regions": s["tiles"]}


def _stage_pretrain(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    from wsiscale.pretrain.evaluate import labels_allow_holdout
    from wsiscale.pretrain.run import run_pretraining

    if cfg.pretrain.level != "region":
        raise ConfigError("the pipeline pretrains the region encoder on the regions stage's output: set "
                          "pretrain.level=region (patch-level DINO runs on tiles with `wsiscale pretrain --tiles`)")
    if cfg.pretrain.eval_labels is None and labels_allow_holdout(paths.manifest, cfg.storage):
        cfg.pretrain.eval_labels = paths.manifest  # held-out linear probe / kNN of the region encoder
    s = run_pretraining(cfg, paths.regions, paths.pretrain)
    keep = ("loss", "probe", "knn", "step", "epoch", "per_s")
    metrics = {k: v for k, v in (s["metrics"] or {}).items()
               if isinstance(v, (int, float)) and any(word in k for word in keep)}
    return {"out": paths.pretrain, "method": cfg.pretrain.method, "slides": s["slides"], "regions": s["items"],
            "encoder": s.get("encoder"), "metrics": metrics}


def _stage_features(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """The exported region encoder's feature of every region (SLPD's slide representation)."""
    from wsiscale.pretrain.region_features import run_region_features

    s = run_region_features(cfg, paths.regions, join_uri(paths.pretrain, "encoder"), paths.features)
    return {"out": paths.features, "slides": s["slides"], "regions": s["regions"], "dim": s["dim"],
            "encoder_step": s["encoder"]["step"]}


def index_source(cfg: WsiscaleConfig, paths: Paths) -> str:
    """The embedding run the index and evaluate stages read (``pipeline.index_on``)."""
    if cfg.pipeline.index_on == "tiles":
        return paths.embeddings
    from wsiscale.data.shards import list_names

    if "slides.parquet" not in list_names(paths.features, cfg.storage):
        raise ConfigError(f"pipeline.index_on=regions but {paths.features} holds no region features: run the "
                          "features stage (after pretrain), or set pipeline.index_on=tiles")
    return paths.features


def _stage_index(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    from wsiscale.index.stages import run_cluster, run_slide_index

    source = index_source(cfg, paths)
    clusters = run_cluster(cfg, source, paths.clusters)
    meta = run_slide_index(cfg, source, paths.slide_index, neighbours=cfg.pipeline.neighbours)
    return {"source": source, "clusters": paths.clusters, "k": clusters["k"], "vectors": clusters["vectors"],
            "inertia": clusters["inertia"], "slide_index": paths.slide_index, "slides_indexed": meta["slides"],
            "prototypes_per_slide": meta["m"], "skipped": meta["skipped"], "neighbours": meta.get("neighbours")}


def _stage_evaluate(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """Retrieval@k of the slide index and the linear probe on mean-pooled vectors of the index's source
    (region features or tile embeddings, ``pipeline.index_on``).

    An evaluation the cohort cannot support (too few labelled slides, no labels) is recorded as
    skipped with the reason, not raised: the trained artefacts are already written.
    """
    from wsiscale.eval.linear_probe import run_linear_probe
    from wsiscale.eval.retrieval import run_retrieval_eval

    doc: dict[str, Any] = {"out": paths.eval}
    column = cfg.eval.label_column
    try:
        ret = run_retrieval_eval(join_uri(paths.slide_index, "neighbours.parquet"), paths.manifest,
                                 cfg.pipeline.neighbours, column, cfg.storage)
        write_bytes_atomic(join_uri(paths.eval, "retrieval.json"), json.dumps(ret, indent=1).encode(), cfg.storage)
        doc["retrieval"] = {k: ret[k] for k in ("k", "queries", "top1_accuracy", "majority_vote_accuracy",
                                                  "map_at_k", "precision_at_k")}
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as exc:
        log.warning("retrieval evaluation skipped: %s", exc)
        doc["retrieval"] = {"skipped": str(exc)}
    try:
        probe = run_linear_probe(cfg, index_source(cfg, paths), paths.manifest, join_uri(paths.eval, "linear-probe"))
        doc["linear_probe"] = {"slides": probe["slides"], "classes": probe["classes"],
                               "kfold_auc": (probe["kfold"] or {}).get("auc_mean")}
    except (ConfigError, ValueError, KeyError) as exc:
        log.warning("linear-probe evaluation skipped: %s", exc)
        doc["linear_probe"] = {"skipped": str(exc)}
    return doc


def _stage_report(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """``<output>/report.html`` (:func:`wsiscale.report.write_report`); reads ``pipeline.json`` as written so far."""
    from wsiscale.report import write_report

    return write_report(paths.output, storage=cfg.storage, slides=cfg.pipeline.report_slides,
                        queries=cfg.pipeline.report_queries, k=cfg.pipeline.neighbours,
                        label_column=cfg.eval.label_column)


STAGE_FUNCTIONS: dict[str, Callable[[WsiscaleConfig, Paths], dict[str, Any]]] = {
    "tile": _stage_tile, "embed": _stage_embed, "regions": _stage_regions, "pretrain": _stage_pretrain,
    "features": _stage_features, "index": _stage_index, "evaluate": _stage_evaluate, "report": _stage_report,
}


def run_pipeline(cfg: WsiscaleConfig, manifest: str | None = None) -> dict[str, Any]:
    """Run ``cfg.pipeline.stages`` on the slides of ``manifest`` (default ``ingest.manifest`` or
    ``<output>/manifest.parquet``); returns the summary also written to ``<output>/pipeline.json``.

    A stage that raises stops the pipeline (its error is recorded in ``pipeline.json`` and re-raised):
    later stages need its output. Bad slides do not raise; each stage records them in its run.
    """
    from wsiscale.demo import ray_session

    paths = Paths(cfg.output, manifest or cfg.ingest.manifest)
    save_config(cfg, paths.output, cfg.storage)
    summary: dict[str, Any] = {"output": paths.output, "manifest": paths.manifest,
                               "stages": {s: {"status": "pending"} for s in cfg.pipeline.stages}}

    def write() -> None:
        write_bytes_atomic(join_uri(paths.output, SUMMARY_FILE), json.dumps(summary, indent=1, default=str).encode(),
                           cfg.storage)

    t_all = time.perf_counter()
    with ray_session(cfg):
        for n, stage in enumerate(cfg.pipeline.stages, start=1):
            log.info("pipeline stage %d/%d: %s", n, len(cfg.pipeline.stages), stage)
            summary["stages"][stage] = {"status": "running", "started": time.time()}
            write()
            t0 = time.perf_counter()
            try:
                result = STAGE_FUNCTIONS[stage](cfg, paths)
            except BaseException as exc:
                summary["stages"][stage] |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                             "seconds": time.perf_counter() - t0}
                write()
                raise
            summary["stages"][stage] = {"status": "done", "seconds": round(time.perf_counter() - t0, 2), **result}
            write()
    summary["seconds"] = round(time.perf_counter() - t_all, 2)
    write()
    return summary
