"""FAISS actor pool benchmarks: k-means, sharded ANN search, per-slide prototypes and slide retrieval.

Every section compares against baselines run in the same process on the same
data (machines are noisy: ratios, not absolute times, are the figures).

``kmeans``: ``--n`` x ``--d`` float32 drawn around ``--true-k`` Gaussian
centres of random scale (clustered, like embeddings), ``--k`` centroids,
``--iters`` Lloyd iterations for every method; wall time and final inertia
(recomputed the same way for all):

* pool: :class:`wsiscale.index.pool.FaissPool` with ``--shards`` actors,
  greedy k-means++ init on a sample (time includes the init, excludes loading
  the shards);
* faiss: ``faiss.Kmeans`` in this process (all points, its random init), and
  again from the pool's initial centroids;
* scikit-learn ``KMeans`` (greedy k-means++ on all points, one init) and
  ``MiniBatchKMeans``.

``ann``: ``--ann-n`` x ``--d`` vectors, ``--queries`` held-out queries from the
same distribution. Exact top-10 by single-process ``IndexFlatL2`` (brute
force, all cores) against the pool's sharded ``IVF<nlist>,Flat`` at several
``nprobe``: recall@10 and queries/s relative to brute force.

``prototypes``: ``--slides`` synthetic slides x ``--regions`` regions x
``--proto-d`` (each slide mixes a few of 64 shared tissue patterns, like a
class), ``m`` prototypes per slide with :func:`batched_kmeans` (one process,
and fanned out over Ray tasks), then slide-neighbour search for every slide
on Ray actors (summary-vector candidates + exact re-ranking), and recall@10
against exact matching over the whole collection for ``--exact-queries``
slides, at several candidate counts.

    python benchmarks/faiss_pool.py kmeans [--n 1000000] [--k 1024] [--iters 20]
    python benchmarks/faiss_pool.py ann [--ann-n 1000000]
    python benchmarks/faiss_pool.py prototypes [--slides 100000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def data(n: int, d: int, true_k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(true_k, d))
    scale = rng.uniform(0.5, 2.0, size=true_k)
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, 200_000):  # chunked: bounded float64 temporaries
        hi = min(n, lo + 200_000)
        lab = rng.integers(0, true_k, hi - lo)
        out[lo:hi] = centres[lab] + rng.normal(size=(hi - lo, d)) * scale[lab, None]
    return out


def inertia(x: np.ndarray, c: np.ndarray) -> float:
    from wsiscale.index.kmeans import assign_stats

    return assign_stats(x, np.ascontiguousarray(c, np.float32))[2]


def _report(rows: dict[str, dict], ref_name: str, best_key: str = "inertia") -> None:
    best = min(r[best_key] for r in rows.values())
    ref = rows[ref_name]["seconds"]
    for name, r in rows.items():
        extra = f"  (init {r['init_s']:.2f} s)" if "init_s" in r else ""
        print(f"{name:34s} {r['seconds']:8.2f} s  ({r['seconds'] / ref:5.2f}x faiss)  inertia {r['inertia']:.6g} "
              f"({r['inertia'] / best:.4f}x best){extra}", flush=True)


def bench_kmeans(args: argparse.Namespace) -> dict:
    import faiss
    import ray
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from wsiscale.index.pool import FaissPool

    x = data(args.n, args.d, args.true_k)
    print(f"k-means: {args.n:,} x {args.d} float32 -> {args.k} centroids, {args.iters} Lloyd iterations, "
          f"{args.shards} pool actors", flush=True)
    rows: dict[str, dict] = {}
    ray.init(num_cpus=args.shards, include_dashboard=False, log_to_driver=False)
    try:
        pool = FaissPool(x, shards=args.shards)
        t0 = time.perf_counter()
        init = pool.init_centroids(args.k, "kmeans++", seed=0)
        t_init = time.perf_counter() - t0
        res = pool.lloyd(init, args.iters)
        rows["pool (greedy k-means++)"] = {"seconds": time.perf_counter() - t0, "init_s": t_init,
                                           "inertia": inertia(x, res.centroids)}
        del pool
    finally:
        ray.shutdown()

    def run_faiss(init_c):
        km = faiss.Kmeans(args.d, args.k, niter=args.iters, seed=0, max_points_per_centroid=10**9)
        t = time.perf_counter()
        km.train(x, init_centroids=init_c) if init_c is not None else km.train(x)
        return time.perf_counter() - t, km.centroids

    t, c = run_faiss(None)
    rows["faiss (random init)"] = {"seconds": t, "inertia": inertia(x, c)}
    t, c = run_faiss(init.copy())
    rows["faiss (pool's k-means++ init)"] = {"seconds": t, "inertia": inertia(x, c)}
    if not args.no_sklearn:
        t0 = time.perf_counter()
        sk = KMeans(args.k, init="k-means++", n_init=1, max_iter=args.iters, tol=0, random_state=0).fit(x)
        rows["scikit-learn KMeans (k-means++)"] = {"seconds": time.perf_counter() - t0,
                                                   "inertia": inertia(x, sk.cluster_centers_)}
        t0 = time.perf_counter()
        mb = MiniBatchKMeans(args.k, batch_size=4096, n_init=1, max_iter=args.iters, random_state=0).fit(x)
        rows["scikit-learn MiniBatchKMeans"] = {"seconds": time.perf_counter() - t0,
                                                "inertia": inertia(x, mb.cluster_centers_)}
    _report(rows, "faiss (random init)")
    return rows


def bench_ann(args: argparse.Namespace) -> dict:
    import faiss
    import ray

    from wsiscale.index.pool import FaissPool

    allx = data(args.ann_n + args.queries, args.d, args.ann_true_k, seed=1)
    x, q = allx[: args.ann_n], allx[args.ann_n :]
    print(f"ANN: {args.ann_n:,} x {args.d} float32, {args.queries} queries, top-10, {args.shards} pool actors",
          flush=True)
    flat = faiss.IndexFlatL2(args.d)
    flat.add(x)
    t0 = time.perf_counter()
    _, gt = flat.search(q, 10)
    brute_qps = len(q) / (time.perf_counter() - t0)
    del flat
    print(f"brute force (IndexFlatL2, {faiss.omp_get_max_threads()} threads): {brute_qps:,.0f} queries/s", flush=True)
    rows = {"brute_force_qps": brute_qps, "ivf": []}
    ray.init(num_cpus=args.shards, include_dashboard=False, log_to_driver=False)
    try:
        pool = FaissPool(x, shards=args.shards)
        t0 = time.perf_counter()
        pool.build_index(f"IVF{args.nlist},Flat")
        rows["build_s"] = time.perf_counter() - t0
        print(f"pool IVF{args.nlist},Flat build: {rows['build_s']:.1f} s", flush=True)
        pool.set_params({"nprobe": 8})
        pool.search(q[:50], k=10)  # warm-up
        for nprobe in args.nprobe:
            pool.set_params({"nprobe": nprobe})
            t0 = time.perf_counter()
            got = pool.search(q, k=10)
            qps = len(q) / (time.perf_counter() - t0)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.ids, gt)])
            rows["ivf"].append({"nprobe": nprobe, "recall@10": float(recall), "qps": qps, "speedup": qps / brute_qps})
            print(f"  nprobe {nprobe:4d}: recall@10 {recall:.4f}  {qps:10,.0f} queries/s  "
                  f"({qps / brute_qps:5.1f}x brute force)", flush=True)
    finally:
        ray.shutdown()
    return rows


def slide_regions(start: int, count: int, regions: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``[count, regions, d]`` synthetic region embeddings and each slide's class (deterministic per slide)."""
    base = np.random.default_rng(seed)
    patterns = base.normal(size=(64, d)).astype(np.float32)  # shared tissue patterns
    mixtures = base.dirichlet(np.full(64, 0.1), size=16)  # 16 slide classes, a few patterns each
    out = np.empty((count, regions, d), np.float32)
    cls = np.empty(count, np.int64)
    for i in range(count):
        rng = np.random.default_rng((seed, start + i))
        c = int(rng.integers(16))
        cls[i] = c
        pat = rng.choice(64, size=regions, p=mixtures[c])
        out[i] = patterns[pat] + 0.7 * rng.normal(size=(regions, d)).astype(np.float32)
    return out, cls


def _prototype_batch(start: int, count: int, regions: int, d: int, m: int) -> np.ndarray:
    from wsiscale.index.prototypes import batched_kmeans

    x, _ = slide_regions(start, count, regions, d)
    return batched_kmeans(list(x), m, iters=20, seed=start)[0]


def bench_prototypes(args: argparse.Namespace) -> dict:
    import ray

    from wsiscale.index.prototypes import SlideRetriever, all_neighbours, match_scores, normalize_rows

    s, r, d, m, b = args.slides, args.regions, args.proto_d, args.m, args.batch_slides
    print(f"prototypes: {s:,} slides x {r} regions x {d}-d -> m={m} per slide", flush=True)
    t0 = time.perf_counter()
    gen = [slide_regions(lo, min(b, s - lo), r, d) for lo in range(0, min(s, 4 * b), b)]
    gen_s = (time.perf_counter() - t0) / sum(len(g[0]) for g in gen)
    from wsiscale.index.prototypes import batched_kmeans

    t0 = time.perf_counter()
    for g, _ in gen:
        batched_kmeans(list(g), m, iters=20, seed=0)
    one = (time.perf_counter() - t0) / sum(len(g[0]) for g in gen)
    print(f"  one process: {1 / one:,.0f} slides/s (k-means only; generating the regions: {1 / gen_s:,.0f} slides/s)",
          flush=True)
    ray.init(num_cpus=args.shards, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_prototype_batch)
        t0 = time.perf_counter()
        refs = [task.remote(lo, min(b, s - lo), r, d, m) for lo in range(0, s, b)]
        protos = np.concatenate(ray.get(refs))
        dist_s = time.perf_counter() - t0
        print(f"  Ray tasks ({args.shards} CPUs, generation included): {s / dist_s:,.0f} slides/s, {dist_s:.1f} s total",
              flush=True)
        t0 = time.perf_counter()
        idx, _ = all_neighbours(protos, k=10, candidates=args.candidates, workers=args.shards)
        all_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    print(f"  slide-neighbour search for all {s:,} slides (top-10, {args.candidates} candidates re-ranked, "
          f"{args.shards} Ray actors): {all_s:.1f} s ({s / all_s:,.0f} slides/s)", flush=True)
    _, cls = slide_regions(0, s, 1, 4)  # classes only (same per-slide rng stream start)
    rng = np.random.default_rng(0)
    qs = rng.choice(s, args.exact_queries, replace=False)
    pn = normalize_rows(protos.reshape(-1, d)).reshape(protos.shape)
    exact = {}
    t0 = time.perf_counter()
    for qi in qs:
        sc = match_scores(pn[qi][None], pn[None])[0]
        sc[qi] = -np.inf
        exact[int(qi)] = set(np.argpartition(-sc, 10)[:10].tolist())
    exact_s = (time.perf_counter() - t0) / len(qs)
    rec_all = float(np.mean([len(exact[int(q)] & set(idx[q].tolist())) / 10 for q in qs]))
    same = float(np.mean([np.mean(cls[idx[q]] == cls[q]) for q in qs]))
    print(f"  exact matching against all slides: {exact_s * 1e3:.0f} ms/query; recall@10 of the all-slides search "
          f"{rec_all:.4f}; same-class neighbours {same:.3f} (chance 1/16)", flush=True)
    sweep = []
    for cand in args.candidate_sweep:
        retriever = SlideRetriever(protos, candidates=cand)
        t0 = time.perf_counter()
        got, _ = retriever.query_batch(protos[qs], k=10, exclude=qs)
        per_q = (time.perf_counter() - t0) / len(qs)
        rec = float(np.mean([len(exact[int(q)] & set(g.tolist())) / 10 for q, g in zip(qs, got)]))
        sweep.append({"candidates": cand, "recall@10": rec, "ms_per_query": per_q * 1e3})
        print(f"    {cand:5d} candidates: recall@10 {rec:.4f}, {per_q * 1e3:.2f} ms/query "
              f"({exact_s / per_q:,.0f}x faster than exact)", flush=True)
    return {"slides_per_s_one_process": 1 / one, "slides_per_s_ray": s / dist_s, "prototype_s": dist_s,
            "neighbour_search_s": all_s, "recall@10": rec_all, "exact_ms_per_query": exact_s * 1e3,
            "same_class": same, "sweep": sweep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", nargs="*", choices=["kmeans", "ann", "prototypes"], default=None)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--true-k", type=int, default=300)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--ann-n", type=int, default=1_000_000)
    ap.add_argument("--ann-true-k", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--slides", type=int, default=100_000)
    ap.add_argument("--regions", type=int, default=50)
    ap.add_argument("--proto-d", type=int, default=256)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--batch-slides", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--candidate-sweep", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--exact-queries", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sections = args.section or ["kmeans", "ann", "prototypes"]
    out = {}
    for name in sections:
        out[name] = {"kmeans": bench_kmeans, "ann": bench_ann, "prototypes": bench_prototypes}[name](args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
