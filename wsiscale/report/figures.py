"""Figures of the run report: SVG line charts and PNG images, inline (the page needs no other file).

Images are ``[h, w, 3]`` uint8 arrays; :func:`png_data_uri` embeds them. Colours of prototype maps come
from :data:`PALETTE` (prototype ``i`` is ``PALETTE[i % len(PALETTE)]``).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

#: Tableau-10: distinct on H&E thumbnails.
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)


def png_data_uri(rgb: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an ``[h, w, 3]`` uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized (nearest) to ``shape = (h, w)``."""
    h, w = shape
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(int)
    return mask[rows][:, cols]


def tissue_overlay(thumb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The thumbnail with the tissue mask tinted green (``mask`` at any resolution)."""
    m = resize_mask(mask.astype(bool), thumb.shape[:2])
    out = thumb.astype(np.float32)
    out[m] = (1 - alpha) * out[m] + alpha * np.array([40, 200, 60], np.float32)
    return out.clip(0, 255).astype(np.uint8)


def prototype_map(thumb: np.ndarray, x: np.ndarray, y: np.ndarray, extent: float, dims: tuple[int, int],
                  assign: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The thumbnail with each tile (level-0 box ``[x, x + extent) x [y, y + extent)``) painted in its
    prototype's colour. ``dims``: the slide's level-0 ``(width, height)``; ``assign [n]`` prototype indices."""
    h, w = thumb.shape[:2]
    sx, sy = w / dims[0], h / dims[1]
    colour = np.zeros((h, w, 3), np.float32)
    painted = np.zeros((h, w), bool)
    for xi, yi, a in zip(x, y, assign):
        c0, r0 = int(xi * sx), int(yi * sy)
        c1, r1 = max(c0 + 1, int(np.ceil((xi + extent) * sx))), max(r0 + 1, int(np.ceil((yi + extent) * sy)))
        colour[r0:r1, c0:c1] = PALETTE[int(a) % len(PALETTE)]
        painted[r0:r1, c0:c1] = True
    out = thumb.astype(np.float32)
    out[painted] = (1 - alpha) * out[painted] + alpha * colour[painted]
    return out.clip(0, 255).astype(np.uint8)


def _ticks(lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * i / 4 for i in range(5)]


def line_chart_svg(series: list[tuple[str, list[float], list[float]]], title: str, xlabel: str,
                   width: int = 640, height: int = 260) -> str:
    """An SVG line chart: one ``<polyline>`` (one point per value) per ``(name, xs, ys)`` series, axes with
    5 ticks, a legend. Non-finite values are left out."""
    series = [(n, [a for a, b in zip(xs, ys) if np.isfinite(b)], [b for b in ys if np.isfinite(b)])
              for n, xs, ys in series]
    series = [s for s in series if s[1]]
    left, right, top, bottom = 56, 16, 28, 36
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>']
    if not series:
        parts.append(f'<text x="{left}" y="{top + ph / 2}">no data</text></svg>')
        return "".join(parts)
    xs_all = [v for _, xs, _ in series for v in xs]
    ys_all = [v for _, _, ys in series for v in ys]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _ticks(y0, y1):
        parts.append(f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{t:.3g}</text>')
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{t:.3g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="tick">'
                 f'{html.escape(xlabel)}</text>')
    for i, (name, xs, ys) in enumerate(series):
        r, g, b = (int(c) for c in PALETTE[i % len(PALETTE)])
        points = " ".join(f"{px(a):.1f},{py(v):.1f}" for a, v in zip(xs, ys))
        parts.append(f'<polyline data-series="{html.escape(name)}" fill="none" stroke="rgb({r},{g},{b})" '
                     f'stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{left + pw - 4}" y="{top + 14 + 14 * i}" text-anchor="end" '
                     f'fill="rgb({r},{g},{b})" class="tick">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
