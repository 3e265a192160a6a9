"""Driver of MIL training (``wsiscale train-mil``): k-fold cross-validation on Ray Train, results, heatmaps.

``run_mil(cfg, embeddings, labels, out)`` pairs the slides of a tiles-mode
embedding run with a labels table (:func:`wsiscale.mil.bags.bag_specs`),
splits them into ``mil.folds`` stratified folds by slide
(:func:`wsiscale.mil.folds.stratified_folds`), and fits one ``TorchTrainer``
whose workers train every fold in turn (:mod:`wsiscale.mil.loop`; checkpoints
under ``<out>/train``, so resubmitting resumes, and ``FailureConfig`` restarts
a failed worker group from the last one). It then writes ``results.json`` /
``results.md`` (per-fold metrics and mean +- std), draws heatmaps of test
slides (``heatmaps/<slide>.png``: attention and, for WENO, the student's
``P(tumour)`` over the slide thumbnail) and saves the resolved config.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from wsiscale.config import WsiscaleConfig
from wsiscale.io.uri import join_uri, normalize_uri
from wsiscale.runs.config_file import save_config
from wsiscale.train.fit import fit

log = logging.getLogger(__name__)


def run_mil(cfg: WsiscaleConfig, embeddings: str, labels: str, out: str) -> dict[str, Any]:
    """Train and cross-validate ``cfg.mil.method`` on ``embeddings`` with ``labels``; returns ``results.json``."""
    from wsiscale.mil.bags import bag_specs
    from wsiscale.mil.folds import stratified_folds
    from wsiscale.mil.loop import train_loop_per_worker
    from wsiscale.mil.results import write_results

    mil = cfg.mil
    out = normalize_uri(out)
    specs, dim = bag_specs(cfg, embeddings, labels)
    folds = stratified_folds(np.array([s.label for s in specs]), mil.folds, mil.seed, mil.val_fraction)
    progress_uri = join_uri(out, "progress.json")
    positives = sum(s.label for s in specs)
    log.info("MIL %s: %d slides (%d positive), %d-d tile embeddings, %d folds, %s workers", mil.method, len(specs),
             positives, dim, mil.folds, mil.num_workers)
    result = fit(cfg, "mil", train_loop_per_worker,
                 {"mil": mil.model_dump(mode="json"), "bags": [dataclasses.asdict(s) for s in specs], "dim": dim,
                  "folds": folds, "out": out, "storage": cfg.storage, "progress_uri": progress_uri},
                 out, progress_uri, description=f"train-mil {mil.method}")
    extra = {"slides": len(specs), "positive_slides": positives, "dim": dim, "embeddings": embeddings,
             "labels": labels, "folds_split": [{k: [specs[i].slide_id for i in v] for k, v in f.items()} for f in folds],
             "starts": result.starts}
    if mil.heatmaps:
        extra["heatmaps"] = draw_heatmaps(cfg, out, specs, folds)
    doc = write_results(out, mil.method, result.meta["results"], extra, cfg.storage)
    save_config(cfg, out, cfg.storage)
    return doc


def _heatmap_slides(specs: list, folds: list[dict[str, list[int]]], per_fold: int) -> list[tuple[int, int]]:
    """``(fold, bag index)`` of the slides to draw: each fold's positive test slides first, then negatives."""
    chosen = []
    for f, fold in enumerate(folds):
        test = sorted(fold["test"], key=lambda i: (-specs[i].label, specs[i].slide_id))
        chosen += [(f, i) for i in (test if per_fold < 0 else test[:per_fold])]
    return chosen


def draw_heatmaps(cfg: WsiscaleConfig, out: str, specs: list, folds: list[dict[str, list[int]]]) -> list[str]:
    """Draw ``mil.heatmaps`` test slides per fold as ``<out>/heatmaps/<slide>.png`` (Ray tasks); returns the URIs."""
    import ray

    chosen = [(f, specs[i]) for f, i in _heatmap_slides(specs, folds, cfg.mil.heatmaps)
              if specs[i].slide_uri and specs[i].tile_extent]
    if not chosen:
        log.warning("no heatmaps: the labels table has no slide uri/mpp for the test slides")
        return []
    import pyarrow.compute as pc

    from wsiscale.runs.shards import read_parquet

    tables = {f: read_parquet(join_uri(out, "instances", f"fold-{f}.parquet"), cfg.storage)
              for f in sorted({f for f, _ in chosen})}  # each fold's instances read once, not once per slide
    task = ray.remote(num_cpus=0.5)(_draw_one)
    refs = [task.remote(out, f, dataclasses.asdict(spec), tables[f].filter(pc.equal(tables[f]["slide_id"],
                                                                                     spec.slide_id)),
                        cfg.mil.method, cfg.storage) for f, spec in chosen]
    uris = []
    for (f, spec), ref in zip(chosen, refs):
        try:
            uris.append(ray.get(ref))
        except Exception as exc:  # a slide that cannot be drawn never fails the run
            log.warning("heatmap of slide %s (fold %d) failed: %s", spec.slide_id, f, exc)
    return uris


def _draw_one(out: str, fold: int, spec: dict[str, Any], rows: Any, method: str, storage: Any) -> str:
    """Draw one test slide from its rows of ``instances/fold-K.parquet`` (``rows``)."""
    import wsiscale  # noqa: F401  (cuCIM before torch in a fresh worker)
    from wsiscale.io.uri import join_uri as _join
    from wsiscale.mil.heatmap import heatmap_png, slide_thumbnail, write_heatmap

    xs, ys = rows.column("x").to_numpy(), rows.column("y").to_numpy()
    score = rows.column("score").to_numpy().astype(np.float64)
    if method == "weno":
        panels = {"teacher attention": _minmax(score),
                  "student P(tumour)": rows.column("student_prob").to_numpy().astype(np.float64)}
    elif method == "abmil":
        panels = {"attention": _minmax(score)}
    else:
        panels = {"P(tumour) per tile": score}
    labels = rows.column("instance_label").to_numpy()
    if (labels >= 0).any():
        panels["ground truth"] = np.clip(labels, 0, 1).astype(np.float64)
    thumb, scale = slide_thumbnail(spec["slide_uri"], 1024, storage)
    title = f"{spec['slide_id']} ({spec['label_name']}) - {method}, fold {fold}"
    png = heatmap_png(thumb, scale, xs, ys, float(spec["tile_extent"]), panels, title)
    uri = _join(out, "heatmaps", f"{spec['slide_id']}.png")
    write_heatmap(uri, png, storage)
    return uri


def _minmax(v: np.ndarray) -> np.ndarray:
    span = float(v.max() - v.min()) if len(v) else 0.0
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)
