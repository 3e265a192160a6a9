"""Driver of DINO / SLPD pretraining on Ray Train (``TorchTrainer``).

``run_pretraining(cfg, source, out)`` takes a regions-mode embedding run
(``pretrain.level=region``: the region ViT of HIPT/SLPD over grids of patch
embeddings) or a tiling run with pixels (``level=patch``: the patch encoder,
ViT-S/16 by default, on DINO multi-crop views of the tiles), builds the Ray
Dataset (:mod:`wsiscale.pretrain.data` / :mod:`wsiscale.pretrain.tile_data`)
and fits a ``TorchTrainer`` with ``pretrain.num_workers`` workers (a ``(min,
max)`` pair is elastic: an autoscaling cluster can add workers mid-run),
checkpoints under ``<out>/pretrain`` (``RunConfig(storage_path=out,
name="pretrain")``: resubmitting the same job resumes from the latest
checkpoint) and ``FailureConfig(max_failures)``. While it runs, the driver
shows rank 0's ``progress.json`` as a rich progress bar. The teacher backbone
of the final checkpoint is exported to ``<out>/encoder/`` (safetensors + JSON
spec; a patch encoder loads with ``load_encoder``/``embed.encoder=<out>/encoder``)
and the resolved config is saved next to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from wsiscale.config import ConfigError, WsiscaleConfig
from wsiscale.io.uri import join_uri, normalize_uri
from wsiscale.runs.config_file import save_config
from wsiscale.train.fit import FitResult, fit
from wsiscale.train.scaling import READ_TASK_CPUS, check_data_cpus

log = logging.getLogger(__name__)

def _inputs(cfg: WsiscaleConfig, source: str, targets: str) -> tuple[list, list[str], list[int], Any]:
    """``(files, slide_ids, shape, dataset)`` of the pretraining input for ``pretrain.level`` (SLPD's
    clustering step writes its per-slide targets to ``targets``, where the region read tasks find them)."""
    p = cfg.pretrain
    if p.level == "patch":
        from wsiscale.pretrain.tile_data import tile_dataset, tile_files

        if p.method == "slpd":
            raise ConfigError("SLPD distils slide-level prototypes into the region encoder: use pretrain.level=region "
                              "(or pretrain.method=dino for the patch encoder)")
        files, slide_ids, _ = tile_files(source, cfg.storage)
        shape = [3, p.global_image_size, p.global_image_size]
        return files, slide_ids, shape, tile_dataset(files, p, cfg.storage, READ_TASK_CPUS)
    from wsiscale.pretrain.data import region_dataset, region_files

    files, slide_ids, shape = region_files(source, cfg.storage)
    targets = targets if p.method == "slpd" else None
    if shape[1] < p.global_crop_tokens or shape[2] < p.global_crop_tokens:
        raise ConfigError(f"region grids are {shape[1]} x {shape[2]} tokens, smaller than the "
                          f"{p.global_crop_tokens}-token global crops: lower pretrain.global_crop_tokens")
    return files, slide_ids, shape, region_dataset(files, shape, cfg.storage, targets, p.seed)


def run_pretraining(cfg: WsiscaleConfig, source: str, out: str) -> dict[str, Any]:
    """Pretrain with DINO (or SLPD) on ``source`` (regions-mode embedding run or tiling run); returns a summary."""
    from wsiscale.pretrain.loop import train_loop_per_worker

    p = cfg.pretrain
    targets_uri = join_uri(normalize_uri(out), "pretrain", "slpd-targets")
    files, slide_ids, shape, ds = _inputs(cfg, source, targets_uri)
    n_items = sum(f.rows for f in files)
    unit = "tiles" if p.level == "patch" else "regions"
    evaluation = None
    if p.eval_labels and p.eval_every:
        from wsiscale.pretrain.evaluate import check_holdout, load_eval_labels

        slides, labels, names = load_eval_labels(p.eval_labels, slide_ids, cfg.storage)
        check_holdout(labels, p.eval_holdout, p.seed, p.eval_labels)
        evaluation = {"slides": slides.tolist(), "labels": labels.tolist(), "classes": names}
    hi = p.num_workers[1]
    if p.method == "slpd":  # SLPD's clustering actors live as long as the attempt
        check_data_cpus(cfg, hi, p.cpus_per_worker, "pretrain", "reading region embeddings",
                        also_held=(p.cluster_actors * p.cluster_cpus, f"{p.cluster_actors} SLPD clustering actor(s)",
                                   "pretrain.cluster_cpus or pretrain.cluster_actors"))
    else:
        check_data_cpus(cfg, hi, p.cpus_per_worker, "pretrain", f"reading {unit}")
    progress_uri = join_uri(normalize_uri(out), "pretrain", "progress.json")
    log.info("pretraining %s (%s level) on %d %s of %d slides (%s), %s workers", p.method.upper(), p.level, n_items,
             unit, len(slide_ids), "x".join(map(str, shape)), p.num_workers)
    result = fit(cfg, "pretrain", train_loop_per_worker,
                 {"pretrain": p.model_dump(mode="json"), "shape": shape, "n_items": n_items,
                  "files": [dataclasses.asdict(f) for f in files], "n_slides": len(slide_ids), "storage": cfg.storage,
                  "eval": evaluation, "progress_uri": progress_uri, "targets_uri": targets_uri},
                 out, progress_uri, name="pretrain", datasets={"train": ds},
                 dataset_config=_data_config(p.preserve_order), description=f"pretrain {p.method}")
    summary = {unit: n_items, "items": n_items, "unit": unit, "slides": len(slide_ids), "shape": shape,
               "level": p.level, "metrics": result.metrics, "checkpoint": result.checkpoint.path,
               "starts": result.starts,
               "encoder": export_encoder(result, join_uri(normalize_uri(out), "encoder"), cfg)}
    save_config(cfg, normalize_uri(out), cfg.storage)
    return summary


def _data_config(preserve_order: bool) -> Any:
    """Ray Train's ingest options with Ray Data's ``preserve_order`` (a fixed order of regions/tiles)."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = preserve_order
    return ray.train.DataConfig(execution_options=options)


def export_encoder(result: FitResult, out: str, cfg: WsiscaleConfig) -> str:
    """Write the checkpoint's teacher backbone to ``<out>/`` as safetensors + ``encoder.json``.

    Patch level: ``model.safetensors`` with the registry encoder's own keys, and ``encoder.json``
    naming it (``{"encoder": "vit_s16", ...}``): ``embed.encoder=<out>`` (or
    ``load_encoder("<out>")``) embeds tiles with it. Region level: ``region_vit.safetensors``
    and the region ViT's sizes (:func:`wsiscale.pretrain.region_vit.load_region_encoder`).
    """
    from safetensors.torch import save

    from wsiscale.io.uri import write_bytes_atomic

    state, meta = result.state, result.meta
    backbone = {k[len("backbone."):]: v.contiguous() for k, v in state["teacher"].items() if k.startswith("backbone.")}
    p = cfg.pretrain
    common = {"method": p.method, "step": state["step"], "source": "wsiscale pretrain (DINO teacher backbone)"}
    if p.level == "patch":
        from wsiscale.models.encoders import get_spec

        spec = get_spec(p.patch_encoder)
        weights = "model.safetensors"
        info = {"encoder": p.patch_encoder, "architecture": p.patch_encoder, "dim": spec.dim,
                "input_size": spec.input_size, "mpp": spec.mpp, "weights": weights} | common
    else:
        weights = "region_vit.safetensors"
        info = {"architecture": "region_vit", "input_dim": meta["shape"][0], "grid": meta["shape"][1],
                "embed_dim": p.embed_dim, "depth": p.depth, "heads": p.heads, "weights": weights} | common
    write_bytes_atomic(join_uri(out, weights), save(backbone), cfg.storage)
    write_bytes_atomic(join_uri(out, "encoder.json"), json.dumps(info, indent=1).encode(), cfg.storage)
    return out
