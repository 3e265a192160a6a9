"""A pool of Ray actors, each owning a shard of vectors: distributed k-means and sharded ANN search.

Each :class:`FaissShard` actor loads its shard once - its own Parquet files
of an embedding run (:meth:`FaissPool.from_embeddings`; the driver only lists
files), an object-store reference the driver keeps (in-memory vectors), or a
saved index from storage - and keeps it in memory;
it is created with ``max_restarts=-1, max_task_retries=-1``, so a killed
actor is restarted by Ray, reloads its shard in its constructor, and the
calls in flight are retried: k-means and searches continue with the same
results. GPU faiss indexes are used when the actor has a GPU and faiss was
built with CUDA; faiss-cpu otherwise.

* :meth:`FaissPool.kmeans`: Lloyd iterations as map (each shard: per-centroid
  sums, counts, inertia) + reduce (driver: new centroids, empty-cluster
  repair), greedy k-means++ (on a sample drawn from every shard) or random
  init, restarts keeping the best inertia, spherical option;
  :meth:`FaissPool.write_assignments` has every actor write its rows'
  clusters. Same centroids as single-process Lloyd / ``faiss.Kmeans``
  from the same initial centroids.
* :meth:`FaissPool.build_index` / :meth:`FaissPool.search`: one faiss index
  per shard from a factory string (``Flat``, ``IVF1024,Flat``,
  ``IVF1024,PQ32``, ``HNSW32``...), queries fanned out to every shard, top-k
  merged; :meth:`save` / :meth:`load` to any storage URI; :meth:`add` appends
  new vectors (new slides) to the shards.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsiscale.index.kmeans import (
    IndexInputError,
    KMeansResult,
    assign_stats,
    check_vectors,
    kmeanspp_init,
    normalize_rows,
    random_init,
    update_centroids,
)
from wsiscale.index.sources import VectorFile, load_vector_files, run_vector_files, split_files

log = logging.getLogger(__name__)


def _faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _is_gpu_index(index: Any) -> bool:
    """A faiss-gpu index (``GpuIndex*``): GPU parameter space, and converted to CPU before serialising."""
    return "Gpu" in type(index).__name__


def _check_metric(metric: str) -> None:
    if metric not in ("l2", "ip"):
        raise IndexInputError(f"metric must be 'l2' or 'ip', got {metric!r}")


class FaissShard:
    """One shard of vectors (Ray actor body). ``ids`` are the global ids of its rows."""

    def __init__(self, shard: int, vectors: Any = None, ids: Any = None, storage: Any = None,
                 use_gpu: bool | None = None, index_uri: str | None = None,
                 files: "list[VectorFile] | None" = None) -> None:
        import ray

        self.shard = shard
        self.index = None
        self.storage = storage
        self.keys = None
        self.use_gpu = _faiss_gpu_available() if use_gpu is None else use_gpu
        self._gpu = None  # faiss.StandardGpuResources, created on first use
        if index_uri:  # a saved pool: index + ids from storage (no raw vectors)
            index, self.ids = _load_shard_index(index_uri, shard, storage)
            self.index = self._to_device(index)
            self.x = np.zeros((0, index.d), np.float32)
        elif files is not None:  # its own embedding files, read here (again after a restart)
            self.x, self.ids, self.keys = load_vector_files(files, storage)
        else:
            self.x = np.ascontiguousarray(ray.get(vectors) if isinstance(vectors, ray.ObjectRef) else vectors, np.float32)
            self.ids = np.asarray(ray.get(ids) if isinstance(ids, ray.ObjectRef) else ids, np.int64)

    # -- basics --------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        import os

        return {"shard": self.shard, "rows": int(self.x.shape[0]), "dim": int(self.x.shape[1]) if self.x.ndim == 2 else 0,
                "pid": os.getpid(), "gpu": self.use_gpu, "index": self.index is not None}

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed + self.shard)
        if self.x.shape[0] <= n:
            return self.x
        return self.x[np.sort(rng.choice(self.x.shape[0], n, replace=False))]

    # -- k-means map step ----------------------------------------------------------------------
    def assign_stats(self, centroids: np.ndarray, spherical: bool) -> tuple[np.ndarray, np.ndarray, float]:
        if self.x.shape[0] == 0:
            k, d = centroids.shape
            return np.zeros((k, d)), np.zeros(k, np.int64), 0.0
        return assign_stats(self.x, centroids, spherical, self._gpu_resources())

    def assign(self, centroids: np.ndarray, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
        """Global ids and nearest-centroid labels of the shard's rows."""
        from wsiscale.index.kmeans import nearest

        x = normalize_rows(self.x) if spherical else self.x
        labels, _ = nearest(x, centroids, spherical, self._gpu_resources())
        return self.ids, labels

    def write_assignments(self, centroids: np.ndarray, spherical: bool, out: str) -> int:
        """Write ``part-<shard>.parquet`` under ``out``: the shard's keys and their nearest ``cluster``."""
        import pyarrow as pa

        from wsiscale.io.uri import join_uri, write_bytes_atomic
        from wsiscale.runs.shards import parquet_bytes

        if self.keys is None:
            raise RuntimeError("write_assignments needs a pool loaded from an embedding run (FaissPool.from_embeddings)")
        _, labels = self.assign(centroids, spherical)
        table = self.keys.append_column("cluster", pa.array(labels.astype(np.int32)))
        write_bytes_atomic(join_uri(out, f"part-{self.shard:05d}.parquet"), parquet_bytes(table), self.storage)
        return int(table.num_rows)

    # -- GPU --------------------------------------------------------------------------------------
    def _gpu_resources(self) -> Any:
        """faiss GPU resources when this actor has a GPU and faiss-gpu is installed, else None."""
        if not self.use_gpu:
            return None
        if self._gpu is None:
            import faiss

            self._gpu = faiss.StandardGpuResources()  # Ray sets CUDA_VISIBLE_DEVICES: the actor's GPU is device 0
        return self._gpu

    def _to_device(self, index: Any) -> Any:
        """The index on this actor's GPU when it has one (index types faiss-gpu lacks, e.g. HNSW, stay on CPU)."""
        res = self._gpu_resources()
        if res is None:
            return index
        import faiss

        try:
            return faiss.index_cpu_to_gpu(res, 0, index)
        except (RuntimeError, AttributeError) as exc:
            log.warning("shard %d: %s stays on the CPU (%s)", self.shard, type(index).__name__, exc)
            return index

    def _cpu_index(self) -> Any:
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if _is_gpu_index(self.index) else self.index

    # -- ANN index -----------------------------------------------------------------------------
    def build_index(self, factory: str, metric: str, params: dict[str, Any]) -> int:
        import faiss

        d = self.x.shape[1]
        mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        index = self._to_device(faiss.index_factory(d, factory, mt))  # GPU: train and search there
        x = normalize_rows(self.x) if metric == "ip" else self.x
        if not index.is_trained:
            index.train(x)
        index.add(x)
        self.index = index
        self._apply_params(params)
        return int(index.ntotal)

    def _apply_params(self, params: dict[str, Any]) -> None:
        import faiss

        ps = faiss.GpuParameterSpace() if _is_gpu_index(self.index) else faiss.ParameterSpace()
        for key, value in (params or {}).items():
            ps.set_index_parameter(self.index, key, value)

    def set_params(self, params: dict[str, Any]) -> None:
        self._apply_params(params)

    def add(self, vectors: np.ndarray, ids: np.ndarray, metric: str) -> int:
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.x = np.concatenate([self.x, vectors]) if self.x.size else vectors
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        if self.index is not None:
            self.index.add(normalize_rows(vectors) if metric == "ip" else vectors)
        return int(self.x.shape[0])

    def search(self, queries: np.ndarray, k: int, metric: str, factory: str | None = None,
               params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None and factory is not None:  # restarted actor: rebuild from the reloaded shard
            self.build_index(factory, metric, params or {})
        if self.index is None:
            raise RuntimeError(f"shard {self.shard}: no index built (call build_index or load)")
        q = normalize_rows(queries) if metric == "ip" else np.ascontiguousarray(queries, np.float32)
        dist, local = self.index.search(q, min(k, max(1, self.index.ntotal)))
        gid = np.where(local >= 0, self.ids[np.clip(local, 0, None)], -1)
        return dist, gid

    def serialize(self) -> tuple[bytes, bytes]:
        import faiss

        buf = io.BytesIO()
        np.save(buf, self.ids)
        return faiss.serialize_index(self._cpu_index()).tobytes(), buf.getvalue()


def _load_shard_index(uri: str, shard: int, storage: Any):
    import faiss

    from wsiscale.io.uri import join_uri, read_bytes

    def read(name: str) -> bytes:
        return read_bytes(join_uri(uri, name), storage)

    index = faiss.deserialize_index(np.frombuffer(read(f"shard-{shard:04d}.faiss"), np.uint8))
    ids = np.load(io.BytesIO(read(f"shard-{shard:04d}.ids.npy")))
    return index, ids


def _creation_error(err: Exception) -> Exception | None:
    """The input error an actor's constructor raised (bad vectors, missing file), rebuilt from ``err``.

    Ray reports a failed actor constructor as ``ActorDiedError``, which keeps only
    the text of the original exception, so the error type and message are parsed back.
    """
    import re

    if not getattr(err, "actor_init_failed", False):
        return None
    found = list(re.finditer(r"(wsiscale\.index\.kmeans\.IndexInputError|FileNotFoundError): (.*)", str(err)))
    if not found:
        return None
    kind, message = found[-1].group(1), found[-1].group(2).strip()
    return IndexInputError(message) if kind.endswith("IndexInputError") else FileNotFoundError(message)


@dataclass
class SearchResult:
    """``distances`` and global ``ids`` ``[nq, k]`` (ids -1 where fewer than k vectors exist)."""

    distances: np.ndarray
    ids: np.ndarray


class FaissPool:
    """Driver-side handle of a pool of :class:`FaissShard` actors.

    Args:
        vectors: ``[N, D]`` float32 (split round-robin-free into contiguous shards);
            global ids are ``0..N-1`` unless ``ids`` is given.
        shards: number of actors.
        num_cpus, num_gpus: resources per actor.
        metric: ``l2`` or ``ip`` (cosine: vectors are L2-normalised).
        ready_timeout_s: how long to wait for every actor to start before raising.
    """

    def __init__(self, vectors: np.ndarray, shards: int = 2, ids: np.ndarray | None = None, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, metric: str = "l2", ready_timeout_s: float = 300.0) -> None:
        import ray

        x = check_vectors(vectors, "vectors")
        if shards < 1:
            raise IndexInputError(f"shards must be >= 1, got {shards}")
        if shards > x.shape[0]:
            raise IndexInputError(f"{shards} shards for {x.shape[0]} vectors: a shard would be empty; use fewer shards")
        _check_metric(metric)
        ids = np.arange(x.shape[0], dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        bounds = np.linspace(0, x.shape[0], shards + 1).astype(int)
        # the driver keeps these references alive: a restarted actor reloads its shard from them
        self._refs = [(ray.put(x[a:b]), ray.put(ids[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        self._start([dict(vectors=xr, ids=ir) for xr, ir in self._refs], x.shape[0], x.shape[1], metric,
                    num_cpus, num_gpus, ready_timeout_s)

    def _start(self, shard_kwargs: list[dict[str, Any]], n: int, dim: int, metric: str, num_cpus: float,
               num_gpus: float, ready_timeout_s: float, storage: Any = None) -> list[dict[str, Any]]:
        """Create one actor per entry of ``shard_kwargs`` and wait for all; returns their :meth:`FaissShard.info`."""
        import ray

        self.dim, self.metric, self.n = dim, metric, int(n)
        self.factory: str | None = None
        self.params: dict[str, Any] = {}
        self.storage = storage
        actor = ray.remote(FaissShard).options(max_restarts=-1, max_task_retries=-1, num_cpus=num_cpus,
                                               num_gpus=num_gpus or None)
        self.actors = [actor.remote(i, storage=storage, **kw) for i, kw in enumerate(shard_kwargs)]
        return self._wait_ready(num_cpus, num_gpus, ready_timeout_s)

    @classmethod
    def from_embeddings(cls, embeddings: str, shards: int = 2, storage: Any = None, num_cpus: float = 1.0,
                        num_gpus: float = 0.0, metric: str = "l2", ready_timeout_s: float = 600.0) -> "FaissPool":
        """A pool over every tile embedding of an embedding run; each actor reads its own Parquet files.

        Global ids follow the run's slide order (``slides.parquet``); the driver
        only lists files. A restarted actor reads its files again.
        """
        _check_metric(metric)
        files = run_vector_files(embeddings, storage)
        groups = split_files(files, shards)
        pool = cls.__new__(cls)
        pool._refs = []
        infos = pool._start([dict(files=g) for g in groups], sum(f.rows for f in files), 0, metric, num_cpus,
                            num_gpus, ready_timeout_s, storage)
        dims = {i["dim"] for i in infos}
        if len(dims) != 1:
            raise IndexInputError(f"{embeddings}: embeddings of different dimensions {sorted(dims)} in one run")
        pool.dim = dims.pop()
        return pool

    def _wait_ready(self, num_cpus: float, num_gpus: float, timeout_s: float) -> list[dict[str, Any]]:
        """Every actor's :meth:`FaissShard.info`; fails fast (instead of hanging) when one cannot start."""
        import ray

        def kill_all() -> None:  # do not leave failed or unschedulable actors in the cluster
            for a in self.actors:
                ray.kill(a, no_restart=True)

        refs = [a.info.remote() for a in self.actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        infos = []
        for ref in ready:
            try:
                infos.append(ray.get(ref))
            except ray.exceptions.RayActorError as err:  # the constructor raised (e.g. bad vectors in a file)
                kill_all()
                cause = _creation_error(err)
                if cause is not None:
                    raise cause from None
                raise
        if pending:
            kill_all()
            avail = ray.available_resources()
            raise RuntimeError(
                f"{len(pending)} of {len(refs)} FAISS shard actors did not start within {timeout_s:.0f} s: each needs "
                f"num_cpus={num_cpus}, num_gpus={num_gpus}; the cluster has {avail.get('CPU', 0):g} CPUs and "
                f"{avail.get('GPU', 0):g} GPUs free. Use fewer shards, smaller per-actor resources, or more nodes")
        return infos

    def _all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def info(self) -> list[dict[str, Any]]:
        return self._all("info")

    # -- k-means -------------------------------------------------------------------------------
    def init_centroids(self, k: int, method: str = "kmeans++", seed: int = 0, sample: int = 65536) -> np.ndarray:
        if k > self.n:
            raise IndexInputError(f"k={k} centroids but only {self.n} vectors: lower k or give more vectors")
        per = max(1, sample // len(self.actors))
        pool = np.concatenate(self._all("sample", per, seed))
        k_sample = min(pool.shape[0], max(k, per * len(self.actors)))
        pool = pool[:k_sample]
        return kmeanspp_init(pool, k, seed, sample) if method == "kmeans++" else random_init(pool, k, seed)

    def lloyd(self, init: np.ndarray, iters: int, spherical: bool = False, seed: int = 0) -> KMeansResult:
        """Distributed Lloyd iterations from ``init`` (the map step runs on every shard)."""
        init = check_vectors(init, "initial centroids", dim=self.dim)
        c = normalize_rows(init) if spherical else init
        history, repaired = [], 0
        for it in range(iters):
            sums, counts, inertia = self._reduce(c, spherical)
            history.append(inertia)
            c, r = update_centroids(sums, counts, c, spherical, seed + it)
            repaired += r
        _, counts, inertia = self._reduce(c, spherical)
        return KMeansResult(c, inertia, history, counts, repaired)

    def _reduce(self, c: np.ndarray, spherical: bool) -> tuple[np.ndarray, np.ndarray, float]:
        parts = self._all("assign_stats", c, spherical)
        return (sum(p[0] for p in parts), sum(p[1] for p in parts), float(sum(p[2] for p in parts)))

    def kmeans(self, k: int, iters: int = 20, restarts: int = 1, init: str = "kmeans++", spherical: bool = False,
               seed: int = 0) -> KMeansResult:
        """k-means with ``restarts`` initialisations; the result with the lowest inertia is kept."""
        if k < 1:
            raise IndexInputError(f"k must be >= 1, got {k}")
        best: KMeansResult | None = None
        for r in range(restarts):
            c0 = self.init_centroids(k, init, seed + 1000 * r)
            res = self.lloyd(c0, iters, spherical, seed + 1000 * r)
            log.info("k-means restart %d: inertia %.6g", r, res.inertia)
            if best is None or res.inertia < best.inertia:
                best = res
        assert best is not None
        return best

    def assign(self, centroids: np.ndarray, spherical: bool = False) -> np.ndarray:
        """Nearest-centroid label of every vector, in global-id order."""
        labels = np.empty(self.n, np.int64)
        for gid, lab in self._all("assign", check_vectors(centroids, "centroids", dim=self.dim), spherical):
            labels[gid] = lab
        return labels

    def write_assignments(self, centroids: np.ndarray, out: str, spherical: bool = False) -> int:
        """Each actor writes its rows' keys and nearest cluster to ``out/part-<shard>.parquet``; returns rows.

        Only for pools from :meth:`from_embeddings` (keys ``slide_id, x, y``).
        Parts left by an earlier run with more shards are removed.
        """
        from wsiscale.io.uri import normalize_uri
        from wsiscale.runs.shards import remove_parts_except

        c = check_vectors(centroids, "centroids", dim=self.dim)
        out = normalize_uri(out)
        rows = int(sum(self._all("write_assignments", c, spherical, out)))
        remove_parts_except(out, {f"part-{s:05d}.parquet" for s in range(len(self.actors))}, self.storage)
        return rows

    # -- ANN -----------------------------------------------------------------------------------
    def build_index(self, factory: str = "Flat", params: dict[str, Any] | None = None) -> int:
        """Build a faiss index per shard from ``factory``; ``params`` e.g. ``{"nprobe": 16}`` or ``{"efSearch": 64}``."""
        self.factory, self.params = factory, dict(params or {})
        return int(sum(self._all("build_index", factory, self.metric, self.params)))

    def set_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)
        self._all("set_params", self.params)

    def search(self, queries: np.ndarray, k: int = 10) -> SearchResult:
        """Top-``k`` over all shards: each shard searches, the driver merges."""
        q = check_vectors(queries, "queries", dim=self.dim)
        if k < 1:
            raise IndexInputError(f"k must be >= 1, got {k}")
        parts = self._all("search", q, k, self.metric, self.factory, self.params)
        dist = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        dist = np.where(ids < 0, -np.inf if self.metric == "ip" else np.inf, dist)
        order = np.argsort(-dist if self.metric == "ip" else dist, axis=1, kind="stable")[:, :k]
        d, i = np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)
        if i.shape[1] < k:
            pad = k - i.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.nan)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        return SearchResult(d, i)

    def add(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> int:
        """Append vectors (e.g. new slides) to the smallest shard; returns the pool size."""
        x = check_vectors(vectors, "new vectors", dim=self.dim)
        ids = np.arange(self.n, self.n + x.shape[0], dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        sizes = [i["rows"] for i in self.info()]
        target = int(np.argmin(sizes))
        import ray

        ray.get(self.actors[target].add.remote(x, ids, self.metric))
        self.n += x.shape[0]
        return self.n

    @classmethod
    def load(cls, uri: str, storage: Any = None, num_cpus: float = 1.0, num_gpus: float = 0.0) -> "FaissPool":
        """A search-only pool from :meth:`save` output (each actor reads its shard's index from storage)."""

        from wsiscale.io.uri import filesystem, join_uri

        fs, path = filesystem(join_uri(uri, "index.json"), storage)
        with fs.open(path, "rb") as fh:
            meta = json.loads(fh.read())
        pool = cls.__new__(cls)
        pool._refs = []
        pool._start([dict(index_uri=uri) for _ in range(meta["shards"])], meta["n"], meta["dim"], meta["metric"],
                    num_cpus, num_gpus, 300.0, storage)
        pool.factory, pool.params = meta["factory"], meta["params"]
        pool._all("set_params", pool.params)
        return pool

    def save(self, uri: str, storage: Any = None) -> None:
        """Write every shard's index and ids under ``uri`` (any storage), with a JSON manifest."""
        from wsiscale.io.uri import join_uri, write_bytes_atomic

        if self.factory is None:
            raise RuntimeError("no index built: call build_index first")
        for s, (index_bytes, ids_bytes) in enumerate(self._all("serialize")):
            write_bytes_atomic(join_uri(uri, f"shard-{s:04d}.faiss"), index_bytes, storage)
            write_bytes_atomic(join_uri(uri, f"shard-{s:04d}.ids.npy"), ids_bytes, storage)
        meta = {"shards": len(self.actors), "dim": self.dim, "metric": self.metric, "factory": self.factory,
                "params": self.params, "n": self.n}
        write_bytes_atomic(join_uri(uri, "index.json"), json.dumps(meta, indent=1).encode(), storage)
