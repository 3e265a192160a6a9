"""Tile-level ground truth from the generator's truth files: tumour fractions by hand, on a real slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsiscale.synth.slide import load_truth_masks, truth_paths
from wsiscale.synth.truth import instance_labels, read_truth_masks, tile_tumour_fraction


def _hand_masks() -> dict[str, np.ndarray]:
    """4 x 4 cells of 16 px (a 64 x 64 px slide); tumour cells (row, col): (0, 0), (0, 1), (1, 1), (1, 2), (3, 3)."""
    tumour = np.zeros((4, 4), bool)
    tumour[0, 0] = tumour[0, 1] = tumour[1, 1] = tumour[1, 2] = tumour[3, 3] = True
    return {"tumour": tumour, "tissue": np.ones((4, 4), bool), "cell_px": np.int64(16)}


def test_tile_tumour_fraction_by_hand():
    tiles = [  # (x, y, size, expected share)
        (0, 0, 16, 1.0),  # exactly cell (0, 0)
        (8, 8, 16, 0.75),  # a quarter of cells (0,0) (0,1) (1,0) (1,1), three of them tumour
        (8, 16, 16, 0.5),  # halves of (1, 0) and (1, 1)
        (16, 0, 32, 0.75),  # cells (0,1) (0,2) (1,1) (1,2): three tumour
        (20, 4, 16, 208 / 256),  # (0,1): 12x12 px, (1,1): 12x4, (1,2): 4x4; (0,2) none
        (56, 56, 16, 0.25),  # 8 x 8 px of cell (3, 3) inside the grid, the rest outside
        (-8, -8, 16, 0.25),  # top-left quarter inside, on cell (0, 0)
        (100, -50, 16, 0.0),  # entirely outside
        (0, 0, 64, 5 / 16),  # the whole grid
        (32, 32, 0.0, 0.0),  # degenerate
    ]
    xs, ys, sizes, expected = (np.array(c, np.float64) for c in zip(*tiles))
    frac = tile_tumour_fraction(_hand_masks(), xs.astype(np.int64), ys.astype(np.int64), sizes)
    assert frac.dtype == np.float32 and frac.shape == (len(tiles),)
    np.testing.assert_allclose(frac, expected, atol=1e-6)
    # a scalar size broadcasts
    np.testing.assert_allclose(tile_tumour_fraction(_hand_masks(), np.array([0, 8]), np.array([0, 8]), 16.0),
                               [1.0, 0.75], atol=1e-6)


def test_tile_tumour_fraction_matches_pixel_counting():
    rng = np.random.default_rng(0)
    masks = {"tumour": rng.uniform(size=(9, 13)) < 0.4, "cell_px": np.int64(8)}
    pixels = np.kron(masks["tumour"], np.ones((8, 8), bool))  # [72, 104] level-0 pixel mask
    xs, ys = rng.integers(-20, 110, 200), rng.integers(-20, 80, 200)
    sizes = rng.integers(1, 40, 200)
    frac = tile_tumour_fraction(masks, xs, ys, sizes)
    for x, y, s, f in zip(xs, ys, sizes, frac):
        window = pixels[max(y, 0) : max(y + s, 0), max(x, 0) : max(x + s, 0)]
        assert abs(window.sum() / s**2 - f) < 1e-5


def test_instance_labels_and_missing_truth(tmp_path):
    masks = _hand_masks()
    path = tmp_path / "s.truth.npz"
    np.savez_compressed(path, **masks)
    labels = instance_labels(path.as_uri(), np.array([0, 8, 20, 56]), np.array([0, 16, 4, 56]), 16)
    assert labels.dtype == np.int8 and labels.tolist() == [1, 1, 1, 0]  # 1.0, 0.5 (>= 0.5), 0.81, 0.25
    assert instance_labels(str(path), np.array([8, 20]), np.array([16, 4]), 16, threshold=0.6).tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match="gone.truth.npz.*truth files"):
        read_truth_masks((tmp_path / "gone.truth.npz").as_uri())


def test_fractions_on_a_generated_slide_add_up(make_slide):
    path = make_slide("truth-2k", width=2048, height=2048, label=1, seed=21)
    masks = load_truth_masks(path)
    npz = truth_paths(path)[0]
    for uri in (Path(npz).as_uri(), str(npz)):
        got = read_truth_masks(uri)
        assert set(got) == set(masks) and all(np.array_equal(got[k], masks[k]) for k in masks)
    cell = int(masks["cell_px"])
    assert masks["tumour"].shape == (2048 // cell, 2048 // cell) and masks["tumour"].any()
    # A 300 px tiling overhangs the 2048 px slide: area-weighted, the tiles hold all the tumour area.
    xs, ys = (a.ravel() for a in np.meshgrid(np.arange(0, 2048, 300), np.arange(0, 2048, 300)))
    frac = tile_tumour_fraction(masks, xs, ys, 300)
    assert np.isclose((frac.astype(np.float64) * 300**2).sum(), masks["tumour"].sum() * cell**2, rtol=1e-5)
    # An exact 256 px tiling: the mean fraction is the mask's tumour share.
    xs, ys = (a.ravel() for a in np.meshgrid(np.arange(0, 2048, 256), np.arange(0, 2048, 256)))
    frac = tile_tumour_fraction(masks, xs, ys, 256)
    assert np.isclose(frac.mean(), masks["tumour"].mean(), atol=1e-6)
    assert 0 < (frac >= 0.5).sum() < len(frac)
