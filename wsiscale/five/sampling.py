"""FiVE's instance sampling: segmented random sampling of a slide's tiles (Li et al., CVPR 2024, Sec. 3.3).

A slide's ``N`` tiles, in their stored (row-major grid) order, are split into
``T`` equal segments and one tile is drawn at random inside each, as TSN does
for video frames: every step sees ``T`` tiles spread over the whole slide, at
a cost independent of ``N``. Slides with ``N <= T`` keep all their tiles
(padded and masked by the model). At evaluation the draw is the segments'
middles (deterministic).
"""

from __future__ import annotations

import numpy as np


def segment_sample(n: int, segments: int, rng: np.random.Generator | None) -> np.ndarray:
    """``[min(n, segments)]`` int64 sorted tile indices; ``rng=None`` takes each segment's middle.

    Segment ``j`` covers ``[floor(j n / T), floor((j + 1) n / T))``; the draw is uniform in it.
    """
    if n <= 0:
        raise ValueError("a slide needs at least one tile to be sampled")
    if n <= segments:
        return np.arange(n, dtype=np.int64)
    edges = (np.arange(segments + 1, dtype=np.int64) * n) // segments
    lo, hi = edges[:-1], edges[1:]
    if rng is None:
        return (lo + (hi - lo - 1) // 2).astype(np.int64)
    return (lo + np.floor(rng.uniform(size=segments) * (hi - lo)).astype(np.int64)).astype(np.int64)


def relative_positions(indices: np.ndarray, n: int) -> np.ndarray:
    """``[T]`` float32 position of each sampled tile in the slide's tile order, in ``[0, 1)`` (FiVE: index / N)."""
    return (np.asarray(indices, np.float64) / max(n, 1)).astype(np.float32)


def pad_batch(feats: list[np.ndarray], positions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack ``b`` slides' ``[T_i, D]`` samples: ``(tiles [b, T, D], positions [b, T], mask [b, T] True = padding)``."""
    t = max(len(f) for f in feats)
    d = feats[0].shape[1]
    out = np.zeros((len(feats), t, d), np.float32)
    pos = np.zeros((len(feats), t), np.float32)
    mask = np.ones((len(feats), t), bool)
    for i, (f, p) in enumerate(zip(feats, positions)):
        out[i, :len(f)] = f
        pos[i, :len(p)] = p
        mask[i, :len(f)] = False
    return out, pos, mask
