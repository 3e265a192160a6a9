"""An embedding run as the stages after ``wsiscale embed`` read it: its completed slides and their files.

``<run>/slides.parquet`` (:mod:`wsiscale.runs.state`) holds one row per completed slide: ``slide_id``,
``uri``, ``mode`` (``tiles``: one vector per tile; ``regions``: a ``[D, g, g]`` patch grid per region),
``dim``, ``tiles``, ``mpp``, ``tile_size``, ``shards`` (JSON list of ``{path, rows}``, relative to the
run) and, with Giga-SSL augmentations, ``augmented`` / ``augmentations``. MIL, FiVE, Giga-SSL, the
slide index, the linear probe, the report and :func:`wsiscale.data.embedding.read_embeddings` all open
a run through :class:`EmbeddingRun`, which gives one error for a directory that is not a finished
run and one for a run of the wrong mode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from wsiscale.config import ConfigError
from wsiscale.runs.state import RunState

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedSlide:
    """One completed slide of an embedding run: its files (absolute URIs, non-empty shards only) and counts."""

    slide_id: str
    uri: str | None
    files: list[str]
    tiles: int
    dim: int
    mode: str
    record: dict[str, Any]

    def extent_at(self, slide_mpp: float | None) -> float | None:
        """A tile's side in level-0 pixels of the slide (scanned at ``slide_mpp``), for heatmaps and truth."""
        r = self.record
        if r.get("mpp") and r.get("tile_size") and slide_mpp:
            return float(r["tile_size"]) * float(r["mpp"]) / float(slide_mpp)
        return None


class EmbeddingRun:
    """A finished (or partly finished) embedding run: ``EmbeddingRun(uri, storage)``.

    Raises:
        FileNotFoundError: ``uri`` has no ``slides.parquet`` (not an embedding run, or no slide done yet).
    """

    def __init__(self, uri: str, storage: "StorageConfig | None" = None) -> None:
        self.state = RunState(uri, storage, data_dir="embeddings")
        table = self.state.read_table("slides.parquet")
        if table is None:
            raise FileNotFoundError(f"{self.state.uri} has no slides.parquet: not an embedding run, or no slide "
                                    "finished yet (run `wsiscale embed` first)")
        self.table: pa.Table = table

    @property
    def uri(self) -> str:
        return self.state.uri

    @property
    def storage(self) -> "StorageConfig | None":
        return self.state.storage

    def absolute(self, path: str) -> str:
        """A path of ``slides.parquet`` (relative to the run) as a URI."""
        return self.state.absolute(path)

    def slides(self, mode: str | None = None, user: str = "this stage") -> list[EmbeddedSlide]:
        """The completed slides that have embeddings, in run order (slides without tissue tiles left out
        with a warning). ``mode``: the run must be of this mode (``tiles`` or ``regions``), else
        ``ConfigError`` naming ``user``; all slides must share one dimension."""
        out: list[EmbeddedSlide] = []
        for rec in self.table.to_pylist():
            got = rec.get("mode") or "tiles"
            if mode is not None and got != mode:
                raise ConfigError(f"{self.uri} is a {got}-mode embedding run: {user} needs embed.mode={mode} "
                                  f"({'one embedding per tile' if mode == 'tiles' else 'region grids'})")
            shards = [s for s in json.loads(rec["shards"]) if s.get("rows")]
            if not shards:
                log.warning("%s: slide %s has no tissue tiles; left out of %s", self.uri, rec["slide_id"], user)
                continue
            out.append(EmbeddedSlide(rec["slide_id"], rec.get("uri"), [self.absolute(s["path"]) for s in shards],
                                     int(sum(int(s["rows"]) for s in shards)), int(rec["dim"]), got, rec))
        dims = {s.dim for s in out}
        if len(dims) > 1:
            raise ConfigError(f"{self.uri} mixes embedding dimensions {sorted(dims)}: re-embed into one run")
        return out

    def dim(self, slides: list[EmbeddedSlide]) -> int:
        """The shared embedding dimension of ``slides`` (``ConfigError`` when there are none)."""
        if not slides:
            raise ConfigError(f"{self.uri} holds no slide with tiles")
        return slides[0].dim
