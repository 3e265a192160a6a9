"""Build a synthetic cohort: N slides + ground truth + a manifest, in parallel.

The manifest (``manifest.parquet`` and ``manifest.csv``) has one row per slide
with ``uri, slide_id, label, label_name, mpp, width, height, truth_uri,
report``: exactly what the ingest stage reads. Slides are written with a
process pool (one slide per task); the cohort is a pure function of its
config, so a rerun skips slides that already exist with their ground truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from wsiscale.config import SynthConfig
from wsiscale.progress import progress_bar
from wsiscale.synth.layout import SLIDE_LABELS, LayoutParams
from wsiscale.synth.slide import SlideSpec, SlideTruth, generate_slide, truth_paths
from wsiscale.synth.textures import TextureBank, render_texture_bank

log = logging.getLogger(__name__)

_BANK_VERSION = 1


def _cache_dir() -> Path:
    root = os.environ.get("WSISCALE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wsiscale"
    )
    return Path(root) / "synth"


def cached_texture_bank(mpp: float, size: int, n_variants: int, seed: int) -> Path:
    """Path of a ``.npy`` texture bank for these parameters, rendering it on first use."""
    key = hashlib.sha256(f"{_BANK_VERSION}-{mpp:.6f}-{size}-{n_variants}-{seed}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"bank-{key}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("rendering texture bank (mpp=%s, %d variants) into %s", mpp, n_variants, path)
        bank = render_texture_bank(mpp, size=size, n_variants=n_variants, seed=seed)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part.npy")
        np.save(tmp, bank.textures)
        os.replace(tmp, path)
    return path


def load_bank(path: Path, mpp: float) -> TextureBank:
    return TextureBank(np.load(path, mmap_mode="r", allow_pickle=False), mpp)


def slide_specs(cfg: SynthConfig) -> list[SlideSpec]:
    """The specs of every slide of the cohort (deterministic in ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    weights = np.asarray(cfg.label_weights, dtype=float)
    if len(weights) != len(SLIDE_LABELS):
        raise ValueError(f"synth.label_weights needs {len(SLIDE_LABELS)} values (one per label), got {len(weights)}")
    # Balanced-as-possible labels in a shuffled order, so small cohorts contain every class.
    exact = weights / weights.sum() * cfg.n_slides
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: cfg.n_slides - counts.sum()]:  # largest remainders
        counts[i] += 1
    labels = rng.permutation(np.repeat(np.arange(len(weights)), counts))
    specs = []
    for i, label in enumerate(labels):
        pen = bool(rng.uniform() < cfg.pen_mark_probability)
        specs.append(
            SlideSpec(
                slide_id=f"{cfg.prefix}{i:05d}",
                width=cfg.width,
                height=cfg.height,
                mpp=cfg.mpp,
                label=int(label),
                seed=int(rng.integers(2**31)),
                tile=cfg.tile_size,
                quality=cfg.jpeg_quality,
                stain_variation=cfg.stain_variation,
                layout=LayoutParams(pen_marks=pen, tumour_fraction=tuple(cfg.tumour_fraction),
                                    shared_mix=cfg.shared_mix),
            )
        )
    return specs


def _load_truth(path: Path, spec: SlideSpec | None = None) -> SlideTruth | None:
    """The ground truth of an existing slide at ``path`` (None if missing, or written from another ``spec``)."""
    npz, js = truth_paths(path)
    if not (path.exists() and npz.exists() and js.exists()):
        return None
    data = json.loads(js.read_text())
    if spec is not None and data.get("spec") != json.loads(json.dumps(asdict(spec), default=str)):
        return None
    fields = {k: data[k] for k in SlideTruth.__dataclass_fields__}
    return SlideTruth(**fields)


def _generate(spec: SlideSpec, bank_path: str, out_dir: str) -> dict:
    from threadpoolctl import threadpool_limits

    bank = load_bank(Path(bank_path), spec.mpp)
    t0 = time.perf_counter()
    # One slide per process: BLAS threads on tiny matrices only oversubscribe the cores.
    with threadpool_limits(1):
        truth = generate_slide(spec, bank, Path(out_dir) / f"{spec.slide_id}.svs")
    return asdict(truth) | {"seconds": time.perf_counter() - t0}


def _mp_context():
    """``fork`` (fast, no ``__main__`` guard needed) unless threads of torch/Ray make it unsafe."""
    import sys
    import threading

    if threading.active_count() == 1 and "torch" not in sys.modules and "ray" not in sys.modules:
        return get_context("fork")
    return get_context("spawn")


def build_cohort(cfg: SynthConfig, out_dir: str | Path, workers: int | None = None) -> Path:
    """Write ``cfg.n_slides`` slides under ``out_dir`` and return the manifest path (Parquet).

    Slides already present with ground truth are kept (idempotent reruns).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    specs = slide_specs(cfg)
    bank_path = cached_texture_bank(cfg.mpp, cfg.texture_size, cfg.texture_variants, cfg.seed)
    truths: dict[str, dict] = {}
    todo = []
    for spec in specs:
        existing = _load_truth(out / f"{spec.slide_id}.svs", spec)
        if existing is not None:
            truths[spec.slide_id] = asdict(existing)
        else:
            todo.append(spec)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"synth {len(todo)} slides", total=len(todo))
        if workers == 1:
            for spec in todo:
                truths[spec.slide_id] = _generate(spec, str(bank_path), str(out))
                bar.advance(task)
        else:
            with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
                futures = [pool.submit(_generate, spec, str(bank_path), str(out)) for spec in todo]
                for fut in as_completed(futures):
                    result = fut.result()
                    truths[result["slide_id"]] = result
                    bar.advance(task)
    elapsed = time.perf_counter() - t0
    if todo:
        mpx = sum(s.width * s.height for s in todo) / 1e6
        log.info("wrote %d slides (%.0f Mpx) in %.1fs: %.1f Mpx/s", len(todo), mpx, elapsed, mpx / max(elapsed, 1e-9))
    rows = [truths[s.slide_id] for s in specs]
    table = pa.table(
        {
            "uri": [Path(r["path"]).resolve().as_uri() for r in rows],
            "slide_id": [r["slide_id"] for r in rows],
            "label": pa.array([r["label"] for r in rows], pa.int32()),
            "label_name": [r["label_name"] for r in rows],
            "mpp": [float(r["mpp"]) for r in rows],
            "width": pa.array([r["width"] for r in rows], pa.int64()),
            "height": pa.array([r["height"] for r in rows], pa.int64()),
            "truth_uri": [truth_paths(r["path"])[0].resolve().as_uri() for r in rows],
            "report": [r["report"] for r in rows],
        }
    )
    manifest = out / "manifest.parquet"
    tmp = out / f".manifest.{os.getpid()}.part"
    pq.write_table(table, tmp)
    os.replace(tmp, manifest)
    pacsv.write_csv(table, tmp)
    os.replace(tmp, out / "manifest.csv")
    return manifest
