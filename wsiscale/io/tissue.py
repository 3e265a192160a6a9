"""Tissue detection on a low-resolution level.

Method (the usual saturation-based approach of CLAM/HistoQC-style tools,
made robust to the two classic failure modes):

1. convert to HSV; tissue is stained, glass is not: saturation above an Otsu
   threshold that is floored at ``min_saturation`` (so an empty slide's noise
   is not split into "tissue"), and not brighter than ``max_value``, grown by
   hysteresis into connected faintly stained (H&E-hued) pixels;
2. marker ink is not tissue: blue/green hues (60-250 degrees, H&E sits at
   250-360 and 0-30) and near-black pixels are removed and the ink dilated;
3. ink drawn over tissue is given back (closing restricted to ink pixels);
4. morphology in physical units: closing, filling holes smaller than
   ``max_hole_um2`` (fat and lumens inside tissue), removing pieces smaller
   than ``min_object_um2`` (dust, debris).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsiscale.config import TissueConfig

if TYPE_CHECKING:
    from wsiscale.io.slide_base import Slide


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and where it sits on the slide.

    Attributes:
        mask: ``[h, w]`` bool, True on tissue.
        downsample: level-0 pixels per mask pixel.
        mpp: microns per mask pixel (None when the slide has no mpp).
    """

    mask: np.ndarray
    downsample: float
    mpp: float | None = None

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def integral(self) -> np.ndarray:
        """Summed-area table ``[h + 1, w + 1]`` (int64) of the mask."""
        if self.mask.size < 2**31:  # OpenCV: int32 sums, an order of magnitude faster than two cumsums
            return cv2.integral(np.ascontiguousarray(self.mask, dtype=np.uint8)).astype(np.int64, copy=False)
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        sat[1:, 1:] = self.mask.cumsum(0, dtype=np.int64).cumsum(1)
        return sat

    def box_fractions(self, x0: np.ndarray, y0: np.ndarray, extent: float) -> np.ndarray:
        """Tissue fraction of square level-0 boxes ``[x0, x0 + extent) x [y0, y0 + extent)``.

        Boxes are mapped to mask pixels (rounded outward to whole mask pixels; at
        least one pixel). Returns ``[N]`` float32.
        """
        sat = self.integral()
        h, w = self.mask.shape
        d = self.downsample
        cx0 = np.clip(np.floor(np.asarray(x0) / d + 1e-9).astype(np.int64), 0, w)
        cy0 = np.clip(np.floor(np.asarray(y0) / d + 1e-9).astype(np.int64), 0, h)
        cx1 = np.clip(np.ceil((np.asarray(x0) + extent) / d - 1e-9).astype(np.int64), 0, w)
        cy1 = np.clip(np.ceil((np.asarray(y0) + extent) / d - 1e-9).astype(np.int64), 0, h)
        cx1 = np.maximum(cx1, np.minimum(cx0 + 1, w))
        cy1 = np.maximum(cy1, np.minimum(cy0 + 1, h))
        area = (cx1 - cx0) * (cy1 - cy0)
        total = sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]
        return np.where(area > 0, total / np.maximum(area, 1), 0.0).astype(np.float32)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[h, w, 3]`` uint8 -> hue in degrees [0, 360), saturation and value in [0, 1] (float32, OpenCV)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb).astype(np.float32) * np.float32(1.0 / 255.0), cv2.COLOR_RGB2HSV)
    return hsv[..., 0], hsv[..., 1], hsv[..., 2]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of values in [0, 1]."""
    if values.size == 0:
        return 1.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((values.astype(np.float64) * bins).astype(np.int64), bins - 1)  # = np.histogram on [0, 1]
    hist = np.bincount(index[index >= 0], minlength=bins).astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def ink_mask(rgb: np.ndarray, hsv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``[h, w]`` bool: blue/green/black marker ink (``hsv``: precomputed :func:`rgb_to_hsv`)."""
    h, s, v = hsv if hsv is not None else rgb_to_hsv(rgb)
    coloured = (s > 0.15) & (h >= 60.0) & (h <= 250.0)
    black = v < 0.3
    return coloured | black


#: Up to this radius (pixels) morphology uses OpenCV with a disk structuring element; above it an exact
#: Euclidean distance transform (both give the same sets).
_SMALL_RADIUS = 12.0


def _disk(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    return xx * xx + yy * yy <= radius * radius


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest True pixel of ``mask`` (float32)."""
    return cv2.distanceTransform((~mask).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by a Euclidean disk of ``radius`` pixels."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    if radius <= _SMALL_RADIUS:  # same set as the distance transform below
        return cv2.dilate(mask.view(np.uint8), _disk(radius).view(np.uint8)).view(bool)
    return _distance_to(mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary erosion by a Euclidean disk; the image border is not an edge of tissue."""
    if radius <= 0:
        return mask.copy()
    if radius <= _SMALL_RADIUS:  # OpenCV's default border never erodes, like the padding below
        return cv2.erode(mask.view(np.uint8), _disk(radius).view(np.uint8)).view(bool)
    padded = np.pad(mask, 1, constant_values=True)
    return (_distance_to(~padded) > radius)[1:-1, 1:-1]


def _closing(mask: np.ndarray, radius: float) -> np.ndarray:
    return _erode(_dilate(mask, radius), radius)


def _closing_near(mask: np.ndarray, where: np.ndarray, radius: float) -> np.ndarray:
    """:func:`_closing` of ``mask``, exact on the pixels of ``where`` (False elsewhere).

    A closing by radius r at a pixel depends only on the mask within 2r of it,
    so it is computed on the bounding box of ``where`` grown by 2r + 1 (pen
    marks cover a small part of a slide; this keeps the large-radius EDTs small).
    """
    rows = np.flatnonzero(where.any(axis=1))
    cols = np.flatnonzero(where.any(axis=0))
    out = np.zeros_like(mask)
    if rows.size == 0:
        return out
    m = int(np.ceil(2 * radius)) + 1
    y0, y1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, mask.shape[0])
    x0, x1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, mask.shape[1])
    out[y0:y1, x0:x1] = _closing(mask[y0:y1, x0:x1], radius)
    return out & where


def _area_filter(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Keep the 4-connected components of ``mask`` with at least ``min_px`` pixels."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=4)
    if n <= 1:
        return mask.copy()
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[lab]


def _holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the image border (what ``binary_fill_holes`` fills)."""
    n, lab = cv2.connectedComponents((~mask).view(np.uint8), connectivity=4)
    outside = np.zeros(n, bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        outside[edge] = True
    outside[0] = True  # label 0 is the mask itself
    return ~outside[lab]


def detect_tissue(rgb: np.ndarray, mpp: float, cfg: TissueConfig | None = None, downsample: float = 1.0) -> TissueMask:
    """Tissue mask of an RGB overview at ``mpp`` microns per pixel.

    Saturation uses hysteresis: pixels above the Otsu threshold seed tissue,
    and connected H&E-hued pixels above ``min_saturation`` join them (faint
    fat and tissue edges next to stained tissue; faint isolated smudges and
    the faint rims of ink strokes do not).
    Ink is removed, then ink that lies within ``pen_fill_um`` of tissue on
    both sides (pen drawn over tissue) is given back by a closing.

    Args:
        rgb: ``[h, w, 3]`` uint8 overview (typically 4-16 um/px).
        mpp: microns per pixel of ``rgb`` (sets morphology sizes).
        cfg: thresholds and sizes.
        downsample: level-0 pixels per ``rgb`` pixel (stored on the mask).
    """
    cfg = cfg or TissueConfig()
    hue, s, v = rgb_to_hsv(rgb)
    candidate = v < cfg.max_value
    threshold = max(otsu_threshold(s[candidate]) if candidate.any() else 1.0, cfg.min_saturation)
    strong = (s >= threshold) & candidate
    stain_hue = (hue >= 250.0) | (hue <= 40.0)  # haematoxylin purple .. eosin pink/red
    weak = (s >= cfg.min_saturation) & stain_hue
    ink = np.zeros_like(weak)
    if cfg.remove_pen:
        ink = _dilate(ink_mask(rgb, (hue, s, v)), 3)
        strong &= ~ink
        weak &= ~ink
    n, lab = cv2.connectedComponents(weak.view(np.uint8), connectivity=4)
    n -= 1
    if n:
        seeded = np.zeros(n + 1, bool)
        seeded[np.unique(lab[strong])] = True
        seeded[0] = False
        mask = seeded[lab]
    else:
        mask = weak
    px_area = mpp * mpp
    if cfg.closing_um > 0:
        mask = _closing(mask, cfg.closing_um / mpp)
    if cfg.remove_pen and ink.any() and cfg.pen_fill_um > 0:
        mask |= ink & _closing_near(mask, ink, cfg.pen_fill_um / mpp)
    if cfg.max_hole_um2 > 0:
        holes = _holes(mask)
        mask |= holes & ~_area_filter(holes, cfg.max_hole_um2 / px_area)
    if cfg.min_object_um2 > 0:
        mask = _area_filter(mask, cfg.min_object_um2 / px_area)
    return TissueMask(mask.astype(bool), float(downsample), float(mpp))


def detect_slide_tissue(slide: "Slide", cfg: TissueConfig | None = None) -> TissueMask:
    """Tissue mask of a slide at about ``cfg.mask_mpp`` um/px, read from its best low-resolution level.

    Raises:
        MissingMppError: the slide has no mpp (morphology is defined in microns).
    """
    from PIL import Image

    cfg = cfg or TissueConfig()
    mpp0 = float(np.mean(slide.mpp))
    target_ds = max(cfg.mask_mpp / mpp0, 1.0)
    level = slide.best_level_for_downsample(target_ds)
    img = slide.read_level(level)
    w0, h0 = slide.dimensions
    tw, th = max(1, int(round(w0 / target_ds))), max(1, int(round(h0 / target_ds)))
    if (img.shape[1], img.shape[0]) != (tw, th):
        img = np.asarray(Image.fromarray(img).resize((tw, th), Image.Resampling.BOX))
    ds = (w0 / tw + h0 / th) / 2
    return detect_tissue(img, mpp0 * ds, cfg, downsample=ds)
