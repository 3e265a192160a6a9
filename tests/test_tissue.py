"""Tissue detection against the generator's ground truth, and its building blocks by hand."""

from __future__ import annotations

import numpy as np
import pytest

from wsiscale.config import TissueConfig
from wsiscale.io import detect_slide_tissue, detect_tissue, open_slide
from wsiscale.io.tissue import TissueMask, ink_mask, otsu_threshold, rgb_to_hsv
from wsiscale.synth.layout import LayoutParams
from wsiscale.synth.slide import load_truth_masks


def truth_on_mask_grid(path, mask: TissueMask) -> np.ndarray:
    gt = load_truth_masks(path)
    tissue, cell = gt["tissue"], int(gt["cell_px"])
    h, w = mask.mask.shape
    yy = np.clip(((np.arange(h) + 0.5) * mask.downsample / cell).astype(int), 0, tissue.shape[0] - 1)
    xx = np.clip(((np.arange(w) + 0.5) * mask.downsample / cell).astype(int), 0, tissue.shape[1] - 1)
    return tissue[yy][:, xx]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize(
    "name, kw",
    [
        ("normal", dict(label=0, seed=21)),
        ("glandular", dict(label=1, seed=22)),
        ("solid-pen", dict(label=2, seed=23, layout=LayoutParams(pen_marks=True))),
        ("normal-pen", dict(label=0, seed=24, layout=LayoutParams(pen_marks=True, tissue_pieces=(3, 3)))),
    ],
)
def test_tissue_iou_against_ground_truth(make_slide, name, kw):
    path = make_slide(f"tissue-{name}", **kw)
    with open_slide(path) as s:
        mask = detect_slide_tissue(s)
    assert mask.mpp == pytest.approx(8.0, rel=0.05)
    truth = truth_on_mask_grid(path, mask)
    assert truth.mean() > 0.1  # the slide has tissue to find
    assert iou(mask.mask, truth) >= 0.9


def test_pen_on_glass_is_not_tissue():
    rgb = np.full((200, 200, 3), 240, np.uint8)
    rgb[50:60, 20:180] = (60, 84, 204)  # blue marker over glass
    rgb[120:130, 20:180] = (60, 160, 80)  # green marker
    rgb[150:160, 20:180] = (30, 30, 36)  # black marker
    assert ink_mask(rgb)[55, 100] and ink_mask(rgb)[125, 100] and ink_mask(rgb)[155, 100]
    mask = detect_tissue(rgb, mpp=8.0, cfg=TissueConfig())
    assert not mask.mask.any()


def test_empty_slide_noise_is_not_tissue():
    rng = np.random.default_rng(0)
    rgb = np.clip(240 + rng.normal(0, 3, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert detect_tissue(rgb, mpp=8.0).fraction == 0.0


def test_hsv_by_hand():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [200, 100, 150]]], np.uint8)
    h, s, v = rgb_to_hsv(rgb)
    assert h[0, :3] == pytest.approx([0, 120, 240])
    assert s[0, 3] == 0 and v[0, 3] == pytest.approx(128 / 255)
    # (200, 100, 150): max R, H = 60 * ((G - B) / (max - min) mod 6) = 60 * (-0.5 mod 6) = 330
    assert h[0, 4] == pytest.approx(330.0)
    assert s[0, 4] == pytest.approx(0.5)


def test_otsu_by_hand():
    # Two spikes at 0.1 and 0.7: any threshold between them maximises between-class variance;
    # the first maximal bin edge after 0.1 is returned.
    values = np.array([0.1] * 50 + [0.7] * 50)
    t = otsu_threshold(values, bins=10)
    assert 0.1 < t <= 0.7


def test_box_fractions_by_hand():
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[0, 1] = m[1, 0] = True  # 3 of the top-left 2x2 block
    mask = TissueMask(m, downsample=10.0)
    # Boxes of 20 level-0 px = 2x2 mask px.
    fr = mask.box_fractions(np.array([0, 20, 0, 5]), np.array([0, 0, 20, 0]), 20.0)
    # The last box [5, 25) spans mask columns 0..2 (outward rounding): 3 x 2 = 6 px, 3 on tissue.
    assert fr.tolist() == pytest.approx([0.75, 0.0, 0.0, 0.5])


def test_fast_morphology_equals_scipy_reference():
    """The OpenCV morphology gives exactly the Euclidean-disk sets of the scipy EDT definitions."""
    from scipy import ndimage

    from wsiscale.io import tissue as T

    rng = np.random.default_rng(1)
    for _ in range(3):
        m = ndimage.uniform_filter(rng.random((200, 260)), 9) > 0.5
        for r in (3.5, 20.3):  # disk kernel path and distance-transform path
            assert np.array_equal(T._dilate(m, r), ndimage.distance_transform_edt(~m) <= r)
            pad = np.pad(m, 1, constant_values=True)
            assert np.array_equal(T._erode(m, r), (ndimage.distance_transform_edt(pad) > r)[1:-1, 1:-1])
        assert np.array_equal(T._holes(m), ndimage.binary_fill_holes(m) & ~m)
        lab, n = ndimage.label(m)
        sizes = ndimage.sum_labels(m, lab, np.arange(1, n + 1))
        assert np.array_equal(T._area_filter(m, 30), np.r_[False, sizes >= 30][lab])
        ink = np.zeros_like(m)
        ink[50:60, 40:200] = True
        assert np.array_equal(T._closing_near(m, ink, 6.0), T._closing(m, 6.0) & ink)
