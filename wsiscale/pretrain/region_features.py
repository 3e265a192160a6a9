"""Region features of a pretrained region encoder for every slide of a regions-mode run.

SLPD represents a slide by its regions' features (the region ViT's CLS output). This writes them as
an embedding run in the tiles-mode layout - one row per region: ``slide_id, x, y, embedding
[embed_dim]`` (float16), per-slide done records, ``slides.parquet`` - so the FAISS pool (k-means),
the slide index (per-slide prototypes, slide neighbours), the linear probe and the run report read
them like tile embeddings. Slides go one at a time through Ray Data actors that hold the encoder;
no process holds more than one slide's grids.

Rerunning skips slides already done. A run directory is tied to one encoder (its ``encoder.json``
step and weights digest, in ``<out>/source.json``): features of another encoder go elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from wsiscale.config import ConfigError, WsiscaleConfig
from wsiscale.io.uri import join_uri, normalize_uri, read_bytes, read_json, write_bytes_atomic

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"


def encoder_source(encoder_dir: str, storage: Any = None) -> dict[str, Any]:
    """``{"encoder", "step", "weights_sha1"}`` of an exported region encoder (what its features depend on)."""
    spec = read_json(join_uri(encoder_dir, "encoder.json"), storage)
    if spec is None:
        raise ConfigError(f"{encoder_dir} has no encoder.json: give the encoder/ directory of a pretraining run "
                          "(`wsiscale pretrain` writes <out>/encoder)")
    digest = hashlib.sha1(read_bytes(join_uri(encoder_dir, spec["weights"]), storage)).hexdigest()
    return {"encoder": normalize_uri(encoder_dir), "step": spec.get("step"), "weights_sha1": digest}


class RegionFeaturizer:
    """Ray Data actor body: one slide's region grids -> its region features, written with a done record."""

    def __init__(self, encoder_dir: str, out: str, storage: Any, shape: list[int], source: dict[str, Any],
                 batch: int = 64) -> None:
        import torch

        from wsiscale.data.embedding import EMBED_SLIDE_COLUMNS
        from wsiscale.pretrain.region_vit import load_region_encoder
        from wsiscale.runs.state import RunState

        torch.set_num_threads(1)
        self.torch, self.encoder = torch, load_region_encoder(encoder_dir, storage)
        self.state = RunState(out, storage, data_dir="embeddings", slide_columns=EMBED_SLIDE_COLUMNS)
        self.storage, self.shape, self.source, self.batch = storage, shape, source, batch

    def features(self, grids: np.ndarray) -> np.ndarray:
        """``[n, D, g, g]`` -> ``[n, embed_dim]`` float32."""
        with self.torch.no_grad():
            out = [self.encoder(self.torch.from_numpy(np.ascontiguousarray(grids[i : i + self.batch]))).numpy()
                   for i in range(0, len(grids), self.batch)]
        return np.concatenate(out) if out else np.zeros((0, self.encoder.embed_dim), np.float32)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from wsiscale.data.tiling import _now
        from wsiscale.pretrain.data import table_region_grids
        from wsiscale.runs.shards import parquet_bytes, read_parquet
        from wsiscale.runs.state import safe_name

        rows = []
        for sid, uris in zip(batch["slide_id"], batch["uris"]):
            t0, name = time.perf_counter(), safe_name(str(sid))
            try:
                tables = [read_parquet(str(u), self.storage, ["x", "y", "embedding"]) for u in uris]  # once each
                grids = np.concatenate([table_region_grids(t, self.shape) for t in tables])
                x = np.concatenate([t.column("x").to_numpy() for t in tables])
                y = np.concatenate([t.column("y").to_numpy() for t in tables])
                f = self.features(grids)
                table = pa.table({"slide_id": pa.array([str(sid)] * len(f), pa.string()),
                                  "x": pa.array(x, pa.int64()), "y": pa.array(y, pa.int64()),
                                  "embedding": pa.FixedSizeListArray.from_arrays(
                                      pa.array(f.astype(np.float16).ravel()), f.shape[1])},
                                 metadata={b"wsiscale.format": b"embeddings/1"})
                uri = join_uri(self.state.slide_dir(name), "embeddings.parquet")
                write_bytes_atomic(uri, parquet_bytes(table), self.storage)
                self.state.write_done(name, {
                    "status": "done", "slide_id": str(sid), "name": name, "tiles": len(f), "regions": len(f),
                    "dim": int(f.shape[1]), "encoder": f"region_vit:{self.source['encoder']}", "dtype": "float16",
                    "mode": "region-features", "seconds": time.perf_counter() - t0, "finished_at": _now(),
                    "shards": [{"path": self.state.relative(uri), "rows": len(f), "bytes": None}]})
                rows.append((str(sid), len(f), ""))
            except Exception as exc:  # a bad slide is recorded, never aborts the run
                msg = f"{uris[0] if len(uris) else sid}: {type(exc).__name__}: {exc}"
                self.state.write_failure(name, {"status": "failed", "slide_id": str(sid), "name": name,
                                                "uri": str(uris[0]) if len(uris) else "", "error_type":
                                                type(exc).__name__, "message": msg, "failed_at": _now()})
                rows.append((str(sid), 0, msg))
        return {"slide_id": np.array([r[0] for r in rows]), "regions": np.array([r[1] for r in rows], np.int64),
                "error": np.array([r[2] for r in rows])}


def run_region_features(cfg: WsiscaleConfig, regions: str, encoder_dir: str, out: str) -> dict[str, Any]:
    """Region features of every completed slide of the regions-mode run ``regions`` with the region encoder
    in ``encoder_dir``, written to ``out`` (resumable). Returns slide and region counts."""
    import ray

    from wsiscale.data.embedding import embed_state
    from wsiscale.data.slide_stage import slide_counts
    from wsiscale.pretrain.data import region_files, slide_items
    from wsiscale.runs.state import safe_name

    out = normalize_uri(out)
    files, ids, shape = region_files(regions, cfg.storage)
    source = encoder_source(encoder_dir, cfg.storage)
    before = read_json(join_uri(out, SOURCE_FILE), cfg.storage)
    if before is not None and before.get("weights_sha1") != source["weights_sha1"]:
        raise ConfigError(f"{out} holds region features of another encoder ({before.get('encoder')} at step "
                          f"{before.get('step')}); write the features of {encoder_dir} (step {source['step']}) "
                          "to a new directory")
    write_bytes_atomic(join_uri(out, SOURCE_FILE), json.dumps(source, indent=1).encode(), cfg.storage)
    state = embed_state(out, cfg)
    done_before = state.completed()
    items = [{"slide_id": ids[it["slide"]], "uris": it["uris"]} for it in slide_items(files)
             if safe_name(ids[it["slide"]]) not in done_before]
    t0, regions_now, failed = time.perf_counter(), 0, 0
    if items:
        p = cfg.pretrain
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64 * p.cluster_actors)))
        got = ds.map_batches(RegionFeaturizer, batch_size=1, concurrency=p.cluster_actors, num_cpus=p.cluster_cpus,
                             fn_constructor_kwargs=dict(encoder_dir=encoder_dir, out=out, storage=cfg.storage,
                                                        shape=shape, source=source))
        for b in got.iter_batches(batch_size=None, batch_format="numpy"):
            regions_now += int(b["regions"].sum())
            for sid, err in zip(b["slide_id"], b["error"]):
                if err:
                    failed += 1
                    log.warning("region features: %s", err)
    slides, failures = state.consolidate()
    total = int(sum(slides.column("regions").to_pylist() or [0])) if slides.num_rows else 0
    summary = {"out": out, "encoder": source, "dim": None,
               "slides": slide_counts([safe_name(i) for i in ids], done_before, slides, failures,
                                      done_this_run=len(items) - failed),
               "regions": {"total": total, "this_run": regions_now}, "seconds": time.perf_counter() - t0}
    if slides.num_rows:
        summary["dim"] = int(slides.column("dim")[0].as_py())
    write_bytes_atomic(join_uri(out, "run_summary.json"), json.dumps(summary, indent=1, default=str).encode(),
                       cfg.storage)
    return summary
