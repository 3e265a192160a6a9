"""Tile-grid planning at a target resolution.

A plan says, for one slide, which pyramid level to read, how many pixels to
read per tile there, whether to resize, and the level-0 corner of every kept
tile. Level choice: the coarsest level that is at least as fine as the target
(within ``mpp_tolerance``), so tiles are only ever downsampled; when a level
matches the target within tolerance it is read as-is (no resize). E.g. a
0.25 um/px slide with levels at 0.25/1.0/4.0 tiled at 0.5 um/px x 256 px reads
512 px at level 0 and halves it; at 1.0 um/px it reads level 1 directly.

Grid: tiles of ``extent`` level-0 pixels every ``step`` level-0 pixels, from
the top-left corner, entirely inside the slide:
``n = floor((W - extent) / step) + 1``, ``x_i = floor(i * step)``.
Tiles with less than ``min_tissue`` tissue (fraction of the tile's box in the
tissue mask) are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from wsiscale.config import TilingConfig
from wsiscale.io.tissue import TissueMask

if TYPE_CHECKING:
    from wsiscale.io.slide_base import Slide


def choose_level(level_mpps: list[float] | tuple[float, ...], target_mpp: float, tolerance: float = 0.1) -> int:
    """Index of the coarsest level with mpp <= ``target_mpp * (1 + tolerance)`` (0 if none)."""
    best = 0
    for i, m in enumerate(level_mpps):
        if m <= target_mpp * (1.0 + tolerance) and m >= level_mpps[best]:
            best = i
    return best


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one slide at one resolution.

    Attributes:
        uri: slide URI.
        target_mpp: requested microns per pixel of the output tiles.
        tile_size: output tile side (pixels).
        level: pyramid level read.
        level_mpp: microns per pixel of that level.
        read_size: pixels read per tile side at ``level``.
        extent: tile side in level-0 pixels.
        step: grid step in level-0 pixels.
        grid: ``(rows, cols)`` of the full grid before tissue filtering.
        x, y: ``[N]`` int64 level-0 top-left corners of the kept tiles.
        tissue: ``[N]`` float32 tissue fraction of each kept tile.
    """

    uri: str
    target_mpp: float
    tile_size: int
    level: int
    level_mpp: float
    read_size: int
    extent: float
    step: float
    grid: tuple[int, int]
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    tissue: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.tile_size

    @property
    def effective_mpp(self) -> float:
        """Actual microns per pixel of the output tiles."""
        return self.level_mpp * self.read_size / self.tile_size


def plan_grid(
    uri: str,
    dimensions: tuple[int, int],
    level_downsamples: tuple[float, ...] | list[float],
    mpp: float,
    cfg: TilingConfig,
    tissue: TissueMask | None = None,
) -> TilePlan:
    """Plan tiles from slide geometry (see the module docstring for the rules).

    Args:
        uri: slide URI (recorded in the plan).
        dimensions: level-0 ``(width, height)``.
        level_downsamples: downsample of each level.
        mpp: level-0 microns per pixel.
        cfg: target mpp, tile size, stride, tissue threshold, tolerance.
        tissue: tissue mask; None keeps every tile (tissue fraction reported as 1).
    """
    level_mpps = [mpp * d for d in level_downsamples]
    level = choose_level(level_mpps, cfg.mpp, cfg.mpp_tolerance)
    level_mpp = level_mpps[level]
    if abs(level_mpp / cfg.mpp - 1.0) <= cfg.mpp_tolerance:
        read_size = cfg.tile_size
    else:
        read_size = max(1, int(round(cfg.tile_size * cfg.mpp / level_mpp)))
    ds = float(level_downsamples[level])
    extent = read_size * ds
    step = extent * cfg.step / cfg.tile_size
    w, h = dimensions
    cols = int(math.floor((w - extent) / step + 1e-9)) + 1 if w >= extent else 0
    rows = int(math.floor((h - extent) / step + 1e-9)) + 1 if h >= extent else 0
    xs = np.floor(np.arange(cols) * step + 1e-9).astype(np.int64)
    ys = np.floor(np.arange(rows) * step + 1e-9).astype(np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    x, y = gx.ravel(), gy.ravel()
    if tissue is None:
        frac = np.ones(x.size, np.float32)
    else:
        frac = tissue.box_fractions(x, y, extent)
    keep = frac >= cfg.min_tissue if tissue is not None else np.ones(x.size, bool)
    if tissue is not None and cfg.min_tissue > 0:
        keep &= frac > 0
    return TilePlan(
        uri=uri,
        target_mpp=cfg.mpp,
        tile_size=cfg.tile_size,
        level=level,
        level_mpp=level_mpp,
        read_size=read_size,
        extent=extent,
        step=step,
        grid=(rows, cols),
        x=x[keep],
        y=y[keep],
        tissue=frac[keep],
    )


def plan_tiles(slide: "Slide", cfg: TilingConfig, tissue: TissueMask | None = None) -> TilePlan:
    """Plan the tiles of an open slide (needs its mpp: raises MissingMppError otherwise)."""
    mpp = float(np.mean(slide.mpp))
    return plan_grid(slide.uri, slide.dimensions, slide.level_downsamples, mpp, cfg, tissue)


def read_tile(slide: "Slide", plan: TilePlan, index: int) -> np.ndarray:
    """Pixels of tile ``index`` of ``plan``: ``[tile_size, tile_size, 3]`` uint8."""
    region = slide.read_region((int(plan.x[index]), int(plan.y[index])), plan.level, (plan.read_size, plan.read_size))
    if plan.needs_resize:
        from PIL import Image

        resample = Image.Resampling.BOX if plan.read_size > plan.tile_size else Image.Resampling.BILINEAR
        region = np.asarray(Image.fromarray(region).resize((plan.tile_size, plan.tile_size), resample))
    return region
