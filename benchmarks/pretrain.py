"""Pretraining benchmarks: worker scaling of region DINO, and SLPD's clustering step as slides grow.

``workers`` (default): region-level DINO throughput, 1 vs 2 Ray Train CPU workers on the same data.

Synthetic regions-mode embedding run (``--slides`` x ``--regions`` grids of
``--dim`` x 16 x 16 patch embeddings, written by the real writers), SLPD's
region ViT-XS (192-d, 6 blocks, 6 heads), DINO head with ``--out-dim``
outputs, 2 global (14 x 14) + 8 local (6 x 6) views, ``--batch`` regions per
worker. Each run trains ``--epochs`` epochs; the figure is regions/s over the
last reporting interval (steady state, after start-up), one worker vs two
workers (0.75 CPU reserved each, one torch thread each, leaving Ray Data's
read tasks room on 2 cores), in the same process.

    python benchmarks/pretrain.py [workers] [--dim 384] [--batch 16] [--epochs 2]

``cluster``: SLPD's clustering step (teacher features of every region on the
persistent clustering actor pool, per-slide cosine k-means into M prototypes,
slide neighbours by prototype matching, targets written) on 500 .. 4000 slides
of one synthetic regions-mode run; prints the time per step, per 10k slides,
and the growth exponent between sizes (1.0 = linear). One pool serves every
size, as one pool serves every epoch of a run; the first call on the cold pool
(actor start-up, what every epoch paid before the pool was kept) is timed
separately. The teacher is a small region ViT so the
step's own machinery dominates; the default region ViT-XS's feature throughput
is measured separately (regions/s) to extrapolate its share.

    python benchmarks/pretrain.py cluster [--slides 500 1000 2000 4000] [--regions 16]

``tiles``: one process's DINO step on tiles (ViT-S/16, 2 x 224 + 8 x 96 px views,
65,536 outputs): images/s on the GPU when there is one (bf16 autocast), else the CPU.

    python benchmarks/pretrain.py tiles [--batch 16] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def cluster(argv: list[str]) -> None:
    import numpy as np
    import ray
    import torch

    from test_pretrain import _region_run

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.data import region_files
    from wsiscale.pretrain.model import build_model
    from wsiscale.pretrain.slpd import ClusterPool, cluster_step, write_targets

    ap = argparse.ArgumentParser(description="SLPD clustering step vs number of slides")
    ap.add_argument("--slides", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--regions", type=int, default=16)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="wsiscale-bench-cluster-"))
    t0 = time.perf_counter()
    _region_run(str(tmp / "emb"), slides=max(args.slides), regions=args.regions, dim=args.dim)
    print(f"wrote {max(args.slides)} slides x {args.regions} regions ({args.dim} x 16 x 16) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    files, ids, shape = region_files(str(tmp / "emb"))
    p = WsiscaleConfig().pretrain
    p.embed_dim, p.depth, p.heads, p.out_dim, p.head_hidden_dim = 64, 2, 4, 4096, 512  # bottleneck stays 256
    torch.manual_seed(0)
    state = build_model(p, shape, drop_path=0.0).state_dict()
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pj = p.model_dump(mode="json")
    try:
        pool = ClusterPool(pj, shape, m=4, min_regions=8, iters=10, restarts=3, actors=args.actors,
                           cpus_per_actor=2 / args.actors)
        small = [f for f in files if f.slide < 50]
        for label in ("cold pool (actors start)", "warm pool"):
            t = time.perf_counter()
            cluster_step(small, 50, shape, state, pj, m=4, neighbours=1, pool=pool)
            print(f"    50 slides, {label}: {time.perf_counter() - t:5.1f} s", flush=True)
        for n in sorted(args.slides):
            sub = [f for f in files if f.slide < n]
            t = time.perf_counter()
            res = cluster_step(sub, n, shape, state, pj, m=4, neighbours=1, pool=pool)
            t_step = time.perf_counter() - t
            t = time.perf_counter()
            write_targets(res, str(tmp / f"targets-{n}"), epoch=0)
            t_write = time.perf_counter() - t
            rows.append({"slides": n, "regions": n * args.regions, "step_s": t_step, "write_s": t_write,
                         "clustered": int(res.valid.sum())})
            print(f"{n:6d} slides: clustering step {t_step:7.1f} s, targets written in {t_write:5.1f} s "
                  f"({(t_step + t_write) / n * 1e4:7.0f} s per 10k slides)", flush=True)
    finally:
        ray.shutdown()
    for a, b in zip(rows, rows[1:]):
        ta, tb = a["step_s"] + a["write_s"], b["step_s"] + b["write_s"]
        print(f"{a['slides']} -> {b['slides']} slides: x{tb / ta:.2f} time, growth exponent "
              f"{np.log(tb / ta) / np.log(b['slides'] / a['slides']):.2f}", flush=True)
    full = WsiscaleConfig().pretrain  # the default region ViT-XS (192-d, 6 blocks) on 384 x 16 x 16 grids
    torch.manual_seed(0)
    model = build_model(full, [384, 16, 16], drop_path=0.0).eval()
    x = torch.randn(64, 384, 14, 14)
    with torch.no_grad():
        model([x])
        t = time.perf_counter()
        for _ in range(3):
            model([x])
    rps = 3 * 64 / (time.perf_counter() - t)
    print(f"default region ViT-XS teacher features on this CPU: {rps:.0f} regions/s "
          f"(10k slides x 32 regions: {10_000 * 32 / rps:.0f} s of features per step)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "vit_xs_regions_per_s": rps}, indent=1))


def tiles(argv: list[str]) -> None:
    """DINO step on tiles (ViT-S/16 by default, 2 x 224 px + 8 x 96 px views, 65,536 outputs): images/s."""
    import torch

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.loop import _autocast, param_groups
    from wsiscale.pretrain.model import build_model
    from wsiscale.pretrain.losses import DINOLoss

    ap = argparse.ArgumentParser(description="DINO on tiles: images/s of one training process")
    ap.add_argument("--encoder", default="vit_s16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args(argv)
    p = WsiscaleConfig().pretrain
    p.level, p.patch_encoder = "patch", args.encoder
    dev = torch.device(args.device)
    torch.manual_seed(0)
    student = build_model(p, [3, 224, 224]).to(dev)
    teacher = build_model(p, [3, 224, 224], drop_path=0.0).to(dev).requires_grad_(False)
    loss_fn = DINOLoss(p.out_dim, 10, 2).to(dev)
    opt = torch.optim.AdamW(param_groups(student))
    views = [torch.randn(args.batch, 3, 224, 224, device=dev)] * 2 + [torch.randn(args.batch, 3, 96, 96, device=dev)] * 8

    def step() -> None:
        with _autocast(dev, args.precision):
            with torch.no_grad():
                t = teacher(views[:2])[0]
            loss = loss_fn(student(views)[0], t, 0.04)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ips = args.steps * args.batch / (time.perf_counter() - t0)
    print(f"DINO on tiles, {args.encoder}, batch {args.batch} x (2 x 224 + 8 x 96 px views), {dev.type} "
          f"({torch.get_num_threads()} threads, {args.precision if dev.type == 'cuda' else 'fp32'}): "
          f"{ips:.1f} images/s", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "cluster":
        return cluster(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "tiles":
        return tiles(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "workers":
        sys.argv.pop(1)
    workers()


def workers() -> None:
    import ray

    from test_pretrain import _region_run  # the same writer the tests use

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.run import run_pretraining

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--regions", type=int, default=32)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wsiscale-bench-pretrain-"))
    run = str(tmp / "emb")
    _region_run(run, slides=args.slides, regions=args.regions, dim=args.dim)
    n = args.slides * args.regions
    rows = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            cfg = WsiscaleConfig()
            p = cfg.pretrain
            p.method, p.out_dim, p.batch_size, p.epochs = "dino", args.out_dim, args.batch, args.epochs
            p.num_workers, p.cpus_per_worker, p.log_every, p.checkpoint_every = (workers, workers), 0.75, 4, 10**6
            t0 = time.perf_counter()
            summary = run_pretraining(cfg, run, str(tmp / f"out-{workers}"))
            m = summary["metrics"]
            rows[workers] = {"regions_per_s": m["regions_per_s"], "steps": m["step"], "wall_s": time.perf_counter() - t0,
                             "steps_per_s": m["regions_per_s"] / (args.batch * workers)}
            print(f"{workers} worker(s): {m['regions_per_s']:.1f} regions/s ({rows[workers]['steps_per_s']:.2f} steps/s), "
                  f"{m['step']} steps, {rows[workers]['wall_s']:.0f} s wall incl. start-up", flush=True)
    finally:
        ray.shutdown()
    ratio = rows[2]["regions_per_s"] / rows[1]["regions_per_s"]
    print(f"{n} regions ({args.dim} x 16 x 16), batch {args.batch} per worker: 2 workers / 1 worker = {ratio:.2f}x "
          "regions/s (ideal 2.0)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
