"""Generate one synthetic slide: SVS file + ground truth.

Ground truth is written next to the slide as ``<slide_id>.truth.npz`` (no
pickles: tissue mask, class map and tumour mask on the layout cell grid) and
``<slide_id>.truth.json`` (label, class fractions, synthetic report).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wsiscale.synth.layout import SLIDE_LABELS, LayoutParams, SlideLayout, make_layout
from wsiscale.synth.render import TileRenderer
from wsiscale.synth.report import write_report
from wsiscale.synth.stain import Stain
from wsiscale.synth.svs_writer import PyramidSpec, write_svs
from wsiscale.synth.textures import TISSUE_CLASSES, TextureBank


@dataclass
class SlideSpec:
    """Everything needed to regenerate a slide bit-for-bit."""

    slide_id: str
    width: int
    height: int
    mpp: float = 0.5
    label: int = 0
    seed: int = 0
    tile: int = 256
    quality: int = 90
    write_mpp: bool = True
    stain_variation: float = 1.0
    layout: LayoutParams = field(default_factory=LayoutParams)


@dataclass
class SlideTruth:
    """What the generator knows about a slide it wrote."""

    slide_id: str
    path: str
    label: int
    label_name: str
    width: int
    height: int
    mpp: float
    cell_px: int
    tissue_fraction: float
    class_fractions: dict[str, float]
    report: str
    levels: list[tuple[int, int]]


def truth_paths(slide_path: str | Path) -> tuple[Path, Path]:
    """``(npz, json)`` ground-truth files that belong to ``slide_path``."""
    p = Path(slide_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + ".truth.npz"), p.with_name(stem + ".truth.json")


def load_truth_masks(slide_path: str | Path) -> dict[str, np.ndarray]:
    """Ground-truth masks of a generated slide: ``tissue``, ``classes``, ``tumour`` (cell grid) and ``cell_px``."""
    npz, _ = truth_paths(slide_path)
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _label_image(spec: SlideSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed ^ 0x5EED)
    img = np.full((300, 300, 3), 245, np.uint8)
    bars = rng.integers(0, 2, 40).astype(bool)
    for i, on in enumerate(bars):
        if on:
            img[40:140, 30 + i * 6 : 33 + i * 6] = 20
    return img


def generate_slide(spec: SlideSpec, bank: TextureBank, path: str | Path) -> SlideTruth:
    """Write the slide described by ``spec`` to ``path`` (atomically) plus its ground truth."""
    if abs(bank.mpp - spec.mpp) > 1e-6:
        raise ValueError(f"texture bank was rendered at {bank.mpp} um/px but slide {spec.slide_id} is at {spec.mpp}")
    path = Path(path)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x51DE]))
    layout: SlideLayout = make_layout(rng, spec.width, spec.height, spec.mpp, spec.label, spec.layout)
    stain = Stain.random(rng, spec.stain_variation)
    renderer = TileRenderer(layout, bank, stain, rng, tile=spec.tile)
    pyramid = PyramidSpec(spec.width, spec.height, tile=spec.tile)
    thumb_layout = np.where(layout.tissue, 200, 240).astype(np.uint8)
    macro = np.repeat(thumb_layout[::4, ::4, None], 3, axis=2)
    levels = write_svs(
        path,
        renderer.tiles(spec.width, spec.height),
        pyramid,
        mpp=spec.mpp if spec.write_mpp else None,
        quality=spec.quality,
        label_image=_label_image(spec),
        macro_image=macro,
    )
    name = SLIDE_LABELS[spec.label][0]
    fractions = layout.class_fractions()
    report = write_report(fractions, spec.label, rng)
    truth = SlideTruth(
        slide_id=spec.slide_id,
        path=str(path),
        label=spec.label,
        label_name=name,
        width=spec.width,
        height=spec.height,
        mpp=spec.mpp,
        cell_px=layout.cell_px,
        tissue_fraction=float(layout.tissue.mean()),
        class_fractions=fractions,
        report=report,
        levels=[tuple(s) for s in levels],
    )
    npz, js = truth_paths(path)
    tmp = npz.with_name(f".{npz.name}.{os.getpid()}.part.npz")
    np.savez_compressed(
        tmp,
        tissue=layout.tissue,
        classes=layout.classes,
        tumour=layout.tumour,
        cell_px=np.int64(layout.cell_px),
    )
    os.replace(tmp, npz)
    payload = asdict(truth) | {"class_names": TISSUE_CLASSES, "spec": asdict(spec)}
    tmpj = js.with_name(f".{js.name}.{os.getpid()}.part")
    tmpj.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmpj, js)
    return truth
