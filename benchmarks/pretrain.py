"""Region-level DINO pretraining throughput: 1 vs 2 Ray Train CPU workers on the same data (scaling ratio).

Synthetic regions-mode embedding run (``--slides`` x ``--regions`` grids of
``--dim`` x 16 x 16 patch embeddings, written by the real writers), SLPD's
region ViT-XS (192-d, 6 blocks, 6 heads), DINO head with ``--out-dim``
outputs, 2 global (14 x 14) + 8 local (6 x 6) views, ``--batch`` regions per
worker. Each run trains ``--epochs`` epochs; the figure is regions/s over the
last reporting interval (steady state, after start-up), one worker vs two
workers (0.75 CPU reserved each, one torch thread each, leaving Ray Data's
read tasks room on 2 cores), in the same process.

    python benchmarks/pretrain.py [--dim 384] [--batch 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main() -> None:
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
