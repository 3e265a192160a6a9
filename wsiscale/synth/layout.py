"""Slide-scale layout of a synthetic slide: where tissue, each class, tumour and pen are.

The layout lives on a coarse grid of *cells* (``cell_px`` level-0 pixels
each, 16 by default = 8 um at 0.5 um/px). It is the ground truth of the
slide: ``tissue`` is exactly what the renderer paints as tissue, ``classes``
the class of every tissue cell. Rendering (:mod:`wsiscale.synth.render`)
interpolates these fields bilinearly, so boundaries are smooth at full
resolution and agree with the cell-level truth at cell centres.

Slide labels carry signal at two scales: tumour classes have their own
textures (local signal), and the mix of the other tissue types depends on
the label (slide-level signal), with per-slide Dirichlet noise so neither is
trivially separable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from wsiscale.synth.textures import N_CLASSES, TISSUE_CLASSES

#: Slide label id -> (name, tumour class id or None).
SLIDE_LABELS: dict[int, tuple[str, int | None]] = {
    0: ("normal", None),
    1: ("tumour_glandular", 6),
    2: ("tumour_solid", 7),
}

# Expected share of the non-tumour tissue classes per slide label
# (stroma, fat, epithelium, lymphocytes, necrosis).
_MIX = {
    0: np.array([0.38, 0.17, 0.33, 0.10, 0.02]),
    1: np.array([0.34, 0.10, 0.24, 0.27, 0.05]),
    2: np.array([0.40, 0.12, 0.10, 0.14, 0.24]),
}
_MIX_CLASSES = np.array([1, 2, 3, 4, 5])

#: Pen ink transmittance (RGB, 1 = transparent) for blue, green, black markers.
PEN_INKS = np.array([[0.25, 0.35, 0.85], [0.25, 0.70, 0.35], [0.12, 0.12, 0.15]], dtype=np.float32)


@dataclass
class LayoutParams:
    """Knobs of a slide layout (all optional; defaults give typical biopsies/resections)."""

    tissue_pieces: tuple[int, int] = (1, 3)
    tissue_coverage: float = 0.45
    region_um: float = 350.0
    tumour_fraction: tuple[float, float] = (0.08, 0.35)
    mix_concentration: float = 12.0
    pen_marks: bool = False
    dust: bool = True
    tissue: bool = True
    shared_mix: bool = False  # every label draws the normal tissue mix: only tumour tells labels apart (CAMELYON-like)


@dataclass
class SlideLayout:
    """Ground truth on the cell grid.

    Attributes:
        cell_px: level-0 pixels per cell side.
        tissue_field: ``[Hc, Wc]`` float32, tissue where > 0.
        classes: ``[Hc, Wc]`` uint8 class id (0 outside tissue).
        overlay_alpha: ``[Hc, Wc]`` float32 opacity of pen/dust in [0, 1].
        overlay_ink: ``[Hc, Wc]`` uint8 index into :data:`PEN_INKS` (dust uses 2).
        label: slide label id (key of :data:`SLIDE_LABELS`).
    """

    cell_px: int
    tissue_field: np.ndarray
    classes: np.ndarray
    overlay_alpha: np.ndarray
    overlay_ink: np.ndarray
    label: int
    mix: dict[str, float] = field(default_factory=dict)

    @property
    def tissue(self) -> np.ndarray:
        """``[Hc, Wc]`` bool tissue mask."""
        return self.tissue_field > 0

    @property
    def tumour(self) -> np.ndarray:
        """``[Hc, Wc]`` bool tumour mask."""
        return np.isin(self.classes, [c for _, c in SLIDE_LABELS.values() if c is not None])

    def class_fractions(self) -> dict[str, float]:
        """Share of tissue cells per class name."""
        tissue = self.classes[self.tissue]
        n = max(tissue.size, 1)
        counts = np.bincount(tissue, minlength=N_CLASSES)
        return {TISSUE_CLASSES[c]: float(counts[c] / n) for c in range(1, N_CLASSES)}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_cells: float) -> np.ndarray:
    """Unit-variance smooth noise on ``shape``, synthesised on a coarse grid and upsampled."""
    factor = max(1.0, sigma_cells / 4.0)
    coarse = (max(4, int(np.ceil(shape[0] / factor)) + 2), max(4, int(np.ceil(shape[1] / factor)) + 2))
    white = rng.standard_normal(coarse).astype(np.float32)
    smooth = ndimage.gaussian_filter(white, sigma_cells / factor, mode="wrap")
    up = ndimage.zoom(smooth, (shape[0] / coarse[0] * 1.0001 + 1e-9, shape[1] / coarse[1] * 1.0001 + 1e-9), order=1)
    up = up[: shape[0], : shape[1]]
    up = np.pad(up, ((0, shape[0] - up.shape[0]), (0, shape[1] - up.shape[1])), mode="edge")
    up -= up.mean()
    std = up.std()
    return (up / std if std > 0 else up).astype(np.float32)


def _tissue_field(rng: np.random.Generator, shape: tuple[int, int], params: LayoutParams) -> np.ndarray:
    hc, wc = shape
    if not params.tissue:
        return np.full(shape, -1.0, np.float32)
    yy = ((np.arange(hc, dtype=np.float32) + 0.5) / hc)[:, None]
    xx = ((np.arange(wc, dtype=np.float32) + 0.5) / wc)[None, :]
    n = int(rng.integers(params.tissue_pieces[0], params.tissue_pieces[1] + 1))
    field = np.full(shape, -10.0, np.float32)
    scale = np.sqrt(params.tissue_coverage / n / np.pi)
    for _ in range(n):
        cy, cx = (float(v) for v in rng.uniform(0.25, 0.75, 2))
        ry, rx = (float(v) for v in scale * rng.uniform(0.7, 1.4, 2))
        a = float(rng.uniform(0, np.pi))
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        field = np.maximum(field, 1.0 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2))
    warp = _smooth_noise(rng, shape, sigma_cells=max(hc, wc) / 14.0)
    detail = _smooth_noise(rng, shape, sigma_cells=max(hc, wc) / 60.0)
    field = field + 0.22 * warp + 0.05 * detail
    # Keep a margin of glass around the slide edge, like a real glass slide.
    edge = np.minimum(np.minimum(yy, 1 - yy), np.minimum(xx, 1 - xx))
    field = np.minimum(field, (edge - 0.03) * 8.0)
    return field.astype(np.float32)


def _class_map(
    rng: np.random.Generator, tissue: np.ndarray, label: int, cell_um: float, params: LayoutParams
) -> tuple[np.ndarray, dict[str, float]]:
    shape = tissue.shape
    mix = rng.dirichlet(_MIX[0 if params.shared_mix else label] * params.mix_concentration + 0.05)
    sigma = params.region_um / cell_um
    # Running argmax over per-class scores (never holds all score maps: large slides).
    best = np.full(shape, -np.inf, np.float32)
    classes = np.zeros(shape, np.uint8)
    for c, p in zip(_MIX_CLASSES, mix):
        score = np.log(p + 1e-6) + 1.6 * _smooth_noise(rng, shape, sigma)
        better = score > best
        classes[better] = c
        best = np.maximum(best, score, out=best)
        del score, better
    tumour_class = SLIDE_LABELS[label][1]
    if tumour_class is not None and tissue.any():
        frac = rng.uniform(*params.tumour_fraction)
        t = _smooth_noise(rng, shape, sigma * 1.6)
        threshold = np.quantile(t[tissue], 1.0 - frac)
        classes[(t > threshold) & tissue] = tumour_class
    classes[~tissue] = 0
    return classes, {TISSUE_CLASSES[int(c)]: float(p) for c, p in zip(_MIX_CLASSES, mix)}


def _pen_and_dust(
    rng: np.random.Generator, shape: tuple[int, int], cell_um: float, params: LayoutParams
) -> tuple[np.ndarray, np.ndarray]:
    hc, wc = shape
    alpha = np.zeros(shape, np.float32)
    ink = np.zeros(shape, np.uint8)
    if params.pen_marks:
        for _ in range(int(rng.integers(1, 4))):
            colour = int(rng.integers(0, len(PEN_INKS)))
            # A hand-drawn arc: an ellipse segment with wobble.
            cy, cx = rng.uniform(0.15, 0.85, 2) * (hc, wc)
            ry, rx = rng.uniform(0.08, 0.3, 2) * (hc, wc)
            t0 = rng.uniform(0, 2 * np.pi)
            t = np.linspace(t0, t0 + rng.uniform(1.0, 2 * np.pi), 4000)
            wobble = 1 + 0.05 * np.sin(t * rng.uniform(2, 6))
            py = np.clip(cy + ry * wobble * np.sin(t), 0, hc - 1).astype(int)
            px = np.clip(cx + rx * wobble * np.cos(t), 0, wc - 1).astype(int)
            stroke = np.zeros(shape, bool)
            stroke[py, px] = True
            width_cells = max(1, int(round(rng.uniform(120, 260) / cell_um / 2)))
            stroke = ndimage.binary_dilation(stroke, iterations=width_cells)
            a = float(rng.uniform(0.7, 0.95))
            alpha[stroke] = a
            ink[stroke] = colour
    if params.dust:
        n = int(rng.integers(5, 25))
        ys, xs = rng.integers(0, hc, n), rng.integers(0, wc, n)
        alpha[ys, xs] = np.maximum(alpha[ys, xs], rng.uniform(0.3, 0.8, n).astype(np.float32))
        ink[ys, xs] = 2
    return alpha, ink


def make_layout(
    rng: np.random.Generator,
    width: int,
    height: int,
    mpp: float,
    label: int,
    params: LayoutParams | None = None,
    cell_px: int = 16,
) -> SlideLayout:
    """Draw the ground-truth layout of one ``width x height`` slide at ``mpp``."""
    if label not in SLIDE_LABELS:
        raise ValueError(f"unknown slide label {label}; known: {sorted(SLIDE_LABELS)}")
    params = params or LayoutParams()
    shape = (int(np.ceil(height / cell_px)), int(np.ceil(width / cell_px)))
    cell_um = cell_px * mpp
    tissue_field = _tissue_field(rng, shape, params)
    classes, mix = _class_map(rng, tissue_field > 0, label, cell_um, params)
    alpha, ink = _pen_and_dust(rng, shape, cell_um, params)
    return SlideLayout(cell_px, tissue_field, classes, alpha, ink, label, mix)
