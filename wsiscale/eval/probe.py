"""Slide-level probes of frozen representations: logistic-regression linear probe and weighted kNN.

Both take ``train_x [n, d]``, ``train_y [n]`` (integer classes), ``test_x [m, d]``,
``test_y [m]`` and return ``{"auc", "accuracy"}`` on the test set. AUC is the
binary ROC AUC of the positive class, or the macro one-vs-rest AUC for more
than two classes.

* :func:`linear_probe`: features standardised with the training vectors'
  statistics, then L2-normalised, then scikit-learn ``LogisticRegression``
  (L2, ``C``, balanced class weights, lbfgs), the protocol of HIPT/Giga-SSL
  slide probes. Standardising matters for mean-pooled slide vectors: they
  share a large common component that L2 normalisation alone keeps, and the
  probe then misses what separates slides (measured on the learning cohort
  of ``tests/test_pretrain_learning.py``).
* :func:`knn_probe`: DINO's weighted kNN classifier (Caron et al. 2021, eval_knn)
  on L2-normalised features: the ``k`` most cosine-similar training vectors
  vote with weight ``exp(sim / T)``; class scores are the normalised votes.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of class scores ``[m, C]`` (binary: column 1) for labels ``y [m]``; NaN if one class only."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    scores = np.asarray(scores, np.float64)
    if scores.shape[1] == 2:
        return float(roc_auc_score(y, scores[:, 1]))
    present = np.unique(y)
    s = scores[:, present]
    s = s / np.maximum(s.sum(1, keepdims=True), 1e-12)
    return float(roc_auc_score(np.searchsorted(present, y), s, multi_class="ovr", average="macro"))


def _classes(train_y: np.ndarray, test_y: np.ndarray) -> int:
    return int(max(np.max(train_y), np.max(test_y)) + 1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 c: float = 1.0, max_iter: int = 2000) -> dict[str, float]:
    """Logistic-regression probe (standardised by the training vectors, balanced classes), scored on the test vectors."""
    from sklearn.linear_model import LogisticRegression

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe's training slides hold a single class: label more slides or hold out fewer")
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=max_iter)
    clf.fit(l2_normalise((train_x - mean) / std), train_y)
    proba = np.zeros((len(test_y), _classes(train_y, test_y)))
    proba[:, clf.classes_] = clf.predict_proba(l2_normalise((test_x - mean) / std))
    return {"auc": auc(test_y, proba), "accuracy": float((proba.argmax(1) == test_y).mean())}


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20,
              temperature: float = 0.07) -> dict[str, float]:
    """DINO's weighted kNN: votes ``exp(cos / T)`` of the ``k`` nearest training vectors."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    k = min(k, len(train_y))
    sim = l2_normalise(test_x) @ l2_normalise(train_x).T  # [m, n]
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sim, nearest, 1) / temperature)
    votes = np.zeros((len(test_y), _classes(train_y, test_y)))
    np.add.at(votes, (np.arange(len(test_y))[:, None], train_y[nearest]), weights)
    votes /= votes.sum(1, keepdims=True)
    return {"auc": auc(test_y, votes), "accuracy": float((votes.argmax(1) == test_y).mean())}


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, test)`` index arrays: ``fraction`` of each class (at least one) is held out."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            continue
        test.extend(idx[: max(1, int(round(fraction * len(idx))))])
    test = np.sort(np.array(test, np.int64))
    return np.setdiff1d(np.arange(len(labels)), test), test
