"""Embedding runs to clusters and slide indexes: k-means on the actor pool, per-slide prototypes, retrieval.

``cluster_embeddings`` runs k-means over every embedding of a run on a
:class:`~wsiscale.index.pool.FaissPool` and writes ``centroids.npy`` and
per-vector assignments (``assignments.parquet``: ``slide_id, x, y, cluster``).

``build_slide_index`` reads every completed slide of an embedding run (tile or
region embeddings), computes ``m`` prototypes per slide with
:func:`~wsiscale.index.prototypes.batched_kmeans` (cosine, SLPD-style; slides
are processed in batches so memory stays bounded) and writes
``<out>/prototypes.parquet`` (``slide_id``, ``n``, ``prototypes`` as a
fixed-size list of ``m * D`` float32) and ``<out>/index.json``.
``SlideIndex.load(out).retrieve(slide_id, k)`` returns the most similar slides
by optimal prototype matching (see :class:`~wsiscale.index.prototypes.SlideRetriever`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from wsiscale.data.run_state import RunState
from wsiscale.data.shards import parquet_bytes, read_parquet
from wsiscale.index.kmeans import IndexInputError
from wsiscale.index.prototypes import SlideRetriever, batched_kmeans
from wsiscale.io.uri import join_uri, normalize_uri, write_bytes_atomic

log = logging.getLogger(__name__)


def _slide_vectors(state: RunState, shards: str) -> np.ndarray:
    parts = [read_parquet(state.absolute(s["path"]), state.storage, ["embedding"]) for s in json.loads(shards)]
    t = pa.concat_tables(parts)
    if t.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    size = t.schema.field("embedding").type.list_size
    shape = json.loads((t.schema.metadata or {}).get(b"wsiscale.region_shape", b"null"))
    x = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if shape:  # region rows [D, g, g]: every patch embedding is a vector
        d = shape[0]
        return np.ascontiguousarray(x.reshape(-1, d, shape[1] * shape[2]).transpose(0, 2, 1).reshape(-1, d))
    return x.reshape(-1, size)


def build_slide_index(embeddings: str, out: str, m: int = 4, iters: int = 20, min_vectors: int = 1,
                      batch_slides: int = 256, seed: int = 0, storage: Any = None) -> dict[str, Any]:
    """Prototypes of every slide of an embedding run, written to ``out``; returns a summary."""
    state = RunState(embeddings, storage, data_dir="embeddings")
    slides = state.read_table("slides.parquet")
    if slides is None:
        raise FileNotFoundError(f"{state.uri} has no slides.parquet: run `wsiscale embed` first")
    ids, ns, protos, skipped = [], [], [], []
    rows = list(zip(slides.column("slide_id").to_pylist(), slides.column("shards").to_pylist()))
    for start in range(0, len(rows), batch_slides):
        batch_ids, groups = [], []
        for sid, shards in rows[start : start + batch_slides]:
            x = _slide_vectors(state, shards)
            if x.shape[0] < max(1, min_vectors):
                skipped.append(sid)
                continue
            batch_ids.append(sid)
            groups.append(x)
        if groups:
            p, _ = batched_kmeans(groups, m, iters=iters, seed=seed + start, spherical=True)
            protos.append(p)
            ids.extend(batch_ids)
            ns.extend(len(g) for g in groups)
    if not ids:
        raise IndexInputError(f"{state.uri}: no slide has at least {max(1, min_vectors)} embeddings")
    p = np.concatenate(protos)
    dim = p.shape[2]
    table = pa.table({"slide_id": pa.array(ids, pa.string()), "n": pa.array(ns, pa.int64()),
                      "prototypes": pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1)), m * dim)})
    out = normalize_uri(out)
    write_bytes_atomic(join_uri(out, "prototypes.parquet"), parquet_bytes(table), storage)
    meta = {"embeddings": state.uri, "slides": len(ids), "m": m, "dim": dim, "iters": iters, "skipped": skipped}
    write_bytes_atomic(join_uri(out, "index.json"), json.dumps(meta, indent=1).encode(), storage)
    if skipped:
        log.warning("%d slides had fewer than %d embeddings and were left out (e.g. %s)", len(skipped), min_vectors,
                    ", ".join(skipped[:5]))
    return meta


class SlideIndex:
    """Prototypes of a collection of slides with retrieval by slide id."""

    def __init__(self, slide_ids: list[str], prototypes: np.ndarray, candidates: int = 100) -> None:
        self.slide_ids = slide_ids
        self.position = {s: i for i, s in enumerate(slide_ids)}
        self.prototypes = prototypes
        self.retriever = SlideRetriever(prototypes, candidates=candidates)

    @classmethod
    def load(cls, uri: str, storage: Any = None, candidates: int = 100) -> "SlideIndex":
        from wsiscale.io.uri import filesystem

        t = read_parquet(join_uri(normalize_uri(uri), "prototypes.parquet"), storage)
        flat = t.column("prototypes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        ids = t.column("slide_id").to_pylist()

        fs, path = filesystem(join_uri(normalize_uri(uri), "index.json"), storage)
        with fs.open(path, "rb") as fh:
            meta = json.loads(fh.read())
        return cls(ids, flat.reshape(len(ids), meta["m"], meta["dim"]).astype(np.float32), candidates)

    def retrieve(self, slide_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` slides most similar to ``slide_id`` (itself excluded), best first, with scores."""
        if slide_id not in self.position:
            import difflib

            hint = difflib.get_close_matches(slide_id, self.slide_ids, n=1)
            raise KeyError(f"slide {slide_id!r} is not in the index" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        i = self.position[slide_id]
        got = self.retriever.query(self.prototypes[i], k=k, exclude=i)
        return [(self.slide_ids[j], float(s)) for j, s in zip(got.indices, got.scores)]


def read_run_vectors(embeddings: str, storage: Any = None) -> tuple[pa.Table, np.ndarray]:
    """``(keys, vectors)`` of every completed slide of an embedding run: keys ``slide_id, x, y``; vectors ``[N, D]``."""
    state = RunState(embeddings, storage, data_dir="embeddings")
    slides = state.read_table("slides.parquet")
    if slides is None:
        raise FileNotFoundError(f"{state.uri} has no slides.parquet: run `wsiscale embed` first")
    keys, vecs = [], []
    for shards in slides.column("shards").to_pylist():
        for s in json.loads(shards):
            t = read_parquet(state.absolute(s["path"]), storage)
            if t.num_rows == 0:
                continue
            if (t.schema.metadata or {}).get(b"wsiscale.region_shape"):
                raise IndexInputError(f"{state.uri} holds region embeddings: cluster a tiles-mode run "
                                      "(or use `wsiscale index build`, which handles regions)")
            d = t.schema.field("embedding").type.list_size
            vecs.append(t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                        .astype(np.float32).reshape(-1, d))
            keys.append(t.select(["slide_id", "x", "y"]))
    if not vecs:
        raise IndexInputError(f"{state.uri}: no embeddings to cluster")
    return pa.concat_tables(keys), np.concatenate(vecs)


def cluster_embeddings(embeddings: str, out: str, k: int, iters: int = 20, restarts: int = 1, shards: int = 2,
                       spherical: bool = False, seed: int = 0, num_cpus: float = 1.0, num_gpus: float = 0.0,
                       storage: Any = None) -> dict[str, Any]:
    """k-means of all of a run's embeddings on the FAISS actor pool; writes centroids and assignments to ``out``."""
    import io

    from wsiscale.index.pool import FaissPool

    keys, x = read_run_vectors(embeddings, storage)
    pool = FaissPool(x, shards=min(shards, x.shape[0]), num_cpus=num_cpus, num_gpus=num_gpus)
    res = pool.kmeans(k, iters=iters, restarts=restarts, spherical=spherical, seed=seed)
    labels = pool.assign(res.centroids, spherical)
    out = normalize_uri(out)
    buf = io.BytesIO()
    np.save(buf, res.centroids)
    write_bytes_atomic(join_uri(out, "centroids.npy"), buf.getvalue(), storage)
    assignments = keys.append_column("cluster", pa.array(labels.astype(np.int32)))
    write_bytes_atomic(join_uri(out, "assignments.parquet"), parquet_bytes(assignments), storage)
    meta = {"embeddings": normalize_uri(embeddings), "vectors": int(x.shape[0]), "dim": int(x.shape[1]), "k": k,
            "iters": iters, "restarts": restarts, "spherical": spherical, "inertia": res.inertia,
            "history": res.history, "empty_repaired": res.repaired, "sizes": res.counts.tolist()}
    write_bytes_atomic(join_uri(out, "clusters.json"), json.dumps(meta, indent=1).encode(), storage)
    return meta
