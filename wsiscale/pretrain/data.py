"""Region feature grids of an embedding run as a Ray Dataset for pretraining.

A regions-mode embedding run (``wsiscale embed --set embed.mode=regions``)
stores one row per region: ``slide_id, x, y`` and the region's patch
embeddings ``[D, g, g]`` (schema metadata ``wsiscale.region_shape``). This
module lists the run's files (completed slides, in ``slides.parquet`` order)
and builds a dataset whose rows are ``grid`` (``[D, g, g]`` float32),
``slide`` (the slide's index in that order) and ``region`` (the region's
index within its slide) - the keys SLPD's clustering step needs. Files are
read by Ray Data tasks with the run's storage options; nothing passes
through the driver.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsiscale.runs.state import RegionFile, run_files  # noqa: F401  (re-exported: the pretraining file lists)


def slide_items(files: list[RegionFile], slides: set[int] | None = None) -> list[dict[str, Any]]:
    """``[{"slide": index, "uris": [its shard files]}]`` in slide order (only ``slides`` when given)."""
    per_slide: dict[int, list[str]] = {}
    for f in files:
        if slides is None or f.slide in slides:
            per_slide.setdefault(f.slide, []).append(f.uri)
    return [{"slide": s, "uris": uris} for s, uris in sorted(per_slide.items())]


def region_files(embeddings: str, storage: Any = None) -> tuple[list[RegionFile], list[str], list[int]]:
    """``(files, slide_ids, region_shape [D, g, g])`` of a regions-mode embedding run's completed slides."""
    from wsiscale.index.sources import region_shape
    from wsiscale.runs.shards import read_parquet

    files, ids = run_files(embeddings, storage, "embeddings", "run `wsiscale embed --set embed.mode=regions` first")
    shape = region_shape(read_parquet(files[0].uri, storage))
    if not shape:
        from wsiscale.config import ConfigError

        raise ConfigError(f"{embeddings} holds tile embeddings; region pretraining needs a regions-mode run "
                          "(embed.mode=regions: each row a [D, g, g] grid of patch embeddings)")
    return files, ids, list(shape)


def table_region_grids(t: Any, shape: list[int]) -> np.ndarray:
    """The ``[n, D, g, g]`` float32 region grids of a regions-mode table's ``embedding`` column."""
    x = t.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return x.astype(np.float32).reshape(-1, *shape)


def read_region_grids(uri: str, storage: Any, shape: list[int]) -> np.ndarray:
    """The ``[n, D, g, g]`` float32 region grids of one regions-mode embedding file."""
    from wsiscale.runs.shards import read_parquet

    return table_region_grids(read_parquet(str(uri), storage, ["embedding"]), shape)


def _read_region_files(batch: dict[str, np.ndarray], storage: Any, shape: list[int],
                       targets: str | None = None) -> dict[str, np.ndarray]:
    parts: list[dict[str, np.ndarray]] = []
    for uri, slide, first in zip(batch["uri"], batch["slide"], batch["first_region"]):
        g = read_region_grids(uri, storage, shape)
        part = {"grid": g, "slide": np.full(len(g), int(slide), np.int64),
                "region": np.arange(int(first), int(first) + len(g), dtype=np.int64)}
        if targets is not None:  # SLPD: this epoch's targets of these regions (wsiscale.pretrain.slpd)
            from wsiscale.pretrain.slpd_targets import read_region_targets

            part |= read_region_targets(targets, int(slide), int(first), len(g), storage)
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def shuffled_items(files: list[RegionFile], seed: int) -> list[dict[str, Any]]:
    """The read tasks' items (``uri``, ``slide``, ``first_region``) in a permutation fixed by ``seed``.

    Manifests are often sorted by site or scan date, so neighbouring slides share a stain or scanner;
    read in manifest order, the workers' shuffle buffers would always mix the same few slides.
    """
    order = np.random.default_rng((seed, 0x5EED)).permutation(len(files))
    return [{"uri": files[i].uri, "slide": files[i].slide, "first_region": files[i].first_region} for i in order]


def region_dataset(files: list[RegionFile], shape: list[int], storage: Any = None, targets: str | None = None,
                   seed: int = 0):
    """A Ray Dataset of ``grid [D, g, g] float32, slide int64, region int64`` rows (one read task per file,
    files in a ``seed``-fixed random order: :func:`shuffled_items`).

    With ``targets`` (SLPD), each read task also attaches the targets the latest clustering step
    wrote there for its regions (:func:`wsiscale.pretrain.slpd_targets.read_region_targets`). The dataset is
    re-executed every epoch, so every epoch reads that epoch's targets.
    """
    import ray

    ds = ray.data.from_items(shuffled_items(files, seed), override_num_blocks=len(files))
    from wsiscale.train.scaling import READ_TASK_CPUS

    return ds.map_batches(_read_region_files, batch_size=1, num_cpus=READ_TASK_CPUS,
                          fn_kwargs={"storage": storage, "shape": shape, "targets": targets})
