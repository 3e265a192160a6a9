"""What a pipeline run wrote, read for the report (every part optional: a report of a partial run works).

Everything is read from ``<run>`` (any URI) in the layout of :class:`wsiscale.pipeline.Paths`:
``pipeline.json``, the failure tables of the tiling / embedding runs, the newest pretraining
checkpoint's ``meta.json`` (loss history, evaluations), ``slide-index`` (prototypes, neighbours) and
``eval/retrieval.json``. Per-slide data (tile embeddings, prototypes) is read only for the slides
the report shows, so a report of a million-slide run reads a handful of files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsiscale.io.uri import join_uri, normalize_uri, read_bytes, read_json

log = logging.getLogger(__name__)

#: Runs of the pipeline whose failures the report lists: ``(stage, directory under the run)``.
FAILURE_SOURCES = (("tile", "tiles"), ("embed", "embeddings"), ("regions", "regions"))


def load_text(uri: str, storage: Any = None) -> str | None:
    """The text at ``uri``, or None when there is none."""
    try:
        return read_bytes(uri, storage).decode()
    except (FileNotFoundError, NotADirectoryError):
        return None


def stage_failures(run: str, storage: Any = None) -> list[dict[str, Any]]:
    """Every failed slide of the run's tiling and embedding stages: ``stage, slide_id, uri, error_type,
    message`` (from each run's consolidated ``failures.parquet``)."""
    from wsiscale.runs.shards import read_parquet

    out = []
    for stage, sub in FAILURE_SOURCES:
        try:
            t = read_parquet(join_uri(run, sub, "failures.parquet"), storage)
        except FileNotFoundError:
            continue
        for row in t.to_pylist():
            out.append({"stage": stage, **{k: row.get(k) for k in ("slide_id", "uri", "error_type", "message")}})
    return out


def pretrain_meta(run: str, storage: Any = None) -> dict[str, Any] | None:
    """``meta.json`` of the newest pretraining checkpoint (``history``, ``evaluations``, ``metrics``)."""
    from wsiscale.runs.shards import list_names

    base = join_uri(run, "pretrain", "pretrain")
    metas = [read_json(join_uri(base, n, "meta.json"), storage)
             for n in list_names(base, storage) if n.startswith("checkpoint_") and not n.endswith(".json")]
    metas = [m for m in metas if m]
    return max(metas, key=lambda m: (m.get("metrics") or {}).get("step", 0)) if metas else None


def read_neighbours(index: str, storage: Any = None) -> dict[str, list[tuple[str, float]]]:
    """``slide_id -> [(neighbour, score), ...]`` from ``<index>/neighbours.parquet`` ({} when absent)."""
    from wsiscale.runs.shards import read_parquet

    try:
        t = read_parquet(join_uri(index, "neighbours.parquet"), storage)
    except FileNotFoundError:
        return {}
    return {r["slide_id"]: list(zip(r["neighbours"], r["scores"])) for r in t.to_pylist()}


def read_slides(manifest: str, label_column: str, storage: Any = None) -> dict[str, dict[str, Any]]:
    """``slide_id -> {uri, label, mpp}`` of the run's manifest ({} when it cannot be read)."""
    from wsiscale.io.manifest import read_manifest

    try:
        t = read_manifest(manifest, storage)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("report: manifest %s not readable (%s): no thumbnails", manifest, exc)
        return {}
    cols = set(t.column_names)
    rows = t.to_pylist()
    return {r["slide_id"]: {"uri": r["uri"], "label": r.get(label_column) if label_column in cols else None,
                            "mpp": r.get("mpp")} for r in rows}


def slide_prototypes(index: str, slide_ids: list[str], storage: Any = None) -> dict[str, np.ndarray]:
    """``slide_id -> [m, D]`` prototypes of the given slides from ``<index>/prototypes`` (others not read)."""
    from wsiscale.runs.shards import read_parquet

    meta = read_json(join_uri(index, "index.json"), storage)
    if not meta or not slide_ids:
        return {}
    want, out = set(slide_ids), {}
    for name in meta["files"]:
        t = read_parquet(join_uri(index, "prototypes", name), storage)
        for sid, p in zip(t.column("slide_id").to_pylist(), t.column("prototypes").to_pylist()):
            if sid in want and p is not None:
                out[sid] = np.asarray(p, np.float32).reshape(meta["m"], meta["dim"])
        if len(out) == len(want):
            break
    return out


def slide_tile_vectors(embeddings: str, slide_ids: list[str], storage: Any = None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``slide_id -> (x [n], y [n], vectors [n, D])``: level-0 tile corners and tile embeddings of the
    given slides of a tiles-mode embedding run."""
    from wsiscale.index.sources import table_vectors
    from wsiscale.runs.embedding_run import EmbeddingRun
    from wsiscale.runs.shards import read_parquet

    try:
        run = EmbeddingRun(embeddings, storage)
    except FileNotFoundError:
        return {}
    want, out = set(slide_ids), {}
    for row in run.table.select(["slide_id", "shards"]).to_pylist():
        if row["slide_id"] not in want:
            continue
        xs, ys, vs = [], [], []
        for s in json.loads(row["shards"]):
            uri = run.absolute(s["path"])
            t = read_parquet(uri, storage)
            if "x" not in t.column_names or not t.num_rows:
                continue
            xs.append(t.column("x").to_numpy())
            ys.append(t.column("y").to_numpy())
            vs.append(table_vectors(t, uri))
        if xs:
            out[row["slide_id"]] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(vs))
    return out


def tile_extent(x: np.ndarray, y: np.ndarray) -> float:
    """The level-0 side of a tile, from the spacing of the tile grid (64 when there is one tile)."""
    steps = [np.diff(np.unique(v)) for v in (x, y)]
    steps = [s[s > 0].min() for s in steps if len(s) and (s > 0).any()]
    return float(min(steps)) if steps else 64.0


def nearest_prototype(vectors: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """``[n]``: each vector's prototype by cosine similarity (SLPD's assignment)."""
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    p = prototypes / np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    return (v @ p.T).argmax(1)


@dataclass
class RunFacts:
    """Everything the report shows, gathered from the run directory."""

    run: str
    pipeline: dict[str, Any] | None
    config_yaml: str | None
    failures: list[dict[str, Any]]
    pretrain: dict[str, Any] | None
    neighbours: dict[str, list[tuple[str, float]]]
    retrieval: dict[str, Any] | None
    slides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def gather(cls, run: str, storage: Any = None, label_column: str = "label") -> "RunFacts":
        run = normalize_uri(run)
        pipeline = read_json(join_uri(run, "pipeline.json"), storage)
        manifest = (pipeline or {}).get("manifest") or join_uri(run, "manifest.parquet")
        return cls(run=run, pipeline=pipeline, config_yaml=load_text(join_uri(run, "wsiscale.config.yaml"), storage),
                   failures=stage_failures(run, storage), pretrain=pretrain_meta(run, storage),
                   neighbours=read_neighbours(join_uri(run, "slide-index"), storage),
                   retrieval=read_json(join_uri(run, "eval", "retrieval.json"), storage),
                   slides=read_slides(manifest, label_column, storage))
