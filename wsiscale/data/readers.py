"""Read the tiles of a tiling run back (Python API; pandas/duckdb can also read ``<run>/tiles/*/*.parquet``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from wsiscale.data.tiles import decode_image, pixel_mode_of
from wsiscale.runs.shards import read_parquet
from wsiscale.runs.state import RunState

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig


def completed_shards(run_uri: str, storage: "StorageConfig | None" = None) -> dict[str, list[str]]:
    """``slide_id -> shard URIs`` of every completed slide, from the run's consolidated ``slides.parquet``."""
    state = RunState(run_uri, storage)
    slides = state.read_table("slides.parquet")
    if slides is None:
        raise FileNotFoundError(f"{state.uri} has no slides.parquet: not a tiling run directory, or no run finished yet")
    return {
        sid: [state.absolute(s["path"]) for s in json.loads(shards)]
        for sid, shards in zip(slides.column("slide_id").to_pylist(), slides.column("shards").to_pylist())
    }


def iter_slide_tiles(
    run_uri: str, storage: "StorageConfig | None" = None, columns: list[str] | None = None
) -> Iterator[tuple[str, pa.Table]]:
    """Yield ``(slide_id, table)`` for every completed slide (only the shards its done record lists)."""
    for slide_id, uris in completed_shards(run_uri, storage).items():
        parts = [read_parquet(uri, storage, columns) for uri in uris]
        if parts:
            yield slide_id, pa.concat_tables(parts)


def read_tile_table(
    run_uri: str,
    storage: "StorageConfig | None" = None,
    columns: list[str] | None = None,
    slide_ids: list[str] | None = None,
) -> pa.Table:
    """All tiles of completed slides as one Arrow table (schema metadata keeps the pixel mode)."""
    wanted = set(slide_ids) if slide_ids is not None else None
    parts = [t for sid, t in iter_slide_tiles(run_uri, storage, columns) if wanted is None or sid in wanted]
    if not parts:
        from wsiscale.data.tiles import tile_schema

        schema = tile_schema("none")
        return schema.empty_table() if columns is None else schema.empty_table().select(
            [c for c in columns if c in schema.names])
    return pa.concat_tables(parts)


def tile_images(table: pa.Table) -> np.ndarray:
    """Decode the ``image`` column: ``[n, tile_size, tile_size, 3]`` uint8."""
    mode = pixel_mode_of(table.schema)
    sizes = table.column("tile_size").to_numpy()
    images = table.column("image").to_pylist()
    if not images:
        return np.empty((0, 0, 0, 3), np.uint8)
    return np.stack([decode_image(b, mode, int(s)) for b, s in zip(images, sizes)])
