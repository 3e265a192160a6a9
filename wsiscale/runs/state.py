"""Per-slide completion and failure records of a batch run, and the output layout.

Layout of a run directory (any URI)::

    <run>/wsiscale.config.yaml          resolved config
    <run>/tiles/<name>/part-00000.parquet   shards of one slide
    <run>/_state/done/<name>.json       written last, atomically: the slide is complete
    <run>/_state/failed/<name>.json     the slide failed (uri, error type, message)
    <run>/slides.parquet                one row per completed slide (consolidated)
    <run>/failures.parquet              one row per failed slide (consolidated)
    <run>/run_summary.json              machine-readable summary of the last run

``<name>`` is the slide id made safe for file names (:func:`safe_name`).
A slide counts as complete only when its done record exists; the record
lists its exact shards. Shard names and boundaries are deterministic (row
counts, see :class:`~wsiscale.runs.shards.ShardWriter`), so attempts at the
same slide - a retry after an actor died, or two attempts racing - write the
same files with the same rows and never delete each other's work: after the
done record, only files that the record does not list are removed (left
over from an interrupted attempt). Files of slides that end up failed are
removed by the driver when it consolidates, when no attempt is running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from wsiscale.io.uri import filesystem, join_uri, normalize_uri, write_bytes_atomic
from wsiscale.runs.shards import list_names, parquet_bytes, read_parquet, remove_uris

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


def safe_name(slide_id: str) -> str:
    """A file-name-safe, unique name for a slide id (unchanged when already safe)."""
    if _SAFE.match(slide_id):
        return slide_id
    digest = hashlib.sha1(slide_id.encode()).hexdigest()[:10]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", slide_id).strip("._-")[:100] or "slide"
    return f"{cleaned}-{digest}"


class RunState:
    """Records of one run directory (see the module docstring for the layout)."""

    def __init__(self, run_uri: str, storage: "StorageConfig | None" = None, data_dir: str = "tiles",
                 slide_columns: dict[str, pa.DataType] | None = None) -> None:
        self.uri = normalize_uri(run_uri)
        self.storage = storage
        self.data_dir = data_dir
        self.slide_columns = slide_columns

    # -- paths ---------------------------------------------------------------------------
    def slide_dir(self, name: str) -> str:
        return join_uri(self.uri, self.data_dir, name)

    def record_uri(self, kind: str, name: str) -> str:
        return join_uri(self.uri, "_state", kind, f"{name}.json")

    def relative(self, uri: str) -> str:
        """``uri`` relative to the run directory (records store relative paths so runs can move)."""
        return uri[len(self.uri) :].lstrip("/") if uri.startswith(self.uri) else uri

    def absolute(self, rel: str) -> str:
        return rel if "://" in rel else join_uri(self.uri, rel)

    # -- listing -------------------------------------------------------------------------
    def _names(self, kind: str) -> set[str]:
        names = list_names(join_uri(self.uri, "_state", kind), self.storage)
        return {n[: -len(".json")] for n in names if n.endswith(".json")}

    def completed(self) -> set[str]:
        """Names of slides with a done record."""
        return self._names("done")

    def failed(self) -> set[str]:
        """Names of slides with a failure record."""
        return self._names("failed")

    def slide_files(self, name: str) -> list[str]:
        """URIs of every file currently in a slide's tile directory."""
        directory = self.slide_dir(name)
        return [join_uri(directory, n) for n in list_names(directory, self.storage)]

    # -- records -------------------------------------------------------------------------
    def _write(self, kind: str, name: str, record: dict[str, Any]) -> None:
        write_bytes_atomic(self.record_uri(kind, name), json.dumps(record, indent=1, default=str).encode(), self.storage)

    def write_done(self, name: str, record: dict[str, Any]) -> None:
        """Mark a slide complete (atomic), then delete its stale files and failure record."""
        self._write("done", name, record)
        keep = {self.absolute(s["path"]) for s in record.get("shards", [])}
        stale = [u for u in self.visible_files(name) if u not in keep]
        if stale:
            log.info("%s: removing %d files of earlier attempts", name, len(stale))
            remove_uris(stale, self.storage)
        remove_uris([self.record_uri("failed", name)], self.storage)

    def write_failure(self, name: str, record: dict[str, Any]) -> None:
        """Record a failed slide (unless another attempt already completed it)."""
        if self._exists(self.record_uri("done", name)):
            return
        self._write("failed", name, record)

    def _exists(self, uri: str) -> bool:
        fs, path = filesystem(uri, self.storage)
        fs.invalidate_cache(path)
        return fs.exists(path)

    def visible_files(self, name: str) -> list[str]:
        """Shard files of a slide that directory globs would read (not hidden temporaries)."""
        return [u for u in self.slide_files(name) if not u.rsplit("/", 1)[-1].startswith((".", "_"))]

    def read_records(self, kind: str, names: set[str] | list[str]) -> list[dict[str, Any]]:
        """Read the records of ``names`` (concurrent fetches on object stores)."""
        names = sorted(names)
        if not names:
            return []
        uris = [self.record_uri(kind, n) for n in names]
        fs, _ = filesystem(uris[0], self.storage)
        paths = [filesystem(u, self.storage)[1] for u in uris]
        blobs = fs.cat(paths, on_error="omit")
        return [json.loads(blobs[p]) for p in paths if p in blobs]

    # -- consolidated tables ---------------------------------------------------------------
    def read_table(self, name: str) -> pa.Table | None:
        try:
            return read_parquet(join_uri(self.uri, name), self.storage)
        except FileNotFoundError:
            return None

    def consolidate(self, new_records: list[dict[str, Any]] | None = None) -> tuple[pa.Table, pa.Table]:
        """Rewrite ``slides.parquet`` and ``failures.parquet`` from the records on storage.

        Done records already in the previous ``slides.parquet`` or passed in
        ``new_records`` (what this run's driver received) are not fetched again,
        so consolidating a million-slide run costs only a listing.
        """
        done = self.completed()
        known: dict[str, dict[str, Any]] = {}
        previous = self.read_table("slides.parquet")
        if previous is not None:
            for row in previous.to_pylist():
                row["shards"] = json.loads(row["shards"])
                known[row["name"]] = row
        for rec in new_records or []:
            if rec.get("status") == "done":
                known[rec["name"]] = rec
        missing = done - set(known)
        for rec in self.read_records("done", missing):
            known[rec["name"]] = rec
        rows = [known[n] for n in sorted(done) if n in known]
        slides = slides_table(rows, self.slide_columns)
        failed = self.failed()
        resolved = failed & done  # a failed attempt raced a successful one: success wins
        remove_uris([self.record_uri("failed", n) for n in resolved], self.storage)
        for name in failed - done:  # shards a failed slide's attempts left behind
            remove_uris(self.visible_files(name), self.storage)
        failures = failures_table(self.read_records("failed", failed - done))
        write_bytes_atomic(join_uri(self.uri, "slides.parquet"), parquet_bytes(slides), self.storage)
        write_bytes_atomic(join_uri(self.uri, "failures.parquet"), parquet_bytes(failures), self.storage)
        return slides, failures


SLIDE_COLUMNS = {
    "slide_id": pa.string(),
    "name": pa.string(),
    "uri": pa.string(),
    "tiles": pa.int64(),
    "level": pa.int16(),
    "read_size": pa.int32(),
    "tile_size": pa.int32(),
    "mpp": pa.float64(),
    "slide_mpp": pa.float64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "tissue_fraction": pa.float64(),
    "backend": pa.string(),
    "pixels": pa.string(),
    "jpeg_passthrough": pa.bool_(),
    "seconds": pa.float64(),
    "peak_rss_mib": pa.float64(),
    "attempt": pa.string(),
    "finished_at": pa.string(),
    "shards": pa.string(),
}

FAILURE_COLUMNS = {
    "slide_id": pa.string(),
    "name": pa.string(),
    "uri": pa.string(),
    "error_type": pa.string(),
    "message": pa.string(),
    "seconds": pa.float64(),
    "attempt": pa.string(),
    "failed_at": pa.string(),
}


def _table(rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> pa.Table:
    data = {c: [r.get(c) for r in rows] for c in columns}
    return pa.table({c: pa.array(v, t) for (c, t), v in zip(columns.items(), data.values())})


def slides_table(records: list[dict[str, Any]], columns: dict[str, pa.DataType] | None = None) -> pa.Table:
    """One row per completed slide (``shards`` as a JSON list of ``{path, rows, bytes}``)."""
    rows = [r | {"shards": json.dumps(r.get("shards", []))} for r in records]
    return _table(rows, columns or SLIDE_COLUMNS)


def failures_table(records: list[dict[str, Any]]) -> pa.Table:
    """One row per failed slide: uri, error type, message."""
    return _table(sorted(records, key=lambda r: r.get("slide_id") or ""), FAILURE_COLUMNS)


@dataclass(frozen=True)
class RegionFile:
    """One shard file of a run: its URI, its slide's index (``slides.parquet`` order), the index of its
    first row (region or tile) within the slide, and its row count."""

    uri: str
    slide: int
    first_region: int
    rows: int


def run_files(run: str, storage: Any, data_dir: str, hint: str,
              empty_error: type[Exception] = FileNotFoundError) -> tuple[list[RegionFile], list[str]]:
    """``(files, slide_ids)``: the shard files of a tiling or embedding run's completed slides, in
    ``slides.parquet`` order, each with its slide's index and the index of its first row within the slide.

    A run without ``slides.parquet`` raises ``FileNotFoundError`` ending with ``hint``; a run whose
    completed slides hold no rows raises ``empty_error``.
    """
    state = RunState(run, storage, data_dir=data_dir)
    slides = state.read_table("slides.parquet")
    if slides is None:
        raise FileNotFoundError(f"{state.uri} has no slides.parquet: {hint}")
    files, ids = [], []
    for sid, shards in zip(slides.column("slide_id").to_pylist(), slides.column("shards").to_pylist()):
        entries = [s for s in json.loads(shards) if s.get("rows")]
        if not entries:
            continue
        first = 0
        for s in entries:
            files.append(RegionFile(state.absolute(s["path"]), len(ids), first, int(s["rows"])))
            first += int(s["rows"])
        ids.append(sid)
    if not files:
        raise empty_error(f"{state.uri}: no completed slide has {data_dir}")
    return files, ids
