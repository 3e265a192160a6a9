"""Size-bounded Parquet shards written atomically to any URI.

:class:`ShardWriter` appends Arrow tables (one row group each) to a local
temporary file and rolls over to a new shard once ``target_bytes`` are
written. A finished shard becomes visible in one step: ``os.replace`` for
``file://`` destinations, a single (multipart) upload for object stores, so a
reader never sees half a shard. Temporary files are hidden (``.name.part``), so
directory globs (pyarrow, pandas, duckdb ``*.parquet``) never pick them up.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from wsiscale.io.uri import filesystem, is_local, join_uri, local_path

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: its URI, rows and bytes."""

    uri: str
    rows: int
    bytes: int


class ShardWriter:
    """Write tables to ``<directory>/<prefix>-00000.parquet``, ``-00001``... of ``max_rows`` rows each.

    Args:
        directory: destination directory URI.
        prefix: shard file name prefix.
        schema: Arrow schema of every table written.
        max_rows: roll to a new shard once a shard has at least this many rows
            (checked after each table, so shards end on table boundaries).
        storage: object-storage options.
        compression: Parquet compression per column name (others use ``zstd``).
        blob_columns: large binary columns: no min/max statistics (computing them on
            tile pixels costs more than writing them) and no dictionary.
    """

    def __init__(
        self,
        directory: str,
        prefix: str,
        schema: pa.Schema,
        max_rows: int = 1 << 20,
        storage: "StorageConfig | None" = None,
        compression: dict[str, str] | None = None,
        blob_columns: tuple[str, ...] = ("image",),
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self.schema = schema
        self.max_rows = int(max_rows)
        self.storage = storage
        self._compression = {f.name: "zstd" for f in schema} | (compression or {})
        self._stats = [f.name for f in schema if f.name not in blob_columns]
        self._local = is_local(directory)
        self._tmpdir = local_path(directory) if self._local else Path(tempfile.gettempdir()) / "wsiscale-shards"
        self._tmpdir.mkdir(parents=True, exist_ok=True)
        self._index = 0
        self._tmp: Path | None = None
        self._sink: pa.OSFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self.committed: list[ShardInfo] = []

    def _open(self) -> None:
        self._tmp = self._tmpdir / f".{self.prefix}-{self._index:05d}.{uuid.uuid4().hex[:8]}.part"
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression=self._compression,
                                           use_dictionary=["slide_id"], write_statistics=self._stats)
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        """Append ``table`` as one row group; roll over when the shard reaches the target size."""
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        assert self._writer is not None and self._sink is not None
        self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
        self._rows += table.num_rows
        if self._rows >= self.max_rows:
            self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._writer is not None and self._tmp is not None
        self._writer.close()
        self._sink.close()  # type: ignore[union-attr]
        size = self._tmp.stat().st_size
        name = f"{self.prefix}-{self._index:05d}.parquet"
        uri = join_uri(self.directory, name)
        if self._local:
            os.replace(self._tmp, local_path(uri))
        else:
            fs, path = filesystem(uri, self.storage)
            try:
                fs.put_file(str(self._tmp), path)
            finally:
                self._tmp.unlink(missing_ok=True)
        self.committed.append(ShardInfo(uri, self._rows, size))
        self._writer = self._sink = self._tmp = None
        self._index += 1

    def close(self) -> list[ShardInfo]:
        """Commit the last shard; returns every committed shard."""
        if self._writer is not None:
            self._finish_shard()
        return list(self.committed)

    def abort(self, remove_committed: bool = False) -> None:
        """Drop the open shard's temporary file (and, if asked, the shards already committed)."""
        if self._writer is not None:
            try:
                self._writer.close()
                self._sink.close()  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - best effort while cleaning up
                pass
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._writer = self._sink = self._tmp = None
        if remove_committed:
            remove_uris([s.uri for s in self.committed], self.storage)
        self.committed.clear()


def remove_uris(uris: list[str], storage: "StorageConfig | None" = None) -> None:
    """Delete files/objects (missing ones are ignored)."""
    for uri in uris:
        fs, path = filesystem(uri, storage)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def read_parquet(uri: str, storage: "StorageConfig | None" = None, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file from any URI.

    Local files are read by path; remote ones are fetched whole and parsed from
    memory (handing pyarrow a Python file object can abort the interpreter at
    exit: apache/arrow#33975).
    """
    if is_local(uri):
        return pq.read_table(local_path(uri), columns=columns)
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    return pq.read_table(pa.BufferReader(data), columns=columns)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a zstd-compressed Parquet file in memory (for :func:`write_bytes_atomic`)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def list_names(directory: str, storage: "StorageConfig | None" = None) -> list[str]:
    """File names in ``directory`` (a fresh listing: fsspec caches are dropped); [] if it does not exist."""
    fs, path = filesystem(directory, storage)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]


def remove_parts_except(directory: str, keep: set[str], storage: "StorageConfig | None" = None) -> None:
    """Delete the ``part-*.parquet`` files in ``directory`` not named in ``keep`` (left by an earlier, larger run)."""
    stale = [join_uri(directory, n) for n in list_names(directory, storage)
             if n.startswith("part-") and n.endswith(".parquet") and n not in keep]
    remove_uris(stale, storage)
