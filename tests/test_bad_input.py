"""Bad input: each case fails with a clear error that names the URI (or yields an empty plan)."""

from __future__ import annotations

import shutil

import pytest

from wsiscale.config import WsiscaleConfig
from wsiscale.io import (
    CorruptSlideError,
    EmptySlideError,
    MissingMppError,
    SlideNotFoundError,
    UnsupportedSlideError,
    detect_slide_tissue,
    open_slide,
    plan_tiles,
)
from wsiscale.summary import summarize_slide
from wsiscale.synth.layout import LayoutParams

BACKENDS = ["cucim", "openslide", "tiffslide"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_tiff_file(tmp_path, backend):
    bad = tmp_path / "notes.svs"
    bad.write_bytes(b"%PDF-1.7 this is a scanned requisition form, not a slide\n" * 20)
    with pytest.raises(UnsupportedSlideError) as exc:
        open_slide(bad, backend=backend)
    assert str(bad) in str(exc.value) and "not a TIFF" in str(exc.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_slide(tmp_path, slide_path, backend):
    data = slide_path.read_bytes()
    bad = tmp_path / "truncated.svs"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSlideError) as exc:
        open_slide(bad, backend=backend)
    msg = str(exc.value)
    assert str(bad) in msg and "truncated" in msg and "copy the slide again" in msg


def test_truncated_header(tmp_path, slide_path):
    bad = tmp_path / "header-only.svs"
    bad.write_bytes(slide_path.read_bytes()[:6])
    with pytest.raises((CorruptSlideError, UnsupportedSlideError)) as exc:
        open_slide(bad)
    assert str(bad) in str(exc.value)


def test_damaged_tile_data_is_reported_on_read(tmp_path, slide_path):
    """Bytes overwritten inside tile data (size intact): the read fails with the URI, not a crash."""
    import tifffile

    bad = tmp_path / "garbled.svs"
    shutil.copy(slide_path, bad)
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    i = len(offsets) // 2
    with open(bad, "r+b") as fh:
        fh.seek(offsets[i])
        fh.write(b"\x00" * counts[i])
    with open_slide(bad, backend="tiffslide") as s:
        n_cols = -(-s.dimensions[0] // 256)
        ty, tx = divmod(i, n_cols)
        with pytest.raises(CorruptSlideError) as exc:
            s.read_region((tx * 256, ty * 256), 0, (256, 256))
    assert str(bad) in str(exc.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_byte_file(tmp_path, backend):
    bad = tmp_path / "empty.svs"
    bad.touch()
    with pytest.raises(EmptySlideError) as exc:
        open_slide(bad, backend=backend)
    assert str(bad) in str(exc.value) and "zero bytes" in str(exc.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError) as exc:
        open_slide(missing)
    assert str(missing) in str(exc.value)


def test_slide_without_mpp(make_slide):
    path = make_slide("no-mpp", seed=5, write_mpp=False, width=4096, height=4096)
    for backend in BACKENDS:
        with open_slide(path, backend=backend) as s:
            assert s.mpp_or_none is None
            with pytest.raises(MissingMppError) as exc:
                _ = s.mpp
            assert str(path) in str(exc.value) and "mpp" in str(exc.value)
    with open_slide(path, mpp=0.5) as s:  # the documented fix works
        assert len(plan_tiles(s, WsiscaleConfig().tiling, detect_slide_tissue(s))) > 0


def test_slide_without_tissue_gives_empty_plan(make_slide):
    path = make_slide("glass-only", seed=6, width=4096, height=4096, layout=LayoutParams(tissue=False))
    with open_slide(path) as s:
        mask = detect_slide_tissue(s)
        assert mask.fraction == 0.0
        plan = plan_tiles(s, WsiscaleConfig().tiling, mask)
    assert len(plan) == 0 and plan.grid[0] * plan.grid[1] > 0


def test_summary_never_raises_for_bad_slides(tmp_path, make_slide):
    cfg = WsiscaleConfig()
    empty = tmp_path / "empty.svs"
    empty.touch()
    rows = [summarize_slide(str(u), cfg) for u in (empty, tmp_path / "missing.svs", make_slide("no-mpp", seed=5, write_mpp=False, width=4096, height=4096))]
    assert all(r["error"] for r in rows)
    assert "zero bytes" in rows[0]["error"] and "no such file" in rows[1]["error"] and "mpp" in rows[2]["error"]
    good = summarize_slide(str(make_slide("glass-only", seed=6, width=4096, height=4096, layout=LayoutParams(tissue=False))), cfg)
    assert good["error"] is None and good["tiles"] == 0 and good["tissue_fraction"] == 0.0


def test_bad_mpp_override(slide_path):
    with pytest.raises(ValueError, match="positive"):
        open_slide(slide_path, mpp=-1)


def test_out_of_range_level(slide_path):
    with open_slide(slide_path) as s, pytest.raises(ValueError, match="level 7"):
        s.read_region((0, 0), 7, (10, 10))


def test_unknown_backend(slide_path):
    with pytest.raises(ValueError, match="unknown reader backend"):
        open_slide(slide_path, backend="bioformats")
