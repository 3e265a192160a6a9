"""FiVE inference: slide features, zero-shot classification, few-shot fine-tuning, and the linear-probe baseline.

* Zero-shot (FiVE Sec. 3.4): each class is a text (``five.class_descriptions``);
  a slide's class scores are the softmax of its scaled cosine similarities
  with the class texts; no labelled slide is used.
* Few-shot: ``k`` labelled slides per class are drawn (``five.draws`` times,
  seeded); a copy of the trained model is fine-tuned on them with the class
  texts as targets (the training loss with ``C`` fixed texts) and scored on
  every other labelled slide. The baseline is the logistic-regression probe
  (:func:`wsiscale.eval.probe.linear_probe`) on the mean-pooled tile
  embeddings of the same ``k x C`` slides, scored on the same test slides.

Slide features use all fields' queries and, per slide, the middles of
``five.eval_tiles`` segments of its tile sequence (all tiles when it has fewer).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from wsiscale.data.bags import BagStore
from wsiscale.five.batches import slide_batch, text_features, train_seeds
from wsiscale.five.data import field_question, seed_of
from wsiscale.five.losses import matching_loss

log = logging.getLogger(__name__)


@torch.no_grad()
def slide_features(model, encoder, store: BagStore, indices: list[int], five, device: torch.device,
                   batch: int = 16) -> tuple[torch.Tensor, np.ndarray]:
    """``(features [n, D_text], readable [n] bool)`` of slides ``indices`` with all fields' queries."""
    model.eval()
    queries = text_features(encoder, [field_question(f) for f in five.fields], False)
    out, ok = [], []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        tiles, pos, mask, valid = slide_batch(store, chunk, five.eval_tiles, None, device)
        out.append(model(tiles, pos, mask, queries))
        ok.append(valid.cpu().numpy())
    return torch.cat(out), np.concatenate(ok)


@torch.no_grad()
def class_scores(model, slide: torch.Tensor, class_text: torch.Tensor) -> np.ndarray:
    """``[n, C]`` softmax of the scaled cosine similarities of slides with the class texts."""
    return torch.softmax(model.similarity(slide, class_text), dim=1).cpu().numpy()


def classification_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from wsiscale.eval.probe import auc

    y = np.asarray(y)
    pred = scores.argmax(1)
    per_class = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(per_class)),
            "auc": auc(y, scores), "slides": int(len(y))}


def draw_shots(labels: np.ndarray, k: int, seed: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: ``k`` slides per class at random, the rest for testing."""
    rng = np.random.default_rng(seed_of(seed, k, draw, 29))
    train = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) <= k:
            raise ValueError(f"class {c} has {len(pool)} labelled slides: {k}-shot needs more than {k} "
                             "(the rest are the test slides); lower five.shots")
        train.extend(rng.choice(pool, size=k, replace=False).tolist())
    train = np.sort(np.asarray(train))
    return train, np.setdiff1d(np.arange(len(labels)), train)


def finetune(model, encoder, store: BagStore, indices: list[int], labels: np.ndarray, class_text: torch.Tensor,
             five, device: torch.device, seed: int) -> Any:
    """A copy of ``model`` fine-tuned on slides ``indices`` (class ids ``labels``) against the class texts."""
    tuned = copy.deepcopy(model)
    tuned.train()
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=five.finetune_lr, weight_decay=five.weight_decay)
    queries = text_features(encoder, [field_question(f) for f in five.fields], False)
    y = torch.as_tensor(labels, device=device)
    rng = np.random.default_rng(seed_of(seed, 31))
    bs = min(five.batch_size, len(indices))
    for epoch in range(five.finetune_epochs):
        order = rng.permutation(len(indices))
        for s in range(0, len(order), bs):
            rows = order[s:s + bs]
            chunk = [indices[i] for i in rows]
            tiles, pos, mask, valid = slide_batch(store, chunk, five.segments,
                                                  train_seeds(seed, epoch, s, chunk), device)
            logits = tuned.similarity(tuned(tiles, pos, mask, queries), class_text)
            loss = (matching_loss(logits, y[rows], reduction="none") * valid.float()).sum() / max(int(valid.sum()), 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if five.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, five.grad_clip)
            opt.step()
    tuned.eval()
    return tuned


def mean_pooled(store: BagStore, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors [n, D], readable [n])``: each slide's mean tile embedding."""
    vecs, ok = [], []
    for i in indices:
        bag = store.get(i)
        ok.append(bag is not None)
        vecs.append(None if bag is None else bag.feats.mean(0))
    dim = next(v.shape[0] for v in vecs if v is not None)
    return np.stack([np.zeros(dim, np.float32) if v is None else v for v in vecs]), np.asarray(ok)


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def evaluate_five(model, encoder, store: BagStore, labels: np.ndarray, class_names: list[str],
                  descriptions: list[str], five, device: torch.device, shots: list[int] | None = None,
                  zero_shot: bool = True) -> dict[str, Any]:
    """Zero-shot and few-shot results on the labelled slides of ``store`` (``labels [n]`` class ids)."""
    from wsiscale.eval.probe import linear_probe

    n = len(labels)
    class_text = text_features(encoder, descriptions, False).detach()
    doc: dict[str, Any] = {"classes": class_names, "descriptions": descriptions, "slides": n}
    feats, readable = slide_features(model, encoder, store, list(range(n)), five, device)
    if zero_shot:
        ok = np.flatnonzero(readable)
        doc["zero_shot"] = classification_metrics(labels[ok], class_scores(model, feats[ok], class_text))
        doc["zero_shot"]["chance"] = float(np.max(np.bincount(labels[ok])) / len(ok))
        log.info("FiVE zero-shot: accuracy %.3f (chance %.3f) on %d slides", doc["zero_shot"]["accuracy"],
                 doc["zero_shot"]["chance"], len(ok))
    pooled, pooled_ok = mean_pooled(store, list(range(n)))
    few: dict[str, Any] = {}
    for k in shots if shots is not None else five.shots:
        runs = []
        for d in range(five.draws):
            train, test = draw_shots(labels, k, five.seed, d)
            train = train[pooled_ok[train] & readable[train]]
            test = test[pooled_ok[test] & readable[test]]
            tuned = finetune(model, encoder, store, train.tolist(), labels[train], class_text, five, device,
                             seed_of(five.seed, k, d))
            tuned_feats, _ = slide_features(tuned, encoder, store, test.tolist(), five, device)
            five_m = classification_metrics(labels[test], class_scores(tuned, tuned_feats, class_text))
            probe = linear_probe(pooled[train], labels[train], pooled[test], labels[test])
            runs.append({"draw": d, "five": five_m, "linear_probe": probe})
        few[str(k)] = {
            "five_accuracy": _summary([r["five"]["accuracy"] for r in runs]),
            "linear_probe_accuracy": _summary([r["linear_probe"]["accuracy"] for r in runs]),
            "five_auc": _summary([r["five"]["auc"] for r in runs]),
            "linear_probe_auc": _summary([r["linear_probe"]["auc"] for r in runs]),
            "draws": runs,
        }
        log.info("FiVE %d-shot: accuracy %.3f +- %.3f; linear probe on mean-pooled tiles %.3f +- %.3f", k,
                 few[str(k)]["five_accuracy"]["mean"], few[str(k)]["five_accuracy"]["std"],
                 few[str(k)]["linear_probe_accuracy"]["mean"], few[str(k)]["linear_probe_accuracy"]["std"])
    doc["few_shot"] = few
    return doc
