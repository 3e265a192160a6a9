"""Embedding runs to clusters and slide indexes: k-means on the actor pool, per-slide prototypes, retrieval.

``cluster_embeddings`` runs k-means over every tile embedding of a run on a
:class:`~wsiscale.index.pool.FaissPool` whose actors read their own Parquet
files, and writes ``centroids.npy`` and per-vector assignments
(``assignments/part-*.parquet``: ``slide_id, x, y, cluster``, written by the
actors).

``build_slide_index`` computes ``m`` prototypes for every completed slide of
an embedding run (tile or region embeddings) with
:func:`~wsiscale.index.prototypes.batched_kmeans` (cosine, SLPD-style) on Ray
Data tasks, a batch of slides per task, and streams them into
``<out>/prototypes/part-*.parquet`` (``slide_id``, ``n``, ``prototypes`` as a
fixed-size list of ``m * D`` float32) plus ``<out>/index.json``.
``SlideIndex.load(out).retrieve(slide_id, k)`` returns the most similar slides
by optimal prototype matching (see :class:`~wsiscale.index.prototypes.SlideRetriever`).
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from wsiscale.index.kmeans import IndexInputError
from wsiscale.index.prototypes import SlideRetriever, all_neighbours, batched_kmeans
from wsiscale.index.sources import table_vectors
from wsiscale.io.uri import join_uri, normalize_uri, write_bytes_atomic
from wsiscale.runs.shards import parquet_bytes, read_parquet
from wsiscale.runs.state import RunState

log = logging.getLogger(__name__)


def _slide_vectors(state: RunState, shards: str) -> np.ndarray:
    uris = [state.absolute(s["path"]) for s in json.loads(shards)]
    tables = [(read_parquet(uri, state.storage), uri) for uri in uris]
    xs = [table_vectors(t, uri) for t, uri in tables if t.num_rows]
    return np.concatenate(xs) if xs else np.zeros((0, 0), np.float32)


def slide_seed(slide_key: str | int, seed: int) -> int:
    """A per-slide seed (from the slide's id or index): its prototypes do not depend on how slides were batched."""
    return zlib.crc32(str(slide_key).encode()) ^ (seed & 0xFFFFFFFF)


def prototype_batch(batch: pa.Table, run: str, storage: Any, m: int, iters: int, min_vectors: int,
                    seed: int, restarts: int = 1) -> pa.Table:
    """Prototypes of a batch of slides (rows ``slide_id, shards`` of an embedding run's ``slides.parquet``).

    Returns ``slide_id, n, prototypes`` (``m * D`` float32; null for slides
    with fewer than ``min_vectors`` embeddings). Runs in Ray Data tasks.
    """
    state = RunState(run, storage, data_dir="embeddings")
    sids = batch.column("slide_id").to_pylist()
    groups = [_slide_vectors(state, sh) for sh in batch.column("shards").to_pylist()]
    keep = [i for i, g in enumerate(groups) if g.shape[0] >= max(1, min_vectors)]
    flat: list[Any] = [None] * len(sids)
    if keep:
        p, _ = batched_kmeans([groups[i] for i in keep], m, iters=iters, spherical=True,
                              seeds=[slide_seed(sids[i], seed) for i in keep], restarts=restarts)
        for j, i in enumerate(keep):
            flat[i] = p[j].reshape(-1)
    return pa.table({"slide_id": pa.array(sids, pa.string()),
                     "n": pa.array([g.shape[0] for g in groups], pa.int64()),
                     "prototypes": pa.array(flat, pa.list_(pa.float32()))})


def build_slide_index(embeddings: str, out: str, m: int = 4, iters: int = 20, min_vectors: int = 1,
                      batch_slides: int = 256, seed: int = 0, restarts: int = 1, storage: Any = None,
                      cpus_per_task: float = 1.0, max_rows_per_file: int = 100_000) -> dict[str, Any]:
    """Prototypes of every slide of an embedding run, computed on Ray Data tasks and written to ``out``.

    Slides go to tasks in batches of ``batch_slides``; each task reads its
    slides' embeddings and clusters them all at once
    (:func:`~wsiscale.index.prototypes.batched_kmeans`). The driver streams the
    results into ``out/prototypes/part-*.parquet`` (``slide_id``, ``n``,
    ``prototypes`` as ``m * D`` float32) and writes ``out/index.json`` last.
    Needs a running Ray (``ray.init()``; the CLI starts one).
    """
    import ray

    from wsiscale.data.tiling import _manifest_blocks
    from wsiscale.runs.embedding_run import EmbeddingRun
    from wsiscale.runs.shards import ShardWriter, remove_parts_except

    run = EmbeddingRun(embeddings, storage)
    slides = run.table
    out = normalize_uri(out)
    blocks = _manifest_blocks(slides, max(1, -(-slides.num_rows // batch_slides)), ("slide_id", "shards"))
    ds = ray.data.from_arrow(blocks).map_batches(
        prototype_batch, batch_size=None, batch_format="pyarrow", num_cpus=cpus_per_task,
        fn_kwargs=dict(run=run.uri, storage=storage, m=m, iters=iters, min_vectors=min_vectors, seed=seed,
                       restarts=restarts))
    directory = join_uri(out, "prototypes")
    writer: ShardWriter | None = None
    n_slides, dim, skipped = 0, None, []
    for t in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        has = t.column("prototypes").is_valid().to_numpy(zero_copy_only=False)
        skipped.extend(sid for sid, ok in zip(t.column("slide_id").to_pylist(), has) if not ok)
        t = t.filter(pa.array(has))
        if t.num_rows == 0:
            continue
        if writer is None:
            dim = len(t.column("prototypes")[0]) // m
            schema = pa.schema([("slide_id", pa.string()), ("n", pa.int64()),
                                ("prototypes", pa.list_(pa.float32(), m * dim))],
                               metadata={b"wsiscale.m": str(m).encode(), b"wsiscale.dim": str(dim).encode()})
            writer = ShardWriter(directory, "part", schema, max_rows=max_rows_per_file, storage=storage)
        flat = t.column("prototypes").combine_chunks().flatten()
        writer.write(pa.table({"slide_id": t.column("slide_id"), "n": t.column("n"),
                               "prototypes": pa.FixedSizeListArray.from_arrays(flat, m * dim)}, schema=writer.schema))
        n_slides += t.num_rows
    if writer is None:
        raise IndexInputError(f"{run.uri}: no slide has at least {max(1, min_vectors)} embeddings")
    written = {info.uri.rsplit("/", 1)[-1] for info in writer.close()}
    remove_parts_except(directory, written, storage)
    meta = {"embeddings": run.uri, "slides": n_slides, "m": m, "dim": dim, "iters": iters, "seed": seed,
            "restarts": restarts,
            "files": sorted(written), "skipped": sorted(skipped)}
    write_bytes_atomic(join_uri(out, "index.json"), json.dumps(meta, indent=1).encode(), storage)
    if skipped:
        log.warning("%d slides had fewer than %d embeddings and were left out (e.g. %s)", len(skipped), min_vectors,
                    ", ".join(sorted(skipped)[:5]))
    return meta


class SlideIndex:
    """Prototypes of a collection of slides with retrieval by slide id.

    Args:
        slide_ids: the collection's slide ids, in prototype order.
        prototypes: ``[S, m, D]``.
        candidates: summary-index candidates re-ranked by exact prototype matching.
        index: faiss factory of the summary index (``Flat`` exact; ``IVF...``/``HNSW32`` for 10^6+ slides).
    """

    def __init__(self, slide_ids: list[str], prototypes: np.ndarray, candidates: int = 1000, index: str = "Flat",
                 params: dict | None = None) -> None:
        self.slide_ids = slide_ids
        self.position = {s: i for i, s in enumerate(slide_ids)}
        self.prototypes = prototypes
        self.index_type, self.params = index, dict(params or {})
        self.retriever = SlideRetriever(prototypes, candidates=candidates, index=index, params=self.params)

    @classmethod
    def load(cls, uri: str, storage: Any = None, candidates: int = 1000, index: str = "Flat",
             params: dict | None = None) -> "SlideIndex":
        from wsiscale.io.uri import filesystem

        fs, path = filesystem(join_uri(normalize_uri(uri), "index.json"), storage)
        with fs.open(path, "rb") as fh:
            meta = json.loads(fh.read())
        parts = [read_parquet(join_uri(normalize_uri(uri), "prototypes", name), storage) for name in meta["files"]]
        t = pa.concat_tables(parts)
        flat = t.column("prototypes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        ids = t.column("slide_id").to_pylist()
        return cls(ids, flat.reshape(len(ids), meta["m"], meta["dim"]).astype(np.float32), candidates, index, params)

    def retrieve(self, slide_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` slides most similar to ``slide_id`` (itself excluded), best first, with scores."""
        if slide_id not in self.position:
            import difflib

            hint = difflib.get_close_matches(slide_id, self.slide_ids, n=1)
            raise KeyError(f"slide {slide_id!r} is not in the index" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        i = self.position[slide_id]
        got = self.retriever.query(self.prototypes[i], k=k, exclude=i)
        return [(self.slide_ids[j], float(s)) for j, s in zip(got.indices, got.scores)]

    def neighbours(self, k: int = 10, chunk: int = 2048, workers: int | None = None) -> pa.Table:
        """The ``k`` nearest slides of every slide: ``slide_id, neighbours (list), scores (list)``, best first.

        Runs on Ray actors when Ray is running (see :func:`~wsiscale.index.prototypes.all_neighbours`).
        """
        r = self.retriever
        idx, scores = all_neighbours(self.prototypes, k, candidates=r.candidates, index=self.index_type,
                                     params=self.params, chunk=chunk, workers=workers)
        names = np.array(self.slide_ids, dtype=object)
        out_ids, out_scores = [], []
        for row, sc in zip(idx, scores):
            keep = row >= 0
            out_ids.append(names[row[keep]].tolist())
            out_scores.append(sc[keep].tolist())
        return pa.table({"slide_id": pa.array(self.slide_ids, pa.string()),
                         "neighbours": pa.array(out_ids, pa.list_(pa.string())),
                         "scores": pa.array(out_scores, pa.list_(pa.float32()))})


def cluster_embeddings(embeddings: str, out: str, k: int, iters: int = 20, restarts: int = 1, shards: int = 2,
                       spherical: bool = False, seed: int = 0, num_cpus: float = 1.0, num_gpus: float = 0.0,
                       storage: Any = None) -> dict[str, Any]:
    """k-means of all of a run's tile embeddings on the FAISS actor pool (actors read their own files).

    Writes ``out/centroids.npy`` (``[k, D]``), ``out/assignments/part-*.parquet``
    (``slide_id, x, y, cluster``; one part per actor) and ``out/clusters.json``.
    """
    import io

    from wsiscale.index.pool import FaissPool

    pool = FaissPool.from_embeddings(embeddings, shards=shards, storage=storage, num_cpus=num_cpus, num_gpus=num_gpus)
    res = pool.kmeans(k, iters=iters, restarts=restarts, spherical=spherical, seed=seed)
    out = normalize_uri(out)
    rows = pool.write_assignments(res.centroids, join_uri(out, "assignments"), spherical)
    buf = io.BytesIO()
    np.save(buf, res.centroids)
    write_bytes_atomic(join_uri(out, "centroids.npy"), buf.getvalue(), storage)
    meta = {"embeddings": normalize_uri(embeddings), "vectors": rows, "dim": pool.dim, "k": k, "shards": len(pool.actors),
            "iters": iters, "restarts": restarts, "spherical": spherical, "inertia": res.inertia,
            "history": res.history, "empty_repaired": res.repaired, "sizes": res.counts.tolist()}
    write_bytes_atomic(join_uri(out, "clusters.json"), json.dumps(meta, indent=1).encode(), storage)
    return meta


def write_neighbours(index_uri: str, k: int = 10, candidates: int = 1000, index: str = "Flat",
                     params: dict | None = None, storage: Any = None) -> str:
    """Every slide's ``k`` nearest slides of a slide index, written atomically to ``<index>/neighbours.parquet``."""
    si = SlideIndex.load(index_uri, storage, candidates=candidates, index=index, params=params)
    uri = join_uri(normalize_uri(index_uri), "neighbours.parquet")
    write_bytes_atomic(uri, parquet_bytes(si.neighbours(k)), storage)
    return uri
