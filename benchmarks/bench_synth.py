"""Synthetic-slide generator: speed (Mpx/s) and peak memory, against a write-only baseline.

Two measurements, each in a fresh subprocess so peak RSS (ru_maxrss) belongs to it:

* ``big``: one slide of ``--big`` x ``--big`` px (default 50000) written by the
  generator, and the baseline: the same pyramid written by the same writer
  from a constant tile (JPEG encode + TIFF write only, no painting). Ratio =
  generator Mpx/s / baseline Mpx/s; peak RSS is compared to the slide's raw
  RGB size.
* ``cohort``: ``--cohort`` slides of 8192 x 8192 px with all cores, as the
  tests and demo make them (the target is well under a minute for 50).

    python benchmarks/bench_synth.py [--big 50000] [--cohort 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent(
    """
    import json, re, resource, sys, threading, time, numpy as np
    mode, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    anon_peak = [0]
    def monitor():  # anonymous (heap) RSS; file-backed pages of disk buffers are reclaimable cache
        while True:
            m = re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read())
            anon_peak[0] = max(anon_peak[0], int(m.group(1)))
            time.sleep(0.02)
    threading.Thread(target=monitor, daemon=True).start()
    t0 = time.perf_counter()
    if mode == "generator":
        from wsiscale.synth.cohort import cached_texture_bank, load_bank
        from wsiscale.synth.slide import SlideSpec, generate_slide
        bank = load_bank(cached_texture_bank(0.5, 512, 3, 0), 0.5)
        t0 = time.perf_counter()
        generate_slide(SlideSpec("big", size, size, label=1, seed=1), bank, out)
    elif mode == "write-only":
        from wsiscale.synth.svs_writer import PyramidSpec, write_svs
        tile = np.full((256, 256, 3), 200, np.uint8)
        tile[::7, ::5] = (90, 60, 150)  # some texture so JPEG does real work
        n = (-(-size // 256)) ** 2
        write_svs(out, (tile for _ in range(n)), PyramidSpec(size, size), mpp=0.5)
    elif mode == "cohort":
        from wsiscale.config import SynthConfig
        from wsiscale.synth.cohort import build_cohort, cached_texture_bank
        cached_texture_bank(0.5, 512, 3, 0)
        t0 = time.perf_counter()
        build_cohort(SynthConfig(n_slides=size, seed=0), out)
    dt = time.perf_counter() - t0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": dt, "peak_rss_mib": peak / 1024, "peak_anon_mib": anon_peak[0] / 1024}))
    """
)


def run(mode: str, size: int, out: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(size), out], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=50000)
    ap.add_argument("--cohort", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsiscale-bench-") as tmp:
        mpx = args.big * args.big / 1e6
        raw_mib = args.big * args.big * 3 / 2**20
        gen = run("generator", args.big, f"{tmp}/big.svs")
        base = run("write-only", args.big, f"{tmp}/base.svs")
        print(f"one {args.big}x{args.big} slide ({mpx:.0f} Mpx, raw RGB {raw_mib:.0f} MiB), single process:")
        for name, r in (("generator", gen), ("write-only baseline", base)):
            print(f"  {name:<20} {r['seconds']:7.1f} s  {mpx / r['seconds']:7.1f} Mpx/s  "
                  f"peak RSS {r['peak_rss_mib']:6.0f} MiB (heap {r['peak_anon_mib']:5.0f} MiB)")
        print(f"  generator speed / write-only speed: {base['seconds'] / gen['seconds']:.2f}")
        print(f"  generator peak RSS / raw slide size: {gen['peak_rss_mib'] / raw_mib:.3f} "
              f"(heap only: {gen['peak_anon_mib'] / raw_mib:.3f})")
        if args.cohort:
            coh = run("cohort", args.cohort, f"{tmp}/cohort")
            cmpx = args.cohort * 8192 * 8192 / 1e6
            print(f"cohort of {args.cohort} slides 8192x8192 ({cmpx:.0f} Mpx), all cores: "
                  f"{coh['seconds']:.1f} s, {cmpx / coh['seconds']:.0f} Mpx/s, peak RSS per process {coh['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
