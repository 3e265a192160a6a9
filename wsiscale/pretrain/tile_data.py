"""Tiles of a tiling run as a Ray Dataset of DINO multi-crop views (patch-encoder pretraining).

A tiling run with pixels (``ingest.pixels=jpeg`` or ``raw``) lists its shards
per completed slide in ``slides.parquet``. Ray Data tasks read one shard each,
decode the tiles and cut the DINO views on CPU
(:func:`wsiscale.pretrain.tile_augment.tile_multicrop`), yielding rows
``view_0 .. view_{V-1}`` (``[S, S, 3]`` uint8: the global views first),
``slide`` and ``tile`` in chunks of :data:`CHUNK` tiles, so no task holds more
than a chunk of views; a tile that cannot be decoded is skipped with a
warning naming the shard. The dataset is re-executed every epoch, so every
epoch sees fresh views. Training workers get their share through
``get_dataset_shard("train")``; pixels never pass through the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from wsiscale.pretrain.data import RegionFile, run_files, shuffled_items

log = logging.getLogger(__name__)

CHUNK = 32  # tiles per yielded block


def tile_files(tiles: str, storage: Any = None) -> tuple[list[RegionFile], list[str], int]:
    """``(files, slide_ids, tile_size)`` of a tiling run with pixels (``first_region`` = first tile)."""
    from wsiscale.config import ConfigError
    from wsiscale.data.tiles import pixel_mode_of
    from wsiscale.runs.shards import read_parquet

    files, ids = run_files(tiles, storage, "tiles", "run `wsiscale tile --set ingest.pixels=jpeg` first")
    head = read_parquet(files[0].uri, storage)
    size = int(head.column("tile_size")[0].as_py())
    if pixel_mode_of(head.schema) == "none" or "image" not in head.column_names:
        raise ConfigError(f"{tiles} stores tile coordinates only; patch pretraining needs pixels: tile again with "
                          "--set ingest.pixels=jpeg")
    return files, ids, size


def _view_batches(batch: dict[str, np.ndarray], storage: Any, views: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    from wsiscale.data.tiles import decode_image, pixel_mode_of
    from wsiscale.pretrain.tile_augment import tile_multicrop
    from wsiscale.runs.shards import read_parquet

    rng = np.random.default_rng()  # fresh views every epoch (the dataset is re-executed)
    for uri, slide, first in zip(batch["uri"], batch["slide"], batch["first_region"]):
        t = read_parquet(str(uri), storage, ["image", "tile_size"])
        pixels = pixel_mode_of(t.schema)
        images, sizes = t.column("image").to_pylist(), t.column("tile_size").to_pylist()
        for lo in range(0, len(images), CHUNK):
            kept, per_tile = [], []
            for i in range(lo, min(lo + CHUNK, len(images))):
                try:
                    tile = decode_image(images[i], pixels, int(sizes[i]))
                except Exception as exc:  # a corrupt tile is skipped, never the run
                    log.warning("%s: tile %d cannot be decoded (%s: %s); skipped", uri, int(first) + i,
                                type(exc).__name__, exc)
                    continue
                kept.append(int(first) + i)
                per_tile.append(tile_multicrop(tile, rng, **views))
            if not kept:
                continue
            out = {f"view_{v}": np.stack(crops) for v, crops in enumerate(zip(*per_tile))}
            out["slide"] = np.full(len(kept), int(slide), np.int64)
            out["tile"] = np.array(kept, np.int64)
            yield out


def view_settings(pretrain: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`tile_multicrop` from a :class:`~wsiscale.config.DinoConfig`."""
    p = pretrain
    return dict(global_crops=p.global_crops, local_crops=p.local_crops, global_size=p.global_image_size,
                local_size=p.local_image_size, global_scale=tuple(p.global_crop_scale),
                local_scale=tuple(p.local_crop_scale))


def tile_dataset(files: list[RegionFile], pretrain: Any, storage: Any = None, cpus: float = 0.5):
    """A Ray Dataset of ``view_i [S, S, 3] uint8, slide, tile`` rows (one augmenting task per shard file,
    files in a ``pretrain.seed``-fixed random order)."""
    import ray

    ds = ray.data.from_items(shuffled_items(files, pretrain.seed), override_num_blocks=len(files))
    return ds.map_batches(_view_batches, batch_size=1, num_cpus=cpus,
                          fn_kwargs={"storage": storage, "views": view_settings(pretrain)})
