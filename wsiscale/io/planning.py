"""Open a slide, find its tissue and plan its tiles or regions: the one sequence every stage runs.

:func:`open_planned` (:func:`open_configured`, then :func:`plan_slide`) is what ``wsiscale info``,
tiling, embedding on the fly and the demo's slide table do with a slide; :func:`plan_regions` is the one region tiling (SLPD/HIPT regions of
``embed.region_size`` px at ``tiling.mpp``) and :func:`plan_region_patches` its ``g x g`` patches.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

import numpy as np

from wsiscale.config import TilingConfig
from wsiscale.io.slide import open_slide
from wsiscale.io.tiling import TilePlan, plan_tiles
from wsiscale.io.tissue import TissueMask, detect_slide_tissue

if TYPE_CHECKING:
    from wsiscale.config import WsiscaleConfig
    from wsiscale.io.slide_base import Slide


def open_configured(uri: str, cfg: "WsiscaleConfig", mpp: float | None = None) -> "Slide":
    """``uri`` opened with ``cfg.reader`` (backend, cuCIM import timeout) and ``cfg.storage`` (use as a context
    manager). Raises :class:`~wsiscale.io.errors.SlideError` subclasses naming the URI."""
    return open_slide(uri, backend=cfg.reader.backend, mpp=mpp, storage=cfg.storage,
                      cucim_timeout_s=cfg.reader.cucim_import_timeout_s)


def plan_slide(slide: "Slide", cfg: "WsiscaleConfig") -> tuple[TissueMask, TilePlan]:
    """``(tissue, tile plan)`` of an open slide with ``cfg.tissue`` and ``cfg.tiling``."""
    tissue = detect_slide_tissue(slide, cfg.tissue)
    return tissue, plan_tiles(slide, cfg.tiling, tissue)


@contextmanager
def open_planned(uri: str, cfg: "WsiscaleConfig", mpp: float | None = None
                 ) -> Iterator[tuple["Slide", TissueMask, TilePlan]]:
    """``(slide, tissue, tile plan)`` of ``uri`` (:func:`open_configured`, :func:`plan_slide`); the slide is
    closed after the block."""
    with open_configured(uri, cfg, mpp) as slide:
        yield (slide, *plan_slide(slide, cfg))


def plan_regions(slide: "Slide", tissue: TissueMask, cfg: "WsiscaleConfig") -> TilePlan:
    """The SLPD/HIPT regions of ``slide``: ``embed.region_size`` px tiles at ``tiling.mpp``, no overlap."""
    region = TilingConfig(**(cfg.tiling.model_dump() | {"tile_size": cfg.embed.region_size, "stride": None}))
    return plan_tiles(slide, region, tissue)


def plan_region_patches(regions: TilePlan, grid: int) -> TilePlan:
    """The ``grid x grid`` patches of every region of ``regions``, region-major then row-major.

    Patch ``k`` of region ``r`` is tile ``r * grid**2 + k``; its corner is the
    region corner plus ``(k % grid, k // grid) * extent / grid``.
    """
    if regions.read_size % grid or regions.tile_size % grid:
        raise ValueError(f"region read size {regions.read_size} / tile size {regions.tile_size} "
                         f"is not divisible by the grid {grid}")
    step = regions.extent / grid
    k = np.arange(grid * grid)
    dx = np.floor((k % grid) * step + 1e-9).astype(np.int64)
    dy = np.floor((k // grid) * step + 1e-9).astype(np.int64)
    x = (regions.x[:, None] + dx[None, :]).ravel()
    y = (regions.y[:, None] + dy[None, :]).ravel()
    return replace(regions, tile_size=regions.tile_size // grid, read_size=regions.read_size // grid,
                   extent=step, step=step, x=x, y=y, tissue=np.repeat(regions.tissue, grid * grid))
