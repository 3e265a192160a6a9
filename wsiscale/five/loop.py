"""FiVE's Ray Train loop: slides matched with their (augmented) report texts, on 1..N workers.

Every worker builds the same model (seeded) and the same text encoder, and
follows the same seeded schedule: each epoch shuffles the training slides,
each step takes ``batch_size`` of them, worker ``r`` forwards the ``r``-th
contiguous share (``batch_size / W`` slides; segmented random sampling of
``five.segments`` tiles each). The step's text augmentation (dropped fields,
shuffled order; :func:`wsiscale.five.data.step_texts`) is a function of the
seed and the step, so every worker knows every slide's text without
communication; the kept fields' questions are the TFS queries. Each worker
scores its slides against the step's distinct texts gathered from all workers
(:func:`~wsiscale.five.losses.distributed_five_loss`), and gradients are summed
over workers before each AdamW step (the step one process would take on the
whole batch). Frozen text encoders (``five.text.lora_rank = 0``) serve features
from a cache; with LoRA the adapters train with the visual side.

Rank 0 writes ``progress.json`` every epoch and a checkpoint (TFS, LoRA
adapters, optimiser, step, history, resolved config) every
``five.checkpoint_every`` epochs and at the end; a restarted or resubmitted
run resumes from it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from wsiscale.five.batches import slide_batch, text_features, train_seeds
from wsiscale.five.data import field_question, from_config, seed_of, step_texts
from wsiscale.five.losses import dedupe_texts, distributed_five_loss
from wsiscale.five.model import build_five_model
from wsiscale.progress import write_progress
from wsiscale.train.checkpoints import report_checkpoint
from wsiscale.train.worker import start_worker


def trainable_parameters(model: torch.nn.Module, encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in list(model.parameters()) + list(encoder.parameters()) if p.requires_grad]


def adapter_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The text encoder's trainable tensors (LoRA adapters; empty when frozen)."""
    return {k: v.detach().clone() for k, v in encoder.named_parameters() if v.requires_grad}


def load_adapter_state(encoder: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(encoder.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"checkpoint holds text-encoder tensors this encoder lacks: {unknown[:3]} (same "
                         "five.text config as the run?)")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config``: ``five`` (FiveConfig dict), ``slides``, ``dim``, ``progress_uri``."""

    from wsiscale.config import FiveConfig
    from wsiscale.data.bags import BagStore
    from wsiscale.five.text import build_text_encoder
    from wsiscale.train.distributed import allreduce_gradients
    from wsiscale.train.schedules import cosine_schedule

    five = FiveConfig.model_validate(config["five"])
    worker = start_worker()
    rank, world, device = worker.rank, worker.world, worker.device
    torch.manual_seed(five.seed)
    encoder = build_text_encoder(five.text).to(device)
    model = build_five_model(five, int(config["dim"]), encoder.dim).to(device)
    slides = from_config(config["slides"])
    store = BagStore([s.bag for s in slides], config.get("storage"), cache_gb=2.0)
    n = len(slides)
    local = five.batch_size // world
    spe = n // (local * world)
    if local < 1 or spe < 1 or local * world < 2:
        raise ValueError(f"{n} training slides cannot fill one batch of {five.batch_size} slides on {world} workers: "
                         "lower five.batch_size or use fewer workers")
    total = five.epochs * spe
    lr = cosine_schedule(five.lr, five.lr * 0.01, five.epochs, spe, five.warmup_epochs)
    lora = five.text.lora_rank > 0
    params = trainable_parameters(model, encoder)
    opt = torch.optim.AdamW(params, lr=five.lr, weight_decay=five.weight_decay)

    step, history = 0, []
    if worker.resuming:
        state, meta = worker.state, worker.meta
        model.load_state_dict(state["model"])
        load_adapter_state(encoder, state["text_adapters"])
        if int(state["world"]) == world:
            opt.load_state_dict(state["optimizer"])
        step = min(total, int(state["step"]))
        history = [h for h in meta["history"] if h["step"] <= step]
        worker.resumed_at(step=step)
    resumed_from = step
    t0, seen = time.perf_counter(), 0
    names = list(five.fields)
    while step < total:
        epoch = step // spe
        order = np.random.default_rng(seed_of(five.seed, epoch, 3)).permutation(n)
        losses, accs = [], []
        model.train()
        encoder.train(lora)
        for s in range(step % spe, spe):
            for group in opt.param_groups:
                group["lr"] = float(lr[step])
            batch = order[s * local * world:(s + 1) * local * world].tolist()
            kept, texts = step_texts([slides[i].fields for i in batch], names, five.seed, step, five.field_drop,
                                     five.field_shuffle)
            mine = batch[rank * local:(rank + 1) * local]
            tiles, pos, mask, valid = slide_batch(store, mine, five.segments, train_seeds(five.seed, epoch, s, mine),
                                                  device)
            queries = text_features(encoder, [field_question(f) for f in kept], lora)
            own_text = text_features(encoder, texts[rank * local:(rank + 1) * local], lora)
            slide = model(tiles, pos, mask, queries)
            loss = distributed_five_loss(model, slide, own_text, texts, rank * local, valid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            allreduce_gradients(params)
            if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                raise FloatingPointError(f"non-finite gradients at step {step}: lower five.lr")
            if five.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, five.grad_clip)
            opt.step()
            stats = torch.stack([loss.detach(), _matched(model, slide.detach(), own_text.detach(), texts,
                                                         rank * local)])
            if world > 1:
                torch.distributed.all_reduce(stats)
            losses.append(float(stats[0]))
            accs.append(float(stats[1]) / len(texts))
            step += 1
            seen += local * world
        now = time.perf_counter()
        record = {"step": step, "epoch": epoch, "loss": float(np.mean(losses)), "text_accuracy": float(np.mean(accs)),
                  "lr": float(lr[step - 1]), "logit_scale": float(model.scale()), "slides_per_s":
                  seen / max(now - t0, 1e-9), "world": world, "resumed_from": resumed_from,
                  "time": time.time()}
        t0, seen = now, 0
        history.append(record)
        last = step >= total
        metrics = record | {"total_steps": total, "epochs": five.epochs}
        if rank == 0:
            write_progress(config.get("progress_uri"), metrics, config.get("storage"))
        if (epoch + 1) % five.checkpoint_every == 0 or last:
            state = meta = None
            if rank == 0:
                state = {"model": model.state_dict(), "text_adapters": adapter_state(encoder),
                         "optimizer": opt.state_dict(), "step": step, "world": world}
                meta = {"five": five.model_dump(mode="json"), "dim": config["dim"], "text_dim": encoder.dim,
                        "metrics": metrics, "history": history, "starts": worker.starts}
            report_checkpoint(metrics, rank, state, meta)


def _matched(model, slide: torch.Tensor, text: torch.Tensor, texts: list[str], offset: int) -> torch.Tensor:
    """How many of this worker's slides rank their own text first among its slides' distinct texts."""
    first, target = dedupe_texts(texts[offset:offset + len(slide)])
    logits = model.similarity(slide, text[first])
    return (logits.argmax(1) == torch.as_tensor(target, device=slide.device)).sum().float()
