"""Stream level-0 tiles into a pyramidal, tiled-JPEG TIFF laid out like an Aperio SVS.

Layout written (what OpenSlide's ``aperio`` driver, tifffile/tiffslide's SVS
series parser and cuCIM expect from a real scanner):

* page 0: level 0, tiled JPEG, ImageDescription ``Aperio Image Library ...|MPP = ...``
* page 1: thumbnail, stripped JPEG
* pages 2..: lower levels (downsample 4 per level by default), tiled JPEG
* then the label (subfile type 1) and macro (subfile type 9) images

Level 0 is never held in memory: tiles are consumed from an iterator, and
each one is box-filtered into the next level on the fly. Lower levels are
buffered in RAM when small and in a disk-backed memmap otherwise.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

log = logging.getLogger(__name__)

APERIO_VERSION = "Aperio Image Library v12.0.15"
#: Lower levels bigger than this are buffered on disk instead of RAM.
_MEMMAP_BYTES = 256 * 2**20


@dataclass(frozen=True)
class PyramidSpec:
    """Pyramid geometry of a slide."""

    width: int
    height: int
    tile: int = 256
    downsample: int = 4
    min_level_size: int = 512

    def level_shapes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every level, level 0 first."""
        shapes = [(self.height, self.width)]
        h, w = self.height, self.width
        while max(h, w) // self.downsample >= self.min_level_size:
            h, w = h // self.downsample, w // self.downsample
            shapes.append((h, w))
        return shapes


def _box_downsample(tile: np.ndarray, factor: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[H // f, W // f, 3]`` rounded mean over ``f x f`` blocks.

    Sums strided views in uint16 (f <= 16), several times faster than a
    reduction over a 5-d reshape.
    """
    h, w, c = tile.shape
    h, w = h - h % factor, w - w % factor
    rows = tile[0:h:factor, :w].astype(np.uint16)
    for i in range(1, factor):
        rows += tile[i:h:factor, :w]
    acc = rows[:, 0::factor].copy()
    for j in range(1, factor):
        acc += rows[:, j::factor]
    acc += factor * factor // 2
    acc //= factor * factor
    return acc.astype(np.uint8)


def _buffer(shape: tuple[int, int, int], workdir: Path) -> np.ndarray:
    nbytes = int(np.prod(shape))
    if nbytes <= _MEMMAP_BYTES:
        return np.zeros(shape, np.uint8)
    fd, name = tempfile.mkstemp(prefix="wsiscale-level-", suffix=".u8", dir=workdir)
    os.close(fd)
    mm = np.memmap(name, dtype=np.uint8, mode="w+", shape=shape)
    os.unlink(name)  # freed when the memmap is closed
    return mm


def _release(buffer: np.ndarray) -> None:
    """Write back a disk-backed buffer and drop its pages from RSS (the data stays in the file)."""
    if isinstance(buffer, np.memmap):
        import mmap

        buffer.flush()
        mm = buffer._mmap  # type: ignore[attr-defined]
        if mm is not None and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_DONTNEED)


def _downsample_level(src: np.ndarray, shape: tuple[int, int], factor: int, workdir: Path, strip: int = 1024) -> np.ndarray:
    """Box-downsample ``src`` into a new ``shape`` buffer, ``strip`` source rows at a time."""
    h, w = shape
    dst = _buffer((h, w, 3), workdir)
    step = max(factor, strip - strip % factor)
    for y in range(0, h * factor, step):
        part = np.asarray(src[y : min(y + step, h * factor), : w * factor])
        dst[y // factor : y // factor + part.shape[0] // factor] = _box_downsample(part, factor)
        _release(src)  # per strip: reading a disk-backed source would otherwise map all of it
    _release(dst)
    return dst


def _tiles_of(image: np.ndarray, tile: int, release: np.ndarray | None = None) -> Iterator[np.ndarray]:
    h, w = image.shape[:2]
    for y in range(0, h, tile):
        if release is not None and (y // tile) % 16 == 15:
            _release(release)
        for x in range(0, w, tile):
            t = image[y : y + tile, x : x + tile]
            if t.shape[0] != tile or t.shape[1] != tile:
                padded = np.zeros((tile, tile, 3), np.uint8)
                padded[: t.shape[0], : t.shape[1]] = t
                t = padded
            yield np.ascontiguousarray(t)


def _resize_max(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def write_svs(
    path: str | Path,
    level0_tiles: Iterator[np.ndarray],
    spec: PyramidSpec,
    mpp: float | None,
    quality: int = 90,
    app_mag: float | None = None,
    label_image: np.ndarray | None = None,
    macro_image: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Write a pyramidal SVS-style TIFF atomically (``path`` appears only when complete).

    Args:
        path: destination file.
        level0_tiles: row-major ``[tile, tile, 3]`` uint8 tiles covering level 0.
        spec: pyramid geometry.
        mpp: microns per pixel written as ``MPP = ...``; ``None`` writes no mpp
            (a slide that needs an explicit override).
        quality: JPEG quality.
        app_mag: apparent magnification; defaults to ``10 / mpp``.
        label_image, macro_image: optional associated images (RGB uint8).

    Returns:
        ``(height, width)`` of each written level.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = spec.level_shapes()
    t = spec.tile
    f = spec.downsample
    h0, w0 = shapes[0]
    bigtiff = h0 * w0 * 3 > 2**31
    fields = [f"AppMag = {app_mag or (round(10.0 / mpp) if mpp else 20)}"]
    if mpp is not None:
        fields.append(f"MPP = {mpp:.4f}")
    fields.append("Filename = " + path.stem)
    head = f"{APERIO_VERSION}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({t}x{t}) JPEG/RGB Q={quality}"
    tail = "|".join(fields)
    jpeg = dict(compression="jpeg", compressionargs={"level": quality}, photometric="rgb", metadata=None, software=False)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    levels: list[np.ndarray] = []
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            level1 = _buffer((shapes[1][0], shapes[1][1], 3), path.parent) if len(shapes) > 1 else None
            n_tx = -(-w0 // t)
            count = 0

            def feed() -> Iterator[np.ndarray]:
                nonlocal count
                for i, tile in enumerate(level0_tiles):
                    if level1 is not None:
                        ty, tx = divmod(i, n_tx)
                        small = _box_downsample(tile, f)
                        y, x = ty * (t // f), tx * (t // f)
                        hh = min(small.shape[0], level1.shape[0] - y)
                        ww = min(small.shape[1], level1.shape[1] - x)
                        if hh > 0 and ww > 0:
                            level1[y : y + hh, x : x + ww] = small[:hh, :ww]
                    count += 1
                    if level1 is not None and count % (n_tx * 16) == 0:
                        _release(level1)  # keep RSS flat on huge slides
                    yield tile

            tw.write(feed(), shape=(h0, w0, 3), dtype=np.uint8, tile=(t, t), description=f"{head}|{tail}", **jpeg)
            expected = n_tx * -(-h0 // t)
            if count != expected:
                raise ValueError(f"expected {expected} level-0 tiles for {w0}x{h0}, got {count}")
            if level1 is not None:
                _release(level1)
                levels.append(level1)
                for h, w in shapes[2:]:
                    levels.append(_downsample_level(levels[-1], (h, w), f, path.parent))
            smallest = np.asarray(levels[-1]) if levels else None
            if smallest is None:
                raise ValueError(f"slide {w0}x{h0} is too small for a pyramid; min level size is {spec.min_level_size}")
            thumb = _resize_max(smallest, 768)
            tw.write(
                thumb,
                rowsperstrip=16,
                description=f"{APERIO_VERSION}\r\n{w0}x{h0} -> {thumb.shape[1]}x{thumb.shape[0]} - |{tail}",
                **jpeg,
            )
            for (h, w), level in zip(shapes[1:], levels):
                tw.write(
                    _tiles_of(level, t, release=level),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(t, t),
                    description=f"{APERIO_VERSION}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({t}x{t}) -> {w}x{h} JPEG/RGB Q={quality}|{tail}",
                    **jpeg,
                )
            if label_image is not None:
                tw.write(
                    label_image,
                    rowsperstrip=16,
                    subfiletype=1,
                    description=f"{APERIO_VERSION}\r\nlabel {label_image.shape[1]}x{label_image.shape[0]}",
                    compression="lzw",
                    photometric="rgb",
                    metadata=None,
                    software=False,
                )
            if macro_image is not None:
                tw.write(
                    macro_image,
                    rowsperstrip=16,
                    subfiletype=9,
                    description=f"{APERIO_VERSION}\r\nmacro {macro_image.shape[1]}x{macro_image.shape[0]}",
                    **jpeg,
                )
        os.replace(tmp, path)
    finally:
        for level in levels:
            if isinstance(level, np.memmap):
                level._mmap.close()  # type: ignore[attr-defined]
        if tmp.exists():
            tmp.unlink()
    return shapes
