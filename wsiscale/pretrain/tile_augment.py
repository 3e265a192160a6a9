"""DINO multi-crop augmentations of RGB tiles, in numpy/OpenCV for CPU Ray Data tasks (torch-free).

The recipe of DINO's ``DataAugmentationDINO`` (Caron et al., "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021), used as is by
HIPT for its ViT-256 patch encoder (Chen et al., CVPR 2022):

* global view 1: random resized crop (scale ``global_scale``, bicubic),
  flip + colour jitter, Gaussian blur (p = 1.0);
* global view 2 (and further globals): the same with blur p = 0.1 and
  solarisation p = 0.2;
* local views: random resized crop (scale ``local_scale``), flip + colour
  jitter, blur p = 0.5.

"Flip + colour jitter" is a horizontal flip (p = 0.5), ColorJitter(brightness
0.4, contrast 0.4, saturation 0.2, hue 0.1) with p = 0.8 in random order, and
grayscale with p = 0.2, as torchvision computes them. Views are returned as
``[S, S, 3]`` uint8 (normalisation happens on the training worker).
"""

from __future__ import annotations

import math

import numpy as np

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # torchvision's rgb_to_grayscale weights


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a crop as torchvision's ``RandomResizedCrop.get_params``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: a centre crop at the nearest allowed aspect ratio
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def color_jitter(x: np.ndarray, rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.2, hue: float = 0.1) -> np.ndarray:
    """torchvision's ColorJitter on ``[H, W, 3]`` float32 RGB in [0, 1] (the four ops in random order)."""
    import cv2

    for op in rng.permutation(4):
        if op == 0:
            x = np.clip(x * rng.uniform(1 - brightness, 1 + brightness), 0, 1)
        elif op == 1:
            mean = float((x @ _GRAY).mean())
            f = rng.uniform(1 - contrast, 1 + contrast)
            x = np.clip(f * x + (1 - f) * mean, 0, 1)
        elif op == 2:
            f = rng.uniform(1 - saturation, 1 + saturation)
            x = np.clip(f * x + (1 - f) * (x @ _GRAY)[..., None], 0, 1)
        else:
            hsv = cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
            hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-hue, hue)) % 360.0
            x = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)
    return x.astype(np.float32, copy=False)


def augment_view(tile: np.ndarray, size: int, scale: tuple[float, float], rng: np.random.Generator,
                 blur_p: float, solarize_p: float = 0.0) -> np.ndarray:
    """One DINO view ``[size, size, 3]`` uint8 of ``tile [H, W, 3]`` uint8."""
    import cv2

    top, left, ch, cw = random_resized_crop_box(tile.shape[0], tile.shape[1], rng, scale)
    crop = tile[top : top + ch, left : left + cw]
    x = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.8:
        x = color_jitter(x, rng)
    if rng.random() < 0.2:
        x = np.repeat((x @ _GRAY)[..., None], 3, axis=-1)
    if rng.random() < blur_p:
        sigma = rng.uniform(0.1, 2.0)  # PIL GaussianBlur(radius) is a Gaussian of standard deviation radius
        x = cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), sigmaX=sigma, sigmaY=sigma)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    if rng.random() < solarize_p:
        out = np.where(out >= 128, 255 - out, out).astype(np.uint8)
    return np.ascontiguousarray(out)


def tile_multicrop(tile: np.ndarray, rng: np.random.Generator, global_crops: int = 2, local_crops: int = 8,
                   global_size: int = 224, local_size: int = 96, global_scale: tuple[float, float] = (0.4, 1.0),
                   local_scale: tuple[float, float] = (0.05, 0.4)) -> list[np.ndarray]:
    """``global_crops`` global then ``local_crops`` local DINO views of ``tile [H, W, 3]`` uint8."""
    views = [augment_view(tile, global_size, global_scale, rng, blur_p=1.0 if i == 0 else 0.1,
                          solarize_p=0.0 if i == 0 else 0.2) for i in range(global_crops)]
    return views + [augment_view(tile, local_size, local_scale, rng, blur_p=0.5) for _ in range(local_crops)]
