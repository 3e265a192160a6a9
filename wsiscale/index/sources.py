"""Where the FAISS pool's vectors come from: the Parquet files of an embedding run.

An embedding run (``wsiscale embed``) lists, per completed slide, the Parquet
files holding its embeddings (``slides.parquet``, column ``shards``, with row
counts). :func:`run_vector_files` turns that into an ordered list of
:class:`VectorFile` with global ids (``first_id`` = rows before it), and
:func:`split_files` cuts the list into contiguous shards balanced by rows.
Each pool actor then reads only its own files with :func:`load_vector_files`
- the driver never holds the vectors, and a restarted actor reads the same
files again.

:func:`table_vectors` converts an embedding table to an ``[N, D]`` float32
matrix: tile rows give one vector each; region rows (``[D, g, g]`` patch
grids, schema metadata ``wsiscale.region_shape``) give ``g * g`` patch vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from wsiscale.index.kmeans import IndexInputError


@dataclass(frozen=True)
class VectorFile:
    """One embedding Parquet file: its URI, the global id of its first row, its row count."""

    uri: str
    first_id: int
    rows: int


def region_shape(table: pa.Table) -> list[int] | None:
    """``[D, g, g]`` for a regions-mode embedding table, ``None`` for tile embeddings."""
    return json.loads((table.schema.metadata or {}).get(b"wsiscale.region_shape", b"null"))


def table_vectors(table: pa.Table, uri: str = "") -> np.ndarray:
    """``[N, D]`` float32 vectors of an embedding table (region rows expand to their patch vectors)."""
    if table.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    field = table.schema.field("embedding")
    if not pa.types.is_fixed_size_list(field.type):
        raise IndexInputError(f"{uri or 'table'}: column 'embedding' is {field.type}, expected a fixed-size list "
                              "(files written by `wsiscale embed`)")
    x = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    shape = region_shape(table)
    if shape:
        d = shape[0]
        return np.ascontiguousarray(x.reshape(-1, d, shape[1] * shape[2]).transpose(0, 2, 1).reshape(-1, d))
    return x.reshape(-1, field.type.list_size)


def run_vector_files(embeddings: str, storage: Any = None) -> list[VectorFile]:
    """Every embedding file of a run's completed slides, in slide order, with global ids (tile runs only)."""
    from wsiscale.runs.state import run_files

    files, _ = run_files(embeddings, storage, "embeddings", "run `wsiscale embed` first", empty_error=IndexInputError)
    out, first = [], 0
    for f in files:
        out.append(VectorFile(f.uri, first, f.rows))
        first += f.rows
    return out


def split_files(files: list[VectorFile], shards: int) -> list[list[VectorFile]]:
    """Contiguous groups of ``files`` with about equal rows; fewer groups than ``shards`` if there are few files."""
    if shards < 1:
        raise IndexInputError(f"shards must be >= 1, got {shards}")
    total = sum(f.rows for f in files)
    groups: list[list[VectorFile]] = [[] for _ in range(min(shards, len(files)))]
    for f in files:  # the file's middle row decides its shard
        g = min(len(groups) - 1, int((f.first_id + f.rows / 2) * len(groups) / total))
        groups[g].append(f)
    return [g for g in groups if g]


def load_vector_files(files: list[VectorFile], storage: Any = None,
                      key_columns: tuple[str, ...] = ("slide_id", "x", "y")) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """``(vectors [N, D] float32, global ids [N], keys)`` of ``files`` (tile-embedding files).

    Raises :class:`IndexInputError` naming the file for region files, row-count
    mismatches with the run's records, dimension mismatches and NaN/inf rows.
    """
    from wsiscale.index.kmeans import check_vectors
    from wsiscale.runs.shards import read_parquet

    xs, ids, keys, dim = [], [], [], None
    for f in files:
        t = read_parquet(f.uri, storage)
        if region_shape(t):
            raise IndexInputError(f"{f.uri} holds region embeddings: cluster a tiles-mode run "
                                  "(or use `wsiscale index build`, which handles regions)")
        if t.num_rows != f.rows:
            raise IndexInputError(f"{f.uri} has {t.num_rows} rows but the run records {f.rows}: the run changed "
                                  "while loading; rerun `wsiscale embed` to finish it, then load again")
        x = check_vectors(table_vectors(t, f.uri), f"embeddings in {f.uri}", dim=dim)
        dim = x.shape[1]
        xs.append(x)
        ids.append(np.arange(f.first_id, f.first_id + f.rows, dtype=np.int64))
        keys.append(t.select([c for c in key_columns if c in t.column_names]))
    return np.concatenate(xs), np.concatenate(ids), pa.concat_tables(keys)
