"""Tile-level ground truth of generated slides: the tumour share of each tile, instance labels.

The generator stores each slide's truth on a grid of cells (``<slide>.truth.npz``:
``tumour [Hc, Wc]`` bool, ``cell_px`` level-0 pixels per cell). A tile is a
level-0 square ``[x, x + size) x [y, y + size)``; its tumour fraction is the
exact area share of tumour cells under it (cells cut by the tile's edges count by
their overlap; area outside the grid counts as non-tumour), computed for all
tiles at once from a summed-area table of the mask.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _area_under(sat: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Integral of the cell mask over ``[0, ys) x [0, xs)`` (cell units, fractional) from its summed-area table.

    ``sat [Hc + 1, Wc + 1]`` with ``sat[i, j] = mask[:i, :j].sum()``; the mask is piecewise constant
    per cell, so the integral is bilinear in the fractional part of the coordinates.
    """
    hc, wc = sat.shape[0] - 1, sat.shape[1] - 1
    ys, xs = np.clip(ys, 0, hc), np.clip(xs, 0, wc)
    i0, j0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = ys - i0, xs - j0
    i1, j1 = np.minimum(i0 + 1, hc), np.minimum(j0 + 1, wc)
    return ((1 - fy) * (1 - fx) * sat[i0, j0] + fy * (1 - fx) * sat[i1, j0] + (1 - fy) * fx * sat[i0, j1]
            + fy * fx * sat[i1, j1])


def tile_tumour_fraction(masks: dict[str, np.ndarray], xs: np.ndarray, ys: np.ndarray,
                         size: float | np.ndarray) -> np.ndarray:
    """``[N]`` float32 share of each tile's area that is tumour.

    ``masks``: :func:`wsiscale.synth.slide.load_truth_masks` (``tumour``, ``cell_px``); ``xs, ys [N]``:
    tiles' top-left level-0 pixels; ``size``: their level-0 side (scalar or ``[N]``).
    """
    tumour = np.asarray(masks["tumour"], np.float64)
    cell = float(masks["cell_px"])
    sat = np.zeros((tumour.shape[0] + 1, tumour.shape[1] + 1))
    sat[1:, 1:] = tumour.cumsum(0).cumsum(1)
    x0, y0 = np.asarray(xs, np.float64) / cell, np.asarray(ys, np.float64) / cell
    side = np.broadcast_to(np.asarray(size, np.float64) / cell, x0.shape)
    x1, y1 = x0 + side, y0 + side
    area = (_area_under(sat, y1, x1) - _area_under(sat, y0, x1) - _area_under(sat, y1, x0)
            + _area_under(sat, y0, x0))
    return (area / np.maximum(side * side, 1e-12)).astype(np.float32)


def read_truth_masks(uri: str, storage: Any = None) -> dict[str, np.ndarray]:
    """:func:`~wsiscale.synth.slide.load_truth_masks` for a manifest's ``truth_uri`` (local path, file://, s3://)."""
    from wsiscale.io.uri import filesystem

    fs, path = filesystem(uri, storage)
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{uri}: no ground-truth file; instance labels need a generated cohort's truth "
                                "files (<slide>.truth.npz next to the slide)") from exc
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def instance_labels(truth_uri: str, xs: np.ndarray, ys: np.ndarray, size: float | np.ndarray, storage: Any = None,
                    threshold: float = 0.5) -> np.ndarray:
    """``[N]`` int8: 1 where at least ``threshold`` of the tile is tumour."""
    frac = tile_tumour_fraction(read_truth_masks(truth_uri, storage), xs, ys, size)
    return (frac >= threshold).astype(np.int8)
