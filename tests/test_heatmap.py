"""Heatmaps over slide thumbnails: colour maps, tile painting, the PNG figure, thumbnails of real slides."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from wsiscale.mil import heatmap
from wsiscale.mil.heatmap import colormap, heatmap_png, render_heatmap, slide_thumbnail, write_heatmap


def test_colormap_anchors_and_clipping():
    v = colormap(np.array([0.0, 0.5, 1.0, -3.0, 7.0, np.nan]))
    assert v.shape == (6, 3) and v.dtype == np.uint8
    assert np.abs(v[0].astype(int) - (68, 1, 84)).max() <= 1  # matplotlib viridis(0)
    assert np.abs(v[1].astype(int) - (33, 145, 140)).max() <= 2  # viridis(0.5) = (0.128, 0.567, 0.551)
    assert np.abs(v[2].astype(int) - (253, 231, 37)).max() <= 1  # viridis(1)
    assert v[3].tolist() == v[0].tolist() and v[4].tolist() == v[2].tolist() and v[5].tolist() == v[0].tolist()
    jet = colormap(np.array([0.0, 0.5, 1.0]), "jet")
    assert jet[0].tolist() == [0, 0, 128] and jet[2].tolist() == [128, 0, 0]
    # jet(0.5): red (0.5 - 0.35) / 0.31, green 1, blue (0.65 - 0.5) / 0.31
    assert jet[1].tolist() == [round(255 * 0.15 / 0.31), 255, round(255 * 0.15 / 0.31)]
    assert colormap(np.zeros((2, 5))).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="unknown colormap"):
        colormap(np.zeros(2), "rainbow")


def test_render_heatmap_paints_tile_rectangles():
    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    scale = 0.25  # 32 px level-0 tiles -> 8 px squares
    xs = np.array([0, 32, 128, 128, 192, 224, 400])
    ys = np.array([0, 0, 64, 64, 144, 0, 400])
    values = np.array([0.0, 1.0, 0.2, 0.6, 0.5, np.nan, 0.5])
    out = render_heatmap(thumb, scale, xs, ys, 32, values, alpha=0.5)

    def blend(box, value):
        colour = colormap(np.array(value)).astype(float)
        return np.rint(0.5 * thumb[box].astype(float) + 0.5 * colour).astype(np.uint8)

    expected = thumb.copy()
    boxes = [
        ((slice(0, 8), slice(0, 8)), 0.0),
        ((slice(0, 8), slice(8, 16)), 1.0),
        ((slice(16, 24), slice(32, 40)), 0.4),  # two tiles on the same square: their mean value
        ((slice(36, 40), slice(48, 56)), 0.5),  # partly below the thumbnail: clipped
    ]  # NaN tile (224, 0) and the tile outside the thumbnail (400, 400) paint nothing
    for box, value in boxes:
        expected[box] = blend(box, value)
    assert np.array_equal(out, expected)
    assert out.dtype == np.uint8 and out.shape == thumb.shape
    # alpha = 1 paints the pure colour; per-tile sizes are accepted
    solid = render_heatmap(thumb, scale, np.array([0, 40]), np.array([0, 0]), np.array([32, 8]),
                           np.array([1.0, 0.0]), alpha=1.0)
    assert (solid[:8, :8] == colormap(np.array(1.0))).all() and (solid[:2, 10:12] == colormap(np.array(0.0))).all()
    assert np.array_equal(solid[8:], thumb[8:])


def test_render_heatmap_adjacent_tiles_leave_no_gap():
    thumb = np.full((50, 50, 3), 255, np.uint8)
    xs, ys = np.meshgrid(np.arange(0, 1000, 100), np.arange(0, 1000, 100))
    out = render_heatmap(thumb, 0.047, xs.ravel(), ys.ravel(), 100, np.full(xs.size, 1.0), alpha=1.0)
    painted = (out != 255).any(axis=-1)
    assert painted[:47, :47].all() and not painted[47:].any() and not painted[:, 47:].any()


def test_heatmap_png_layout():
    rng = np.random.default_rng(1)
    thumb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    xs, ys = np.array([0, 64]), np.array([0, 64])
    panels = {"attention": np.array([0.0, 1.0]), "student P(tumour)": np.array([0.5, 0.25])}
    png = heatmap_png(thumb, 0.125, xs, ys, 64, panels, "slide-1")
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    pad = heatmap._PAD
    assert img.shape[1] == 3 * 40 + 4 * pad  # thumbnail + two panels side by side
    line = heatmap._text_height(heatmap._font())
    top = pad + line + pad + line
    assert img.shape[0] == top + 30 + pad + heatmap._BAR_HEIGHT + 2 + line + pad
    assert np.array_equal(img[top : top + 30, pad : pad + 40], thumb)
    second = img[top : top + 30, pad + 2 * (40 + pad) : pad + 2 * (40 + pad) + 40]
    assert np.array_equal(second, render_heatmap(thumb, 0.125, xs, ys, 64, panels["student P(tumour)"]))
    bar_top = top + 30 + pad
    bar_w = min(heatmap._BAR_WIDTH, img.shape[1] - 2 * pad)
    bar = img[bar_top + 5, pad : pad + bar_w]
    assert (img[bar_top + 5, pad + bar_w :] == 255).all()  # white right of the bar
    assert np.abs(bar[0].astype(int) - colormap(np.array(0.0))).max() <= 1
    assert np.abs(bar[-1].astype(int) - colormap(np.array(1.0))).max() <= 1


def test_write_heatmap(tmp_path):
    png = heatmap_png(np.zeros((8, 8, 3), np.uint8), 1.0, np.array([0]), np.array([0]), 4, {"a": np.array([1.0])}, "t")
    write_heatmap(str(tmp_path / "maps" / "s.png"), png)
    assert (tmp_path / "maps" / "s.png").read_bytes() == png
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["s.png"]


def test_slide_thumbnail_reads_a_pyramid_level(make_slide, monkeypatch):
    from wsiscale.io.slide_base import Slide

    path = make_slide("thumb-2k", width=2048, height=2048, label=1, seed=5)
    levels = []
    read_region = Slide.read_region

    def spy(self, location, level, size):
        levels.append(level)
        return read_region(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", spy)
    thumb, scale = slide_thumbnail(str(path), max_side=300)
    assert thumb.dtype == np.uint8 and thumb.ndim == 3 and max(thumb.shape[:2]) <= 300
    assert thumb.shape[:2] == (300, 300) and scale == thumb.shape[1] / 2048
    assert levels == [1]  # the 512 px level, not level 0
    assert thumb.mean() < 250  # tissue, not blank glass
    full, s = slide_thumbnail(str(path), max_side=4096)  # never upscaled
    assert full.shape[:2] == (2048, 2048) and s == 1.0

    # A level too large to read whole is reduced in bands: the same picture.
    levels.clear()
    monkeypatch.setattr(heatmap, "MAX_THUMBNAIL_SOURCE_PIXELS", 100_000)
    banded, scale2 = slide_thumbnail(path.as_uri(), max_side=300)
    assert banded.shape == thumb.shape and scale2 == scale and len(levels) > 1
    assert np.abs(banded.astype(int) - thumb.astype(int)).mean() < 2.0
