"""Multi-crop views of region token grids (HIPT/SLPD ``DataAugmentationDINO4K``), in numpy for Ray Data workers.

A region is ``x [D, g, g]`` (g = 16). Views: ``global_crops`` random
``global_size x global_size`` crops (14) and ``local_crops`` random
``local_size x local_size`` crops (6), each horizontally flipped with
probability 1/2. Crops keep whole tokens (no resampling of embeddings).
"""

from __future__ import annotations

import numpy as np


def random_crop(x: np.ndarray, size: int, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """One ``[D, size, size]`` crop of ``x [D, h, w]`` at a random position, flipped left-right with p = 1/2."""
    _, h, w = x.shape
    if size > min(h, w):
        raise ValueError(f"crop of {size} tokens from a {h} x {w} grid")
    i, j = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    out = x[:, i : i + size, j : j + size]
    if flip and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def grid_multicrop(x: np.ndarray, rng: np.random.Generator, global_crops: int = 2, local_crops: int = 8,
                   global_size: int = 14, local_size: int = 6) -> list[np.ndarray]:
    """``global_crops`` global then ``local_crops`` local views of ``x [D, g, g]``."""
    return ([random_crop(x, global_size, rng) for _ in range(global_crops)]
            + [random_crop(x, local_size, rng) for _ in range(local_crops)])
