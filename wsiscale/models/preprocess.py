"""Tile pixels to a model's input size (torch-free: numpy + OpenCV, usable in CPU reader actors)."""

from __future__ import annotations

import numpy as np


def resize_tiles(tiles: np.ndarray, size: int) -> np.ndarray:
    """``[n, H, W, 3]`` uint8 -> ``[n, size, size, 3]`` uint8 (OpenCV area averaging down, bilinear up).

    The one resize used wherever tiles meet a model's input size, so a direct
    model call and the pipeline see identical pixels.
    """
    import cv2

    if tiles.shape[1] == size and tiles.shape[2] == size:
        return tiles
    interp = cv2.INTER_AREA if tiles.shape[1] > size else cv2.INTER_LINEAR
    out = np.empty((tiles.shape[0], size, size, 3), np.uint8)
    for i, t in enumerate(tiles):
        out[i] = cv2.resize(t, (size, size), interpolation=interp)
    return out
