"""Ray Train worker loop for DINO on region feature grids (HIPT/SLPD region encoder).

``train_loop_per_worker(config)`` runs on every Ray Train worker: DDP (gloo on
CPU, NCCL on GPU, set up by Ray Train), the student/teacher pair of
:class:`DinoModel` (region ViT + DINO head), AdamW with per-step cosine
schedules for lr and weight decay, EMA teacher with a cosine momentum
schedule, DINO centering, gradient clipping, the last layer frozen for the
first epoch(s), autocast on GPU. Batches come from the worker's shard of the
region dataset (``get_dataset_shard("train")``); the multi-crop views
(slices of the token grid) are cut here, seeded by ``(seed, step, rank)``, so
a resumed run sees the same views as an uninterrupted one.

Checkpoints (rank 0, every ``checkpoint_every`` steps and at the end) hold
student, teacher, optimizer, loss centre, step and the number of regions
consumed; a restarted worker group (``FailureConfig``) or a resubmitted job
(same ``storage_path`` and name) continues from the latest one, also with a
different number of workers (the position is kept in regions, not steps).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiscale.pretrain.augment import random_crop
from wsiscale.pretrain.heads import DINOHead
from wsiscale.pretrain.losses import DINOLoss
from wsiscale.pretrain.region_vit import RegionViT
from wsiscale.pretrain.schedules import cosine_schedule, ema_update, teacher_temp_schedule


class DinoModel(nn.Module):
    """Backbone + DINO head over multi-crop views of different sizes (DINO's ``MultiCropWrapper``).

    ``forward(views)`` with ``views`` a list of ``[B, D, h_i, w_i]`` tensors returns
    ``(logits [V * B, K], bottleneck [V * B, 256], features [V * B, embed_dim])``, view-major.
    Views of the same size go through the backbone together.
    """

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        f = torch.cat(feats)
        logits, z = self.head(f)
        return logits, z, f


def build_model(pretrain: Any, input_dim: int, grid: int, drop_path: float | None = None) -> DinoModel:
    p = pretrain
    backbone = RegionViT(input_dim=input_dim, embed_dim=p.embed_dim, depth=p.depth, num_heads=p.heads, grid=grid,
                         drop_path_rate=p.drop_path if drop_path is None else drop_path)
    head = DINOHead(p.embed_dim, p.out_dim, hidden_dim=p.head_hidden_dim, bottleneck_dim=p.head_bottleneck_dim)
    return DinoModel(backbone, head)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only, not on biases and norms (DINO's ``get_params_groups``)."""
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        if not prm.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or prm.ndim == 1 else decay).append(prm)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_views(grids: torch.Tensor, pretrain: Any, rng: np.random.Generator) -> list[torch.Tensor]:
    """Multi-crop views of a batch ``[B, D, g, g]``: global then local, a random crop per region per view."""
    arr = grids.numpy()
    sizes = [pretrain.global_crop_tokens] * pretrain.global_crops + [pretrain.local_crop_tokens] * pretrain.local_crops
    return [torch.from_numpy(np.stack([random_crop(r, size, rng) for r in arr])) for size in sizes]


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config``: ``pretrain`` (DinoConfig dict), ``shape`` [D, g, g], ``n_regions``."""
    import ray.train
    import ray.train.torch

    from wsiscale.config import DinoConfig

    p = DinoConfig.model_validate(config["pretrain"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    input_dim, grid = int(config["shape"][0]), int(config["shape"][1])
    torch.manual_seed(p.seed)
    student = build_model(p, input_dim, grid)
    teacher = build_model(p, input_dim, grid, drop_path=0.0)
    teacher.load_state_dict(student.state_dict())
    for prm in teacher.parameters():
        prm.requires_grad = False
    teacher.to(device)
    student = ray.train.torch.prepare_model(student)
    module = student.module if hasattr(student, "module") else student
    views = p.global_crops + p.local_crops
    dino = DINOLoss(p.out_dim, views, p.global_crops, p.student_temp, p.center_momentum).to(device)
    opt = torch.optim.AdamW(param_groups(module))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and p.precision == "fp16" else None

    batch, n_regions = p.batch_size, int(config["n_regions"])
    spe = n_regions // world // batch
    if spe < 1:
        raise ValueError(f"{n_regions} regions cannot fill one batch of {batch} on each of {world} workers: "
                         "lower pretrain.batch_size or use fewer workers")
    total = p.epochs * spe
    lr = cosine_schedule(p.lr * batch * world / 256.0, p.min_lr, p.epochs, spe, p.lr_warmup_epochs)
    wd = cosine_schedule(p.weight_decay, p.weight_decay_end, p.epochs, spe)
    mom = cosine_schedule(p.momentum_teacher, 1.0, p.epochs, spe)
    ttemp = teacher_temp_schedule(p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs, p.epochs)

    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=True)
        module.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        dino.load_state_dict(state["dino_loss"])
        if state["world"] == world:
            opt.load_state_dict(state["optimizer"])
        step = min(total, int(state["regions"]) // (batch * world))  # the position is kept in regions
    shard = ray.train.get_dataset_shard("train")
    if step >= total:  # resumed a finished run: nothing to train
        ray.train.report({"step": step, "total_steps": total, "world": world, "already_complete": True})
        return
    history: list[dict[str, float]] = []
    t_last, n_last = time.perf_counter(), 0
    while step < total:
        epoch, skip = divmod(step, spe)
        progressed = False
        for i, b in enumerate(shard.iter_torch_batches(batch_size=batch, drop_last=True)):
            if i < skip:
                continue
            if i >= spe or step >= total:
                break
            rng = np.random.default_rng((p.seed, step, rank))
            crops = [v.to(device, non_blocking=True) for v in make_views(b["grid"], p, rng)]
            for j, group in enumerate(opt.param_groups):
                group["lr"] = float(lr[step])
                if j == 0:
                    group["weight_decay"] = float(wd[step])
            with _autocast(device, p.precision):
                with torch.no_grad():
                    t_logits = teacher(crops[: p.global_crops])[0]
                s_logits = student(crops)[0]
                loss = dino(s_logits, t_logits, float(ttemp[epoch]))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower pretrain.lr or use fp32")
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(opt)
            if p.clip_grad:
                nn.utils.clip_grad_norm_(module.parameters(), p.clip_grad)
            if epoch < p.freeze_last_layer_epochs:
                for prm in module.head.last_layer.parameters():
                    prm.grad = None
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            ema_update(teacher, module, float(mom[step]))
            step += 1
            progressed = True
            n_last += batch * world
            record = {"step": step, "epoch": epoch, "loss": float(loss.item()), "dino_loss": float(loss.item()),
                      "lr": float(lr[step - 1]), "weight_decay": float(wd[step - 1]),
                      "teacher_momentum": float(mom[step - 1]), "teacher_temp": float(ttemp[epoch])}
            history.append(record)
            last = step == total
            if step % p.checkpoint_every == 0 or step % p.log_every == 0 or last:
                now = time.perf_counter()
                metrics = history[-1] | {"regions_per_s": n_last / max(now - t_last, 1e-9),
                                         "loss_mean": float(np.mean([h["loss"] for h in history[-p.log_every:]])),
                                         "world": world, "total_steps": total}
                t_last, n_last = now, 0
                if step % p.checkpoint_every == 0 or last:
                    _report_with_checkpoint(metrics, rank, world, step * batch * world, module, teacher, dino, opt,
                                            p, config, history)
                else:
                    ray.train.report(metrics)
        if not progressed:  # the shard ended before the epoch's steps: avoid spinning
            raise RuntimeError(f"worker {rank}: the dataset shard gave no batch for epoch {epoch} (skip {skip})")


def _report_with_checkpoint(metrics: dict[str, Any], rank: int, world: int, regions: int, module: nn.Module,
                            teacher: nn.Module, dino: DINOLoss, opt: torch.optim.Optimizer, p: Any,
                            config: dict[str, Any], history: list[dict[str, float]]) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save({"student": module.state_dict(), "teacher": teacher.state_dict(),
                        "dino_loss": dino.state_dict(), "optimizer": opt.state_dict(), "step": metrics["step"],
                        "regions": regions, "world": world}, os.path.join(d, "state.pt"))
            with open(os.path.join(d, "meta.json"), "w") as fh:
                json.dump({"pretrain": p.model_dump(mode="json"), "shape": config["shape"], "metrics": metrics,
                           "history": history}, fh)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)
