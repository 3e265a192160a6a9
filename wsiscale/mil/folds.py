"""Stratified k-fold splits by slide, each with a validation share of its training slides (early stopping)."""

from __future__ import annotations

import numpy as np

from wsiscale.config import ConfigError


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0, val_fraction: float = 0.2) -> list[dict[str, list[int]]]:
    """``k`` folds of slide indices ``{"train", "val", "test"}``: every slide is tested exactly once.

    Each class's slides are shuffled and dealt round-robin into the ``k`` test sets (so every
    test set has ``floor`` or ``ceil`` of ``n_c / k`` slides of class ``c``); of the remaining
    slides, ``round(val_fraction * n_c)`` per class (at least 1) validate, the rest train.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ConfigError(f"k-fold MIL needs two classes; every slide has label {classes.tolist()}")
    if counts.min() < k:
        raise ConfigError(f"{k}-fold cross-validation needs at least {k} slides of each class; class "
                          f"{classes[counts.argmin()]} has {counts.min()}: lower mil.folds or label more slides")
    rng = np.random.default_rng(seed)
    test: list[list[int]] = [[] for _ in range(k)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = int(rng.integers(k))  # which fold gets the remainder slides varies by class
        for j, i in enumerate(idx):
            test[(start + j) % k].append(int(i))
    folds = []
    for f in range(k):
        held = set(test[f])
        train, val = [], []
        for c in classes:
            rest = [i for i in rng.permutation(np.flatnonzero(labels == c)).tolist() if i not in held]
            n_val = min(max(1, int(round(val_fraction * len(rest)))), len(rest) - 1)
            val += rest[:n_val]
            train += rest[n_val:]
        folds.append({"train": sorted(train), "val": sorted(val), "test": sorted(test[f])})
    return folds
