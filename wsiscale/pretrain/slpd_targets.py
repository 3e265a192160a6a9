"""SLPD's per-slide targets on storage, as the region read tasks look them up.

The clustering step (:func:`wsiscale.pretrain.slpd.write_targets`) writes ``part-<k>.parquet``
files of ``TARGET_GROUP`` slides each and ``targets.json`` last; each region read task
(:mod:`wsiscale.pretrain.data`) reads its slide's row only (:func:`read_region_targets`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: Slides per targets file, and rows per Parquet row group inside it.
TARGET_GROUP, TARGET_ROW_GROUP = 1024, 16


def read_region_targets(uri: str, slide: int, first: int, n: int, storage: Any = None) -> dict[str, np.ndarray]:
    """Targets of regions ``first .. first + n - 1`` of ``slide``: ``target_ok [n]``, ``intra [n, d]``,
    ``inter [n, r, d]``, ``target_epoch [n]`` (-1 when no clustering step has written targets yet)."""
    import pyarrow.dataset as pads

    from wsiscale.io.uri import filesystem, join_uri

    fs, path = filesystem(join_uri(uri, "targets.json"), storage)
    try:
        with fs.open(path, "rb") as fh:
            meta = json.loads(fh.read())
    except FileNotFoundError:
        return {"target_epoch": np.full(n, -1, np.int32)}
    m, d, r = meta["m"], meta["d"], meta["r"]
    out = {"target_ok": np.zeros(n, bool), "intra": np.zeros((n, d), np.float32),
           "inter": np.zeros((n, r, d), np.float32), "target_epoch": np.full(n, meta["epoch"], np.int32)}
    fs, part = filesystem(join_uri(uri, f"part-{slide // meta['group']:05d}.parquet"), storage)
    t = pads.dataset(part, filesystem=fs, format="parquet").to_table(filter=pads.field("slide") == slide)
    if t.num_rows == 0:  # not clustered (too few regions) or no neighbour: no SLPD loss for its regions
        return out
    assign = np.asarray(t.column("assign")[0].as_py(), np.int64)[first : first + n]
    intra = np.asarray(t.column("intra")[0].as_py(), np.float32).reshape(m, d)
    inter = np.asarray(t.column("inter")[0].as_py(), np.float32).reshape(m, r, d)
    k = len(assign)
    out["target_ok"][:k] = True
    out["intra"][:k], out["inter"][:k] = intra[assign], inter[assign]
    out["target_epoch"][:] = int(t.column("epoch")[0].as_py())
    return out
