"""Lossless JPEG tile pass-through: copy a slide's compressed tiles instead of decoding and re-encoding.

When a tile plan lines up with the slide's own JPEG tile grid - no resize,
tile side equal to the TIFF tile side, every tile corner on the grid of its
level - each output tile *is* one stored TIFF tile. Copying its bytes (made
a standalone JPEG: shared ``JPEGTables`` merged in, an Adobe marker added for
RGB-coded tiles) costs a file read instead of a decode plus an encode, and
loses nothing: decoding the copy gives exactly the pixels a reader returns.
That is checked on the first tile of every slide; on any mismatch the slide
falls back to decode + encode.

Typical hit: 20x scans (0.5 um/px) tiled at 0.5 um/px with 256 px tiles on a
256 px TIFF tile grid, or 40x scans tiled at level 0. Scanners with 240 px
tiles, or tiling that resizes, use the normal path.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import tifffile

from wsiscale.io.tiling import TilePlan, read_tile
from wsiscale.io.uri import is_local, local_path

if TYPE_CHECKING:
    from wsiscale.io.slide_base import Slide

log = logging.getLogger(__name__)

#: Adobe APP14 marker with transform 0: the three components are RGB, not YCbCr.
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


class JpegTileSource:
    """Standalone JPEG bytes of the stored tiles of one pyramid level.

    Build with :meth:`for_plan`, which returns None when the plan does not line
    up with the stored tiles (then decode + encode as usual).
    """

    def __init__(self, fh: BinaryIO, tiff: tifffile.TiffFile, page: tifffile.TiffPage, downsample: float) -> None:
        self._fh = fh
        self._tiff = tiff
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        self._cols = math.ceil(page.imagewidth / page.tilewidth)
        self._tile = page.tilewidth
        self._ds = downsample
        tables = page.jpegtables
        self._head = _SOI + (ADOBE_RGB if page.photometric == tifffile.PHOTOMETRIC.RGB else b"")
        self._tables = tables[2:-2] if tables else b""  # DQT/DHT segments without SOI/EOI

    @classmethod
    def for_plan(cls, slide: "Slide", plan: TilePlan) -> "JpegTileSource | None":
        """A source for ``plan`` if every tile of it is exactly one stored JPEG tile, else None."""
        if plan.needs_resize or len(plan) == 0:
            return None
        ds = float(slide.level_downsamples[plan.level])
        if plan.level > 0 and abs(ds - round(ds)) > 1e-9:
            return None  # non-integral downsample: level coordinates are backend-specific
        ds = float(round(ds)) if plan.level > 0 else 1.0
        if np.any(plan.x % (plan.tile_size * ds)) or np.any(plan.y % (plan.tile_size * ds)):
            return None
        if not is_local(slide.local):
            return None  # a remote slide read in place (tiffslide): per-tile range requests would not pay
        try:
            fh = open(local_path(slide.local), "rb")
        except OSError:
            return None
        try:
            tiff = tifffile.TiffFile(fh)
        except Exception as exc:  # noqa: BLE001 - not a plain TIFF for tifffile: no pass-through
            log.debug("%s: no JPEG pass-through (%s)", slide.uri, exc)
            fh.close()
            return None
        page = _level_page(tiff, slide.level_dimensions[plan.level])
        ok = (
            page is not None
            and page.is_tiled
            and page.compression == tifffile.COMPRESSION.JPEG
            and page.tilewidth == page.tilelength == plan.tile_size
            and page.samplesperpixel == 3
            and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
            and page.photometric in (tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.RGB)
        )
        if not ok:
            tiff.close()
            fh.close()
            return None
        source = cls(fh, tiff, page, ds)
        if not source._matches_reader(slide, plan):
            log.info("%s: stored JPEG tiles decode differently from the reader; re-encoding instead", slide.uri)
            source.close()
            return None
        return source

    def _matches_reader(self, slide: "Slide", plan: TilePlan) -> bool:
        import imagecodecs

        i = len(plan) // 2
        try:
            copied = imagecodecs.jpeg8_decode(self.tile_bytes(int(plan.x[i]), int(plan.y[i])))
        except Exception:  # noqa: BLE001
            return False
        return bool(np.array_equal(copied, read_tile(slide, plan, i)))

    def tile_bytes(self, x: int, y: int) -> bytes:
        """Standalone JPEG of the stored tile whose level-0 top-left corner is ``(x, y)``."""
        col = int(round(x / self._ds)) // self._tile
        row = int(round(y / self._ds)) // self._tile
        k = row * self._cols + col
        self._fh.seek(int(self._offsets[k]))
        data = self._fh.read(int(self._counts[k]))
        if not data.startswith(_SOI):
            raise ValueError(f"stored tile {k} is not a JPEG stream")
        return self._head + self._tables + data[2:]

    def close(self) -> None:
        self._tiff.close()
        self._fh.close()

    def __enter__(self) -> "JpegTileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _level_page(tiff: tifffile.TiffFile, dims: tuple[int, int]) -> tifffile.TiffPage | None:
    """The tiled page holding a pyramid level of ``(width, height)`` = ``dims``."""
    candidates = []
    for series in tiff.series:
        candidates.extend(level.keyframe for level in series.levels)
    candidates.extend(p for p in tiff.pages if isinstance(p, tifffile.TiffPage))
    for page in candidates:
        if page.is_tiled and (page.imagewidth, page.imagelength) == tuple(dims):
            return page
    return None
