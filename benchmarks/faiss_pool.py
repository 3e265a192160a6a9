"""k-means on the FAISS actor pool against single-process faiss and scikit-learn, same data, same run.

Data: ``--n`` x ``--d`` float32 drawn around ``--true-k`` Gaussian centres of
random scale (clustered, like embeddings). Every method gets ``--iters``
Lloyd iterations and reports wall time and final inertia (sum of squared
distances to the nearest centroid, recomputed the same way for all):

* pool: :class:`wsiscale.index.pool.FaissPool` with ``--shards`` actors,
  k-means++ init on a sample (wall time includes the init, excludes loading
  the shards);
* faiss: ``faiss.Kmeans`` in this process, its default (random) init, and again
  from the pool's k-means++ initial centroids;
* scikit-learn ``KMeans`` (k-means++ init, one init) and ``MiniBatchKMeans``.

    python benchmarks/faiss_pool.py [--n 200000] [--d 128] [--k 256] [--iters 10]
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
    lab = rng.integers(0, true_k, n)
    return (centres[lab] + rng.normal(size=(n, d)) * scale[lab, None]).astype(np.float32)


def inertia(x: np.ndarray, c: np.ndarray) -> float:
    from wsiscale.index.kmeans import assign_stats

    return assign_stats(x, np.ascontiguousarray(c, np.float32))[2]


def main() -> None:
    import faiss
    import ray
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from wsiscale.index.pool import FaissPool

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--true-k", type=int, default=300)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    x = data(args.n, args.d, args.true_k)
    print(f"{args.n} x {args.d} float32 -> {args.k} centroids, {args.iters} Lloyd iterations", flush=True)
    rows: dict[str, dict] = {}

    ray.init(num_cpus=args.shards, include_dashboard=False, log_to_driver=False)
    try:
        pool = FaissPool(x, shards=args.shards)
        t0 = time.perf_counter()
        init = pool.init_centroids(args.k, "kmeans++", seed=0)
        res = pool.lloyd(init, args.iters)
        rows["pool (k-means++)"] = {"seconds": time.perf_counter() - t0, "inertia": inertia(x, res.centroids)}
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
    t0 = time.perf_counter()
    sk = KMeans(args.k, init="k-means++", n_init=1, max_iter=args.iters, tol=0, random_state=0).fit(x)
    rows["scikit-learn KMeans (k-means++)"] = {"seconds": time.perf_counter() - t0, "inertia": inertia(x, sk.cluster_centers_)}
    t0 = time.perf_counter()
    mb = MiniBatchKMeans(args.k, batch_size=4096, n_init=1, max_iter=args.iters, random_state=0).fit(x)
    rows["scikit-learn MiniBatchKMeans"] = {"seconds": time.perf_counter() - t0, "inertia": inertia(x, mb.cluster_centers_)}

    best = min(r["inertia"] for r in rows.values())
    ref = rows["faiss (random init)"]["seconds"]
    for name, r in rows.items():
        print(f"{name:34s} {r['seconds']:8.2f} s  ({r['seconds'] / ref:5.2f}x faiss)  inertia {r['inertia']:.6g} "
              f"({r['inertia'] / best:.4f}x best)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
