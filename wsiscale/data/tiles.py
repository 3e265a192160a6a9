"""Tile rows: the schema of tile shards and streaming a slide's tiles in bounded batches.

A tile row is ``slide_id, x, y, level, read_size, tile_size, mpp, tissue``
plus, when pixels are kept, ``image``: JPEG bytes or raw ``tile_size^2 * 3``
uint8 RGB bytes (row-major ``[H, W, 3]``). ``x, y`` are level-0 top-left
corners; ``read_size`` pixels were read at ``level`` and resized to
``tile_size`` (when they differ); ``mpp`` is the effective resolution of the
tile. The pixel encoding is recorded in the Parquet schema metadata
(``wsiscale.pixels``), so any reader can decode (:func:`decode_image`).

This module is torch-free (tiling actors may also load cuCIM).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa

from wsiscale.io.tiling import TilePlan, read_tile

if TYPE_CHECKING:
    from wsiscale.io.passthrough import JpegTileSource
    from wsiscale.io.slide_base import Slide

PixelMode = Literal["none", "jpeg", "raw"]

#: Coordinate columns of every tile row (in order).
COORD_FIELDS = (
    pa.field("slide_id", pa.string()),
    pa.field("x", pa.int64()),
    pa.field("y", pa.int64()),
    pa.field("level", pa.int16()),
    pa.field("read_size", pa.int32()),
    pa.field("tile_size", pa.int32()),
    pa.field("mpp", pa.float32()),
    pa.field("tissue", pa.float32()),
)


def tile_schema(pixels: PixelMode) -> pa.Schema:
    """Arrow schema of tile shards for a pixel mode (the mode is stored in the schema metadata)."""
    fields = list(COORD_FIELDS)
    if pixels != "none":
        fields.append(pa.field("image", pa.binary()))
    return pa.schema(fields, metadata={b"wsiscale.pixels": pixels.encode(), b"wsiscale.format": b"tiles/1"})


def encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    """JPEG (libjpeg-turbo, 4:2:0 as usual for pathology tiles) of an ``[H, W, 3]`` uint8 tile."""
    import imagecodecs

    return bytes(imagecodecs.jpeg8_encode(tile, level=quality))


def decode_image(data: bytes, pixels: PixelMode, tile_size: int) -> np.ndarray:
    """``[tile_size, tile_size, 3]`` uint8 from a stored ``image`` value."""
    if pixels == "jpeg":
        import imagecodecs

        return np.asarray(imagecodecs.jpeg8_decode(data))
    if pixels == "raw":
        return np.frombuffer(data, np.uint8).reshape(tile_size, tile_size, 3)
    raise ValueError(f"tiles were stored without pixels (pixels={pixels!r}); read them from the slide instead")


def pixel_mode_of(schema: pa.Schema) -> PixelMode:
    """The pixel mode recorded in a tile table's schema (``none`` when absent)."""
    meta = schema.metadata or {}
    return meta.get(b"wsiscale.pixels", b"none").decode()  # type: ignore[return-value]


def coord_table(slide_id: str, plan: TilePlan, start: int = 0, stop: int | None = None) -> pa.Table:
    """Coordinate rows of tiles ``start:stop`` of ``plan`` (no pixels)."""
    stop = len(plan) if stop is None else stop
    n = max(stop - start, 0)
    return pa.table(
        [
            pa.array([slide_id] * n, pa.string()),
            pa.array(plan.x[start:stop], pa.int64()),
            pa.array(plan.y[start:stop], pa.int64()),
            pa.array(np.full(n, plan.level, np.int16)),
            pa.array(np.full(n, plan.read_size, np.int32)),
            pa.array(np.full(n, plan.tile_size, np.int32)),
            pa.array(np.full(n, plan.effective_mpp, np.float32)),
            pa.array(plan.tissue[start:stop].astype(np.float32)),
        ],
        schema=tile_schema("none"),
    )


def read_tiles(slide: "Slide", plan: TilePlan, start: int, stop: int) -> np.ndarray:
    """Pixels of tiles ``start:stop``: ``[n, tile_size, tile_size, 3]`` uint8."""
    out = np.empty((max(stop - start, 0), plan.tile_size, plan.tile_size, 3), np.uint8)
    for k, i in enumerate(range(start, stop)):
        out[k] = read_tile(slide, plan, i)
    return out


def iter_tile_tables(
    slide: "Slide",
    plan: TilePlan,
    slide_id: str,
    batch_tiles: int = 256,
    pixels: PixelMode = "jpeg",
    jpeg_quality: int = 90,
    jpeg_source: "JpegTileSource | None" = None,
) -> Iterator[pa.Table]:
    """Yield the tiles of ``plan`` as Arrow tables of at most ``batch_tiles`` rows (schema :func:`tile_schema`).

    Memory is bounded by one batch of pixels (``batch_tiles * tile_size^2 * 3`` bytes
    in raw mode), whatever the slide size. In JPEG mode with a ``jpeg_source``
    (:class:`~wsiscale.io.passthrough.JpegTileSource`), the stored JPEG tiles
    are copied instead of decoded and re-encoded (lossless).
    """
    schema = tile_schema(pixels)
    for start in range(0, len(plan), batch_tiles):
        stop = min(start + batch_tiles, len(plan))
        table = coord_table(slide_id, plan, start, stop)
        if pixels != "none":
            if pixels == "jpeg" and jpeg_source is not None:
                images = [jpeg_source.tile_bytes(int(plan.x[i]), int(plan.y[i])) for i in range(start, stop)]
            elif pixels == "jpeg":
                images = [encode_jpeg(read_tile(slide, plan, i), jpeg_quality) for i in range(start, stop)]
            else:
                images = [read_tile(slide, plan, i).tobytes() for i in range(start, stop)]
            table = table.append_column(schema.field("image"), pa.array(images, pa.binary()))
        yield table.replace_schema_metadata(schema.metadata)


def iter_tile_arrays(
    slide: "Slide", plan: TilePlan, slide_id: str, batch_tiles: int = 256
) -> Iterator[dict[str, np.ndarray]]:
    """Yield tiles as numpy batches for in-memory pipelines (tiling fused with embedding).

    Each batch: the coordinate columns as ``[n]`` arrays and ``image`` as
    ``[n, tile_size, tile_size, 3]`` uint8.
    """
    for start in range(0, len(plan), batch_tiles):
        stop = min(start + batch_tiles, len(plan))
        coords = coord_table(slide_id, plan, start, stop)
        cols = {name: coords.column(name).to_numpy(zero_copy_only=False) for name in coords.column_names}
        cols["image"] = read_tiles(slide, plan, start, stop)
        yield cols
