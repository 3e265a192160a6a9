"""Tiling pipeline throughput and memory, against single-process baselines on the same tiles.

Same slides, same run, per CPU core:

* ``cucim-loop``: one process, one thread: ``CuImage.read_region`` over every
  planned tile of every slide (the tiles the pipeline produces). The bare
  cost of getting the pixels.
* ``clam-openslide``: one process, CLAM-style ``create_patches`` with patch
  saving: OpenSlide ``read_region`` (RGBA), ``.convert("RGB")``, and the
  per-tile tissue check (HSV saturation white-patch and black-patch tests),
  over a sample of the same tiles.
* pipeline, ``wsiscale tile`` on a local Ray with ``--actors`` CPU actors (one
  CPU each), per pixel mode: ``jpeg`` (default; stored JPEG tiles copied when
  they line up), ``jpeg-reencode`` (decode + JPEG encode), ``raw`` (uint8
  pixels), ``none`` (coordinates), and ``stream-raw`` / ``stream-jpeg`` (tiles
  as in-memory batches - uint8 arrays or JPEG bytes - consumed by the driver:
  the fused read+embed path; nothing written). Wall-clock from
  submitting the dataset to the last record, actor start-up included; divided
  by the number of actors (cores) for the per-core rate. "busy" is the rate
  inside actors (tiles / sum of per-slide seconds), without start-up and gaps.

Memory: the peak RSS of one tiling actor (``ru_maxrss``, recorded in every
slide's done record) tiling a ``--big`` x ``--big`` slide, per pixel mode.

    python benchmarks/tiling.py [--slides 8] [--size 24576] [--big 50000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import wsiscale  # noqa: F401  (cuCIM before anything else)


def make_slides(work: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` generated slides of ``size``^2 px (all cores; cached in ``work``)."""
    import pyarrow.parquet as pq

    from wsiscale.config import SynthConfig
    from wsiscale.synth.cohort import build_cohort

    cfg = SynthConfig(n_slides=n, width=size, height=size, seed=seed, prefix=f"bench{size}-")
    manifest = build_cohort(cfg, work / f"slides-{size}-{n}-{seed}")
    return [Path(u.removeprefix("file://")) for u in pq.read_table(manifest).column("uri").to_pylist()]


def plans(paths, cfg):
    from wsiscale.io import detect_slide_tissue, open_slide, plan_tiles

    out = []
    for p in paths:
        with open_slide(p, backend="openslide") as s:
            out.append(plan_tiles(s, cfg.tiling, detect_slide_tissue(s, cfg.tissue)))
    return out


def cucim_loop(paths, plans_) -> float:
    import cucim

    n, t0 = 0, time.perf_counter()
    for p, plan in zip(paths, plans_):
        img = cucim.CuImage(str(p))
        for x, y in zip(plan.x.tolist(), plan.y.tolist()):
            np.asarray(img.read_region(location=(x, y), size=(plan.read_size, plan.read_size), level=plan.level))
            n += 1
    return n / (time.perf_counter() - t0)


def clam_openslide_loop(paths, plans_, per_slide: int) -> float:
    """CLAM's patch loop: read_region -> RGB -> isWhitePatch/isBlackPatch on each tile."""
    import cv2
    import openslide

    def is_white(patch, sat_thresh=5):
        return np.mean(cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)[:, :, 1]) < sat_thresh

    def is_black(patch, rgb_thresh=40):
        return np.all(np.mean(patch, axis=(0, 1)) < rgb_thresh)

    n, kept, t0 = 0, 0, time.perf_counter()
    for p, plan in zip(paths, plans_):
        slide = openslide.OpenSlide(str(p))
        for x, y in list(zip(plan.x.tolist(), plan.y.tolist()))[:per_slide]:
            patch = np.array(slide.read_region((x, y), plan.level, (plan.read_size, plan.read_size)).convert("RGB"))
            kept += not (is_white(patch) or is_black(patch))
            n += 1
        slide.close()
    return n / (time.perf_counter() - t0)


def pipeline(manifest: str, work: Path, mode: str, actors: int) -> dict:
    import pyarrow.parquet as pq

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.tiling import run_tiling, tile_stream
    from wsiscale.io.manifest import read_manifest

    cfg = WsiscaleConfig()
    cfg.ingest.actors = (actors, actors)
    cfg.ingest.ray_progress = False
    cfg.ingest.memory_gb_per_actor = 1.0
    if mode.startswith("stream"):
        t0, n = time.perf_counter(), 0
        ds = tile_stream(read_manifest(manifest), cfg, pixels=mode.removeprefix("stream-"))
        for batch in ds.iter_batches(batch_size=None):
            n += len(batch["x"])
        wall = time.perf_counter() - t0
        return {"tiles": n, "wall_s": wall, "per_core": n / wall / actors, "busy_per_core": None}
    cfg.ingest.pixels = "jpeg" if mode.startswith("jpeg") else mode
    cfg.ingest.jpeg_passthrough = mode == "jpeg"
    out = work / f"run-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    s = run_tiling(cfg, manifest=manifest, out=str(out), show_progress=False)
    slides = pq.read_table(out / "slides.parquet").to_pylist()
    busy = sum(r["seconds"] for r in slides)
    size = sum(sum(sh["bytes"] for sh in json.loads(r["shards"])) for r in slides)
    shutil.rmtree(out, ignore_errors=True)
    return {"tiles": s["tiles"]["this_run"], "wall_s": s["seconds"], "per_core": s["tiles_per_s"] / actors,
            "busy_per_core": s["tiles"]["this_run"] / busy, "bytes_per_tile": size / max(1, s["tiles"]["this_run"]),
            "passthrough": all(r["jpeg_passthrough"] for r in slides)}


def actor_memory(big: Path, work: Path, modes: list[str]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.tiling import run_tiling
    from wsiscale.io.uri import normalize_uri

    manifest = work / "big.parquet"
    pq.write_table(pa.table({"uri": [normalize_uri(big)], "slide_id": ["big"]}), manifest)
    out = {}
    for mode in modes:
        cfg = WsiscaleConfig()
        cfg.ingest.actors = (1, 1)
        cfg.ingest.ray_progress = False
        cfg.ingest.pixels = "jpeg" if mode.startswith("jpeg") else mode
        cfg.ingest.jpeg_passthrough = mode == "jpeg"
        run = work / f"big-{mode}"
        shutil.rmtree(run, ignore_errors=True)
        s = run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)
        rec = pq.read_table(run / "slides.parquet").to_pylist()[0]
        out[mode] = {"peak_rss_mib": rec["peak_rss_mib"], "tiles": rec["tiles"], "seconds": rec["seconds"],
                     "tiles_per_s": rec["tiles"] / rec["seconds"], "wall_s": s["seconds"]}
        shutil.rmtree(run, ignore_errors=True)
    return out


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from wsiscale.config import WsiscaleConfig
    from wsiscale.io.uri import normalize_uri

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=24576)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--clam-tiles", type=int, default=600, help="tiles per slide in the (slow) CLAM-style loop")
    ap.add_argument("--modes", default="jpeg,jpeg-reencode,raw,none,stream-raw,stream-jpeg")
    ap.add_argument("--big", type=int, default=50000, help="side of the slide for the actor memory figure (0: skip)")
    ap.add_argument("--big-modes", default="jpeg,jpeg-reencode,raw")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wsiscale-bench-tiling-"))
    work.mkdir(parents=True, exist_ok=True)

    paths = make_slides(work, args.slides, args.size)
    cfg = WsiscaleConfig()
    plans_ = plans(paths, cfg)
    n_tiles = sum(len(p) for p in plans_)
    manifest = work / "manifest.parquet"
    pq.write_table(pa.table({"uri": [normalize_uri(p) for p in paths], "slide_id": [p.stem for p in paths]}), manifest)
    print(f"{len(paths)} slides of {args.size}^2 px, {n_tiles} tissue tiles of 256 px at 0.5 um/px", flush=True)

    results: dict = {"slides": len(paths), "size": args.size, "tiles": n_tiles, "actors": args.actors}
    results["cucim_loop"] = cucim_loop(paths, plans_)
    results["clam_openslide"] = clam_openslide_loop(paths, plans_, args.clam_tiles)
    print(f"baseline cucim read_region loop: {results['cucim_loop']:8.0f} tiles/s (1 core)")
    print(f"baseline CLAM-style OpenSlide:   {results['clam_openslide']:8.0f} tiles/s (1 core)", flush=True)

    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    try:
        results["pipeline"] = {}
        for mode in args.modes.split(","):
            r = pipeline(str(manifest), work, mode, args.actors)
            results["pipeline"][mode] = r
            busy = f", busy {r['busy_per_core']:7.0f}/core" if r["busy_per_core"] else ""
            print(f"pipeline {mode:14s} {r['per_core']:8.0f} tiles/s/core ({r['tiles']} tiles, {r['wall_s']:.1f} s{busy}): "
                  f"{r['per_core'] / results['cucim_loop']:.2f}x cucim loop, "
                  f"{r['per_core'] / results['clam_openslide']:.1f}x CLAM-style", flush=True)
        if args.big:
            big = make_slides(work, 1, args.big, seed=100)[0]
            results["big_actor"] = actor_memory(big, work, args.big_modes.split(","))
            for mode, r in results["big_actor"].items():
                print(f"one actor, {args.big}^2 slide, {mode:14s}: peak RSS {r['peak_rss_mib']:7.0f} MiB "
                      f"({r['peak_rss_mib'] / 1536:.2f} of the 1.5 GiB target), {r['tiles']} tiles in {r['seconds']:.1f} s "
                      f"({r['tiles_per_s']:.0f} tiles/s)", flush=True)
    finally:
        ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
