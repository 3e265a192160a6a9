"""Per-slide prototypes (SLPD) and slide retrieval by optimal prototype-set matching.

SLPD (Yu et al., "SLPD: Slide-level Prototypical Distillation for WSIs",
MICCAI 2023) summarises each slide by ``M`` prototypes: the k-means
centroids of its region embeddings. Two slides are compared by the best
one-to-one matching of their prototype sets (Hungarian algorithm on cosine
similarities); the slide score is the mean matched similarity.

* :func:`batched_kmeans` runs many small k-means at once (one per slide),
  vectorised over slides: ``[S, N_max, D]`` padded with a mask, Lloyd
  iterations as batched matrix products - hundreds of thousands of slides
  go through in batches, not a Python loop of faiss calls.
* :func:`match_prototypes` is the exact set similarity; :class:`SlideRetriever`
  finds candidates with a faiss index over slide summary vectors (mean of the
  normalised prototypes) and re-ranks them exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from wsiscale.index.kmeans import IndexInputError, check_vectors, normalize_rows


def batched_kmeans(groups: list[np.ndarray], m: int, iters: int = 20, seed: int = 0, spherical: bool = True,
                   seeds: list[int] | None = None, restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``m`` centroids for each group of vectors, all groups at once.

    Args:
        groups: ``S`` arrays ``[n_s, D]`` (e.g. the region embeddings of each slide).
        m: prototypes per group (4 for NSCLC, 2 for BRCA in SLPD).
        spherical: cosine k-means on L2-normalised vectors (SLPD's choice).
        seeds: one seed per group: each group's result then depends only on its own
            vectors and seed, not on which other groups share the batch (reruns and
            differently batched runs agree); default: draws from ``seed``.
        restarts: k-means++ initialisations per group; each group keeps its own best
            (lowest inertia) run, as SLPD's "several restarts".

    Returns:
        ``(prototypes [S, m, D] float32, counts [S, m] int64)``; a group with fewer
        than ``m`` vectors repeats its vectors (counts then hold how many distinct
        members each prototype has; repeated slots have count 0).
    """
    if not groups:
        raise IndexInputError("no groups to cluster")
    if seeds is not None and len(seeds) != len(groups):
        raise IndexInputError(f"{len(seeds)} seeds for {len(groups)} groups")
    dim = groups[0].shape[1] if np.ndim(groups[0]) == 2 else -1
    xs = [check_vectors(g, f"group {i}", dim=dim) for i, g in enumerate(groups)]
    if spherical:
        xs = [normalize_rows(x) for x in xs]
    s, nmax = len(xs), max(x.shape[0] for x in xs)
    x = np.zeros((s, nmax, dim), np.float32)
    mask = np.zeros((s, nmax), bool)
    for i, g in enumerate(xs):
        x[i, : g.shape[0]] = g
        mask[i, : g.shape[0]] = True
    best_c, best_counts, best_inertia = None, None, None
    for r in range(max(1, restarts)):
        if seeds is not None:
            u = np.stack([np.random.default_rng((int(sd), r)).random(m) for sd in seeds])  # [S, m]
        else:
            u = np.random.default_rng((seed, r)).random((s, m))
        c, counts, inertia = _batched_lloyd(x, mask, u, m, iters, spherical)
        if best_c is None:
            best_c, best_counts, best_inertia = c, counts, inertia
        else:
            better = inertia < best_inertia
            best_c[better], best_counts[better], best_inertia[better] = c[better], counts[better], inertia[better]
    return best_c.astype(np.float32), best_counts.astype(np.int64)


def _batched_lloyd(x: np.ndarray, mask: np.ndarray, u: np.ndarray, m: int, iters: int,
                   spherical: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means++ seeding from uniforms ``u [S, m]`` + Lloyd on padded groups ``x [S, N, D]``.

    Returns ``(centroids [S, m, D], counts [S, m], inertia [S])``.
    """
    s, _, dim = x.shape
    n = mask.sum(1)
    xx = np.einsum("snd,snd->sn", x, x)

    def sqdist(c: np.ndarray) -> np.ndarray:  # [S, N, m]
        d = xx[..., None] - 2 * np.einsum("snd,smd->snm", x, c) + np.einsum("smd,smd->sm", c, c)[:, None, :]
        return np.maximum(d, 0.0)

    rows = np.arange(s)
    c = np.empty((s, m, dim), np.float32)
    c[:, 0] = x[rows, np.minimum((u[:, 0] * n).astype(int), n - 1)]
    d2 = sqdist(c[:, :1])[..., 0] * mask
    for j in range(1, m):
        p = d2 / np.maximum(d2.sum(1, keepdims=True), 1e-30)
        pick = np.minimum((np.cumsum(p, 1) < u[:, j : j + 1]).sum(1), n - 1)
        pick = np.where(d2.sum(1) > 0, pick, (j % np.maximum(n, 1)))  # fewer distinct points than m: repeat
        c[:, j] = x[rows, pick]
        d2 = np.minimum(d2, sqdist(c[:, j : j + 1])[..., 0] * mask)

    def assign(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if spherical:
            score = np.einsum("snd,smd->snm", x, c)
            a = score.argmax(-1)
            return a, (2.0 - 2.0 * np.take_along_axis(score, a[..., None], -1)[..., 0])
        dist = sqdist(c)
        a = dist.argmin(-1)
        return a, np.take_along_axis(dist, a[..., None], -1)[..., 0]

    for _ in range(iters):
        a, _ = assign(c)
        onehot = (a[..., None] == np.arange(m)) & mask[..., None]  # [S, N, m]
        counts = onehot.sum(1)
        sums = np.einsum("snm,snd->smd", onehot.astype(np.float32), x)
        new = np.where(counts[..., None] > 0, sums / np.maximum(counts[..., None], 1), c)
        if spherical:
            new = normalize_rows(new.reshape(-1, dim)).reshape(s, m, dim)
        done = np.allclose(new, c, atol=1e-7)
        c = new.astype(np.float32)
        if done:
            break
    a, dist = assign(c)
    counts = ((a[..., None] == np.arange(m)) & mask[..., None]).sum(1)
    return c, counts, (dist * mask).sum(1)


def match_prototypes(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """Best one-to-one matching of two prototype sets by cosine similarity (Hungarian).

    Args:
        a, b: ``[m, D]`` prototypes of two slides (same ``m``).

    Returns:
        ``(score, perm)``: mean cosine similarity of the matched pairs, and ``perm``
        with ``a[i]`` matched to ``b[perm[i]]``.
    """
    from scipy.optimize import linear_sum_assignment

    if a.shape != b.shape:
        raise IndexInputError(f"prototype sets differ in shape: {a.shape} vs {b.shape}")
    sim = normalize_rows(a) @ normalize_rows(b).T
    rows, cols = linear_sum_assignment(-sim)
    perm = np.empty(a.shape[0], np.int64)
    perm[rows] = cols
    return float(sim[rows, cols].mean()), perm


def match_scores(queries: np.ndarray, candidates: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Optimal one-to-one matching scores of many query slides against their candidate slides, vectorised.

    Args:
        queries: ``[Q, m, D]`` L2-normalised prototypes.
        candidates: ``[Q, C, m, D]`` L2-normalised prototypes of each query's candidates.

    Returns:
        ``[Q, C]`` mean cosine similarity of the best one-to-one matching (what
        :func:`match_prototypes` gives pair by pair). For ``m <= 5`` every
        permutation is scored at once (exact, no Python loop over pairs);
        larger ``m`` falls back to the Hungarian algorithm per pair.
    """
    q, c, m, _ = candidates.shape
    sim = np.einsum("qid,qcjd->qcij", queries, candidates, optimize=True)  # [Q, C, m, m]
    if m > 5:
        from scipy.optimize import linear_sum_assignment

        out = np.empty((q, c), np.float32)
        for a in range(q):
            for b in range(c):
                r, col = linear_sum_assignment(-sim[a, b])
                out[a, b] = sim[a, b][r, col].mean()
        return out
    perms = np.array(list(itertools.permutations(range(m))))  # [P, m]
    out = np.empty((q, c), np.float32)
    for lo in range(0, q, chunk):
        s = sim[lo : lo + chunk]
        out[lo : lo + chunk] = s[:, :, np.arange(m)[None, :], perms].mean(-1).max(-1)
    return out


def summary_vectors(prototypes: np.ndarray) -> np.ndarray:
    """``[S, m, D]`` -> ``[S, D]``: mean of the normalised prototypes, normalised (candidate search key)."""
    s, m, d = prototypes.shape
    return normalize_rows(normalize_rows(prototypes.reshape(-1, d)).reshape(s, m, d).mean(1))


@dataclass
class Retrieved:
    """Top-k slides for one query: indices into the collection and matched-prototype scores (descending)."""

    indices: np.ndarray
    scores: np.ndarray


class SlideRetriever:
    """Inter-slide retrieval: faiss candidates over summary vectors, exact prototype-set re-ranking.

    Args:
        prototypes: ``[S, m, D]`` per-slide prototypes of the collection.
        candidates: how many candidates the summary index returns for re-ranking.
        index: faiss factory string for the summary index (``Flat`` is exact; use
            ``IVF...`` / ``HNSW32`` beyond ~10^6 slides).
        params: faiss search parameters, e.g. ``{"nprobe": 32}``.
    """

    def __init__(self, prototypes: np.ndarray, candidates: int = 1000, index: str = "Flat",
                 params: dict | None = None) -> None:
        import faiss

        if prototypes.ndim != 3:
            raise IndexInputError(f"prototypes must be [slides, m, D], got shape {prototypes.shape}")
        self.prototypes = normalize_rows(check_vectors(prototypes.reshape(-1, prototypes.shape[-1]), "prototypes")
                                         ).reshape(prototypes.shape)
        self.summary = summary_vectors(self.prototypes)
        self.candidates = candidates
        self.index = faiss.index_factory(self.summary.shape[1], index, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            self.index.train(self.summary)
        self.index.add(self.summary)
        ps = faiss.ParameterSpace()
        for key, value in (params or {}).items():
            ps.set_index_parameter(self.index, key, value)

    def query_batch(self, prototypes: np.ndarray, k: int = 10, exclude: np.ndarray | None = None,
                    chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` slides for each of ``Q`` query slides' ``[Q, m, D]`` prototypes.

        ``exclude``: ``[Q]`` collection index to leave out per query (the query
        itself), or ``None``. Returns ``(indices [Q, k], scores [Q, k])``, best
        first; ``-1`` / ``-inf`` pad when the collection has fewer slides.
        """
        qp = check_vectors(prototypes.reshape(-1, prototypes.shape[-1]), "query prototypes",
                           dim=self.prototypes.shape[2])
        if prototypes.ndim != 3 or prototypes.shape[1] != self.prototypes.shape[1]:
            raise IndexInputError(f"query prototypes have shape {prototypes.shape}; the collection has "
                                  f"m={self.prototypes.shape[1]} prototypes per slide: build both with the same m")
        qp = normalize_rows(qp).reshape(prototypes.shape)
        c = min(self.index.ntotal, max(self.candidates, k + 1))
        _, cand = self.index.search(summary_vectors(qp), c)  # [Q, c]
        valid = cand >= 0
        if exclude is not None:
            valid &= cand != np.asarray(exclude, np.int64)[:, None]
        scores = np.full(cand.shape, -np.inf, np.float32)
        for lo in range(0, qp.shape[0], chunk):  # bounded memory: [chunk, c, m, D] gathered at a time
            sl = slice(lo, lo + chunk)
            scores[sl] = match_scores(qp[sl], self.prototypes[np.where(valid[sl], cand[sl], 0)])
        scores = np.where(valid, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        idx = np.take_along_axis(np.where(valid, cand, -1), order, 1)
        top = np.take_along_axis(scores, order, 1).astype(np.float32)
        if idx.shape[1] < k:
            idx = np.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
            top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-np.inf)
        return idx, top

    def query(self, prototypes: np.ndarray, k: int = 10, exclude: int | None = None) -> Retrieved:
        """Top-``k`` slides for a query slide's ``[m, D]`` prototypes (``exclude``: its own index)."""
        if np.ndim(prototypes) != 2:
            raise IndexInputError(f"query prototypes must be [m, D], got shape {np.shape(prototypes)}")
        idx, top = self.query_batch(np.asarray(prototypes)[None], k, None if exclude is None else np.array([exclude]))
        keep = idx[0] >= 0
        return Retrieved(idx[0][keep], top[0][keep])


class _RetrieverShard:
    """Ray actor body: a :class:`SlideRetriever` over the whole collection, answering ranges of its slides."""

    def __init__(self, prototypes: np.ndarray, candidates: int, index: str, params: dict | None) -> None:
        self.retriever = SlideRetriever(prototypes, candidates=candidates, index=index, params=params)

    def neighbours(self, lo: int, hi: int, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        idx, scores = self.retriever.query_batch(self.retriever.prototypes[lo:hi], k=k, exclude=np.arange(lo, hi))
        return lo, idx, scores


def all_neighbours(prototypes: np.ndarray, k: int = 10, candidates: int = 1000, index: str = "Flat",
                   params: dict | None = None, chunk: int = 2048, workers: int | None = None,
                   num_cpus: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other slides of every slide of a collection: ``(indices [S, k], scores [S, k])``.

    With Ray running, ``workers`` actors (default: one per free CPU) each build
    the retriever once and answer chunks of ``chunk`` slides (an actor that dies
    is restarted and its chunk retried); without Ray, one process does it all.
    This is the slide-neighbour step of SLPD's clustering step.
    """
    import ray

    s = prototypes.shape[0]
    starts = list(range(0, s, chunk))
    if workers is None and ray.is_initialized():
        workers = int(max(1, min(len(starts), ray.available_resources().get("CPU", 1) // max(num_cpus, 1e-3))))
    if not ray.is_initialized() or (workers or 1) <= 1 or len(starts) == 1:
        local = _RetrieverShard(prototypes, candidates, index, params)
        parts = [local.neighbours(lo, min(lo + chunk, s), k) for lo in starts]
    else:
        from ray.util import ActorPool

        ref = ray.put(np.ascontiguousarray(prototypes, np.float32))
        actor = ray.remote(_RetrieverShard).options(num_cpus=num_cpus, max_restarts=-1, max_task_retries=-1)
        pool = ActorPool([actor.remote(ref, candidates, index, params) for _ in range(workers)])
        parts = list(pool.map_unordered(lambda a, lo: a.neighbours.remote(lo, min(lo + chunk, s), k), starts))
    idx = np.empty((s, k), np.int64)
    scores = np.empty((s, k), np.float32)
    for lo, i, sc in parts:
        idx[lo : lo + len(i)], scores[lo : lo + len(i)] = i, sc
    return idx, scores
