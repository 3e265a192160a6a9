"""Resolution parsing from every metadata source, by hand and on real TIFF files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from wsiscale.io import open_slide
from wsiscale.io.mpp import mpp_from_aperio, mpp_from_ome, mpp_from_properties, mpp_from_resolution


def test_aperio_description():
    desc = "Aperio Image Library v12.0.15\r\n46000x32914 [0,100 46000x32814] (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = 0.4990|Date = 12/29/09"
    assert mpp_from_aperio(desc) == pytest.approx(0.499)
    assert mpp_from_aperio("Aperio Image Library v12\r\n100x100|AppMag = 20") is None
    assert mpp_from_aperio("ImageJ=1.52|MPP = 0.5") is None  # only Aperio descriptions


def test_ome_physical_size_with_units():
    xml = '<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.26" PhysicalSizeYUnit="µm"/></Image></OME>'
    assert mpp_from_ome(xml) == pytest.approx((0.25, 0.26))
    assert mpp_from_ome('<OME><Pixels PhysicalSizeX="0.5"/></OME>') == pytest.approx((0.5, 0.5))


def test_tiff_resolution_units():
    assert mpp_from_resolution(20000.0, 20000.0, 3) == pytest.approx((0.5, 0.5))  # pixels per cm
    assert mpp_from_resolution(101600.0, 101600.0, 2) == pytest.approx((0.25, 0.25))  # pixels per inch
    assert mpp_from_resolution(72.0, 72.0, 2) is None  # 72 dpi default = 352.8 um/px: not a measurement
    assert mpp_from_resolution(20000.0, 20000.0, 1) is None  # no unit


def test_backend_properties():
    assert mpp_from_properties({"openslide.mpp-x": "0.2528", "openslide.mpp-y": "0.2529"}) == pytest.approx((0.2528, 0.2529))
    assert mpp_from_properties({"tiffslide.mpp-x": "0.5"}) == (0.5, 0.5)
    assert mpp_from_properties({"openslide.mpp-x": "garbage"}) is None


def _generic_tiff(path, **kw):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1024, 1536, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None, **kw)
    return img


@pytest.mark.parametrize("backend", ["cucim", "openslide", "tiffslide"])
def test_generic_tiff_resolution_tags(tmp_path, backend):
    """A plain tiled TIFF (no vendor description) with resolution in pixels/cm: mpp from the tags."""
    path = tmp_path / "generic.tif"
    img = _generic_tiff(path, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    with open_slide(path, backend=backend) as s:
        assert s.mpp == pytest.approx((0.25, 0.25))
        assert s.mpp_source == "tiff-resolution"
        assert s.info().vendor == "generic-tiff"
        assert np.array_equal(s.read_region((300, 200), 0, (256, 128)), img[200:328, 300:556])


def test_generic_tiff_without_resolution_needs_override(tmp_path):
    path = tmp_path / "bare.tif"
    _generic_tiff(path)
    with open_slide(path, backend="tiffslide") as s:
        assert s.mpp_or_none is None
    with open_slide(path, backend="tiffslide", mpp=0.5) as s:
        assert s.mpp == (0.5, 0.5)
