"""MIL metrics per fold, their mean +- std, and the files a run writes.

Per fold (test slides of that fold):

* ``bag_auc``, ``bag_accuracy`` - the bag head's ``P(positive)`` (threshold 0.5);
* ``instance_auc`` - the method's instance score pooled over every test instance with a
  label: WENO's student ``P(positive)``, ABMIL's attention logit ("attention as score"),
  the pooling baselines' per-instance ``P(positive)``;
* WENO also: ``attention_instance_auc`` (its teacher's attention), ``student_bag_auc``
  (max student probability per bag) and ``bag_auc_student_attention`` (the teacher with the
  student's scores as attention, WENO's ``scores_replaceAS``).

Files under the run directory: ``predictions/fold-K.parquet`` (one row per test
slide), ``instances/fold-K.parquet`` (``slide_id, x, y, score[, student_prob],
instance_label``), ``models/fold-K.safetensors`` (the early-stopped weights),
``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from wsiscale.io.uri import join_uri, write_bytes_atomic

SUMMARY_KEYS = ("bag_auc", "bag_accuracy", "instance_auc", "attention_instance_auc", "student_bag_auc",
                "bag_auc_student_attention")


def binary_auc(labels: Any, scores: Any) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (NaN when one class is missing)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, np.float64)))


def _pooled(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    ys, ss = [], []
    for r in records:
        if r.get("instance_label") is not None and key in r:
            ys.append(np.asarray(r["instance_label"]))
            ss.append(np.asarray(r[key]))
    if not ys:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ys), np.concatenate(ss)


def fold_metrics(records: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Metrics of one fold's test predictions (see the module docstring)."""
    labels = [r["label"] for r in records]
    probs = np.array([r["bag_prob"] for r in records])
    out: dict[str, Any] = {"test_slides": len(records), "bag_auc": binary_auc(labels, probs),
                           "bag_accuracy": float(np.mean((probs > 0.5) == np.asarray(labels))) if records else float("nan")}
    score_key = "student_prob" if method == "weno" else "score"
    y, s = _pooled(records, score_key)
    out["instance_auc"] = binary_auc(y, s) if len(y) else float("nan")
    out["test_instances"] = int(len(y))
    out["positive_instances"] = int(y.sum()) if len(y) else 0
    if method == "weno":
        y, s = _pooled(records, "score")
        out["attention_instance_auc"] = binary_auc(y, s) if len(y) else float("nan")
        out["student_bag_auc"] = binary_auc(labels, [r["student_max_prob"] for r in records])
        out["bag_auc_student_attention"] = binary_auc(labels, [r["bag_prob_student_attention"] for r in records])
    return out


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_fold_outputs(out: str, fold: int, records: list[dict[str, Any]], state: dict[str, Any], method: str,
                       storage: Any = None) -> None:
    """Write a fold's bag predictions, instance scores and early-stopped weights under ``out`` (atomically)."""
    from safetensors.torch import save

    bag_cols = ["slide_id", "label", "bag_prob", "bag_loss"]
    if method == "weno":
        bag_cols += ["student_max_prob", "bag_prob_student_attention"]
    bags = pa.table({c: [r[c] for r in records] for c in bag_cols} | {"fold": [fold] * len(records)})
    write_bytes_atomic(join_uri(out, "predictions", f"fold-{fold}.parquet"), _parquet(bags), storage)
    cols: dict[str, list[np.ndarray]] = {"slide_id": [], "x": [], "y": [], "score": [], "instance_label": []}
    if method == "weno":
        cols["student_prob"] = []
    for r in records:
        n = len(r["score"])
        cols["slide_id"].append(np.full(n, r["slide_id"], dtype=object))
        cols["x"].append(np.asarray(r["x"], np.int64))
        cols["y"].append(np.asarray(r["y"], np.int64))
        cols["score"].append(np.asarray(r["score"], np.float32))
        lab = r.get("instance_label")
        cols["instance_label"].append(np.full(n, -1, np.int8) if lab is None else np.asarray(lab, np.int8))
        if method == "weno":
            cols["student_prob"].append(np.asarray(r["student_prob"], np.float32))
    inst = pa.table({k: pa.array(np.concatenate(v)) if v else pa.array([]) for k, v in cols.items()})
    write_bytes_atomic(join_uri(out, "instances", f"fold-{fold}.parquet"), _parquet(inst), storage)
    tensors = {k: v.contiguous() for k, v in state.items() if v.dtype.is_floating_point or v.dtype.is_signed}
    write_bytes_atomic(join_uri(out, "models", f"fold-{fold}.safetensors"), save(tensors), storage)


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over folds (NaN folds left out)."""
    out = {}
    for key in SUMMARY_KEYS:
        vals = np.array([r[key] for r in results if key in r and np.isfinite(r[key])], np.float64)
        if len(vals):
            out[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": int(len(vals))}
    return out


def results_markdown(method: str, summary: dict[str, dict[str, float]], results: list[dict[str, Any]]) -> str:
    """A human-readable table of the folds and their mean +- std."""
    keys = [k for k in SUMMARY_KEYS if k in summary]
    lines = [f"# MIL results: {method}", "", "| fold | " + " | ".join(keys) + " | best epoch |",
             "|---" * (len(keys) + 2) + "|"]
    for r in results:
        lines.append(f"| {r['fold']} | " + " | ".join(f"{r.get(k, float('nan')):.4f}" for k in keys)
                     + f" | {r.get('best_epoch')} |")
    lines.append("| **mean +- std** | " + " | ".join(f"{summary[k]['mean']:.4f} +- {summary[k]['std']:.4f}"
                                                    for k in keys) + " | |")
    return "\n".join(lines) + "\n"


def write_results(out: str, method: str, results: list[dict[str, Any]], extra: dict[str, Any],
                  storage: Any = None) -> dict[str, Any]:
    """``results.json`` (folds, summary, ``extra``) and ``results.md``; returns the JSON document."""
    summary = summarise(results)
    doc = {"method": method, "summary": summary, "folds": results} | extra
    write_bytes_atomic(join_uri(out, "results.json"), json.dumps(doc, indent=1, default=float).encode(), storage)
    write_bytes_atomic(join_uri(out, "results.md"), results_markdown(method, summary, results).encode(), storage)
    return doc
