"""Giga-SSL slide views: tile grid positions, random tile subsets and coordinate jitter (numpy, CPU tasks).

A view of a slide (trislaz/gigassl ``EmbWSISharedAug.sample_inside_wsi`` and
``LocationsAugmentation``) is

1. one augmentation index ``k`` for all its tiles (the slide-shared augmented
   embeddings of :mod:`wsiscale.data.augment`),
2. ``T`` tiles drawn uniformly *with replacement* (``torch.randint`` in the
   official code; a repeated tile lands on the same site and is averaged),
3. their grid positions moved by a random translation, then a random rotation
   (any angle), random flips of each axis and a random scale of each axis in
   ``[0.7, 1.3]``, then truncated to integers - so neighbourhoods seen by the
   sparse convolutions vary between views.
"""

from __future__ import annotations

import numpy as np


def grid_index(values: np.ndarray) -> np.ndarray:
    """Integer lattice index of tile corners along one axis (``[N]`` level-0 px -> ``[N]`` int64).

    Tiles of a plan lie on ``x0 + floor(i * step)`` with a possibly fractional ``step``; consecutive
    distinct values are ``m * step`` apart (``m`` an integer), so each gap is rounded to a whole number
    of steps. The step is estimated from the smallest gap, then refined as the mean step over gaps of
    at most 64 steps (so a gap of 1000 steps is not off by one). No mpp metadata is needed.
    """
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return np.zeros(0, np.int64)
    uniq, inverse = np.unique(values, return_inverse=True)
    if len(uniq) == 1:
        return np.zeros(len(values), np.int64)
    gaps = np.diff(uniq)
    step = gaps.min()
    for _ in range(3):  # refine the step on gaps of a few steps, where rounding cannot be off by one
        m = np.maximum(np.round(gaps / step), 1)
        near = m <= 64
        step = gaps[near].sum() / m[near].sum()
    index = np.concatenate([[0], np.cumsum(np.maximum(np.round(gaps / step), 1))]).astype(np.int64)
    return index[inverse]


def grid_positions(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` lattice positions of tiles with level-0 corners ``x``, ``y``."""
    return grid_index(y), grid_index(x)


def jitter_positions(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator, flip: bool = True,
                     rotate: bool = True, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """gigassl's ``LocationsAugmentation`` on ``[T]`` positions: translate, then ``loc @ (R F S)``, truncated."""
    loc = np.stack([rows, cols], 1).astype(np.float64)
    m = np.eye(2)
    if rotate:
        theta = rng.uniform(-np.pi, np.pi)
        m = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    if flip:
        m = m @ np.diag(rng.choice([-1.0, 1.0], size=2))
    if scale:
        m = m @ np.diag(rng.uniform(0.7, 1.3, size=2))
    extent = loc.max(0) - loc.min(0) if len(loc) else np.zeros(2)
    loc = loc - np.array([rng.integers(0, max(int(e), 1)) for e in extent], np.float64)
    out = np.trunc(loc @ m).astype(np.int64)
    return out[:, 0], out[:, 1]


def sample_view(n_tiles: int, tiles_per_view: int, n_aug: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """``(augmentation index, [T] tile indices drawn with replacement)``."""
    if n_tiles < 1:
        raise ValueError("a slide without tiles has no view")
    return int(rng.integers(n_aug)), rng.integers(0, n_tiles, size=tiles_per_view)
