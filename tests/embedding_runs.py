"""Helpers for tests (and benchmarks) that write embedding runs with the real writers, slide by slide."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def patch_table(vectors: np.ndarray) -> pa.Table:
    """``x, y, embedding`` rows for ``[n, D]`` vectors (x = 256 px steps), as the embedding actors merge them."""
    n, dim = vectors.shape
    return pa.table({"x": pa.array(np.arange(n) * 256, pa.int64()), "y": pa.array(np.zeros(n), pa.int64()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim)})


def write_slide(state, slide_id: str, table: pa.Table, tiles: int) -> None:
    """Write a slide's embedding table as ``<slide>/embeddings.parquet`` and its done record (one shard)."""
    from wsiscale.runs.state import safe_name
    from wsiscale.io.uri import join_uri, write_bytes_atomic

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    name = safe_name(slide_id)
    uri = join_uri(state.slide_dir(name), "embeddings.parquet")
    write_bytes_atomic(uri, sink.getvalue().to_pybytes())
    state.write_done(name, {"status": "done", "slide_id": slide_id, "name": name, "tiles": tiles,
                            "shards": [{"path": state.relative(uri), "rows": table.num_rows, "bytes": None}]})
