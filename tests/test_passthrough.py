"""JPEG pass-through: stored tiles copied as standalone JPEGs decode exactly to what the readers return.

Covers both ways slides store JPEG tiles: self-contained YCbCr tiles (our
generator) and Aperio-style RGB-coded abbreviated streams with shared
``JPEGTables`` and no Adobe marker (built here with tifffile from real
libjpeg-turbo output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsiscale.config import TilingConfig
from wsiscale.data.tiles import iter_tile_tables
from wsiscale.io import open_slide, plan_tiles, read_tile
from wsiscale.io.passthrough import JpegTileSource


def _split_tables(jpeg: bytes) -> tuple[bytes, bytes]:
    """Full JPEG -> (tables stream SOI+DQT/DHT+EOI, abbreviated stream without tables or APP markers)."""
    assert jpeg[:2] == b"\xff\xd8"
    i, tables, rest = 2, b"", b""
    while True:
        marker = jpeg[i : i + 2]
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        segment = jpeg[i : i + 2 + length]
        if marker == b"\xff\xda":  # SOS: entropy-coded data follows to the end
            rest += jpeg[i:]
            break
        if marker in (b"\xff\xdb", b"\xff\xc4"):
            tables += segment
        elif not (0xE0 <= marker[1] <= 0xEF):  # drop APPn (JFIF/Adobe), keep SOF/DRI
            rest += segment
        i += 2 + length
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + rest


def _aperio_rgb_jpeg_tiff(path: Path, image: np.ndarray, tile: int = 256) -> None:
    import imagecodecs

    h, w, _ = image.shape
    tiles, tables = [], None
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            full = bytes(imagecodecs.jpeg8_encode(block, level=85, colorspace="RGB", outcolorspace="RGB"))
            t, abbreviated = _split_tables(full)
            assert tables in (None, t)  # libjpeg's standard tables: shared by every tile
            tables = t
            tiles.append(abbreviated)
    desc = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        tw.write(iter(tiles), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                 photometric="rgb", jpegtables=tables, description=desc)
    with tifffile.TiffFile(path, mode="r+b") as tf:  # tifffile labels JPEG as YCbCr; Aperio's RGB JPEG says RGB
        page = tf.pages[0]
        page.tags["PhotometricInterpretation"].overwrite(int(tifffile.PHOTOMETRIC.RGB))
        if "YCbCrSubSampling" in page.tags:
            page.tags["YCbCrSubSampling"].overwrite((1, 1))


@pytest.fixture(scope="module")
def aperio_rgb(tmp_path_factory, bank) -> Path:
    from wsiscale.synth.render import TileRenderer  # noqa: F401 - texture source for a realistic image

    rng = np.random.default_rng(4)
    img = np.clip(rng.normal([200, 150, 190], 30, (1536, 2048, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("aperio") / "rgb-jpeg.svs"
    _aperio_rgb_jpeg_tiff(path, img)
    return path


def test_split_and_merge_round_trip():
    import imagecodecs

    tile = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    full = bytes(imagecodecs.jpeg8_encode(tile, level=90))
    tables, abbreviated = _split_tables(full)
    assert b"\xff\xdb" not in abbreviated[:200] and b"\xff\xdb" in tables
    merged = b"\xff\xd8" + tables[2:-2] + abbreviated[2:]
    assert np.array_equal(imagecodecs.jpeg8_decode(merged), imagecodecs.jpeg8_decode(full))


@pytest.mark.parametrize("backend", ["cucim", "openslide", "tiffslide"])
def test_aperio_rgb_tiles_pass_through_exactly(aperio_rgb, backend):
    import imagecodecs

    with tifffile.TiffFile(aperio_rgb) as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.jpegtables is not None
    with open_slide(aperio_rgb, backend=backend) as slide:
        plan = plan_tiles(slide, TilingConfig(mpp=0.5, tile_size=256))
        assert len(plan) == 48
        with JpegTileSource.for_plan(slide, plan) as source:
            for i in range(len(plan)):
                copied = imagecodecs.jpeg8_decode(source.tile_bytes(int(plan.x[i]), int(plan.y[i])))
                assert np.array_equal(copied, read_tile(slide, plan, i)), (backend, i)
        # the stored bytes are copied as they are (no Adobe marker -> YCbCr decode would shift colours)
        with JpegTileSource.for_plan(slide, plan) as source:
            data = source.tile_bytes(0, 0)
            assert data.startswith(b"\xff\xd8\xff\xeeAdobe"[:4])


def test_generated_slide_pass_through_and_fallbacks(slide_path):
    import imagecodecs

    with open_slide(slide_path) as slide:
        plan = plan_tiles(slide, TilingConfig(mpp=0.5, tile_size=256))
        source = JpegTileSource.for_plan(slide, plan)
        assert source is not None
        tables = list(iter_tile_tables(slide, plan, "s", 64, "jpeg", 90, source))
        source.close()
        images = [b for t in tables for b in t.column("image").to_pylist()]
        assert len(images) == len(plan)
        for i in range(0, len(plan), max(1, len(plan) // 20)):
            assert np.array_equal(imagecodecs.jpeg8_decode(images[i]), read_tile(slide, plan, i))
        # not on the stored grid: resized, shifted by a stride, other tile size -> no pass-through
        assert JpegTileSource.for_plan(slide, plan_tiles(slide, TilingConfig(mpp=1.0, tile_size=256))) is None
        assert JpegTileSource.for_plan(slide, plan_tiles(slide, TilingConfig(mpp=0.5, tile_size=256, stride=128))) is None
        assert JpegTileSource.for_plan(slide, plan_tiles(slide, TilingConfig(mpp=0.5, tile_size=224))) is None
        # a coarser level whose tiles also line up: 2.0 um/px reads level 1 (downsample 4) as stored
        coarse = plan_tiles(slide, TilingConfig(mpp=2.0, tile_size=256, min_tissue=0.0))
        if coarse.level == 1 and len(coarse):
            with JpegTileSource.for_plan(slide, coarse) as src:
                assert np.array_equal(imagecodecs.jpeg8_decode(src.tile_bytes(int(coarse.x[0]), int(coarse.y[0]))),
                                      read_tile(slide, coarse, 0))
