"""Slide retrieval metrics: top-k majority-vote accuracy and mAP@k by class (METHODS.md, shared protocol).

A query slide's retrieved list is its ``k`` nearest *other* slides (``<slide-index>/neighbours.parquet``
from ``wsiscale index build --neighbours k``), best first. With ``rel_i = 1`` when the i-th retrieved
slide has the query's class:

* ``precision@k = sum(rel_1..k) / k``;
* ``AP@k = sum_i rel_i * precision@i / sum_i rel_i`` (0 when nothing relevant is retrieved), the
  mean over queries being ``mAP@k`` (as in retrieval papers on WSIs, e.g. Yottixel, RetCCL);
* majority vote: the most frequent class among the ``k`` retrieved (ties broken by the better
  summed rank, i.e. the class that appears first) must equal the query's class; accuracy over
  queries, and ``top-1`` accuracy (the nearest slide's class).

Slides without a label, or retrieved neighbours without one, are left out of the lists (a query whose
list is then empty is not scored).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def average_precision_at_k(relevant: list[bool]) -> float:
    """``AP@k`` of one ranked list of relevance flags (``k = len(relevant)``)."""
    hits, total = 0, 0.0
    for i, r in enumerate(relevant, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def majority_vote(classes: list[str]) -> str:
    """The most frequent class of a ranked list; among equally frequent ones, the one ranked first."""
    counts = Counter(classes)
    best = max(counts.values())
    return next(c for c in classes if counts[c] == best)


def retrieval_metrics(neighbours: dict[str, list[str]], labels: dict[str, str], k: int) -> dict[str, Any]:
    """Metrics of ``neighbours`` (query slide id -> retrieved slide ids, best first) against ``labels``.

    Returns ``{k, queries, top1_accuracy, majority_vote_accuracy, map_at_k, precision_at_k, per_class}``
    where ``per_class`` holds the same means per query class.
    """
    rows = []
    for query, retrieved in neighbours.items():
        if query not in labels:
            continue
        ranked = [labels[s] for s in retrieved if s in labels and s != query][:k]
        if not ranked:
            continue
        relevant = [c == labels[query] for c in ranked]
        rows.append({"class": labels[query], "top1": float(relevant[0]),
                     "vote": float(majority_vote(ranked) == labels[query]),
                     "ap": average_precision_at_k(relevant), "precision": float(np.mean(relevant))})
    if not rows:
        raise ValueError(f"no labelled query slide has a labelled neighbour ({len(neighbours)} queries, "
                         f"{len(labels)} labels): check that the labels table shares the index's slide ids")

    def means(sel: list[dict[str, float]]) -> dict[str, float]:
        return {"queries": len(sel), "top1_accuracy": float(np.mean([r["top1"] for r in sel])),
                "majority_vote_accuracy": float(np.mean([r["vote"] for r in sel])),
                "map_at_k": float(np.mean([r["ap"] for r in sel])),
                "precision_at_k": float(np.mean([r["precision"] for r in sel]))}

    classes = sorted({r["class"] for r in rows})
    return {"k": k, **means(rows), "per_class": {c: means([r for r in rows if r["class"] == c]) for c in classes}}


def run_retrieval_eval(neighbours_uri: str, labels_uri: str, k: int, label_column: str = "label",
                       storage: Any = None) -> dict[str, Any]:
    """:func:`retrieval_metrics` of a ``neighbours.parquet`` against a labels table (manifest, CSV, Parquet)."""
    from wsiscale.eval.linear_probe import read_labels
    from wsiscale.runs.shards import read_parquet

    table = read_parquet(neighbours_uri, storage).to_pylist()
    labels = read_labels(labels_uri, storage, label_column)
    doc = retrieval_metrics({r["slide_id"]: list(r["neighbours"]) for r in table}, labels, k)
    log.info("retrieval@%d over %d slides: majority vote %.3f, mAP %.3f, top-1 %.3f", k, doc["queries"],
             doc["majority_vote_accuracy"], doc["map_at_k"], doc["top1_accuracy"])
    return doc | {"neighbours": neighbours_uri, "labels": labels_uri, "label_column": label_column}
