"""Embedding pipeline throughput against model-only forward throughput, same batch size, same run.

* model-only: the encoder's forward pass on a prepared ``[batch, 3, S, S]``
  tensor, in a Ray task with the same CPUs/GPU and torch threads as the
  pipeline's encoder actor: the ceiling the pipeline can reach;
* pipeline: ``wsiscale embed`` on a local Ray over a JPEG tiling run of
  generated slides: CPU reader actors decode and resize tiles, an encoder
  actor embeds them and writes per-slide Parquet. Wall-clock from submitting
  the dataset to the last record, actor start-up and model loading included.

Ratio = pipeline tiles/s / model-only tiles/s (target >= 0.85 on CPU; >= 0.8
with ViT-S/16 on a GPU).

    python benchmarks/embed.py [--encoder resnet18_l3] [--slides 6] [--size 16384] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import wsiscale  # noqa: F401  (cuCIM before torch)


def model_only(encoder: str, batch: int, threads: int, seconds: float, device: str) -> float:
    import torch

    from wsiscale.models.encoders import load_encoder

    torch.set_num_threads(threads)
    enc = load_encoder(encoder, weights="random", device=device)
    x = torch.randn(batch, 3, enc.input_size, enc.input_size, device=enc.device)
    if enc.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            enc.model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if enc.device.type == "cuda" and enc.dtype != torch.float32:
                with torch.autocast("cuda", dtype=enc.dtype):
                    enc.model(x)
            else:
                enc.model(x)
            n += batch
        if device == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    import pyarrow.parquet as pq
    import ray
    import torch

    from wsiscale.config import SynthConfig, WsiscaleConfig
    from wsiscale.data.embedding import run_embedding
    from wsiscale.data.tiling import run_tiling
    from wsiscale.synth.cohort import build_cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet18_l3")
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=None, help="GPUs (default: all visible); one encoder actor per GPU")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wsiscale-bench-embed-"))
    cpus = __import__("os").cpu_count() or 2
    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus

    manifest = build_cohort(SynthConfig(n_slides=args.slides, width=args.size, height=args.size, seed=1,
                                        prefix=f"emb{args.size}-"), work / "slides")
    cfg = WsiscaleConfig()
    cfg.ingest.ray_progress = False
    cfg.embed.encoder = args.encoder
    cfg.embed.weights = "random"
    cfg.embed.batch_size = args.batch
    if gpus:
        cfg.embed.num_gpus_per_actor = 1
        cfg.embed.actors = (gpus, gpus)
        cfg.embed.cpus_per_actor = 2
        cfg.embed.reader_actors = (1, max(1, cpus - 2 * gpus))
        cfg.embed.reader_cpus = 1
        cfg.embed.chunk_tiles = 512
        threads = 2
    else:  # both cores: the encoder gets the threads, readers a fraction of a core
        cfg.embed.actors = (1, 1)
        cfg.embed.cpus_per_actor = max(1.0, cpus - 0.5)
        cfg.embed.reader_actors = (1, 1)
        cfg.embed.reader_cpus = 0.5
        threads = int(round(cfg.embed.cpus_per_actor))
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:
        tiles_run = work / "tiles"
        if not (tiles_run / "slides.parquet").exists():
            run_tiling(cfg, manifest=str(manifest), out=str(tiles_run), show_progress=False)
        n_tiles = sum(r["tiles"] for r in pq.read_table(tiles_run / "slides.parquet").to_pylist())
        print(f"{args.slides} slides of {args.size}^2 px, {n_tiles} tiles; encoder {args.encoder}, batch {args.batch}, "
              f"{'%d GPU(s)' % gpus if gpus else '%d CPU threads' % threads}", flush=True)
        device = "cuda" if gpus else "cpu"
        remote = ray.remote(num_cpus=cfg.embed.cpus_per_actor, num_gpus=1 if gpus else 0)(model_only)

        def measure(seconds: float) -> float:
            return ray.get(remote.remote(args.encoder, args.batch, threads, seconds, device)) * max(1, gpus)

        ref = measure(15.0)
        print(f"model-only forward: {ref:9.1f} tiles/s", flush=True)
        out = work / "emb"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = run_embedding(cfg, source=str(tiles_run), out=str(out), show_progress=False)
        wall = time.perf_counter() - t0
        rate = s["tiles_per_s"]
        print(f"pipeline:           {rate:9.1f} tiles/s ({s['tiles']['this_run']} tiles in {s['seconds']:.1f} s, "
              f"{wall:.1f} s with driver set-up and the final merge)", flush=True)
        print(f"pipeline / model-only = {rate / ref:.3f}" + (f"; {rate / gpus:.1f} tiles/s per GPU" if gpus else ""))
        ref_after = measure(10.0)
        print(f"model-only again after the run: {ref_after:9.1f} tiles/s (machine drift check)")
        if args.json:
            Path(args.json).write_text(json.dumps({"model_only": ref, "model_only_after": ref_after, "pipeline": rate,
                                                   "ratio": rate / ref, "tiles": s["tiles"]["this_run"],
                                                   "seconds": s["seconds"], "gpus": gpus, "threads": threads}, indent=1))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
