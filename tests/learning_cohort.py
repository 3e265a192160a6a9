"""A cohort of region token grids built from the synthetic generator's layouts (no pixels rendered).

Each slide is :func:`wsiscale.synth.layout.make_layout` on a grid of cells, one cell per
patch (``cell_px`` level-0 pixels, 256 = a 128 um patch at 0.5 um/px). Regions are
``grid x grid`` windows of cells over tissue. The patch embedding of a cell stands in for an
imperfect frozen patch encoder: a fixed (seeded) vector per tissue class, picked among
``variants`` per-class variants, plus isotropic noise. With ``centred=True`` every class's
variants sum to zero around a shared offset (variant k and -k), so a class is visible in
the spread of its tokens but not in their mean: a linear pool of raw tokens, or an encoder
that is nearly linear (a randomly initialised ViT), sees little, an encoder that learned the
tissue types sees it.

:func:`make_cohort` returns the grids in memory with the ground truth (slide label, each
region's dominant tissue class and class shares); :func:`write_region_run` writes slides as a regions-mode
embedding run with the real writers (as ``tests/test_pretrain.py::_region_run`` does).
Used by ``tests/test_pretrain_learning.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsiscale.synth.layout import LayoutParams, make_layout
from wsiscale.synth.textures import N_CLASSES, TUMOUR_CLASSES


@dataclass
class CohortSpec:
    slides_per_label: int = 8
    labels: tuple[int, ...] = (0, 1, 2)
    cells: int = 80  # slide side in cells
    cell_px: int = 256
    mpp: float = 0.5
    grid: int = 8  # region side in cells (tokens)
    min_tissue: float = 0.5  # a region is kept when this share of its cells is tissue
    dim: int = 16
    variants: int = 2  # per-class token variants (modes of the patch encoder's output)
    centred: bool = True  # variants of a class are +-v around a shared offset
    class_scale: float = 1.0  # norm of a class variant, relative to the noise per dimension
    noise: float = 1.0
    offset: float = 0.5  # std of the offset shared by every class's variants (centred=True)
    slide_shift: float = 0.0  # std per dimension of a shift added to every token of a slide (scanner/stain batch)
    slide_warp: float = 0.0  # std of a per-slide linear mix of token dimensions, I + warp * N(0, 1/D)
    region_shift: float = 0.0  # std per dimension of a shift added to every token of a region (local stain, focus)
    subtype_angle: float = 0.0  # degrees: >0 makes solid tumour's variants glandular's turned by this angle (subtypes)
    layout: LayoutParams = field(default_factory=lambda: LayoutParams(region_um=700.0, dust=False,
                                                                      tumour_fraction=(0.02, 0.06)))


@dataclass
class Slide:
    slide_id: str
    label: int
    grids: np.ndarray  # [R, D, g, g] float32
    dominant: np.ndarray  # [R] dominant tissue class of each region (0 = glass)
    fractions: np.ndarray  # [R, N_CLASSES] class shares of each region's cells


def class_vectors(spec: CohortSpec, seed: int) -> np.ndarray:
    """``[N_CLASSES, variants, D]`` token means of each class's variants (fixed by ``seed``)."""
    rng = np.random.default_rng((seed, 7919))
    d = spec.dim
    if spec.centred:
        half = rng.normal(size=(N_CLASSES, (spec.variants + 1) // 2, d))
        half *= spec.class_scale * np.sqrt(d) / np.linalg.norm(half, axis=-1, keepdims=True)
        if spec.subtype_angle:  # two tumour subtypes a small turn apart: one slide's many regions tell them apart
            g, sd = TUMOUR_CLASSES
            u = rng.normal(size=half[g].shape)
            u -= (u * half[g]).sum(-1, keepdims=True) * half[g] / (half[g] ** 2).sum(-1, keepdims=True)
            u *= np.linalg.norm(half[g], axis=-1, keepdims=True) / np.linalg.norm(u, axis=-1, keepdims=True)
            a = np.deg2rad(spec.subtype_angle)
            half[sd] = np.cos(a) * half[g] + np.sin(a) * u
        v = np.concatenate([half, -half], axis=1)[:, : spec.variants]
        offset = rng.normal(size=d) * spec.offset
        return (v + offset).astype(np.float32)
    v = rng.normal(size=(N_CLASSES, spec.variants, d))
    v *= spec.class_scale * np.sqrt(d) / np.linalg.norm(v, axis=-1, keepdims=True)
    return v.astype(np.float32)


def make_slide(spec: CohortSpec, vectors: np.ndarray, label: int, seed: int, slide_id: str) -> Slide:
    rng = np.random.default_rng(seed)
    side = spec.cells * spec.cell_px
    lay = make_layout(rng, side, side, spec.mpp, label, spec.layout, cell_px=spec.cell_px)
    classes, tissue, g = lay.classes, lay.tissue, spec.grid
    nuisance = np.random.default_rng((seed, 104729))  # its own stream: the layout and tokens stay the same
    shift = spec.slide_shift * nuisance.normal(size=spec.dim)
    warp = np.eye(spec.dim) + spec.slide_warp * nuisance.normal(size=(spec.dim, spec.dim)) / np.sqrt(spec.dim)
    grids, dominant, fractions = [], [], []
    for i in range(0, classes.shape[0] - g + 1, g):
        for j in range(0, classes.shape[1] - g + 1, g):
            if tissue[i : i + g, j : j + g].mean() < spec.min_tissue:
                continue
            c = classes[i : i + g, j : j + g].astype(np.int64)
            k = rng.integers(0, spec.variants, size=c.shape)
            tok = vectors[c, k] + spec.noise * rng.normal(size=(g, g, spec.dim))  # [g, g, D]
            tok = tok @ warp + shift + spec.region_shift * nuisance.normal(size=spec.dim)
            grids.append(tok)
            counts = np.bincount(c.ravel(), minlength=N_CLASSES)
            fractions.append(counts / counts.sum())
            tc = counts.copy()
            tc[0] = 0  # the dominant tissue class (glass does not count)
            dominant.append(int(tc.argmax()))
    x = np.stack(grids) if grids else np.zeros((0, g, g, spec.dim))
    return Slide(slide_id, label, np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32),
                 np.array(dominant, np.int64), np.array(fractions, np.float32).reshape(-1, N_CLASSES))


def make_cohort(spec: CohortSpec, seed: int, prefix: str = "slide") -> list[Slide]:
    """``slides_per_label`` slides of each label (interleaved), every slide from its own seed."""
    vectors = class_vectors(spec, seed)
    out = []
    for n in range(spec.slides_per_label):
        for label in spec.labels:
            i = len(out)
            out.append(make_slide(spec, vectors, label, seed * 100_003 + i * 7 + (0 if prefix == "slide" else 50_000),
                                  f"{prefix}-{i:03d}"))
    return out


def write_region_run(run: str, slides: list[Slide]) -> None:
    """Write ``slides`` as a regions-mode embedding run with the real writers (float16 grids)."""
    import pyarrow as pa
    from embedding_runs import patch_table, write_slide

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.embedding import _region_table, embed_state

    state = embed_state(run, WsiscaleConfig())
    for s in slides:
        dim, grid = s.grids.shape[1], s.grids.shape[2]
        tokens = s.grids.transpose(0, 2, 3, 1).reshape(-1, dim)  # region-major [R * g * g, D]
        merged = patch_table(tokens)
        write_slide(state, s.slide_id, _region_table(s.slide_id, merged, dim, grid, pa.float16()),
                    tiles=merged.num_rows)
    state.consolidate()
