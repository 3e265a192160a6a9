"""Giga-SSL benchmarks: the sparse slide encoder against a dense one, and learning against mean pooling.

``sparse`` - the slide encoder on whole slides, sparse against dense convolutions, same weights, same run.
For slides of growing size (tiles spread over a tissue layout of the synthetic
generator on a grid ``side x side`` cells, tissue ~45 % of the area), time the
SparseConvMIL representation of the whole slide (every tile in one view,
``wsiscale gigassl embed --set gigassl.embed_tiles=0``) and the same network
run densely on the zero-filled ``[D, side, side]`` grid (``conv2d`` with the
same weights, restricted to the active sites). Prints tiles, seconds, the
largest difference between the two (they compute the same function) and the
process's peak RSS, and the ratio dense / sparse.

    python benchmarks/gigassl.py sparse [--dim 256] [--sides 64,128,256,362] [--threads 2]

``learning`` - the slow test's protocol (tests/test_gigassl_learning.py) over several seeds, through
the Ray pipeline: ``train_gigassl`` (2 workers) and ``embed_gigassl`` on the cohort of
``tests/gigassl_cohort.py``, then ``run_linear_probe`` with 50 labelled slides (50 draws) and 5-fold
on the slide vectors and on the mean-pooled tile embeddings; prints one row per seed and the margins.

    python benchmarks/gigassl.py learning [--seeds 0,1,2,3] [--epochs 80]
"""

from __future__ import annotations

import argparse
import resource
import time

import wsiscale  # noqa: F401  (cuCIM before torch)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def layout_tiles(side: int, seed: int):
    import numpy as np

    from wsiscale.synth.layout import LayoutParams, make_layout

    rng = np.random.default_rng(seed)
    lay = make_layout(rng, side * 256, side * 256, 0.5, 1, LayoutParams(dust=False), cell_px=256)
    rr, cc = np.nonzero(lay.tissue)
    return rr - rr.min(), cc - cc.min()  # top-left at (0, 0), as sparse_map places a slide


def dense_forward(model, feats, rows, cols, side: int):
    """The same network on the dense zero-filled grid: conv2d with the sparse weights; pooled over active sites."""
    import torch
    import torch.nn.functional as F

    from wsiscale.gigassl.sparse import strided_sites

    x = torch.zeros(1, feats.shape[1], side + 4, side + 4)
    x[0, :, rows, cols] = feats.T
    active = torch.zeros(1, 1, side + 4, side + 4)
    active[0, 0, rows, cols] = 1
    coords = torch.stack([torch.zeros_like(rows), rows, cols], 1)
    for block in model.encoder.blocks:
        bn = lambda m, t, mask: (t - m.running_mean[None, :, None, None]) / torch.sqrt(  # noqa: E731
            m.running_var[None, :, None, None] + m.eps) * m.weight[None, :, None, None] * mask + \
            m.bias[None, :, None, None] * mask
        if block.downsample:
            out_coords = strided_sites(coords, 3, 2)
            mask = torch.zeros(1, 1, (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1)
            mask[0, 0, out_coords[:, 1], out_coords[:, 2]] = 1
            a = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, stride=2), mask))
            a = bn(block.bn2, F.conv2d(a, block.conv2.weight, padding=1) * mask, mask)
            s = F.avg_pool2d(x, 3, 2, divisor_override=1)
            cnt = F.avg_pool2d(active, 3, 2, divisor_override=1).clamp(min=1)
            ident = F.conv2d(s / cnt, block.convd.weight) if block.convd is not None else s / cnt
            x = F.relu(a + bn(block.bnd, ident, mask)) * mask
            active, coords = mask, out_coords
        else:
            a = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, padding=1) * active, active))
            a = bn(block.bn2, F.conv2d(a, block.conv2.weight, padding=1) * active, active)
            x = F.relu(a + x) * active
    return x.sum((2, 3)) / active.sum()


def learning(args: argparse.Namespace) -> None:
    import sys
    import tempfile
    from pathlib import Path

    import ray

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from gigassl_cohort import GigaSSLCohortSpec, write_gigassl_cohort

    from wsiscale.config import WsiscaleConfig
    from wsiscale.eval.linear_probe import run_linear_probe
    from wsiscale.gigassl.run import embed_gigassl, train_gigassl

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    print("| seed | Giga-SSL, 50 labelled | mean pooling, 50 labelled | margin | Giga-SSL 5-fold | mean pooling 5-fold "
          "| train s | NT-Xent first -> last |")
    print("|---|---|---|---|---|---|---|---|")
    margins = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            run, labels = write_gigassl_cohort(root, GigaSSLCohortSpec(slides_per_label=60), seed=seed)
            cfg = WsiscaleConfig()
            g = cfg.gigassl
            g.batch_size, g.epochs, g.tiles_per_view, g.embed_dim, g.projection_dim = 40, args.epochs, 32, 128, 64
            g.checkpoint_every, g.num_workers, g.cpus_per_worker = args.epochs, (2, 2), 0.5
            cfg.eval.probe_train_sizes, cfg.eval.probe_draws, cfg.eval.probe_repeats = [50], 50, 2
            t0 = time.perf_counter()
            doc = train_gigassl(cfg, run, str(root / "ssl"))
            seconds = time.perf_counter() - t0
            embed_gigassl(cfg, run, str(root / "ssl"), str(root / "vectors"))
            ssl = run_linear_probe(cfg, str(root / "vectors" / "slide_vectors.parquet"), labels, None)
            mean = run_linear_probe(cfg, run, labels, None)
        a, b = ssl["small_data"]["sizes"][0], mean["small_data"]["sizes"][0]
        margins.append(a["auc_mean"] - b["auc_mean"])
        h = doc["history"]
        print(f"| {seed} | {a['auc_mean']:.3f} +- {a['auc_std']:.3f} | {b['auc_mean']:.3f} +- {b['auc_std']:.3f} | "
              f"{margins[-1]:+.3f} | {ssl['kfold']['auc_mean']:.3f} | {mean['kfold']['auc_mean']:.3f} | {seconds:.0f} | "
              f"{h[0]['loss']:.2f} -> {h[-1]['loss']:.2f} |", flush=True)
    print(f"mean margin {sum(margins) / len(margins):+.3f}, smallest {min(margins):+.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("sparse", help="sparse vs dense slide encoder on whole slides")
    sp.add_argument("--dim", type=int, default=256, help="tile embedding dim (ResNet-18 layer3: 256)")
    sp.add_argument("--sides", default="64,128,256,362", help="slide sides in tiles (362^2 * 0.45 ~ 6e4 tiles)")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--dense-max-side", type=int, default=256, help="skip the dense baseline above this side")
    lp = sub.add_parser("learning", help="Giga-SSL vs mean pooling, 50 labelled slides, several seeds")
    lp.add_argument("--seeds", default="0,1,2,3")
    lp.add_argument("--epochs", type=int, default=80)
    args = ap.parse_args()
    if args.what == "learning":
        learning(args)
    else:
        sparse(args)


def sparse(args: argparse.Namespace) -> None:
    import torch

    from wsiscale.gigassl.model import GigaSSLModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GigaSSLModel(args.dim).eval()
    print(f"SparseConvMIL (ResNet-18 layer4: {args.dim} -> 512, 2 blocks), one view of every tile, "
          f"{args.threads} threads")
    print("| slide (tiles side) | tiles | sparse s | dense s | dense / sparse | max |sparse - dense| | RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for side in (int(s) for s in args.sides.split(",")):
        rr, cc = layout_tiles(side, side)
        n = len(rr)
        feats = torch.randn(n, args.dim)
        rows, cols = torch.from_numpy(rr).long(), torch.from_numpy(cc).long()
        batch = torch.zeros(n, dtype=torch.long)
        with torch.inference_mode():
            t0 = time.perf_counter()
            h = model.encode(feats, rows, cols, batch, 1)
            ts = time.perf_counter() - t0
            td, err = float("nan"), float("nan")
            if side <= args.dense_max_side:
                t0 = time.perf_counter()
                hd = dense_forward(model, feats, rows, cols, side)
                td = time.perf_counter() - t0
                err = float((h - hd).abs().max())
        print(f"| {side} x {side} | {n:,} | {ts:.2f} | {td:.2f} | {td / ts:.2f}x | {err:.1e} | {_rss_mb():,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
