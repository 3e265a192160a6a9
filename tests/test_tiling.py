"""Tile-grid planning: counts and coordinates against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsiscale.config import TilingConfig
from wsiscale.io import detect_slide_tissue, open_slide, plan_grid, plan_tiles, read_tile
from wsiscale.io.tissue import TissueMask


def brute_force_grid(width, height, extent, step):
    """Every top-left corner on the step lattice whose tile fits inside the slide."""
    out = []
    y = 0.0
    while y + extent <= height + 1e-6:
        x = 0.0
        while x + extent <= width + 1e-6:
            out.append((math.floor(x + 1e-9), math.floor(y + 1e-9)))
            x += step
        y += step
    return out


@pytest.mark.parametrize(
    "mpp0, downsamples, target, tile, stride, exp_level, exp_read",
    [
        (0.5, (1, 4, 16), 0.5, 256, None, 0, 256),   # exact level 0
        (0.25, (1, 4, 16), 0.5, 256, None, 0, 512),  # 40x slide -> read 512 and halve
        (0.5, (1, 4, 16), 2.0, 224, None, 1, 224),   # exact level 1
        (0.5, (1, 4, 16), 1.0, 256, 128, 0, 512),    # between levels: finer level, resize
        (0.5, (1, 4, 16), 0.52, 256, None, 0, 256),  # within tolerance: no resize
        (0.5, (1, 4, 16), 0.5, 4096, None, 0, 4096),  # SLPD regions
        (0.2525, (1, 4.0003, 16.001), 0.5, 256, None, 0, 507),  # odd mpp and downsamples
    ],
)
def test_plan_matches_independent_grid(mpp0, downsamples, target, tile, stride, exp_level, exp_read):
    width, height = 20000, 13001
    cfg = TilingConfig(mpp=target, tile_size=tile, stride=stride)
    plan = plan_grid("file:///x.svs", (width, height), downsamples, mpp0, cfg)
    assert plan.level == exp_level
    assert plan.read_size == exp_read
    extent = exp_read * downsamples[exp_level]
    step = extent * (stride or tile) / tile
    expected = brute_force_grid(width, height, extent, step)
    assert len(plan) == len(expected) == plan.grid[0] * plan.grid[1]
    assert list(zip(plan.x.tolist(), plan.y.tolist())) == expected
    # Inside the slide.
    assert (plan.x >= 0).all() and (plan.y >= 0).all()
    assert (plan.x + plan.extent <= width + 1e-6).all() and (plan.y + plan.extent <= height + 1e-6).all()
    assert plan.effective_mpp == pytest.approx(target, rel=cfg.mpp_tolerance)


def test_slide_smaller_than_tile_gives_empty_plan():
    plan = plan_grid("file:///tiny.svs", (300, 300), (1.0,), 0.5, TilingConfig(tile_size=4096))
    assert len(plan) == 0 and plan.grid == (0, 0)


def test_tissue_threshold_respected(slide_path):
    cfg = TilingConfig(min_tissue=0.5)
    with open_slide(slide_path) as s:
        mask = detect_slide_tissue(s)
        plan = plan_tiles(s, cfg, mask)
        everything = plan_tiles(s, TilingConfig(min_tissue=0.0))
    assert 0 < len(plan) < len(everything) == everything.grid[0] * everything.grid[1]
    # Independent tissue fraction per grid tile, by slicing the mask directly.
    d = mask.downsample
    kept = set(zip(plan.x.tolist(), plan.y.tolist()))
    for x, y in zip(everything.x.tolist(), everything.y.tolist()):
        x0, y0 = int(np.floor(x / d)), int(np.floor(y / d))
        x1, y1 = int(np.ceil((x + plan.extent) / d)), int(np.ceil((y + plan.extent) / d))
        frac = mask.mask[y0:y1, x0:x1].mean()
        assert ((x, y) in kept) == (frac >= 0.5), (x, y, frac)
    assert (plan.tissue >= 0.5).all()


def test_read_tile_shapes(slide_path):
    with open_slide(slide_path, backend="openslide") as s:
        for cfg in (TilingConfig(mpp=0.5), TilingConfig(mpp=1.0), TilingConfig(mpp=2.0, tile_size=224)):
            plan = plan_tiles(s, cfg, TissueMask(np.ones((10, 10), bool), downsample=1000.0))
            tile = read_tile(s, plan, len(plan) // 2)
            assert tile.shape == (cfg.tile_size, cfg.tile_size, 3)
    # A resized read equals the box-downsampled full-resolution read.
    with open_slide(slide_path, backend="openslide") as s:
        plan = plan_tiles(s, TilingConfig(mpp=1.0), None)
        i = len(plan) // 2
        tile = read_tile(s, plan, i).astype(int)
        full = s.read_region((int(plan.x[i]), int(plan.y[i])), 0, (512, 512)).astype(int)
        ref = full.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(tile - ref).max() <= 1
