"""Slide-level linear probe of any slide-vector table: ``wsiscale eval linear-probe``.

The evaluation of Giga-SSL (Lazard et al., CVPR 2023; trislaz/gigassl ``linear_evaluation.py``):
a logistic regression (L2, ``C`` = 10, balanced class weights) on one vector per slide, scored by
the ROC AUC of the positive class (binary labels) or the macro one-vs-rest AUC (more classes).
The classifier is :func:`wsiscale.eval.probe.linear_probe` (features standardised by the training
slides, then L2-normalised). Two protocols:

* :func:`kfold_probe`: repeated stratified k-fold by slide (gigassl: one 5-fold split; here
  ``repeats`` shuffles of it), an AUC per fold, mean +- std over every fold of every repeat.
* :func:`small_data_probe`: the few-labels regime of the paper's tables: for each train size
  ``n``, ``draws`` random stratified draws of ``n`` labelled slides (every class at least 2,
  otherwise in proportion to its frequency); train on the draw, test on all other slides.

Inputs (:func:`run_linear_probe`): a Parquet table with ``slide_id`` and a vector column (or
numeric columns), e.g. ``wsiscale gigassl embed``'s ``slide_vectors.parquet``, or a tiles-mode
embedding run, whose tile embeddings :func:`mean_pooled_vectors` averages per slide (the
baseline Giga-SSL is compared against); and a labels table (manifest, CSV or Parquet with
``slide_id`` and ``eval.label_column``). Outputs: ``linear_probe.json`` and ``linear_probe.md``.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from wsiscale.config import ConfigError

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig, WsiscaleConfig

log = logging.getLogger(__name__)

_RESULTS = ("linear_probe.json", "linear_probe.md")


def _summary(results: list[dict[str, Any]]) -> dict[str, float]:
    aucs = np.array([r["auc"] for r in results], np.float64)
    accs = np.array([r["accuracy"] for r in results], np.float64)
    return {"auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)),
            "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs))}


def _fit(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, c: float) -> dict[str, float]:
    from wsiscale.eval.probe import linear_probe

    return linear_probe(x[train], y[train], x[test], y[test], c=c, max_iter=1000)


def kfold_probe(x: np.ndarray, y: np.ndarray, folds: int = 5, repeats: int = 10, c: float = 10.0,
                seed: int = 0) -> dict[str, Any]:
    """Repeated stratified k-fold linear probe.

    Args:
        x: slide vectors ``[N, D]``.
        y: classes ``[N]``, integers ``0..C-1`` (binary: 1 is the positive class); every class
            needs at least 2 slides.
        folds: k; lowered (with a warning) to the smallest class's size when that is smaller.
        repeats: shuffles of the k-fold split (repeat ``r`` uses seed ``(seed, r)``).
        c: inverse L2 strength of the logistic regression.

    Returns:
        ``{"folds", "folds_requested", "repeats", "c", "seed", "results", "auc_mean", "auc_std",
        "accuracy_mean", "accuracy_std"}``; ``results`` holds one ``{"repeat", "fold", "auc",
        "accuracy", "n_train", "n_test", "test"}`` per fold, ``test`` the indices into ``x`` it
        was tested on (each slide exactly once per repeat).
    """
    from sklearn.model_selection import StratifiedKFold

    x, y = np.asarray(x, np.float64), np.asarray(y, np.int64)
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < 2:
        raise ValueError("k-fold needs at least 2 slides of every class")
    k = min(int(folds), smallest)
    if k < folds:
        log.warning("the smallest class has %d slides: %d-fold instead of %d-fold", smallest, k, folds)
    results = []
    for r in range(int(repeats)):
        split = StratifiedKFold(n_splits=k, shuffle=True,
                                random_state=int(np.random.SeedSequence((seed, r)).generate_state(1)[0]))
        for f, (train, test) in enumerate(split.split(np.zeros(len(y)), y)):
            m = _fit(x, y, train, test, c)
            results.append({"repeat": r, "fold": f, "auc": m["auc"], "accuracy": m["accuracy"],
                            "n_train": int(len(train)), "n_test": int(len(test)), "test": test.tolist()})
    doc = {"folds": k, "folds_requested": int(folds), "repeats": int(repeats), "c": float(c), "seed": int(seed),
           "results": results}
    return doc | (_summary(results) if results else {})


def stratified_counts(counts: np.ndarray, n: int) -> np.ndarray | None:
    """Slides per class in a draw of ``n`` from classes of ``counts [C]`` slides (None: impossible).

    Proportional to the class sizes (largest remainder), with at least 2 of every class drawn
    and at least 2 of every class left to test on.
    """
    counts = np.asarray(counts, np.int64)
    lo, hi = np.full(len(counts), 2), counts - 2
    if (hi < lo).any() or n < lo.sum() or n > hi.sum():
        return None
    quota = n * counts / counts.sum()
    alloc = np.clip(np.floor(quota).astype(np.int64), lo, hi)
    while alloc.sum() < n:
        gap = np.where(alloc < hi, quota - alloc, -np.inf)
        alloc[int(np.argmax(gap))] += 1
    while alloc.sum() > n:
        gap = np.where(alloc > lo, quota - alloc, np.inf)
        alloc[int(np.argmin(gap))] -= 1
    return alloc


def small_data_probe(x: np.ndarray, y: np.ndarray, train_sizes: list[int] | tuple[int, ...] = (50,),
                     draws: int = 100, c: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """The small-data regime: linear probes trained on a few labelled slides, tested on all others.

    Args:
        x: slide vectors ``[N, D]``.
        y: classes ``[N]``, integers ``0..C-1``.
        train_sizes: labelled slides per draw; a size that cannot hold 2 slides of every class
            and leave 2 of every class to test is skipped (warned, listed in ``skipped``).
        draws: random stratified draws per train size (draw ``d`` of size ``n`` uses seed
            ``(seed, n, d)``), each with the class counts of :func:`stratified_counts`.

    Returns:
        ``{"draws", "c", "seed", "sizes", "skipped"}``; ``sizes`` holds per train size ``{"n",
        "class_counts", "n_test", "results", "auc_mean", ...}`` and ``results`` one ``{"draw",
        "auc", "accuracy", "train"}`` per draw, ``train`` the sorted indices into ``x`` trained
        on (the test set is every other slide).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.int64)
    classes = np.unique(y)
    counts = np.array([(y == k).sum() for k in classes])
    sizes, skipped = [], []
    for n in train_sizes:
        n = int(n)
        alloc = stratified_counts(counts, n)
        if alloc is None:
            reason = (f"{n} training slides cannot hold 2 slides of each of the {len(classes)} classes and leave 2 "
                      f"of each to test (class sizes {counts.tolist()})")
            log.warning("small-data probe: train size %d skipped: %s", n, reason)
            skipped.append({"n": n, "reason": reason})
            continue
        results = []
        for d in range(int(draws)):
            rng = np.random.default_rng((seed, n, d))
            train = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == k), a, replace=False)
                                            for k, a in zip(classes, alloc)]))
            test = np.setdiff1d(np.arange(len(y)), train)
            m = _fit(x, y, train, test, c)
            results.append({"draw": d, "auc": m["auc"], "accuracy": m["accuracy"], "train": train.tolist()})
        sizes.append({"n": n, "class_counts": alloc.tolist(), "n_test": int(len(y) - n), "results": results}
                     | _summary(results))
    return {"draws": int(draws), "c": float(c), "seed": int(seed), "sizes": sizes, "skipped": skipped}


# --------------------------------------------------------------------------------------------- inputs


def _sort_key(v: str) -> tuple:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def mean_pooled_vectors(run_uri: str, storage: "StorageConfig | None" = None) -> tuple[list[str], np.ndarray]:
    """``(slide_ids, X [N, D] float32)``: the mean tile embedding of every slide of a tiles-mode embedding run.

    Slides are read one at a time (their shards' ``embedding`` column only), never the whole
    archive; slides without tiles, or whose mean is not finite, are left out with a warning.
    """
    from wsiscale.runs.embedding_run import EmbeddingRun
    from wsiscale.runs.shards import read_parquet

    run = EmbeddingRun(run_uri, storage)
    ids, vecs, empty = [], [], []
    for rec in run.table.to_pylist():
        if rec.get("mode") not in (None, "tiles", "region-features"):
            raise ConfigError(f"{run.uri} is a {rec.get('mode')}-mode embedding run: mean pooling needs one "
                              "vector per tile (embed.mode=tiles) or per region (the pipeline's region features)")
        total, rows = None, 0
        for shard in json.loads(rec["shards"] or "[]"):
            if not shard.get("rows"):
                continue
            col = read_parquet(run.absolute(shard["path"]), storage, ["embedding"]).column("embedding")
            col = col.combine_chunks()
            if len(col) == 0:
                continue
            emb = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(col), -1)
            total = emb.sum(0) if total is None else total + emb.sum(0)
            rows += len(col)
        if not rows:
            empty.append(rec["slide_id"])
            continue
        mean = total / rows
        if not np.isfinite(mean).all():
            log.warning("%s: slide %s holds NaN/inf embeddings; left out", run.uri, rec["slide_id"])
            continue
        if vecs and len(mean) != len(vecs[0]):
            raise ConfigError(f"{run.uri}: slide {rec['slide_id']} has {len(mean)}-d embeddings, others "
                              f"{len(vecs[0])}-d")
        ids.append(rec["slide_id"])
        vecs.append(mean)
    if empty:
        log.warning("%s: %d slides without tiles left out (e.g. %s)", run.uri, len(empty), empty[0])
    if not ids:
        raise ConfigError(f"{run.uri} holds no slide with tile embeddings")
    return ids, np.stack(vecs).astype(np.float32)


def read_slide_vectors(uri: str, storage: "StorageConfig | None" = None,
                       column: str = "embedding") -> tuple[list[str], np.ndarray, str]:
    """``(slide_ids, X [N, D] float32, source)`` from a slide-vector Parquet file or a tiles-mode embedding run.

    A file holds ``slide_id`` and either ``column`` (a list of floats per slide) or, without it,
    numeric columns (all but ``slide_id`` are the vector). A directory is an embedding run
    (``slides.parquet``: mean-pooled tile embeddings) or holds ``slide_vectors.parquet``.
    """
    import pyarrow as pa

    from wsiscale.io.uri import filesystem, join_uri, normalize_uri
    from wsiscale.runs.shards import read_parquet

    uri = normalize_uri(uri)
    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        raise FileNotFoundError(f"slide vectors {uri} do not exist: give a slide-vector Parquet file "
                                "(e.g. `wsiscale gigassl embed`'s slide_vectors.parquet) or an embedding run")
    if fs.isdir(path):
        if fs.exists(path.rstrip("/") + "/slides.parquet"):
            ids, x = mean_pooled_vectors(uri, storage)
            return ids, x, "mean-pooled tile embeddings"
        if fs.exists(path.rstrip("/") + "/slide_vectors.parquet"):
            uri = join_uri(uri, "slide_vectors.parquet")
        else:
            raise FileNotFoundError(f"{uri} is a directory with neither slides.parquet (an embedding run) nor "
                                    "slide_vectors.parquet")
    table = read_parquet(uri, storage)
    if "slide_id" not in table.column_names:
        raise ConfigError(f"slide vectors {uri} have no 'slide_id' column (columns: {table.column_names})")
    ids = [str(v) for v in table.column("slide_id").to_pylist()]
    if column in table.column_names:
        col = table.column(column).combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)
                or pa.types.is_large_list(col.type)):
            raise ConfigError(f"column {column!r} of {uri} is {col.type}, not a list of floats per slide; set "
                              "eval.vector_column (--column)")
        lengths = set(np.asarray(col.value_lengths().fill_null(0)).tolist()) if not pa.types.is_fixed_size_list(
            col.type) else {col.type.list_size}
        if col.null_count or len(lengths) != 1:
            raise ConfigError(f"column {column!r} of {uri} holds vectors of lengths {sorted(lengths)[:5]} (or "
                              "nulls): every slide needs a vector of one dimension")
        x = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)
        source = f"column {column!r}"
    else:
        numeric = [f.name for f in table.schema if f.name != "slide_id"
                   and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
        if not numeric:
            raise ConfigError(f"slide vectors {uri} have no {column!r} column and no numeric columns (columns: "
                              f"{table.column_names}); set eval.vector_column (--column)")
        x = np.stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in numeric], 1)
        source = f"{len(numeric)} numeric columns"
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"slide vectors {uri} list slide {dup!r} more than once")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        log.warning("%s: %d slides with NaN/inf vectors left out (e.g. %s)", uri, int(bad.sum()),
                    ids[int(np.flatnonzero(bad)[0])])
        ids = [i for i, b in zip(ids, bad) if not b]
        x = x[~bad]
    return ids, x, source


def read_labels(uri: str, storage: "StorageConfig | None", column: str) -> dict[str, str]:
    """``{slide_id: label}`` of a labels table (manifest, CSV or Parquet); rows without a label are skipped."""
    from wsiscale.io.manifest import read_table

    table = read_table(uri, storage, "labels table", string_columns=(column, "slide_id"))
    for col in ("slide_id", column):
        if col not in table.column_names:
            raise ConfigError(f"labels table {uri} has no {col!r} column (columns: {table.column_names}); set "
                              "eval.label_column (--label-column)")
    out: dict[str, str] = {}
    for sid, label in zip(table.column("slide_id").to_pylist(), table.column(column).to_pylist()):
        if label is None or sid is None:
            continue
        sid, label = str(sid), str(label)
        if out.get(sid, label) != label:
            raise ConfigError(f"labels table {uri} gives slide {sid!r} two labels ({out[sid]!r}, {label!r})")
        out[sid] = label
    return out


def encode_labels(names: list[str], positive: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    """``(y [N] int, class names)``: binarised by ``positive`` (class 1) if given, else one class per distinct label.

    Without ``positive`` classes are in numeric-then-text order, so a two-valued 0/1 or
    benign/tumour column makes the larger (later) label the positive class 1.
    """
    if positive:
        chosen = set(positive)
        unknown = chosen - set(names)
        if unknown:
            log.warning("eval.positive_labels %s do not occur in %s", sorted(unknown), where)
        y = np.array([int(n in chosen) for n in names], np.int64)
        neg = "|".join(sorted(set(names) - chosen, key=_sort_key)) or "negative"
        pos = "|".join(sorted(set(names) & chosen, key=_sort_key)) or "|".join(positive)
        return y, [neg, pos]
    classes = sorted(set(names), key=_sort_key)
    index = {k: i for i, k in enumerate(classes)}
    return np.array([index[n] for n in names], np.int64), classes


# --------------------------------------------------------------------------------------------- driver


def probe_paths(cfg: "WsiscaleConfig", vectors: str | None, labels: str | None,
                out: str | None) -> tuple[str, str, str]:
    """``(vectors, labels, out)``, defaulting to ``<output>/gigassl/vectors/slide_vectors.parquet``,
    ``<output>/manifest.parquet`` and ``<output>/linear-probe``."""
    from wsiscale.io.uri import join_uri
    from wsiscale.runs.layout import RunLayout

    layout = RunLayout(cfg.output)
    return (vectors or join_uri(layout.gigassl, "vectors", "slide_vectors.parquet"), labels or layout.manifest,
            out or layout.linear_probe)


def _examples(ids: set[str], k: int = 5) -> list[str]:
    return sorted(ids)[:k]


def run_linear_probe(cfg: "WsiscaleConfig", vectors: str, labels: str, out: str | None) -> dict[str, Any]:
    """Both probe protocols on the slides of ``vectors`` labelled in ``labels``; writes the results under ``out``.

    Raises:
        ConfigError: unusable tables, no slide in both, fewer than 4 labelled slides, a single
            class, or a class with fewer than 2 slides.
        FileNotFoundError: a missing input.
    """
    from wsiscale.io.uri import join_uri, normalize_uri, write_bytes_atomic

    e, storage = cfg.eval, cfg.storage
    vectors, labels = normalize_uri(vectors), normalize_uri(labels)
    ids, x, source = read_slide_vectors(vectors, storage, e.vector_column)
    by_id = read_labels(labels, storage, e.label_column)
    have = set(ids)
    keep = [i for i, sid in enumerate(ids) if sid in by_id]
    no_label, no_vector = have - set(by_id), set(by_id) - have
    if no_label:
        log.warning("%d slides of %s have no label in %s; left out (e.g. %s)", len(no_label), vectors, labels,
                    ", ".join(_examples(no_label, 3)))
    if no_vector:
        log.warning("%d labelled slides of %s have no vector in %s; left out (e.g. %s)", len(no_vector), labels,
                    vectors, ", ".join(_examples(no_vector, 3)))
    if not keep:
        raise ConfigError(f"no slide id is in both {vectors} ({len(ids)} slides, e.g. {_examples(have, 3)}) and "
                          f"{labels} ({len(by_id)} labelled, e.g. {_examples(set(by_id), 3)}): the tables must "
                          "share slide ids (the labels table's slide_id column)")
    slide_ids = [ids[i] for i in keep]
    x = x[keep]
    y, classes = encode_labels([by_id[s] for s in slide_ids], list(e.positive_labels), labels)
    counts = np.bincount(y, minlength=len(classes))
    fix = (f"label more of the slides of {vectors} in {labels} (column {e.label_column!r}), or set "
           "eval.positive_labels (--positive-labels) to merge classes")
    if len(slide_ids) < 4 or (counts > 0).sum() < 2:
        raise ConfigError(f"{len(slide_ids)} slides of {vectors} are labelled in {labels}, with classes "
                          f"{dict(zip(classes, counts.tolist()))}: a probe needs at least 4 slides and 2 classes; "
                          f"{fix}")
    if counts.min() < 2:
        rare = [k for k, n in zip(classes, counts) if n < 2]
        raise ConfigError(f"classes {rare} have fewer than 2 labelled slides in {labels} (class sizes "
                          f"{dict(zip(classes, counts.tolist()))}): each class needs 2 to train and test on; {fix}")
    log.info("linear probe: %d slides (%s), %d-d vectors from %s", len(y), dict(zip(classes, counts.tolist())),
             x.shape[1], source)
    kfold = kfold_probe(x, y, e.probe_folds, e.probe_repeats, e.probe_c, e.seed) if e.probe_repeats else None
    small = small_data_probe(x, y, e.probe_train_sizes, e.probe_draws, e.probe_c, e.seed) \
        if e.probe_train_sizes else None
    doc = {
        "vectors": vectors, "labels": labels, "out": normalize_uri(out) if out else None, "source": source,
        "slides": len(y), "dim": int(x.shape[1]), "classes": classes,
        "class_counts": dict(zip(classes, counts.tolist())),
        "task": "binary" if len(classes) == 2 else "multiclass",
        "metric": "ROC AUC of the positive class" if len(classes) == 2 else "macro one-vs-rest ROC AUC",
        "left_out": {"vectors_without_label": len(no_label), "labels_without_vector": len(no_vector),
                     "examples_without_label": _examples(no_label), "examples_without_vector": _examples(no_vector)},
        "config": e.model_dump(mode="json"),
        "kfold": kfold, "small_data": small, "slide_ids": slide_ids,
    }
    if out:
        write_bytes_atomic(join_uri(out, _RESULTS[0]), json.dumps(_finite(doc), indent=1).encode(), storage)
        write_bytes_atomic(join_uri(out, _RESULTS[1]), results_markdown(doc).encode(), storage)
        log.info("linear probe results -> %s", join_uri(out, _RESULTS[0]))
    return doc


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def summary_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per protocol (k-fold, each small-data train size): ``{protocol, train, test, runs, auc_mean,
    auc_std}`` (plus ``note`` for a skipped train size)."""
    rows = []
    k = doc.get("kfold")
    if k and k.get("results"):
        n_tr = k["results"][0]["n_train"]
        rows.append({"protocol": f"{k['folds']}-fold x {k['repeats']}", "train": f"~{n_tr}",
                     "test": f"~{doc['slides'] - n_tr}", "runs": len(k["results"]), "auc_mean": k["auc_mean"],
                     "auc_std": k["auc_std"]})
    s = doc.get("small_data")
    for size in (s or {}).get("sizes", []):
        rows.append({"protocol": f"small data, n={size['n']}", "train": str(size["n"]), "test": str(size["n_test"]),
                     "runs": len(size["results"]), "auc_mean": size["auc_mean"], "auc_std": size["auc_std"]})
    for sk in (s or {}).get("skipped", []):
        rows.append({"protocol": f"small data, n={sk['n']}", "train": str(sk["n"]), "test": "-", "runs": 0,
                     "auc_mean": None, "auc_std": None, "note": "skipped: " + sk["reason"]})
    return rows


def results_markdown(doc: dict[str, Any]) -> str:
    """``linear_probe.md``: inputs, slides and classes, and the AUC table."""
    e = doc["config"]
    lines = ["# Linear probe", "",
             f"- vectors: `{doc['vectors']}` ({doc['source']}, {doc['dim']}-d)",
             f"- labels: `{doc['labels']}` (column `{e['label_column']}`)",
             f"- slides: {doc['slides']} ({', '.join(f'{k}: {v}' for k, v in doc['class_counts'].items())}); "
             f"left out: {doc['left_out']['vectors_without_label']} without a label, "
             f"{doc['left_out']['labels_without_vector']} labels without a vector",
             f"- metric: {doc['metric']}; logistic regression C={e['probe_c']}, balanced classes, seed {e['seed']}",
             "", "| protocol | train slides | test slides | runs | AUC mean | AUC std |", "|---|---|---|---|---|---|"]
    for r in summary_rows(doc):
        auc = "-" if r["auc_mean"] is None else f"{r['auc_mean']:.4f}"
        std = "-" if r["auc_std"] is None else f"{r['auc_std']:.4f}"
        lines.append(f"| {r['protocol']} | {r['train']} | {r['test']} | {r['runs']} | {auc} | {std} |")
    notes = [r["note"] for r in summary_rows(doc) if r.get("note")]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
