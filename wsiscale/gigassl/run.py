"""Drivers of ``wsiscale gigassl train`` and ``wsiscale gigassl embed``.

``train_gigassl(cfg, embeddings, out)`` trains the slide encoder on an
augmented embedding run with a ``TorchTrainer`` (checkpoints under
``<out>/train``; resubmitting resumes, ``FailureConfig`` restarts failed
workers) and writes ``<out>/model.safetensors`` + ``<out>/gigassl.json``
(config, embedding dim, per-epoch history) and the resolved config.

``embed_gigassl(cfg, embeddings, model, out)`` writes one vector per slide:
the mean of the slide encoder's representation (before the projector, as
gigassl's ``inference.py``) over ``embed_views`` views of the slide's
un-augmented tiles (``embed_tiles`` tiles each, or every tile in one view), on
Ray tasks of ``slides_per_task`` slides. The table ``slide_vectors.parquet``
(``slide_id, embedding``) feeds ``wsiscale eval linear-probe``; the summary
reports bytes per slide and the compression ratio versus the source slides.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from wsiscale.config import WsiscaleConfig
from wsiscale.io.uri import join_uri, normalize_uri, read_bytes, write_bytes_atomic
from wsiscale.runs.config_file import save_config
from wsiscale.train.fit import FitResult, fit

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
META_FILE = "gigassl.json"


def train_gigassl(cfg: WsiscaleConfig, embeddings: str, out: str) -> dict[str, Any]:
    """Train Giga-SSL on ``embeddings`` (an augmented tiles-mode run) into ``out``; returns ``gigassl.json``."""
    from wsiscale.gigassl.data import gigassl_slides, pair_dataset
    from wsiscale.gigassl.loop import train_loop_per_worker
    from wsiscale.train.scaling import check_data_cpus

    g = cfg.gigassl
    out = normalize_uri(out)
    entries, dim = gigassl_slides(embeddings, cfg.storage)
    check_data_cpus(cfg, g.num_workers[1], g.cpus_per_worker, "gigassl", "reading the views")
    progress_uri = join_uri(out, "progress.json")
    save_config(cfg, out, cfg.storage)
    log.info("Giga-SSL: %d slides, %d-d tile embeddings, %d augmentations, batch %d, %d epochs, %s workers",
             len(entries), dim, entries[0].augmentations, g.batch_size, g.epochs, g.num_workers)
    result = fit(cfg, "gigassl", train_loop_per_worker,
                 {"gigassl": g.model_dump(mode="json"), "dim": dim, "n_slides": len(entries), "storage": cfg.storage,
                  "progress_uri": progress_uri},
                 out, progress_uri, datasets={"train": pair_dataset(entries, g, cfg.storage)},
                 description="gigassl train")
    return _export(result, out, embeddings, len(entries), cfg)


def _export(result: FitResult, out: str, embeddings: str, n_slides: int, cfg: WsiscaleConfig) -> dict[str, Any]:
    from safetensors.torch import save

    state, meta = result.state, result.meta
    write_bytes_atomic(join_uri(out, MODEL_FILE), save({k: v.contiguous() for k, v in state["model"].items()}),
                       cfg.storage)
    doc = {"embeddings": embeddings, "slides": n_slides, "dim": meta["dim"], "gigassl": meta["gigassl"],
           "steps": int(state["step"]), "history": meta["history"],
           "final_loss": meta["history"][-1]["loss"] if meta["history"] else None, "starts": result.starts}
    write_bytes_atomic(join_uri(out, META_FILE), json.dumps(doc, indent=1).encode(), cfg.storage)
    return doc


def load_gigassl_model(model_dir: str, storage: Any = None):
    """``(model in eval mode, gigassl.json)`` of a ``wsiscale gigassl train`` output directory."""
    from safetensors.torch import load

    from wsiscale.config import GigaSSLConfig
    from wsiscale.gigassl.model import build_gigassl_model
    model_dir = normalize_uri(model_dir)
    try:
        meta = json.loads(read_bytes(join_uri(model_dir, META_FILE), storage))
        weights = read_bytes(join_uri(model_dir, MODEL_FILE), storage)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{model_dir} has no {META_FILE}/{MODEL_FILE}: give the output directory of "
                                "`wsiscale gigassl train`") from exc
    g = GigaSSLConfig.model_validate(meta["gigassl"] | {"init_weights": None})
    model = build_gigassl_model(g, int(meta["dim"]))
    model.load_state_dict(load(weights))
    return model.eval(), meta


def _source_bytes(uri: str | None, storage: Any) -> int:
    """Size of the source slide file (0 when unknown or unreachable)."""
    from wsiscale.io.uri import filesystem

    if not uri:
        return 0
    try:
        fs, path = filesystem(uri, storage)
        return int(fs.size(path) or 0)
    except Exception:  # noqa: BLE001 - the ratio is informative only
        return 0


def slide_vector(model: Any, feats: np.ndarray, rows: np.ndarray, cols: np.ndarray, views: int,
                 tiles: int, rng: np.random.Generator) -> np.ndarray:
    """Mean representation ``[width]`` over ``views`` views of ``tiles`` tiles (0: one view of every tile)."""
    import torch

    with torch.no_grad():
        if tiles == 0:
            sel = [np.arange(len(feats))]
        else:
            sel = [rng.integers(0, len(feats), size=tiles) for _ in range(views)]
        t = torch.from_numpy(np.concatenate([feats[s] for s in sel])).float()
        r = torch.from_numpy(np.concatenate([rows[s] for s in sel]))
        c = torch.from_numpy(np.concatenate([cols[s] for s in sel]))
        b = torch.from_numpy(np.concatenate([np.full(len(s), i) for i, s in enumerate(sel)]))
        h = model.encode(t, r, c, b, len(sel))
    return h.mean(0).numpy()


def _embed_task(entries: list[dict[str, Any]], model_dir: str, storage: Any, views: int, tiles: int,
                seed: int) -> list[tuple[str, np.ndarray | None, str | None, int]]:
    import zlib

    import torch

    import wsiscale  # noqa: F401  (cuCIM before torch in a fresh worker)
    from wsiscale.gigassl.data import read_tiles

    torch.set_num_threads(1)
    model, _ = load_gigassl_model(model_dir, storage)
    out = []
    for e in entries:
        try:
            feats, rows, cols = read_tiles(e["embeddings"], storage)
            if not np.isfinite(feats).all():
                raise ValueError("its tile embeddings hold NaN/inf")
            rng = np.random.default_rng((seed, zlib.crc32(e["slide_id"].encode())))
            vec = slide_vector(model, feats, rows, cols, views, tiles, rng)
            out.append((e["slide_id"], vec, None, _source_bytes(e.get("source"), storage)))
        except Exception as exc:  # noqa: BLE001 - one bad slide never stops the run
            out.append((e["slide_id"], None, f"{e['embeddings']}: {type(exc).__name__}: {exc}", 0))
    return out


def embed_gigassl(cfg: WsiscaleConfig, embeddings: str, model_dir: str, out: str,
                  slides_per_task: int = 32) -> dict[str, Any]:
    """Write ``<out>/slide_vectors.parquet`` (one Giga-SSL vector per slide) and ``<out>/summary.json``."""
    import pyarrow as pa
    import ray

    from wsiscale.gigassl.data import embedding_entries
    from wsiscale.runs.shards import parquet_bytes

    g = cfg.gigassl
    out = normalize_uri(out)
    load_gigassl_model(model_dir, cfg.storage)  # fail early, on the driver, with a clear message
    items = embedding_entries(embeddings, cfg.storage)
    tiles = g.tiles_per_view if g.embed_tiles is None else g.embed_tiles
    task = ray.remote(num_cpus=1)(_embed_task)
    refs = [task.remote(items[i:i + slides_per_task], model_dir, cfg.storage, g.embed_views, tiles, g.seed)
            for i in range(0, len(items), slides_per_task)]
    ids, vecs, failures, source_bytes = [], [], [], 0
    for ref in refs:
        for slide_id, vec, error, size in ray.get(ref):
            if vec is None:
                log.warning("slide %s left out: %s", slide_id, error)
                failures.append({"slide_id": slide_id, "error": error})
            else:
                ids.append(slide_id)
                vecs.append(vec)
                source_bytes += size
    if not vecs:
        raise RuntimeError(f"no slide of {embeddings} could be embedded: {failures[:3]}")
    x = np.stack(vecs).astype(np.float32)
    table = pa.table({"slide_id": pa.array(ids, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])},
                     metadata={b"wsiscale.format": b"slide-vectors/1", b"wsiscale.model": model_dir.encode()})
    data = parquet_bytes(table)
    vectors_uri = join_uri(out, "slide_vectors.parquet")
    write_bytes_atomic(vectors_uri, data, cfg.storage)
    summary = {"vectors": vectors_uri, "model": model_dir, "embeddings": embeddings, "slides": len(ids),
               "dim": int(x.shape[1]), "views": g.embed_views, "tiles_per_view": tiles,
               "bytes_per_slide": len(data) / len(ids), "vector_bytes": int(x.shape[1] * 4),
               "source_bytes_per_slide": source_bytes / len(ids) if source_bytes else None,
               "compression_ratio": source_bytes / len(data) if source_bytes else None,
               "failures": failures}
    write_bytes_atomic(join_uri(out, "summary.json"), json.dumps(summary, indent=1).encode(), cfg.storage)
    save_config(cfg, out, cfg.storage)
    return summary
