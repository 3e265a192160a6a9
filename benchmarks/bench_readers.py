"""Raw region-read throughput per backend: 256 px tiles at level 0 of one generated SVS.

All backends read the same tiles (tissue tiles of the grid, shuffled) in the
same process, interleaved over several rounds so machine noise hits them
alike. The baseline is tifffile decoding the same JPEG tiles directly
(``TiffPage.decode``), i.e. the cost of the codec alone; each backend is
reported as tiles/s and as a ratio to that baseline.

    python benchmarks/bench_readers.py [--size 16384] [--tiles 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import wsiscale  # noqa: F401  (cuCIM before anything else)
from wsiscale.config import TilingConfig
from wsiscale.io import detect_slide_tissue, open_slide, plan_tiles
from wsiscale.synth.cohort import cached_texture_bank, load_bank
from wsiscale.synth.slide import SlideSpec, generate_slide

BACKENDS = ("cucim", "openslide", "tiffslide")


def make_slide(directory: Path, size: int) -> Path:
    path = directory / f"bench-{size}.svs"
    if not path.exists():
        bank = load_bank(cached_texture_bank(0.5, 512, 3, 0), 0.5)
        generate_slide(SlideSpec("bench", size, size, label=1, seed=7), bank, path)
    return path


def tifffile_baseline(path: Path, xy: np.ndarray) -> float:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        cols = -(-page.imagewidth // page.tilewidth)
        fh = tf.filehandle
        t0 = time.perf_counter()
        for x, y in xy:
            i = (y // 256) * cols + (x // 256)
            fh.seek(page.dataoffsets[i])
            data = fh.read(page.databytecounts[i])
            page.decode(data, i, jpegtables=page.jpegtables)
        return len(xy) / (time.perf_counter() - t0)


def backend_rate(path: Path, backend: str, xy: np.ndarray) -> float:
    with open_slide(path, backend=backend) as s:
        s.read_region((int(xy[0, 0]), int(xy[0, 1])), 0, (256, 256))  # warm caches/handles
        t0 = time.perf_counter()
        for x, y in xy:
            s.read_region((int(x), int(y)), 0, (256, 256))
        return len(xy) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--tiles", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wsiscale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = make_slide(work, args.size)
    with open_slide(path, backend="openslide") as s:
        plan = plan_tiles(s, TilingConfig(), detect_slide_tissue(s))
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(plan))[: args.tiles]
    xy = np.stack([plan.x[idx], plan.y[idx]], 1)
    rates: dict[str, list[float]] = {b: [] for b in ("tifffile-decode", *BACKENDS)}
    for _ in range(args.rounds):
        rates["tifffile-decode"].append(tifffile_baseline(path, xy))
        for b in BACKENDS:
            rates[b].append(backend_rate(path, b, xy))
    base = float(np.median(rates["tifffile-decode"]))
    print(f"slide {args.size}x{args.size} JPEG q90, {len(xy)} tissue tiles x {args.rounds} rounds, single thread")
    print(f"{'reader':<16}{'tiles/s (median)':>18}{'min':>8}{'max':>8}{'vs tifffile decode':>20}")
    for name, r in rates.items():
        med = float(np.median(r))
        print(f"{name:<16}{med:>18.0f}{min(r):>8.0f}{max(r):>8.0f}{med / base:>19.2f}x")


if __name__ == "__main__":
    main()
