"""k-means building blocks shared by the single-process path and the FAISS actor pool.

Lloyd's algorithm is split into a map step that any shard can run on its own
vectors - :func:`assign_stats` returns per-centroid sums, counts and the
shard's inertia - and a reduce step on the driver - :func:`update_centroids`
turns the summed statistics into new centroids, repairing empty clusters.
Running the map step on one shard or on many and summing gives the same
centroids, which is what makes the distributed k-means of
:mod:`wsiscale.index.pool` equal to the single-process one (and to
``faiss.Kmeans`` given the same initial centroids).

Inertia is the sum of squared distances to the nearest centroid; with
``spherical=True`` vectors and centroids are L2-normalised and assignment
maximises the inner product (cosine), as in faiss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class IndexInputError(ValueError):
    """Vectors or parameters the index/k-means code cannot use (the message says which and how to fix)."""


def check_vectors(x: np.ndarray, name: str = "vectors", dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``[N, D]`` array; raises :class:`IndexInputError` on bad input."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise IndexInputError(f"{name} must be a 2-D [N, D] array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise IndexInputError(f"{name} have dimension {x.shape[1]}, the index/centroids have {dim}: "
                              "embed everything with the same encoder")
    if x.shape[0] < min_rows:
        raise IndexInputError(f"{name}: {x.shape[0]} rows, at least {min_rows} needed")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise IndexInputError(f"{name}: {rows.size} rows contain NaN or inf (first: row {rows[0]}); "
                              "drop or recompute them (an fp16 overflow in the encoder is the usual cause)")
    return x


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def kmeanspp_init(x: np.ndarray, k: int, seed: int = 0, sample: int = 65536,
                  local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding on a random sample of at most ``sample`` rows: ``[k, D]`` float32.

    k-means++ (Arthur & Vassilvitskii 2007) draws each new centre with
    probability proportional to the squared distance to the nearest chosen
    centre; the greedy variant (as in scikit-learn) draws ``local_trials``
    candidates (default ``2 + ln k``) and keeps the one that lowers the
    potential most, which gives clearly lower inertia than the single draw.
    Distances are GEMMs over the sample (``[trials, D] @ [D, n]`` per step).
    """
    rng = np.random.default_rng(seed)
    if x.shape[0] > sample:
        x = x[np.sort(rng.choice(x.shape[0], sample, replace=False))]
    n = x.shape[0]
    if k > n:
        raise IndexInputError(f"k={k} centroids but only {n} vectors: lower k or give more vectors")
    x = np.ascontiguousarray(x, np.float32)
    trials = max(1, 2 + int(np.log(k)) if local_trials is None else int(local_trials))
    sq = np.einsum("nd,nd->n", x, x)

    def dist2(rows: np.ndarray) -> np.ndarray:  # [len(rows), n] squared distances to the sample
        d = sq[rows, None] + sq[None, :] - 2.0 * (x[rows] @ x.T)
        return np.maximum(d, 0.0, out=d)

    chosen = np.empty(k, np.int64)
    chosen[0] = rng.integers(n)
    d2 = dist2(chosen[:1])[0].astype(np.float64)
    for i in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: any unchosen row
            rest = np.setdiff1d(np.arange(n), chosen[:i])
            chosen[i:] = rest[: k - i]
            break
        cand = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total), n - 1)
        new = np.minimum(d2[None, :], dist2(cand))
        best = int(np.argmin(new.sum(1)))
        chosen[i] = cand[best]
        d2 = new[best]
    return x[chosen].copy()


def random_init(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """``k`` distinct random rows of ``x`` (faiss's default initialisation)."""
    if k > x.shape[0]:
        raise IndexInputError(f"k={k} centroids but only {x.shape[0]} vectors: lower k or give more vectors")
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(x[np.sort(rng.choice(x.shape[0], k, replace=False))], dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray, spherical: bool = False,
            gpu_resources: object | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid of every row and its squared L2 distance (or inner product if spherical).

    ``gpu_resources``: a ``faiss.StandardGpuResources`` to search on the GPU (faiss-gpu).
    """
    import faiss

    d = centroids.shape[1]
    if gpu_resources is not None:
        index = faiss.GpuIndexFlatIP(gpu_resources, d) if spherical else faiss.GpuIndexFlatL2(gpu_resources, d)
    else:
        index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0], dist[:, 0]


def assign_stats(x: np.ndarray, centroids: np.ndarray, spherical: bool = False,
                 gpu_resources: object | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Map step: ``(sums [k, D] float64, counts [k] int64, inertia)`` of ``x`` assigned to ``centroids``.

    Inertia is the sum of squared L2 distances (spherical: of ``2 - 2 cos``, the
    squared distance between unit vectors).
    """
    from scipy import sparse

    k = centroids.shape[0]
    if spherical:
        x = normalize_rows(x)
    idx, dist = nearest(x, centroids, spherical, gpu_resources)
    # per-centroid sums as a sparse one-hot [k, N] @ [N, D] product (float32 accumulation, as faiss does;
    # shards' partial sums are added in float64)
    onehot = sparse.csr_matrix((np.ones(x.shape[0], np.float32), (idx, np.arange(x.shape[0]))), shape=(k, x.shape[0]))
    sums = np.asarray(onehot @ x, dtype=np.float64)
    counts = np.bincount(idx, minlength=k).astype(np.int64)
    inertia = float((2.0 - 2.0 * dist.astype(np.float64)).sum()) if spherical else float(dist.astype(np.float64).sum())
    return sums, counts, inertia


def update_centroids(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray, spherical: bool = False,
                     seed: int = 0) -> tuple[np.ndarray, int]:
    """Reduce step: means of the summed statistics; empty clusters are repaired by splitting large ones.

    Repair (as faiss does): an empty cluster takes a copy of a cluster chosen with
    probability proportional to its size, and the two are pushed apart by a
    relative ``1/1024`` perturbation. Returns ``(centroids, number repaired)``.
    """
    k = sums.shape[0]
    out = previous.astype(np.float64).copy()
    nz = counts > 0
    out[nz] = sums[nz] / counts[nz, None]
    counts = counts.astype(np.float64).copy()
    empty = np.flatnonzero(~nz)
    rng = np.random.default_rng(seed)
    eps = 1.0 / 1024
    for e in empty:
        j = rng.choice(k, p=counts / counts.sum())
        out[e] = out[j]
        sign = np.where(np.arange(out.shape[1]) % 2 == 0, 1.0, -1.0)
        out[e] = out[e] * (1 + sign * eps)
        out[j] = out[j] * (1 - sign * eps)
        counts[e] = counts[j] / 2
        counts[j] -= counts[e]
    if spherical:
        out = normalize_rows(out)
    return out.astype(np.float32), int(empty.size)


@dataclass
class KMeansResult:
    """Centroids ``[k, D]``, final inertia, inertia per iteration, cluster sizes, repairs made."""

    centroids: np.ndarray
    inertia: float
    history: list[float]
    counts: np.ndarray
    repaired: int = 0


def lloyd(x: np.ndarray, init: np.ndarray, iters: int, spherical: bool = False, seed: int = 0) -> KMeansResult:
    """Single-process Lloyd iterations from ``init`` (the reference the pool must match)."""
    c = normalize_rows(init) if spherical else np.ascontiguousarray(init, np.float32)
    history, repaired = [], 0
    for it in range(iters):
        sums, counts, inertia = assign_stats(x, c, spherical)
        history.append(inertia)
        c, r = update_centroids(sums, counts, c, spherical, seed + it)
        repaired += r
    _, counts, inertia = assign_stats(x, c, spherical)
    return KMeansResult(c, inertia, history, counts, repaired)
