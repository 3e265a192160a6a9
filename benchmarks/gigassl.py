"""Giga-SSL's slide encoder on whole slides: sparse convolutions against dense ones, same weights, same run.

For slides of growing size (tiles spread over a tissue layout of the synthetic
generator on a grid ``side x side`` cells, tissue ~45 % of the area), time the
SparseConvMIL representation of the whole slide (every tile in one view,
``wsiscale gigassl embed --set gigassl.embed_tiles=0``) and the same network
run densely on the zero-filled ``[D, side, side]`` grid (``conv2d`` with the
same weights, restricted to the active sites). Prints tiles, seconds, the
largest difference between the two (they compute the same function) and the
process's peak RSS, and the ratio dense / sparse.

    python benchmarks/gigassl.py [--dim 256] [--sides 64,128,256,362] [--threads 2]
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


def main() -> None:
    import torch

    from wsiscale.gigassl.model import GigaSSLModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=256, help="tile embedding dim (ResNet-18 layer3: 256)")
    ap.add_argument("--sides", default="64,128,256,362", help="slide sides in tiles (362^2 * 0.45 ~ 6e4 tiles)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dense-max-side", type=int, default=256, help="skip the dense baseline above this side")
    args = ap.parse_args()
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
