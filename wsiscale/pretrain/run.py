"""Driver of region-level DINO pretraining on Ray Train (``TorchTrainer``).

``run_pretraining(cfg, embeddings, out)`` lists the regions-mode embedding
run, builds the region dataset (:mod:`wsiscale.pretrain.data`), and fits a
``TorchTrainer`` with ``pretrain.num_workers`` workers (a ``(min, max)``
pair is elastic: an autoscaling cluster can add workers mid-run), checkpoints
under ``<out>/pretrain`` (``RunConfig(storage_path=out, name="pretrain")``:
resubmitting the same job resumes from the latest checkpoint) and
``FailureConfig(max_failures)``. The teacher backbone of the final checkpoint
is exported to ``<out>/encoder/`` (safetensors + JSON spec) and the resolved
config is saved next to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from wsiscale.config import ConfigError, WsiscaleConfig, save_config
from wsiscale.io.uri import is_local, join_uri, local_path, normalize_uri

log = logging.getLogger(__name__)

READ_TASK_CPUS = 0.5  # CPUs per Ray Data task reading region embeddings (wsiscale.pretrain.data)


def _storage_path(out: str) -> str:
    """Ray Train's ``storage_path``: a plain path for local outputs, the URI otherwise."""
    uri = normalize_uri(out)
    return str(local_path(uri)) if is_local(uri) else uri


def run_pretraining(cfg: WsiscaleConfig, embeddings: str, out: str) -> dict[str, Any]:
    """Pretrain the region encoder with DINO on a regions-mode embedding run; returns a summary."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from wsiscale.pretrain.data import region_dataset, region_files
    from wsiscale.pretrain.loop import train_loop_per_worker

    p = cfg.pretrain
    if p.level != "region":
        raise ConfigError("pretrain.level=patch (DINO on tiles) is not implemented yet; use level=region")
    files, slide_ids, shape = region_files(embeddings, cfg.storage)
    if shape[1] < p.global_crop_tokens or shape[2] < p.global_crop_tokens:
        raise ConfigError(f"region grids are {shape[1]} x {shape[2]} tokens, smaller than the "
                         f"{p.global_crop_tokens}-token global crops: lower pretrain.global_crop_tokens")
    n_regions = sum(f.rows for f in files)
    ds = region_dataset(files, shape, cfg.storage)
    lo, hi = p.num_workers
    _check_data_cpus(cfg, hi)
    scaling = ray.train.ScalingConfig(num_workers=lo if lo == hi else (lo, hi), use_gpu=p.use_gpu,
                                      resources_per_worker={"CPU": p.cpus_per_worker} | ({"GPU": 1} if p.use_gpu else {}))
    run_config = ray.train.RunConfig(
        name="pretrain", storage_path=_storage_path(out),
        failure_config=ray.train.FailureConfig(max_failures=p.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"pretrain": p.model_dump(mode="json"), "shape": shape, "n_regions": n_regions,
                           "files": [dataclasses.asdict(f) for f in files], "n_slides": len(slide_ids),
                           "storage": cfg.storage},
        scaling_config=scaling, run_config=run_config, datasets={"train": ds})
    log.info("pretraining DINO on %d regions of %d slides (%s grids), %s workers", n_regions, len(slide_ids),
             "x".join(map(str, shape)), p.num_workers)
    result = trainer.fit()
    if result.error:
        raise result.error
    summary = {"regions": n_regions, "slides": len(slide_ids), "shape": shape, "metrics": result.metrics,
               "checkpoint": result.checkpoint.path if result.checkpoint else None}
    if result.checkpoint is not None:
        summary["encoder"] = export_encoder(result.checkpoint, join_uri(normalize_uri(out), "encoder"), cfg)
    save_config(cfg, normalize_uri(out), cfg.storage)
    return summary


def _check_data_cpus(cfg: WsiscaleConfig, workers: int) -> None:
    """Ray Data's read tasks need CPUs the training workers do not hold, or the run stalls forever.

    On a fixed (local) cluster this is an error; on a cluster joined by address the
    autoscaler may add nodes, so it is a warning.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    held = workers * cfg.pretrain.cpus_per_worker
    if total - held >= READ_TASK_CPUS:
        return
    msg = (f"the {workers} training workers hold {held:g} of the cluster's {total:g} CPUs, leaving less than the "
           f"{READ_TASK_CPUS:g} CPU that reading region embeddings needs: lower pretrain.cpus_per_worker or "
           "pretrain.num_workers, or add CPUs")
    if cfg.ray.address is None:
        raise ConfigError(msg)
    log.warning("%s (waiting for the autoscaler to add CPUs)", msg)


def export_encoder(checkpoint: Any, out: str, cfg: WsiscaleConfig) -> str:
    """Write the checkpoint's teacher backbone as ``<out>/region_vit.safetensors`` + ``<out>/encoder.json``."""
    import torch
    from safetensors.torch import save

    from wsiscale.io.uri import write_bytes_atomic

    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(d, "meta.json")) as fh:
            meta = json.load(fh)
    backbone = {k[len("backbone."):]: v.contiguous() for k, v in state["teacher"].items() if k.startswith("backbone.")}
    write_bytes_atomic(join_uri(out, "region_vit.safetensors"), save(backbone), cfg.storage)
    p = cfg.pretrain
    spec = {"architecture": "region_vit", "input_dim": meta["shape"][0], "grid": meta["shape"][1],
            "embed_dim": p.embed_dim, "depth": p.depth, "heads": p.heads, "step": state["step"],
            "method": p.method, "weights": "region_vit.safetensors"}
    write_bytes_atomic(join_uri(out, "encoder.json"), json.dumps(spec, indent=1).encode(), cfg.storage)
    return out
