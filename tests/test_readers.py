"""All three reader backends on the same generated SVS: geometry, mpp and pixels agree."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from wsiscale.io import available_backends, open_slide
from wsiscale.io.tiling import choose_level

BACKENDS = ["cucim", "openslide", "tiffslide"]


@pytest.fixture(scope="module")
def level0(slide_path):
    return tifffile.imread(slide_path, level=0).squeeze()


def test_all_backends_installed():
    assert set(BACKENDS) <= set(available_backends())


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_geometry_and_mpp(slide_path, backend):
    with open_slide(slide_path, backend=backend) as s:
        assert s.backend == backend
        assert s.dimensions == (6144, 5120)
        assert s.level_dimensions == ((6144, 5120), (1536, 1280))
        assert s.level_downsamples == pytest.approx((1.0, 4.0))
        assert s.mpp == (0.5, 0.5)
        assert s.mpp_source == "aperio"
        assert s.info().vendor == "aperio"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_decoded_tiff(slide_path, level0, backend):
    """Level-0 reads equal tifffile's decode of the same JPEG tiles (same libjpeg: exact or within 2)."""
    boxes = [((0, 0), (256, 256)), ((3000, 2000), (256, 256)), ((1234, 567), (300, 200))]
    with open_slide(slide_path, backend=backend) as s:
        for (x, y), (w, h) in boxes:
            got = s.read_region((x, y), 0, (w, h))
            assert got.shape == (h, w, 3) and got.dtype == np.uint8
            ref = level0[y : y + h, x : x + w]
            assert np.abs(got.astype(int) - ref).max() <= 2, (backend, x, y)


def test_backends_agree_with_each_other(slide_path):
    reads = {}
    for b in BACKENDS:
        with open_slide(slide_path, backend=b) as s:
            reads[b] = [
                s.read_region((2048, 1024), 1, (400, 300)),
                s.read_region((6000, 5000), 0, (256, 256)),  # crosses the slide edge: padded white
                s.thumbnail(512),
            ]
    for b in BACKENDS[1:]:
        for a, c in zip(reads["openslide"], reads[b]):
            assert a.shape == c.shape
            assert np.abs(a.astype(int) - c).max() <= 2, b
    edge = reads["openslide"][1]
    assert (edge[120:, :] == 255).all() and (edge[:, 144:] == 255).all()
    assert reads["openslide"][2].shape == (427, 512, 3)


def test_mpp_of_a_025_slide(tmp_path):
    """A 0.25 um/px slide (its own texture bank) reports 0.25 in every backend."""
    from wsiscale.synth.cohort import cached_texture_bank, load_bank
    from wsiscale.synth.slide import SlideSpec, generate_slide

    bank = load_bank(cached_texture_bank(0.25, 256, 1, seed=0), 0.25)
    path = tmp_path / "hi-res.svs"
    generate_slide(SlideSpec("hi-res", 4096, 4096, mpp=0.25, seed=3), bank, path)
    for b in BACKENDS:
        with open_slide(path, backend=b) as s:
            assert s.mpp == (0.25, 0.25)
            assert s.level_mpp(1) == pytest.approx(1.0)


def test_mpp_override_wins(slide_path):
    with open_slide(slide_path, backend="tiffslide", mpp=0.26) as s:
        assert s.mpp == (0.26, 0.26)
        assert s.mpp_source == "override"


@pytest.mark.parametrize(
    "target, expected",
    [(0.25, 0), (0.5, 0), (0.54, 0), (1.0, 0), (2.0, 1), (2.1, 1), (4.0, 1), (8.0, 2), (100.0, 2)],
)
def test_choose_level(target, expected):
    # Level mpps of a 0.5 um/px slide with downsample-4 pyramid.
    assert choose_level([0.5, 2.0, 8.0], target, tolerance=0.1) == expected
