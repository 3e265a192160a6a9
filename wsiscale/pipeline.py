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
mil        k-fold MIL (``mil.method``) on the tile embeddings     ``<output>/mil-<method>``
gigassl    Giga-SSL slide vectors (``embed.augmentations`` > 0)   ``<output>/gigassl``
five       FiVE on the manifest's reports, zero-/few-shot         ``<output>/five``
report     the run report (:mod:`wsiscale.report`)                ``<output>/report.html``
=========  =====================================================  ==============================

``mil``, ``gigassl`` and ``five`` run only when ``pipeline.stages`` names them; every stage calls the
same code as its command (:mod:`wsiscale.commands`). Resubmitting the same job resumes: done slides are skipped by tiling and embedding, training resumes
from its last checkpoint, the index and evaluation are recomputed (cheap). ``<output>/pipeline.json``
is rewritten atomically after every stage with each stage's status, seconds and key figures, so a
monitor (or a person) can see how far a run got; the resolved config is saved beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from wsiscale.commands.command import Command
from wsiscale.commands.evaluation import run_probe, run_report
from wsiscale.commands.index import run_cluster, run_index
from wsiscale.commands.ingest import run_embed, run_tile
from wsiscale.commands.training import run_five, run_gigassl, run_mil, run_pretrain
from wsiscale.config import ConfigError, WsiscaleConfig
from wsiscale.io.uri import join_uri, normalize_uri, write_bytes_atomic
from wsiscale.runs.config_file import save_config
from wsiscale.runs.layout import RunLayout

log = logging.getLogger(__name__)

SUMMARY_FILE = "pipeline.json"


class Paths(RunLayout):
    """Where each stage reads and writes (:class:`~wsiscale.runs.layout.RunLayout`), with the run's manifest."""

    def __init__(self, output: str, manifest: str | None) -> None:
        super().__init__(output)
        self._manifest = normalize_uri(manifest) if manifest else None

    @property
    def manifest(self) -> str:
        return self._manifest or super().manifest


def _stage_tile(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    s = run_tile(cfg, manifest=paths.manifest, out=paths.tiles)
    return {"out": paths.tiles, "slides": s["slides"], "tiles": s["tiles"]}


def _stage_embed(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    tiles_cfg = cfg.model_copy(deep=True)
    tiles_cfg.embed.mode = "tiles"
    s = run_embed(tiles_cfg, source=paths.tiles, out=paths.embeddings)
    return {"out": paths.embeddings, "slides": s["slides"], "tiles": s["tiles"]}


def _stage_regions(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    regions_cfg = cfg.model_copy(deep=True)
    regions_cfg.embed.mode = "regions"
    regions_cfg.embed.augmentations = 0  # augmented embeddings are a tiles-mode (Giga-SSL) output
    s = run_embed(regions_cfg, manifest=paths.manifest, out=paths.regions)
    return {"out": paths.regions, "slides": s["slides"], "regions": s["tiles"]}


def _stage_pretrain(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    from wsiscale.pretrain.evaluate import labels_allow_holdout

    if cfg.pretrain.level != "region":
        raise ConfigError("the pipeline pretrains the region encoder on the regions stage's output: set "
                          "pretrain.level=region (patch-level DINO runs on tiles with `wsiscale pretrain --tiles`)")
    if cfg.pretrain.eval_labels is None and labels_allow_holdout(paths.manifest, cfg.storage):
        cfg.pretrain.eval_labels = paths.manifest  # held-out linear probe / kNN of the region encoder
    s = run_pretrain(cfg, embeddings=paths.regions, out=paths.pretrain)
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
    from wsiscale.runs.shards import list_names

    if "slides.parquet" not in list_names(paths.features, cfg.storage):
        raise ConfigError(f"pipeline.index_on=regions but {paths.features} holds no region features: run the "
                          "features stage (after pretrain), or set pipeline.index_on=tiles")
    return paths.features


def _stage_index(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    source = index_source(cfg, paths)
    clusters = run_cluster(cfg, embeddings=source, out=paths.clusters)
    meta = run_index(cfg, embeddings=source, out=paths.slide_index, neighbours=cfg.pipeline.neighbours)
    return {"source": source, "clusters": paths.clusters, "k": clusters["k"], "vectors": clusters["vectors"],
            "inertia": clusters["inertia"], "slide_index": paths.slide_index, "slides_indexed": meta["slides"],
            "prototypes_per_slide": meta["m"], "skipped": meta["skipped"], "neighbours": meta.get("neighbours")}


def _stage_evaluate(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """Retrieval@k of the slide index and the linear probe on mean-pooled vectors of the index's source
    (region features or tile embeddings, ``pipeline.index_on``).

    An evaluation the cohort cannot support (too few labelled slides, no labels) is recorded as
    skipped with the reason, not raised: the trained artefacts are already written.
    """
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
        probe = run_probe(cfg, vectors=index_source(cfg, paths), labels=paths.manifest,
                          out=join_uri(paths.eval, "linear-probe"))
        doc["linear_probe"] = {"slides": probe["slides"], "classes": probe["classes"],
                               "kfold_auc": (probe["kfold"] or {}).get("auc_mean")}
    except (ConfigError, ValueError, KeyError) as exc:
        log.warning("linear-probe evaluation skipped: %s", exc)
        doc["linear_probe"] = {"skipped": str(exc)}
    return doc


def _stage_report(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """``<output>/report.html`` (:func:`wsiscale.report.write_report`); reads ``pipeline.json`` as written so far."""
    return run_report(cfg, paths.output, slides=cfg.pipeline.report_slides, queries=cfg.pipeline.report_queries,
                      k=cfg.pipeline.neighbours)


def _stage_mil(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """k-fold MIL (``mil.method``) on the tile embeddings with the manifest's labels."""
    doc = run_mil(cfg, embeddings=paths.embeddings, labels=paths.manifest, out=paths.mil(cfg.mil.method))
    return {"out": paths.mil(cfg.mil.method), "method": doc["method"], "slides": doc["slides"],
            "folds": len(doc["folds"]), "metrics": {k: v["mean"] for k, v in doc["summary"].items()}, "chance_auc": 0.5}


def _stage_gigassl(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """Giga-SSL on the embed stage's augmented tile embeddings, then one vector per slide."""
    if not cfg.embed.augmentations:
        raise ConfigError("the gigassl stage trains on augmented tile embeddings: set embed.augmentations > 0 "
                          "(the embed stage then writes them; a new output directory if it already ran)")
    doc = run_gigassl(cfg, embeddings=paths.embeddings, out=paths.gigassl)
    return {"out": paths.gigassl, "steps": doc["train"]["steps"], "final_loss": doc["train"]["final_loss"],
            "vectors": doc["embed"]["vectors"], "slides": doc["embed"]["slides"]}


def _stage_five(cfg: WsiscaleConfig, paths: Paths) -> dict[str, Any]:
    """FiVE on the manifest's reports, then zero-shot (and few-shot) on the same slides."""
    doc = run_five(cfg, embeddings=paths.embeddings, manifest=paths.manifest, out=paths.five)
    zero = doc["eval"].get("zero_shot", {})
    return {"out": paths.five, "slides": doc["train"]["slides"], "final_loss": doc["train"]["final"].get("loss"),
            "zero_shot_accuracy": zero.get("accuracy"), "chance": zero.get("chance")}


STAGE_FUNCTIONS: dict[str, Callable[[WsiscaleConfig, Paths], dict[str, Any]]] = {
    "tile": _stage_tile, "embed": _stage_embed, "regions": _stage_regions, "pretrain": _stage_pretrain,
    "features": _stage_features, "index": _stage_index, "evaluate": _stage_evaluate, "mil": _stage_mil,
    "gigassl": _stage_gigassl, "five": _stage_five, "report": _stage_report,
}


def run_pipeline(cfg: WsiscaleConfig, manifest: str | None = None) -> dict[str, Any]:
    """Run ``cfg.pipeline.stages`` on the slides of ``manifest`` (default ``ingest.manifest`` or
    ``<output>/manifest.parquet``); returns the summary also written to ``<output>/pipeline.json``.

    A stage that raises stops the pipeline (its error is recorded in ``pipeline.json`` and re-raised):
    later stages need its output. Bad slides do not raise; each stage records them in its run.
    """
    from wsiscale.runtime import ray_session

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


def _pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", help="slide manifest (default: ingest.manifest or <output>/manifest.parquet)")
    p.add_argument("--synth", type=int, metavar="N", help="first generate N synthetic slides into <output>/slides "
                   "(synth.* settings) and run on them")


def run_pipeline_command(cfg: WsiscaleConfig, manifest: str | None = None, synth: int | None = None) -> dict:
    """``pipeline.stages`` in order on one Ray session (:func:`wsiscale.pipeline.run_pipeline`), after
    generating ``synth`` slides into ``<output>/slides`` if asked."""
    if synth:
        from wsiscale.io.uri import is_local, local_path
        from wsiscale.synth.cohort import build_cohort

        slides = RunLayout(cfg.output).slides
        if not is_local(slides):
            raise ConfigError(f"--synth writes slides to local disk, but output is {cfg.output}: run it with a "
                              "file:// output (or copy generated slides to object storage and pass --manifest)")
        cfg.synth.n_slides = synth
        manifest = str(build_cohort(cfg.synth, local_path(slides)))
    return run_pipeline(cfg, manifest)


def show_pipeline(doc: dict[str, Any], out: Console) -> None:
    """One row per stage of a pipeline run: status, seconds and the stage's key figure."""
    table = Table(title=f"pipeline -> {doc['output']}")
    for col in ("stage", "status", "seconds", "result"):
        table.add_column(col)
    for name, st in doc["stages"].items():
        table.add_row(name, st.get("status", ""), f"{st['seconds']:.1f}" if "seconds" in st else "",
                      _pipeline_result(name, st))
    out.print(table)


def _pipeline_result(name: str, st: dict[str, Any]) -> str:
    if st.get("status") != "done":
        return st.get("error", "")
    if name in ("tile", "embed", "regions"):
        s = st["slides"]
        return f"{s.get('done', 0)} slides done, {s.get('failed', 0)} failed -> {st['out']}"
    if name == "pretrain":
        m = st.get("metrics", {})
        figs = ", ".join(f"{k} {m[k]:.3f}" for k in ("loss", "probe_auc", "knn_accuracy") if k in m)
        return f"{st['method']} on {st['regions']} regions of {st['slides']} slides: {figs}"
    if name == "index":
        return (f"k-means k={st['k']} over {st['vectors']} vectors; {st['prototypes_per_slide']} prototypes for "
                f"{st['slides_indexed']} slides")
    if name == "evaluate":
        r, p = st.get("retrieval", {}), st.get("linear_probe", {})
        parts = []
        if "map_at_k" in r:
            parts.append(f"retrieval@{r['k']}: majority vote {r['majority_vote_accuracy']:.3f}, mAP {r['map_at_k']:.3f}")
        if p.get("kfold_auc") is not None:
            parts.append(f"linear probe AUC {p['kfold_auc']:.3f} (chance 0.5)")
        return "; ".join(parts) or "skipped (see pipeline.json)"
    if name == "mil":
        m = st["metrics"]
        auc = m.get("bag_auc", float("nan"))
        return f"{st['method']} on {st['slides']} slides, {st['folds']}-fold: bag AUC {auc:.3f} (chance {st['chance_auc']})"
    if name == "gigassl":
        loss = "" if st["final_loss"] is None else f" (NT-Xent {st['final_loss']:.3f})"
        return f"{st['slides']} slide vectors after {st['steps']} steps{loss}"
    if name == "five":
        return (f"{st['slides']} reported slides; zero-shot accuracy {st['zero_shot_accuracy']:.3f} "
                f"(chance {st['chance']:.3f})")
    return ""


PIPELINE = Command(("pipeline",), "the chain from one config: tile -> embed -> regions -> pretrain (SLPD) -> "
                   "features -> index -> evaluate -> report (pipeline.stages), resumable", _pipeline_arguments,
                   run_pipeline_command, show_pipeline)
