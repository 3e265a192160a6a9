"""The Ray Train worker loop of MIL training: k folds, early stopping, checkpoints, WENO's two phases.

Every worker runs the same schedule and takes its share of each step's work, and
gradients are summed across workers before each optimiser step (a manual
all-reduce, not DDP, because steps carry different numbers of bags and
instances per worker). One step of the *bag phase* is ``mil.bags_per_step``
bags taken in a seeded order; worker ``r`` forwards bags ``r, r + W, ...`` of
the step, one bag at a time, and the loss is the mean over the step's bags.
Dropout draws are seeded per (seed, fold, epoch, bag), so 1 and N workers
compute the same gradients (up to float summation order).

WENO (Qu et al., NeurIPS 2022; micciaif/WENO) adds, per epoch:

1. in the bag phase, after ``hard_mining_warmup_epochs``: the student's
   ``P(positive)`` of each positive bag's instances; those above
   ``hard_mining_threshold`` are dropped before the teacher sees the bag;
   the epoch's range of attention logits is all-reduced (min, max) across
   workers - the normalisation of the pseudo labels;
2. the *student phase*: instances of the training bags in a seeded order,
   ``mil.instance_batch`` per step over all workers; pseudo labels are the
   teacher's attention logits normalised with that range (0 in negative bags);
   the student and the shared encoder follow WENO's soft cross-entropy. The
   teacher labels instances in training mode (dropout on), as it was when the
   range was measured - as WENO's code does. The encoder's BatchNorm normalises
   each step's *global* instance batch: its statistics are all-reduced over the
   workers, forward and backward (:mod:`wsiscale.models.distributed_batchnorm`),
   so a step's gradient does not depend on how the batch is split over workers.

After each epoch, BatchNorm running statistics (which the bag phase accumulates
per worker, one bag at a time) are averaged across workers and
the validation bags give the early-stopping loss; the best epoch's weights are
tested. Checkpoints (``Checkpoint`` every ``mil.checkpoint_every`` epochs and
at each fold's end) carry the fold, epoch, model, optimisers, best weights and
the finished folds' results: a restarted worker group resumes where it was.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from wsiscale.data.bags import BagSpec, BagStore
from wsiscale.mil.losses import bag_loss, global_range, hard_positive_keep, pseudo_labels, student_loss
from wsiscale.models.distributed_batchnorm import batch_norm_across_workers
from wsiscale.models.mil import MILModel, build_mil_model
from wsiscale.progress import write_progress
from wsiscale.train.checkpoints import report_checkpoint
from wsiscale.train.distributed import active_group, allreduce_gradients, average_buffers
from wsiscale.train.worker import start_worker

STUDENT_CHUNK_BAGS = 16  # bags whose instances are shuffled together in the student phase


def _seed(*parts: int) -> int:
    return zlib.crc32(np.asarray(parts, np.int64).tobytes())


def _optimizers(model: MILModel, mil: Any) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per module, as WENO's code (the encoder is stepped by both phases)."""
    def make(params):
        if mil.optimizer == "adam":
            return torch.optim.Adam(params, lr=mil.lr, weight_decay=mil.weight_decay)
        return torch.optim.SGD(params, lr=mil.lr, weight_decay=mil.weight_decay)

    opts = {"encoder": make(model.encoder.parameters()), "bag": make(model.bag.parameters())}
    if model.student is not None:
        opts["student"] = make(model.student.parameters())
    return opts


def _step(model: MILModel, opts: dict[str, torch.optim.Optimizer], parts: tuple[str, ...]) -> None:
    params = [p for part in parts for p in getattr(model, part).parameters()]
    allreduce_gradients(params)
    for part in parts:
        opts[part].step()


def bag_phase(model: MILModel, opts: dict[str, torch.optim.Optimizer], store: BagStore, train: list[int],
              mil: Any, fold: int, epoch: int, rank: int, world: int, device: torch.device) -> dict[str, float]:
    """One epoch of bag-level training; returns this worker's ``loss_sum``, ``bags`` and attention range."""
    model.train()
    order = np.random.default_rng(_seed(mil.seed, fold, epoch, 1)).permutation(train)
    mining = mil.method == "weno" and epoch > mil.hard_mining_warmup_epochs
    lo, hi, loss_sum, bags, dropped = np.inf, -np.inf, 0.0, 0, 0
    for s in range(0, len(order), mil.bags_per_step):
        step_bags = order[s:s + mil.bags_per_step]
        for part in ("encoder", "bag"):
            opts[part].zero_grad(set_to_none=True)
        for i in step_bags[rank::world]:
            bag = store.get(int(i))
            if bag is None or len(bag.feats) < 2:  # BatchNorm needs two instances
                continue
            torch.manual_seed(_seed(mil.seed, fold, epoch, int(i)))
            label = store.specs[int(i)].label
            feat = model.encoder(torch.from_numpy(bag.feats).to(device))
            if mining and label == 1:
                with torch.no_grad():
                    keep = hard_positive_keep(model.student_probability(feat), mil.hard_mining_threshold)
                dropped += len(feat) - len(keep)
                feat = feat[keep]
            logits, scores = model.bag(feat)
            loss = bag_loss(logits, float(label))
            (loss / len(step_bags)).backward()
            loss_sum += float(loss.detach())
            bags += 1
            lo, hi = min(lo, float(scores.detach().min())), max(hi, float(scores.detach().max()))
        _step(model, opts, ("encoder", "bag"))
    return {"loss_sum": loss_sum, "bags": bags, "lo": lo, "hi": hi, "dropped": dropped}


def student_phase(model: MILModel, opts: dict[str, torch.optim.Optimizer], store: BagStore, train: list[int],
                  mil: Any, fold: int, epoch: int, lo: float, hi: float, rank: int, world: int,
                  device: torch.device) -> dict[str, float]:
    """One epoch of WENO's instance-level training against the teacher's pseudo labels."""
    model.train()
    rng = np.random.default_rng(_seed(mil.seed, fold, epoch, 2))
    order = rng.permutation(train)
    loss_sum, count, dim = 0.0, 0, model.encoder.proj.in_features
    for c in range(0, len(order), STUDENT_CHUNK_BAGS):
        chunk = [int(i) for i in order[c:c + STUDENT_CHUNK_BAGS]]
        sizes = np.array([store.specs[i].tiles for i in chunk])
        starts = np.concatenate([[0], np.cumsum(sizes)])
        perm = rng.permutation(int(sizes.sum()))
        mine = {j: store.get(i) for j, i in enumerate(chunk) if j % world == rank}
        for b in range(0, len(perm), mil.instance_batch):
            batch = perm[b:b + mil.instance_batch]
            for part in ("encoder", "student"):
                opts[part].zero_grad(set_to_none=True)
            which = np.searchsorted(starts, batch, side="right") - 1  # position of each instance's bag in the chunk
            local = [(j, r) for j, r in zip(which, batch - starts[which]) if j in mine and mine[j] is not None
                     and r < len(mine[j].feats)]
            # every worker forwards (possibly zero rows) when the step has 2+ rows in all: BatchNorm's
            # statistics are all-reduced over the global batch, in the forward and in the backward
            if _sum_over_workers({"n": len(local)}, device)["n"] >= 2:
                x = np.stack([mine[j].feats[r] for j, r in local]) if local else np.zeros((0, dim), np.float32)
                bag_label = torch.tensor([store.specs[chunk[j]].label for j, _ in local], device=device)
                with batch_norm_across_workers(model.encoder):
                    feat = model.encoder(torch.from_numpy(x).to(device))
                with torch.no_grad():  # train mode, as the range was measured (WENO's code)
                    targets = pseudo_labels(model.bag.instance_scores(feat), lo, hi, bag_label)
                loss = student_loss(model.student(feat), targets, mil.student_negative_weight, reduction="sum")
                (loss / len(batch)).backward()
                loss_sum += float(loss.detach())
                count += len(local)
            _step(model, opts, ("encoder", "student"))
    return {"student_loss_sum": loss_sum, "instances": count}


@torch.no_grad()
def predict_bags(model: MILModel, store: BagStore, idx: list[int], mil: Any, rank: int, world: int,
                 device: torch.device, instances: bool) -> list[dict[str, Any]]:
    """This worker's share of ``idx``: bag probability and loss (+ WENO's student scores, + per-instance arrays)."""
    model.eval()
    out = []
    for i in idx[rank::world]:
        spec: BagSpec = store.specs[i]
        bag = store.get(i)
        if bag is None:
            continue
        feat = model.encoder(torch.from_numpy(bag.feats).to(device))
        logits, scores = model.bag(feat)
        rec: dict[str, Any] = {"index": i, "slide_id": spec.slide_id, "label": spec.label,
                               "bag_prob": float(torch.softmax(logits, -1)[0, 1]),
                               "bag_loss": float(bag_loss(logits, float(spec.label)))}
        student = None
        if model.student is not None:
            s_logits = model.student(feat)
            student = torch.softmax(s_logits, -1)[:, 1]
            rec["student_max_prob"] = float(student.max())
            replaced, _ = model.bag(feat, scores=s_logits[:, 1])  # WENO: student scores as attention
            rec["bag_prob_student_attention"] = float(torch.softmax(replaced, -1)[0, 1])
        if instances:
            rec |= {"score": scores.float().cpu().numpy(), "x": bag.xs, "y": bag.ys,
                    "instance_label": bag.instance_labels}
            if student is not None:
                rec["student_prob"] = student.float().cpu().numpy()
        out.append(rec)
    return out


def _gather(records: list[dict[str, Any]], to_all: bool) -> list[dict[str, Any]] | None:
    """Every worker's records, in bag order (on every rank, or on rank 0 only)."""
    dist = active_group()
    if dist is None:
        return sorted(records, key=lambda r: r["index"])
    if to_all:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, records)
    else:
        parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(records, parts, dst=0)
        if parts is None:
            return None
    return sorted((r for p in parts for r in p), key=lambda r: r["index"])


def _sum_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    dist = active_group()
    if dist is None:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``mil`` (MilConfig dict), ``bags`` (BagSpec dicts), ``dim``,
    ``folds`` (``[{"train", "val", "test"}]`` bag indices), ``out`` (results URI), ``storage``."""

    from wsiscale.config import MilConfig
    from wsiscale.mil.results import fold_metrics, write_fold_outputs

    mil = MilConfig.model_validate(config["mil"])
    worker = start_worker(map_location="cpu")
    rank, world, device = worker.rank, worker.world, worker.device
    store = BagStore([BagSpec(**b) for b in config["bags"]], config.get("storage"), mil.cache_gb,
                     mil.instance_threshold)
    folds = config["folds"]
    resume: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    if worker.resuming:
        meta = worker.meta
        results = meta["results"]
        resume = worker.state | {"history": meta["history"], "best_epoch": meta["best_epoch"]}
        worker.resumed_at(fold=int(resume["fold"]), epoch=int(resume.get("epoch", 0)))
    starts = worker.starts
    start_fold = int(resume.get("fold", 0))
    for f in range(start_fold, len(folds)):
        fold = folds[f]
        torch.manual_seed(_seed(mil.seed, f, 0))
        model = build_mil_model(mil, int(config["dim"])).to(device)
        opts = _optimizers(model, mil)
        epoch0, best, best_loss, best_epoch, bad, history = 0, _cpu_state(model), np.inf, -1, 0, []
        if resume and int(resume["fold"]) == f and int(resume.get("epoch", 0)) > 0:
            model.load_state_dict(resume["model"])
            for k, o in opts.items():
                o.load_state_dict(resume["optimizers"][k])
            epoch0, best, best_loss = int(resume["epoch"]), resume["best"], float(resume["best_loss"])
            bad, history, best_epoch = int(resume["bad"]), resume["history"], int(resume["best_epoch"])
        resume = {}
        t0 = time.perf_counter()
        for epoch in range(epoch0, mil.epochs):
            stats = bag_phase(model, opts, store, fold["train"], mil, f, epoch, rank, world, device)
            lo, hi = global_range(stats.pop("lo"), stats.pop("hi"), device)
            if model.student is not None and np.isfinite(lo) and np.isfinite(hi):
                stats |= student_phase(model, opts, store, fold["train"], mil, f, epoch, lo, hi, rank, world, device)
            average_buffers(model)
            stats = _sum_over_workers(stats, device)
            val = _gather(predict_bags(model, store, fold["val"], mil, rank, world, device, False), to_all=True)
            val_loss = float(np.mean([r["bag_loss"] for r in val])) if val else float("nan")
            record = {"fold": f, "epoch": epoch + 1, "train_loss": stats["loss_sum"] / max(stats["bags"], 1),
                      "val_loss": val_loss, "val_bag_auc": _auc([r["label"] for r in val], [r["bag_prob"] for r in val]),
                      "mined_instances": stats["dropped"], "seconds": time.perf_counter() - t0}
            if "instances" in stats:
                record["student_loss"] = stats["student_loss_sum"] / max(stats["instances"], 1)
            history.append(record)
            if rank == 0:
                write_progress(config.get("progress_uri"), {"step": f * mil.epochs + epoch + 1, "epoch": epoch,
                               "total_steps": len(folds) * mil.epochs, "loss": val_loss, "lr": mil.lr},
                               config.get("storage"))
            monitor = val_loss if np.isfinite(val_loss) else record["train_loss"]  # no validation slide: train loss
            if monitor < best_loss - 1e-6:
                best, best_loss, best_epoch, bad = _cpu_state(model), monitor, epoch + 1, 0
            else:
                bad += 1
            if bad >= mil.patience and epoch + 1 >= mil.min_epochs:
                break
            if (epoch + 1) % mil.checkpoint_every == 0 and epoch + 1 < mil.epochs:  # (progress.json every epoch)
                report_checkpoint(record | {"folds": len(folds), "best_epoch": best_epoch}, rank,
                                  {"fold": f, "epoch": epoch + 1, "model": _cpu_state(model),
                                   "optimizers": {k: o.state_dict() for k, o in opts.items()}, "best": best,
                                   "best_loss": best_loss, "bad": bad},
                                  {"results": results, "history": history, "best_epoch": best_epoch,
                                   "starts": starts})
        model.load_state_dict(best)
        test = _gather(predict_bags(model, store, fold["test"], mil, rank, world, device, True), to_all=False)
        summary: dict[str, Any] = {}
        if rank == 0:
            summary = fold_metrics(test, mil.method) | {"fold": f, "best_epoch": best_epoch,
                                                        "epochs_run": len(history), "history": history,
                                                        "train_slides": len(fold["train"]),
                                                        "val_slides": len(fold["val"])}
            write_fold_outputs(config["out"], f, test, best, mil.method, config.get("storage"))
        holder = [summary]
        dist = active_group()
        if dist is not None:
            dist.broadcast_object_list(holder, src=0)
        results.append(holder[0])
        report_checkpoint({k: v for k, v in holder[0].items() if k != "history"}
                          | {"folds": len(folds), "folds_done": f + 1},
                          rank, {"fold": f + 1, "epoch": 0},
                          {"results": results, "history": [], "best_epoch": -1, "starts": starts})


def _auc(labels: list[int], scores: list[float]) -> float:
    from wsiscale.mil.results import binary_auc

    return binary_auc(labels, scores)
