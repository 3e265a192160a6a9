"""Giga-SSL's Ray Train loop: SimCLR on slide view pairs with a SparseConvMIL encoder (1..N workers).

Every worker builds the same model (seeded), takes ``batch_size / W`` slides
per step from its dataset shard (two views each, :mod:`wsiscale.gigassl.data`),
encodes each view batch (BatchNorm statistics over the global view batch,
:class:`~wsiscale.models.distributed_batchnorm.DistributedBatchNorm1d`),
scores its rows of the global NT-Xent (negatives: every slide of the step on
every worker, :func:`~wsiscale.gigassl.losses.distributed_nt_xent`), and sums
gradients over workers before Adam steps - the step a single process would
take on the whole batch. The lr follows gigassl's schedule: linear warm-up,
then cosine, base lr scaled by ``batch_size / 256``.

Rank 0 writes ``progress.json`` every epoch and a checkpoint (model,
optimiser, step, history, resolved config) every ``checkpoint_every`` epochs
and at the end; a restarted or resubmitted run resumes from it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from wsiscale.gigassl.losses import distributed_nt_xent
from wsiscale.gigassl.model import GigaSSLModel, build_gigassl_model
from wsiscale.progress import write_progress
from wsiscale.train.checkpoints import report_checkpoint
from wsiscale.train.worker import start_worker


def view_inputs(tiles: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``[b, T, D]`` tiles and ``[b, T]`` positions -> flat ``(tiles [bT, D], rows, cols, batch)``."""
    b, t, d = tiles.shape
    batch = torch.arange(b, device=tiles.device).repeat_interleave(t)
    return tiles.reshape(b * t, d).float(), rows.reshape(-1), cols.reshape(-1), batch


def collapse_level(z: torch.Tensor) -> float:
    """gigassl's monitor: ``1 - sqrt(P) * mean std`` of the normalised projections (1 = collapsed)."""
    zn = torch.nn.functional.normalize(z.detach(), dim=1)
    return max(0.0, 1.0 - float(np.sqrt(zn.shape[1]) * zn.std(0).mean()))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config``: ``gigassl`` (GigaSSLConfig dict), ``dim``, ``n_slides``, ``progress_uri``."""
    import ray.train
    import ray.train.torch

    from wsiscale.config import GigaSSLConfig
    from wsiscale.train.distributed import allreduce_gradients
    from wsiscale.train.schedules import cosine_schedule

    g = GigaSSLConfig.model_validate(config["gigassl"])
    worker = start_worker()
    rank, world, device = worker.rank, worker.world, worker.device
    torch.manual_seed(g.seed)
    model = build_gigassl_model(g, int(config["dim"])).to(device)
    local = g.batch_size // world
    n_slides = int(config["n_slides"])
    spe = n_slides // (local * world)
    if local < 2 or spe < 1:
        raise ValueError(f"{n_slides} slides cannot fill one batch of {g.batch_size} slides on {world} workers "
                         "(at least 2 per worker): lower gigassl.batch_size or use fewer workers")
    total = g.epochs * spe
    base = g.lr * local * world / 256.0
    lr = cosine_schedule(base, g.min_lr, g.epochs, spe, g.warmup_epochs)
    opt = torch.optim.Adam(model.parameters(), lr=base, weight_decay=g.weight_decay)

    step, history = 0, []
    if worker.resuming:
        state, meta = worker.state, worker.meta
        model.load_state_dict(state["model"])
        if int(state["world"]) == world:
            opt.load_state_dict(state["optimizer"])
        step = min(total, int(state["slides"]) // (local * world))  # the position is kept in slides
        history = [h for h in meta["history"] if h["step"] <= step]
        worker.resumed_at(step=step)
    resumed_from = step
    shard = ray.train.get_dataset_shard("train")
    t0, seen = time.perf_counter(), 0
    while step < total:
        epoch = step // spe
        losses, collapse = [], []
        model.train()
        batches = shard.iter_torch_batches(batch_size=local, drop_last=True, local_shuffle_buffer_size=4 * local,
                                           local_shuffle_seed=g.seed + epoch * world + rank)
        for i, b in enumerate(batches):
            if i >= spe or step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = float(lr[step])
            za = model(*view_inputs(b["tiles_a"].to(device), b["rows_a"].to(device), b["cols_a"].to(device)), local)
            zb = model(*view_inputs(b["tiles_b"].to(device), b["rows_b"].to(device), b["cols_b"].to(device)), local)
            loss = distributed_nt_xent(za, zb, g.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            allreduce_gradients(list(model.parameters()))
            if not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
                raise FloatingPointError(f"non-finite gradients at step {step}: lower gigassl.lr")
            opt.step()
            total_loss = loss.detach().clone()
            if world > 1:
                torch.distributed.all_reduce(total_loss)
            losses.append(float(total_loss))
            collapse.append(collapse_level(za))
            step += 1
            seen += local * world
        if not losses:
            raise RuntimeError(f"worker {rank}: the dataset shard gave no batch in epoch {epoch}")
        now = time.perf_counter()
        record = {"step": step, "epoch": epoch, "loss": float(np.mean(losses)), "collapse": float(np.mean(collapse)),
                  "lr": float(lr[step - 1]), "slides_per_s": seen / max(now - t0, 1e-9), "time": time.time()}
        t0, seen = now, 0
        history.append(record)
        last = step >= total
        metrics = record | {"total_steps": total, "world": world, "resumed_from": resumed_from, "epochs": g.epochs}
        if rank == 0:
            write_progress(config.get("progress_uri"), metrics, config.get("storage"))
        if (epoch + 1) % g.checkpoint_every == 0 or last:
            _report_with_checkpoint(metrics, rank, world, step * local * world, model, opt, g, config, history,
                                    worker.starts)


def _report_with_checkpoint(metrics: dict[str, Any], rank: int, world: int, slides: int, model: GigaSSLModel,
                            opt: torch.optim.Optimizer, g: Any, config: dict[str, Any],
                            history: list[dict[str, Any]], starts: list[dict[str, Any]]) -> None:
    state = meta = None
    if rank == 0:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": metrics["step"],
                 "slides": slides, "world": world}
        meta = {"gigassl": g.model_dump(mode="json"), "dim": config["dim"], "metrics": metrics, "history": history,
                "starts": starts}
    report_checkpoint(metrics, rank, state, meta)
