"""Ray Train worker loop for DINO on tiles (patch encoder) or region feature grids (HIPT/SLPD region encoder).

``train_loop_per_worker(config)`` runs on every Ray Train worker: DDP (gloo on
CPU, NCCL on GPU, set up by Ray Train), the student/teacher pair of
:class:`DinoModel` (patch encoder or region ViT + DINO head), AdamW with per-step cosine
schedules for lr and weight decay, EMA teacher with a cosine momentum
schedule, DINO centering, gradient clipping, the last layer frozen for the
first epoch(s), autocast on GPU. Batches come from the worker's shard of the
dataset (``get_dataset_shard("train")``) through a seeded shuffle buffer
(:func:`epoch_batches`), so a batch mixes the items of several slides. Tile views are cut and colour-
augmented by Ray Data's CPU tasks (:mod:`wsiscale.pretrain.tile_data`); region
views (slices of the token grid) are cut here, seeded by ``(seed, step,
rank)``, so a resumed run sees the same views as an uninterrupted one.

Rank 0 also runs SLPD's clustering step (region level, after the warm-up) and
the periodic linear-probe/kNN evaluation (:mod:`wsiscale.pretrain.evaluate`)
and writes ``progress.json`` (the driver shows it as a rich progress bar).

Checkpoints (rank 0, every ``checkpoint_every`` steps and at the end) hold
student, teacher, optimizer, loss centres, step and the number of items
(regions or tiles) consumed in ``state.pt``, and the config, step history and
evaluations in ``meta.json``; a restarted worker group (``FailureConfig``) or
a resubmitted job (same ``storage_path`` and name) continues from the latest
one, also with a different number of workers (the position is kept in items,
not steps).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from wsiscale.pretrain.augment import grid_multicrop
from wsiscale.pretrain.losses import DINOLoss
from wsiscale.pretrain.model import build_model, image_normaliser
from wsiscale.pretrain.schedules import ema_update, teacher_temp_schedule
from wsiscale.progress import write_progress
from wsiscale.train.checkpoints import report_checkpoint
from wsiscale.train.schedules import cosine_schedule
from wsiscale.train.worker import start_worker


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
    per_region = [grid_multicrop(r, rng, pretrain.global_crops, pretrain.local_crops, pretrain.global_crop_tokens,
                                 pretrain.local_crop_tokens) for r in grids.numpy()]
    return [torch.from_numpy(np.stack(view)) for view in zip(*per_region)]


def batch_views(b: dict[str, torch.Tensor], pretrain: Any, rng: np.random.Generator, device: torch.device,
                normalise=None) -> list[torch.Tensor]:
    """The multi-crop views of a batch on ``device``: cut from region grids here, or Ray Data's tile views."""
    if "grid" in b:
        return [v.to(device, non_blocking=True) for v in make_views(b["grid"], pretrain, rng)]
    n = pretrain.global_crops + pretrain.local_crops
    return [normalise(b[f"view_{i}"].to(device, non_blocking=True)) for i in range(n)]


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class SlpdTargets:
    """SLPD's per-epoch clustering step, and its intra-/inter-slide losses for a batch.

    Rank 0 runs :func:`wsiscale.pretrain.slpd.cluster_step` with the current teacher on the attempt's
    persistent :class:`~wsiscale.pretrain.slpd.ClusterPool` (created at the first step) and writes
    the per-slide targets (:func:`~wsiscale.pretrain.slpd.write_targets`) where the region
    dataset's read tasks look them up, so every batch arrives with its regions' targets
    (``intra [B, d]``, ``inter [B, r, d]``, ``target_ok [B]``, ``target_epoch [B]``). Only the
    epoch and the number of clustered slides are broadcast: no rank holds every slide's targets.
    """

    def __init__(self, epoch: int, clustered: int) -> None:
        self.epoch, self.clustered = epoch, clustered

    @classmethod
    def compute(cls, config: dict[str, Any], p: Any, teacher: nn.Module, rank: int, world: int, epoch: int,
                pool: list) -> "SlpdTargets":
        """``pool``: ``[ClusterPool]`` once rank 0 has created it (``[]`` before), kept by the caller."""
        from wsiscale.pretrain.data import RegionFile
        from wsiscale.pretrain.slpd import ClusterPool, cluster_step, write_targets

        def step() -> tuple[int, int]:
            if not pool:
                pool.append(ClusterPool(p.model_dump(mode="json"), config["shape"], m=p.prototypes,
                                        min_regions=p.min_regions, iters=p.cluster_iters,
                                        restarts=p.cluster_restarts, storage=config.get("storage"),
                                        actors=p.cluster_actors, cpus_per_actor=p.cluster_cpus))
            result = cluster_step([RegionFile(**f) for f in config["files"]], int(config["n_slides"]),
                                  config["shape"], _cpu_state(teacher), p.model_dump(mode="json"), m=p.prototypes,
                                  neighbours=p.nearest_slides, seed=p.seed + epoch, pool=pool[0])
            write_targets(result, config["targets_uri"], epoch, config.get("storage"))
            return epoch, int(result.valid.sum())

        return cls(*_on_rank0(step, rank, world))

    def losses(self, b: dict[str, torch.Tensor], s_logits: torch.Tensor, views: int, teacher: nn.Module,
               proto_loss: DINOLoss, teacher_temp: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(intra, inter)`` for a batch: student logits ``[V * B, K]`` against its regions' prototype targets."""
        got = b["target_epoch"]
        if "intra" not in b or bool((got != self.epoch).any()):
            raise RuntimeError(f"SLPD epoch {self.epoch}: a batch carries targets of epoch(s) "
                               f"{sorted(set(got.tolist()))}; the region dataset must be read after the clustering step")
        ok = b["target_ok"].to(device)
        k = s_logits.shape[-1]
        student = s_logits.reshape(views, -1, k)[:, ok].reshape(-1, k)
        inter = b["inter"].to(device)[ok]  # [B', r, d]
        r = inter.shape[1]
        with torch.no_grad():
            intra_t = teacher.head.last(b["intra"].to(device)[ok])
            inter_t = teacher.head.last(inter.transpose(0, 1).reshape(-1, inter.shape[-1]))  # target-major
        return (proto_loss(student, intra_t, teacher_temp, teacher_views=1),
                proto_loss(student, inter_t, teacher_temp, teacher_views=r))


def _on_rank0(fn, rank: int, world: int) -> Any:
    """``fn()`` run on rank 0 only, its (picklable) result broadcast to every rank."""
    holder: list[Any] = [fn() if rank == 0 else None]
    if world > 1 and dist.is_initialized():
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's float32 CPU state dict (what Ray Data actors rebuild the teacher from)."""
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def _evaluate(config: dict[str, Any], p: Any, teacher: nn.Module, rank: int, world: int) -> dict[str, float]:
    """Rank 0's probe metrics of the current teacher, shared with every rank."""
    from wsiscale.pretrain.data import RegionFile
    from wsiscale.pretrain.evaluate import evaluate

    ev = config["eval"]
    return _on_rank0(lambda: evaluate([RegionFile(**f) for f in config["files"]], config["shape"],
                                      _cpu_state(teacher), p, np.asarray(ev["slides"]), np.asarray(ev["labels"]),
                                      config.get("storage")), rank, world)


def epoch_batches(shard: Any, batch: int, buffer: int, key: tuple[int, ...]):
    """One epoch of a worker's ``batch``-row torch batches from its dataset shard.

    Read tasks yield one slide (region files) or one shard (tiles) at a time, so in read order a
    batch would hold one slide's items: DINO's centre and every step's gradient would follow the
    slide (its stain, its tissue mix). A shuffle buffer of ``buffer`` rows
    (:func:`~wsiscale.pretrain.shuffle.shuffled_batches`) mixes the slides read in a row; it is
    seeded by ``key`` (seed, epoch, rank), so with a fixed read order (``preserve_order``) an
    epoch's batches are the same when a resumed run redoes it. ``buffer`` 0 keeps the read order.
    """
    if buffer <= 0:
        return shard.iter_torch_batches(batch_size=batch, drop_last=True)
    from wsiscale.pretrain.shuffle import shuffled_batches

    return shuffled_batches(shard.iter_torch_batches(batch_size=batch), batch, buffer, np.random.default_rng(key))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point.

    ``config``: ``pretrain`` (DinoConfig dict), ``shape`` (``[D, g, g]`` regions or ``[3, S, S]``
    tiles), ``n_items``, ``files``/``n_slides``/``storage`` (SLPD's clustering step and the
    evaluation), ``eval`` (``slides``, ``labels``) and ``progress_uri`` (optional).
    """
    import ray.train
    import ray.train.torch

    from wsiscale.config import DinoConfig

    p = DinoConfig.model_validate(config["pretrain"])
    worker = start_worker()
    rank, world, device = worker.rank, worker.world, worker.device
    shape = [int(v) for v in config["shape"]]
    torch.manual_seed(p.seed)
    student = build_model(p, shape)
    teacher = build_model(p, shape, drop_path=0.0)
    teacher.load_state_dict(student.state_dict())
    for prm in teacher.parameters():
        prm.requires_grad = False
    teacher.to(device)
    student = ray.train.torch.prepare_model(student)
    module = student.module if hasattr(student, "module") else student
    normalise = image_normaliser(p) if p.level == "patch" else None
    views = p.global_crops + p.local_crops
    dino = DINOLoss(p.out_dim, views, p.global_crops, p.student_temp, p.center_momentum, p.centering).to(device)
    proto_loss = DINOLoss(p.out_dim, views, 1, p.student_temp, p.center_momentum, p.centering).to(device)  # SLPD
    opt = torch.optim.AdamW(param_groups(module))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and p.precision == "fp16" else None
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"  # gloo / nccl
    precision = p.precision if device.type == "cuda" else "fp32"  # what _autocast runs

    batch, n_items = p.batch_size, int(config["n_items"])
    unit = "tiles" if p.level == "patch" else "regions"
    spe = n_items // world // batch
    if spe < 1:
        raise ValueError(f"{n_items} {unit} cannot fill one batch of {batch} on each of {world} workers: "
                         "lower pretrain.batch_size or use fewer workers")
    total = p.epochs * spe
    lr = cosine_schedule(p.lr * batch * world / 256.0, p.min_lr, p.epochs, spe, p.lr_warmup_epochs)
    wd = cosine_schedule(p.weight_decay, p.weight_decay_end, p.epochs, spe)
    mom = cosine_schedule(p.momentum_teacher, 1.0, p.epochs, spe)
    ttemp = teacher_temp_schedule(p.warmup_teacher_temp, p.teacher_temp, p.warmup_teacher_temp_epochs, p.epochs)

    step = 0
    history: list[dict[str, float]] = []
    evaluations: list[dict[str, float]] = []
    if worker.resuming:
        state, meta = worker.state, worker.meta
        module.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        dino.load_state_dict(state["dino_loss"])
        proto_loss.load_state_dict(state["proto_loss"])
        if state["world"] == world:
            opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = min(total, int(state["items"]) // (batch * world))  # the position is kept in items
        # records past the resumed position are redone; kept by items, so a resize (another world) keeps them right
        pos = step * batch * world
        history = [h for h in meta.get("history", []) if h.get("items", h["step"] * batch * world) <= pos]
        evaluations = [e for e in meta.get("evaluations", []) if e.get("items", e["step"] * batch * world) <= pos]
        worker.resumed_at(step=step, items=pos)
    resumed_from = step
    shard = ray.train.get_dataset_shard("train")
    if step >= total:  # resumed a finished run: nothing to train
        ray.train.report({"step": step, "total_steps": total, "world": world, "already_complete": True})
        return
    run_eval = p.eval_every > 0 and config.get("eval") is not None
    t_last, n_last = time.perf_counter(), 0
    targets: SlpdTargets | None = None
    cluster_pool: list = []  # rank 0's persistent clustering actors, created at the first clustering step
    while step < total:
        epoch, skip = divmod(step, spe)
        progressed = False
        if p.method == "slpd" and epoch >= p.warmup_epochs:  # SLPD's clustering step, once per epoch
            targets = SlpdTargets.compute(config, p, teacher, rank, world, epoch, cluster_pool)
        for i, b in enumerate(epoch_batches(shard, batch, p.shuffle_buffer, (p.seed, epoch, rank))):
            if i < skip:
                continue
            if i >= spe or step >= total:
                break
            rng = np.random.default_rng((p.seed, step, rank))
            torch.manual_seed(int(rng.integers(2**62)))  # drop-path draws depend on (seed, step, rank) only
            crops = batch_views(b, p, rng, device, normalise)
            for j, group in enumerate(opt.param_groups):
                group["lr"] = float(lr[step])
                if j == 0:
                    group["weight_decay"] = float(wd[step])
            with _autocast(device, p.precision):
                with torch.no_grad():
                    t_logits = teacher(crops[: p.global_crops])[0]
                s_logits = student(crops)[0]
                dino_loss = dino(s_logits, t_logits, float(ttemp[epoch]))
                intra = inter = torch.zeros((), device=device)
                if targets is not None:
                    intra, inter = targets.losses(b, s_logits, views, teacher, proto_loss, float(ttemp[epoch]),
                                                  device)
                loss = dino_loss + p.intra_weight * intra + p.inter_weight * inter
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
            record = {"step": step, "epoch": epoch, "loss": float(loss.item()), "dino_loss": float(dino_loss.item()),
                      "intra_loss": float(intra.item()), "inter_loss": float(inter.item()),
                      "clustered_slides": targets.clustered if targets is not None else 0,
                      "lr": float(lr[step - 1]), "weight_decay": float(wd[step - 1]),
                      "teacher_momentum": float(mom[step - 1]), "teacher_temp": float(ttemp[epoch]),
                      "items": step * batch * world, "world": world, "time": time.time()}
            history.append(record)
            last = step == total
            epoch_end = step % spe == 0
            evaluated = {}
            if run_eval and epoch_end and ((epoch + 1) % p.eval_every == 0 or last):
                evaluated = _evaluate(config, p, teacher, rank, world) | {"epoch": epoch, "step": step,
                                                                          "items": step * batch * world}
                evaluations.append(evaluated)
            if step % p.checkpoint_every == 0 or step % p.log_every == 0 or last or evaluated:
                now = time.perf_counter()
                metrics = history[-1] | {f"{unit}_per_s": n_last / max(now - t_last, 1e-9), "resumed_from": resumed_from,
                                         "loss_mean": float(np.mean([h["loss"] for h in history[-p.log_every:]])),
                                         "world": world, "total_steps": total, "device": device.type,
                                         "backend": backend, "precision": precision}
                if evaluations:
                    metrics |= {k: v for k, v in evaluations[-1].items() if k not in ("epoch", "step")}
                t_last, n_last = now, 0
                if rank == 0:
                    write_progress(config.get("progress_uri"), metrics, config.get("storage"))
                if step % p.checkpoint_every == 0 or last:
                    _report_with_checkpoint(metrics, rank, world, step * batch * world, module, teacher,
                                            {"dino_loss": dino, "proto_loss": proto_loss}, opt, scaler, p, config,
                                            history, evaluations, worker.starts)
                else:
                    ray.train.report(metrics)
        if not progressed:  # the shard ended before the epoch's steps: avoid spinning
            raise RuntimeError(f"worker {rank}: the dataset shard gave no batch for epoch {epoch} (skip {skip})")
    for pool in cluster_pool:  # (a failed attempt's actors go with its worker, their owner)
        pool.close()


def _report_with_checkpoint(metrics: dict[str, Any], rank: int, world: int, items: int, module: nn.Module,
                            teacher: nn.Module, losses: dict[str, DINOLoss], opt: torch.optim.Optimizer,
                            scaler: Any, p: Any,
                            config: dict[str, Any], history: list[dict[str, float]],
                            evaluations: list[dict[str, float]], starts: list[dict[str, Any]]) -> None:
    state = meta = None
    if rank == 0:
        state = {"student": module.state_dict(), "teacher": teacher.state_dict(),
                 **{k: v.state_dict() for k, v in losses.items()}, "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else {}, "step": metrics["step"],
                 "items": items, "world": world}
        meta = {"pretrain": p.model_dump(mode="json"), "shape": config["shape"], "metrics": metrics,
                "history": history, "evaluations": evaluations, "starts": starts}
    report_checkpoint(metrics, rank, state, meta)
