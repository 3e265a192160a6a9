"""Slide-shared tile augmentations for Giga-SSL's augmented tile embeddings (``embed.augmentations``).

Giga-SSL (Lazard et al., CVPRW 2023; trislaz/gigassl "sharedaug") embeds every
tile of a slide ``N_aug`` times, once per augmentation ``k``, where augmentation
``k`` of a slide is *one* draw of parameters applied to all of its tiles - a
slide-level change of scanner, stain and orientation that the slide encoder
must learn to ignore. A view then picks one ``k`` for all its tiles.

Augmentation ``k`` of a slide draws, from ``rng(seed, crc32(slide_id), k)``
(so a retried chunk, any actor and any chunk boundary give the same pixels):

* a dihedral transform (one of 4 rotations by 90 degrees x optional flip);
* colour jitter as torchvision's ColorJitter factors: brightness and contrast
  in ``[1 - 0.4, 1 + 0.4]``, saturation in ``[1 - 0.4, 1 + 0.4]``;
* a stain jitter in optical-density space (Tellez et al., MedIA 2019): each RGB
  channel's OD scaled by ``U(1 - 0.1, 1 + 0.1)`` and shifted by ``U(-0.02, 0.02)``;
* a Gaussian blur with probability 0.3 (sigma ``U(0.1, 1.5)`` px).

Functions work on ``[n, S, S, 3]`` uint8 tiles and return the same shape and dtype.
"""

from __future__ import annotations

import zlib

import numpy as np

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def augmentation_rng(seed: int, slide_id: str, k: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), zlib.crc32(str(slide_id).encode()), int(k)))


def augment_tiles(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One slide-shared augmentation of ``tiles [n, S, S, 3]`` uint8 (parameters drawn from ``rng``)."""
    rot, flip = int(rng.integers(4)), bool(rng.integers(2))
    brightness, contrast, saturation = rng.uniform(0.6, 1.4, size=3)
    od_scale, od_shift = rng.uniform(0.9, 1.1, size=3), rng.uniform(-0.02, 0.02, size=3)
    blur = rng.uniform() < 0.3
    sigma = rng.uniform(0.1, 1.5)

    x = np.rot90(tiles, rot, axes=(1, 2))
    if flip:
        x = x[:, :, ::-1]
    x = x.astype(np.float32) / 255.0
    od = -np.log(np.clip(x, 1.0 / 255, 1.0))  # optical density per channel
    x = np.exp(-(od * od_scale.astype(np.float32) + od_shift.astype(np.float32)))
    x = x * np.float32(brightness)
    gray = x @ _GRAY  # [n, S, S]
    mean = gray.mean(axis=(1, 2), keepdims=True)[..., None]
    x = (x - mean) * np.float32(contrast) + mean
    gray = (x @ _GRAY)[..., None]
    x = (x - gray) * np.float32(saturation) + gray
    x = np.clip(x, 0.0, 1.0)
    if blur:
        import cv2

        x = np.stack([cv2.GaussianBlur(t, (0, 0), sigmaX=float(sigma)) for t in x])
    return np.ascontiguousarray((x * 255.0 + 0.5).astype(np.uint8))
