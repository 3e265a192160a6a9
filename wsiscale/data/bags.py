"""Slides of a tiles-mode embedding run as bags of tile features, read on demand.

A :class:`BagSpec` is small (URIs and numbers) and travels in a Ray Train loop's config; the
workers read the features slide by slide through :class:`BagStore` (an LRU cache bounded in
bytes), so no process ever holds the whole archive. A slide whose embeddings cannot be read,
or hold NaN/inf, is left out with a warning naming it. Used by MIL and FiVE.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class BagSpec:
    """A slide as a bag: its id, binary label, embedding files, tile count and where its tiles are.

    ``tile_extent`` is a tile's side in level-0 pixels (for heatmaps and instance labels);
    ``truth_uri`` is a generated slide's ground truth (instance labels), or None.
    """

    slide_id: str
    label: int
    label_name: str
    files: list[str]
    tiles: int
    slide_uri: str | None = None
    tile_extent: float | None = None
    truth_uri: str | None = None


@dataclass
class Bag:
    """One slide's features ``[N, D]`` float32, tile origins ``xs, ys [N]`` (level 0) and instance labels ``[N]``."""

    feats: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    instance_labels: np.ndarray | None


def _nbytes(bag: Bag | None) -> int:
    """Memory a cached bag holds: features plus three int64 arrays (x, y, instance labels at most)."""
    return 0 if bag is None else bag.feats.nbytes + bag.xs.nbytes * 3


class BagStore:
    """Reads bags on demand (a worker's view of the run), keeping up to ``cache_gb`` of them in memory."""

    def __init__(self, specs: list[BagSpec], storage: Any = None, cache_gb: float = 2.0,
                 instance_threshold: float = 0.5) -> None:
        self.specs = specs
        self.storage = storage
        self.capacity = int(cache_gb * 2**30)
        self.threshold = instance_threshold
        self._cache: OrderedDict[int, Bag | None] = OrderedDict()
        self._bytes = 0

    def get(self, i: int) -> Bag | None:
        """Bag ``i`` (None when its slide cannot be read: warned once)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        bag = self._load(self.specs[i])
        self.put(i, bag)
        return bag

    def put(self, i: int, bag: Bag | None) -> None:
        """Keep bag ``i`` in memory (evicting the least recently used bags beyond the capacity)."""
        size = _nbytes(bag)
        while self._cache and self._bytes + size > self.capacity:
            _, old = self._cache.popitem(last=False)
            self._bytes -= _nbytes(old)
        self._cache[i] = bag
        self._bytes += size

    def _load(self, spec: BagSpec) -> Bag | None:
        import pyarrow as pa

        from wsiscale.runs.shards import read_parquet

        try:
            table = pa.concat_tables([read_parquet(u, self.storage, ["x", "y", "embedding"]) for u in spec.files])
            emb = table.column("embedding").combine_chunks()
            feats = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(table.num_rows, -1)
        except Exception as exc:  # a bad slide never aborts the run
            log.warning("slide %s: cannot read its embeddings %s (%s: %s); left out", spec.slide_id, spec.files,
                        type(exc).__name__, exc)
            return None
        if not np.isfinite(feats).all():
            log.warning("slide %s: %s holds NaN/inf embeddings; left out (re-embed it)", spec.slide_id, spec.files)
            return None
        xs = table.column("x").to_numpy().astype(np.int64)
        ys = table.column("y").to_numpy().astype(np.int64)
        labels = None
        if spec.truth_uri and spec.tile_extent:
            from wsiscale.synth.truth import instance_labels

            try:
                labels = instance_labels(spec.truth_uri, xs, ys, spec.tile_extent, self.storage, self.threshold)
            except (OSError, ValueError) as exc:
                log.warning("slide %s: no instance labels from %s (%s)", spec.slide_id, spec.truth_uri, exc)
        return Bag(feats, xs, ys, labels)
