"""Heatmaps of per-tile scores (attention, tumour probability, ground truth) over slide thumbnails.

A heatmap paints each tile's level-0 square, scaled to the thumbnail, in the
colour of its value (values in ``[0, 1]``; the caller normalises, e.g. min-max
for attention) and blends it over the thumbnail; pixels that no tile covers
stay the thumbnail. Overlapping tiles show the mean of their values. Figures
are drawn with numpy and Pillow only (no matplotlib): the thumbnail and one
panel per score side by side, captions, a colour bar and a title, as a PNG.

Torch-free (heatmaps are drawn in Ray tasks that also open slides; see
``docs/io.md`` on cuCIM and torch).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)

# matplotlib's viridis sampled at 0, 1/8, ..., 1 (RGB, 0-255).
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 45, 123],
        [59, 82, 139],
        [44, 114, 142],
        [33, 144, 140],
        [39, 173, 129],
        [93, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    np.float64,
)
# matplotlib's jet: piecewise-linear (position, value) per channel.
_JET = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)
COLORMAPS = ("viridis", "jet")

#: Largest pyramid level (pixels) read whole for a thumbnail; larger ones are read in bands.
MAX_THUMBNAIL_SOURCE_PIXELS = 64 * 2**20

# Figure layout (pixels).
_PAD = 8
_FONT_SIZE = 14
_BAR_HEIGHT = 12
_BAR_WIDTH = 256


def colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Colours of ``values``: ``[...]`` floats in ``[0, 1]`` (clipped) -> ``[..., 3]`` uint8 RGB.

    ``viridis`` interpolates matplotlib's viridis linearly between 9 anchors (within 1-2 levels of the
    original); ``jet`` is matplotlib's piecewise-linear jet. NaN maps like 0 (callers that need
    "no value" mask NaN themselves, as :func:`render_heatmap` does).
    """
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=0.0), 0.0, 1.0)
    if name == "viridis":
        pos = np.linspace(0.0, 1.0, len(_VIRIDIS))
        rgb = np.stack([np.interp(v, pos, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    elif name == "jet":
        rgb = np.stack([np.interp(v, xp, fp) * 255.0 for xp, fp in _JET], axis=-1)
    else:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    return np.rint(rgb).astype(np.uint8)


def slide_thumbnail(
    uri: str, max_side: int = 1024, storage: "StorageConfig | None" = None, backend: str = "auto"
) -> tuple[np.ndarray, float]:
    """A thumbnail of the slide at ``uri``: ``([H, W, 3] uint8, scale)``.

    ``scale`` is thumbnail pixels per level-0 pixel (``W / slide width``); the longer side is at
    most ``max_side`` (slides smaller than that are not upscaled). Reads the coarsest pyramid
    level that is still at least ``max_side`` and resizes it with Pillow (box filter); a level too
    large to hold whole (a slide without a pyramid) is read and reduced in horizontal bands.
    """
    from PIL import Image

    from wsiscale.io.slide import open_slide

    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    with open_slide(uri, backend=backend, storage=storage) as slide:
        w0, h0 = slide.dimensions
        ds = max(max(w0, h0) / max_side, 1.0)
        tw, th = max(1, round(w0 / ds)), max(1, round(h0 / ds))
        level = slide.best_level_for_downsample(ds)
        lw, lh = slide.level_dimensions[level]
        if lw * lh <= MAX_THUMBNAIL_SOURCE_PIXELS:
            img = slide.read_level(level)
        else:
            log.warning("%s: no pyramid level near %d px (level %d is %dx%d); reading it in bands",
                        uri, max_side, level, lw, lh)
            img = _read_level_reduced(slide, level, max(1, int(min(lw / tw, lh / th))))
    if (img.shape[1], img.shape[0]) != (tw, th):
        img = np.asarray(Image.fromarray(img).resize((tw, th), Image.Resampling.BOX))
    return np.ascontiguousarray(img), tw / w0


def _read_level_reduced(slide, level: int, factor: int) -> np.ndarray:
    """``level`` of ``slide`` box-reduced by the integer ``factor``, read in bands (bounded memory).

    Returns ``[ceil(lh / factor), ceil(lw / factor), 3]`` uint8. Bands are a multiple of ``factor``
    rows, so band seams fall on output rows.
    """
    from PIL import Image

    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    band = max(factor, (MAX_THUMBNAIL_SOURCE_PIXELS // 4 // lw) // factor * factor)
    out_w = -(-lw // factor)
    rows = []
    for y in range(0, lh, band):
        h = min(band, lh - y)
        px = slide.read_region((0, int(round(y * ds))), level, (lw, h))
        rows.append(np.asarray(Image.fromarray(px).resize((out_w, -(-h // factor)), Image.Resampling.BOX)))
    return np.concatenate(rows, axis=0)


def _tile_boxes(
    shape: tuple[int, int], scale: float, xs: np.ndarray, ys: np.ndarray, size: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thumbnail pixel boxes ``[x0, x1) x [y0, y1)`` of tiles (each ``[N]`` int64, clipped; >= 1 px if inside).

    Edges are rounded, so adjacent tiles share no pixel and leave no gap.
    """
    h, w = shape
    xs = np.asarray(xs, np.float64)
    ys = np.asarray(ys, np.float64)
    side = np.broadcast_to(np.asarray(size, np.float64), xs.shape)
    x0, y0 = np.rint(xs * scale).astype(np.int64), np.rint(ys * scale).astype(np.int64)
    x1 = np.maximum(np.rint((xs + side) * scale).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.rint((ys + side) * scale).astype(np.int64), y0 + 1)
    return np.clip(x0, 0, w), np.clip(x1, 0, w), np.clip(y0, 0, h), np.clip(y1, 0, h)


def render_heatmap(
    thumb: np.ndarray,
    scale: float,
    xs: np.ndarray,
    ys: np.ndarray,
    size: float | np.ndarray,
    values: np.ndarray,
    alpha: float = 0.5,
    cmap: str = "viridis",
) -> np.ndarray:
    """Tiles' values painted over a thumbnail: ``[H, W, 3]`` uint8.

    Args:
        thumb: ``[H, W, 3]`` uint8 thumbnail (:func:`slide_thumbnail`).
        scale: thumbnail pixels per level-0 pixel.
        xs, ys: ``[N]`` tiles' top-left corners in level-0 pixels.
        size: tiles' level-0 side (scalar or ``[N]``).
        values: ``[N]`` values in ``[0, 1]``; NaN tiles are not painted.
        alpha: opacity of the colour: ``out = (1 - alpha) * thumb + alpha * colour`` (rounded).
        cmap: :func:`colormap` name.

    Pixels covered by several tiles take the colour of their mean value; pixels covered by none
    keep the thumbnail. Rectangles are accumulated with 2-D difference arrays (``O(N + HW)``).
    """
    thumb = np.asarray(thumb)
    if thumb.ndim != 3 or thumb.shape[2] != 3 or thumb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be [H, W, 3] uint8, got {thumb.shape} {thumb.dtype}")
    values = np.asarray(values, np.float64).reshape(-1)
    xs, ys = np.asarray(xs).reshape(-1), np.asarray(ys).reshape(-1)
    if not len(values) == len(xs) == len(ys):
        raise ValueError(f"xs, ys and values need one entry per tile, got {len(xs)}, {len(ys)}, {len(values)}")
    h, w = thumb.shape[:2]
    keep = np.isfinite(values)
    size_arr = np.asarray(size, np.float64)
    if size_arr.ndim:
        size_arr = size_arr.reshape(-1)[keep]
    x0, x1, y0, y1 = _tile_boxes((h, w), scale, xs[keep], ys[keep], size_arr)
    v = values[keep]
    inside = (x1 > x0) & (y1 > y0)
    x0, x1, y0, y1, v = x0[inside], x1[inside], y0[inside], y1[inside], v[inside]
    # Difference arrays: +at (y0, x0), (y1, x1); -at (y0, x1), (y1, x0); cumulative sums give per-pixel totals.
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    for yy, xx, sign in ((y0, x0, 1.0), (y1, x1, 1.0), (y0, x1, -1.0), (y1, x0, -1.0)):
        np.add.at(total, (yy, xx), sign * v)
        np.add.at(count, (yy, xx), sign)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    painted = count > 0
    out = thumb.copy()
    if painted.any():
        colour = colormap(total[painted] / count[painted], cmap).astype(np.float64)
        blend = (1.0 - alpha) * thumb[painted].astype(np.float64) + alpha * colour
        out[painted] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out


def _font(size: int = _FONT_SIZE):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text_height(font) -> int:
    box = font.getbbox("Ag")
    return int(box[3]) + 2


def heatmap_png(
    thumb: np.ndarray,
    scale: float,
    xs: np.ndarray,
    ys: np.ndarray,
    size: float | np.ndarray,
    panels: dict[str, np.ndarray],
    title: str,
    alpha: float = 0.5,
    cmap: str = "viridis",
) -> bytes:
    """A PNG figure: the thumbnail and one :func:`render_heatmap` panel per entry of ``panels``, side by side.

    Args:
        thumb: ``[H, W, 3]`` uint8 thumbnail; scale, xs, ys, size: as :func:`render_heatmap`.
        panels: caption -> ``[N]`` values in ``[0, 1]`` (e.g. ``{"attention": a, "student P(tumour)": p}``).
        title: drawn above the panels.

    Layout: title row, then a caption row and the ``1 + len(panels)`` images (each ``W`` wide, ``_PAD``
    apart and from the border), then a horizontal colour bar labelled 0 and 1. The figure is
    ``(1 + len(panels)) * W + (2 + len(panels)) * _PAD`` wide (wider only if the title needs it).
    """
    from PIL import Image, ImageDraw

    thumb = np.asarray(thumb)
    h, w = thumb.shape[:2]
    images = [("thumbnail", thumb)] + [
        (name, render_heatmap(thumb, scale, xs, ys, size, vals, alpha, cmap)) for name, vals in panels.items()
    ]
    font = _font()
    line = _text_height(font)
    title_w = int(font.getlength(title)) if hasattr(font, "getlength") else len(title) * 7
    width = max(len(images) * w + (len(images) + 1) * _PAD, title_w + 2 * _PAD)
    top = _PAD + line + _PAD  # title row
    img_top = top + line  # caption row
    bar_top = img_top + h + _PAD
    height = bar_top + _BAR_HEIGHT + 2 + line + _PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, _PAD), title, fill=(0, 0, 0), font=font)
    for i, (name, arr) in enumerate(images):
        left = _PAD + i * (w + _PAD)
        canvas.paste(Image.fromarray(np.ascontiguousarray(arr)), (left, img_top))
        draw.text((left, top), name, fill=(0, 0, 0), font=font)
    bar_w = max(16, min(_BAR_WIDTH, width - 2 * _PAD))
    bar = colormap(np.broadcast_to(np.linspace(0.0, 1.0, bar_w), (_BAR_HEIGHT, bar_w)), cmap)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (_PAD, bar_top))
    label_y = bar_top + _BAR_HEIGHT + 2
    draw.text((_PAD, label_y), "0", fill=(0, 0, 0), font=font)
    one_w = int(font.getlength("1")) if hasattr(font, "getlength") else 6
    draw.text((_PAD + bar_w - one_w, label_y), "1", fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def write_heatmap(uri: str, png_bytes: bytes, storage: "StorageConfig | None" = None) -> None:
    """Write a PNG from :func:`heatmap_png` to ``uri`` (local path, file://, s3://...) atomically."""
    from wsiscale.io.uri import write_bytes_atomic

    write_bytes_atomic(uri, png_bytes, storage)
