"""Paint level-0 tiles of a synthetic slide from its layout and a texture bank.

Most tiles are a single class or pure glass, and are one slice copy from a
pre-coloured, wrap-padded texture. Only tiles on a tissue edge, a class
boundary or under pen are composited per pixel, from bilinearly upsampled
layout fields. That keeps painting at memory speed (hundreds of Mpx/s per
core), which is what makes a 50-slide cohort take seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wsiscale.synth.layout import PEN_INKS, SlideLayout
from wsiscale.synth.stain import Stain
from wsiscale.synth.textures import TextureBank

#: Slope of the tissue alpha ramp in field units (sharp, antialiased edge).
_EDGE_SHARPNESS = 60.0


def _interp_matrix(n_px: int, cell_px: int) -> np.ndarray:
    """Bilinear weights from ``n_px / cell_px + 2`` cells (one margin cell each side) to pixels.

    Returns:
        ``[n_px, n_px // cell_px + 2]`` float32; cell centres sit at pixel ``c * cell_px + (cell_px - 1) / 2``.
    """
    n_cells = n_px // cell_px + 2
    u = (np.arange(n_px) + 0.5) / cell_px - 0.5 + 1.0  # +1: margin cell
    lo = np.floor(u).astype(int)
    w = (u - lo).astype(np.float32)
    m = np.zeros((n_px, n_cells), np.float32)
    m[np.arange(n_px), lo] = 1 - w
    m[np.arange(n_px), np.minimum(lo + 1, n_cells - 1)] += w
    return m


class TileRenderer:
    """Renders ``tile x tile`` RGB tiles of one slide, in row-major order.

    Args:
        layout: the slide's ground truth.
        bank: texture bank rendered at the slide's mpp.
        stain: the slide's stain.
        rng: per-slide randomness (texture variant/offset per class, glass tint).
        tile: tile side in pixels (a multiple of ``layout.cell_px``).
    """

    def __init__(
        self,
        layout: SlideLayout,
        bank: TextureBank,
        stain: Stain,
        rng: np.random.Generator,
        tile: int = 256,
    ) -> None:
        if tile % layout.cell_px:
            raise ValueError(f"tile size {tile} must be a multiple of the layout cell size {layout.cell_px}")
        self.layout = layout
        self.tile = tile
        self.cells = tile // layout.cell_px
        lut = stain.lookup_table()
        size = bank.size
        self.period = size
        # Pre-colour one variant per class, wrap-padded so any tile window is one slice.
        self.textures: dict[int, np.ndarray] = {}
        for c in range(1, bank.textures.shape[0]):
            v = int(rng.integers(bank.n_variants))
            conc = bank.textures[c, v]
            k = int(rng.integers(4))
            conc = np.rot90(conc, k)
            rgb = lut[conc[..., 0].astype(np.int32) * 256 + conc[..., 1]]
            self.textures[c] = np.pad(rgb, ((0, tile), (0, tile), (0, 0)), mode="wrap")
        self.offsets = {c: rng.integers(0, size, 2) for c in self.textures}
        tint = rng.uniform(236, 247) + rng.normal(0, 1.5, 3)
        glass = tint + rng.normal(0, 1.2, (size, size, 3))
        self.glass = np.pad(np.clip(np.rint(glass), 0, 255).astype(np.uint8), ((0, tile), (0, tile), (0, 0)), mode="wrap")
        self.weights = _interp_matrix(tile, layout.cell_px)
        # Layout fields padded by one cell (+ one tile of slack) for the interpolation margin.
        pad = ((1, self.cells + 1), (1, self.cells + 1))
        self._field = np.pad(layout.tissue_field, pad, mode="edge")
        self._classes = np.pad(layout.classes, pad, mode="edge")
        self._alpha = np.pad(layout.overlay_alpha, pad, mode="constant")
        self._ink = np.pad(layout.overlay_ink, pad, mode="edge")

    def _window(self, tex: np.ndarray, y: int, x: int, c: int = -1) -> np.ndarray:
        if c >= 0:
            oy, ox = self.offsets[c]
            y, x = y + oy, x + ox
        y %= self.period
        x %= self.period
        return tex[y : y + self.tile, x : x + self.tile]

    def _up(self, block: np.ndarray) -> np.ndarray:
        return self.weights @ block.astype(np.float32) @ self.weights.T

    def render(self, ty: int, tx: int) -> np.ndarray:
        """The RGB tile at tile row ``ty``, column ``tx``: ``[tile, tile, 3]`` uint8."""
        y, x = ty * self.tile, tx * self.tile
        cy, cx = ty * self.cells, tx * self.cells
        sl = (slice(cy, cy + self.cells + 2), slice(cx, cx + self.cells + 2))
        field = self._field[sl]
        classes = self._classes[sl]
        alpha = self._alpha[sl]
        glass = self._window(self.glass, y, x)
        present = np.unique(classes[field > -0.05]) if (field > -0.05).any() else np.zeros(0, np.uint8)
        present = present[present > 0]
        if len(present) == 0 and not alpha.any():
            return glass
        if len(present) == 1 and field.min() > 0.05 and not alpha.any():
            c = int(present[0])
            return self._window(self.textures[c], y, x, c)

        if len(present) == 0:
            out = glass.astype(np.float32)
        elif len(present) == 1:
            c = int(present[0])
            out = self._window(self.textures[c], y, x, c).astype(np.float32)
        else:
            scores = np.stack([self._up(classes == c) for c in present])
            winner = np.argmax(scores, axis=0)
            out = np.zeros((self.tile, self.tile, 3), np.float32)
            for i, c in enumerate(present):
                c = int(c)
                sel = winner == i
                out[sel] = self._window(self.textures[c], y, x, c)[sel]
        if len(present) and field.min() <= 0.05:
            a = np.clip(self._up(field) * _EDGE_SHARPNESS + 0.5, 0.0, 1.0)[..., None]
            out = glass + a * (out - glass)
        if alpha.any():
            ink_index = self._ink[sl]
            a = self._up(alpha)[..., None]
            # Each cell carries one ink; interpolate the transmittance with the same weights.
            trans = np.stack([self._up(PEN_INKS[ink_index][..., ch]) for ch in range(3)], axis=-1)
            out = out * (1.0 - a * (1.0 - trans))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def tiles(self, width: int, height: int) -> Iterator[np.ndarray]:
        """All tiles covering ``width x height`` in row-major order (edge tiles padded)."""
        for ty in range(-(-height // self.tile)):
            for tx in range(-(-width // self.tile)):
                yield self.render(ty, tx)
