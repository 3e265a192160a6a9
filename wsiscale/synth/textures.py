"""Procedural, periodic H&E-like textures for each synthetic tissue class.

Every class is rendered as a square periodic field of stain concentrations
``[T, T, 2]`` (haematoxylin, eosin; uint8, see :mod:`wsiscale.synth.stain`) so
that a slide can be painted by copying wrapped windows of the field: the cost
of painting a slide is then memory bandwidth, not texture synthesis. A
cohort renders one :class:`TextureBank` (a few variants per class) and every
slide colours it with its own stain.

The classes differ the way tissue types differ under the microscope: nuclear
density, size, shape and arrangement (scattered, rows around gland lumens,
sheets), cytoplasm/stroma eosin level, fibre orientation, fat vacuoles and
necrotic debris. Sizes are given in micrometres and converted with the slide's
mpp, so a texture means the same thing at 0.25 and 0.5 um/px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsiscale.synth.stain import MAX_CONCENTRATION

#: Class id -> name. 0 is glass (no tissue); it never appears in a texture bank.
TISSUE_CLASSES: dict[int, str] = {
    0: "background",
    1: "stroma",
    2: "fat",
    3: "epithelium",
    4: "lymphocytes",
    5: "necrosis",
    6: "tumour_glandular",
    7: "tumour_solid",
}
TUMOUR_CLASSES = (6, 7)
N_CLASSES = len(TISSUE_CLASSES)


def _od(value: np.ndarray | float) -> np.ndarray:
    """Optical density -> quantised uint8 concentration."""
    q = np.asarray(value, dtype=np.float32) / MAX_CONCENTRATION * 255.0
    return np.clip(np.rint(q), 0, 255).astype(np.uint8)


class _Canvas:
    """Periodic ``T x T`` canvas with FFT helpers; lengths are in micrometres."""

    def __init__(self, size: int, mpp: float, rng: np.random.Generator) -> None:
        self.size = size
        self.mpp = mpp
        self.rng = rng
        f = np.fft.fftfreq(size)
        self._fy = f[:, None]
        self._fx = np.fft.rfftfreq(size)[None, :]
        c = np.arange(size)
        c = np.where(c >= size // 2, c - size, c).astype(np.float32)
        self._dy = c[:, None]
        self._dx = c[None, :]

    def px(self, um: float) -> float:
        return um / self.mpp

    def noise(self, sigma_um: float, aspect: float = 1.0, transpose: bool = False) -> np.ndarray:
        """Zero-mean unit-variance periodic Gaussian noise; ``aspect`` stretches along x."""
        sy = self.px(sigma_um)
        sx = sy * aspect
        if transpose:
            sy, sx = sx, sy
        white = self.rng.standard_normal((self.size, self.size)).astype(np.float32)
        g = np.exp(-2.0 * np.pi**2 * ((self._fy * sy) ** 2 + (self._fx * sx) ** 2))
        out = np.fft.irfft2(np.fft.rfft2(white) * g, s=white.shape).astype(np.float32)
        out -= out.mean()
        std = out.std()
        return out / std if std > 0 else out

    def points(self, density_per_um2: float) -> np.ndarray:
        """Poisson points in the periodic square, ``[N, 2]`` (y, x) in pixels."""
        area_um2 = (self.size * self.mpp) ** 2
        n = self.rng.poisson(density_per_um2 * area_um2)
        return self.rng.uniform(0, self.size, size=(n, 2))

    def impulses(self, pts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        img = np.zeros((self.size, self.size), np.float32)
        if len(pts):
            iy = np.mod(np.rint(pts[:, 0]).astype(np.int64), self.size)
            ix = np.mod(np.rint(pts[:, 1]).astype(np.int64), self.size)
            np.add.at(img, (iy, ix), 1.0 if weights is None else weights)
        return img

    def ellipse_kernel(self, ry_um: float, rx_um: float, angle: float, rim: float = 0.0) -> np.ndarray:
        """Anti-aliased filled ellipse centred on pixel (0, 0) with wrap-around.

        ``rim`` > 0 makes the centre lighter than the border (vesicular nuclei).
        """
        ry, rx = max(self.px(ry_um), 0.6), max(self.px(rx_um), 0.6)
        ca, sa = np.cos(angle), np.sin(angle)
        u = self._dx * ca + self._dy * sa
        v = -self._dx * sa + self._dy * ca
        r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        k = np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0)
        if rim > 0:
            k = k * (1.0 - rim * np.clip(1.0 - r / 0.7, 0.0, 1.0))
        return k.astype(np.float32)

    def convolve(self, img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(np.fft.rfft2(img) * np.fft.rfft2(kernel), s=img.shape).astype(np.float32)

    def nuclei(
        self,
        pts: np.ndarray,
        radius_um: tuple[float, float],
        elongation: float = 1.0,
        angle: float | None = None,
        rim: float = 0.0,
        n_bins: int = 4,
    ) -> np.ndarray:
        """Nuclear coverage ``[T, T]`` in [0, 1] for nuclei centred at ``pts``.

        Radii ~ N(mean, sd) in um are split in ``n_bins`` size bins (one FFT
        convolution each); ``angle=None`` gives random orientations.
        """
        out = np.zeros((self.size, self.size), np.float32)
        if len(pts) == 0:
            return out
        mean, sd = radius_um
        radii = np.clip(self.rng.normal(mean, sd, len(pts)), 0.4 * mean, 2.5 * mean)
        edges = np.quantile(radii, np.linspace(0, 1, n_bins + 1))
        bins = np.clip(np.searchsorted(edges, radii, side="right") - 1, 0, n_bins - 1)
        for b in range(n_bins):
            sel = bins == b
            if not sel.any():
                continue
            r = float(radii[sel].mean())
            theta = angle if angle is not None else float(self.rng.uniform(0, np.pi))
            kern = self.ellipse_kernel(r, r * elongation, theta, rim=rim)
            out += self.convolve(self.impulses(pts[sel]), kern)
        return np.clip(out, 0.0, 1.0)

    def ring_points(self, centres: np.ndarray, radius_um: float, spacing_um: float, jitter_um: float) -> np.ndarray:
        """Points spaced along circles around ``centres`` (gland epithelium nuclei)."""
        if len(centres) == 0:
            return np.zeros((0, 2))
        radius = self.px(radius_um)
        n = max(int(2 * np.pi * radius_um / spacing_um), 3)
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False)[None, :] + self.rng.uniform(0, 2 * np.pi, (len(centres), 1))
        r = radius * self.rng.uniform(0.8, 1.25, (len(centres), 1))
        pts = np.stack([centres[:, :1] + r * np.sin(theta), centres[:, 1:] + r * np.cos(theta)], axis=-1).reshape(-1, 2)
        return pts + self.rng.normal(0.0, self.px(jitter_um), pts.shape)

    def cells(self, diameter_um: float, border_um: float) -> np.ndarray:
        """Borders of a periodic Voronoi tessellation in [0, 1] (fat vacuoles, cell outlines)."""
        from scipy.spatial import cKDTree

        step = 2
        n = self.size // step
        density = 1.0 / (np.pi * (diameter_um / 2) ** 2)
        seeds = self.points(density)
        if len(seeds) < 2:
            return np.zeros((self.size, self.size), np.float32)
        tree = cKDTree(np.mod(seeds, self.size), boxsize=self.size)
        g = (np.arange(n) + 0.5) * step
        yy, xx = np.meshgrid(g, g, indexing="ij")
        d, _ = tree.query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
        gap = (d[:, 1] - d[:, 0]).reshape(n, n)
        border = np.clip(1.0 - gap / self.px(border_um), 0.0, 1.0).astype(np.float32)
        return np.repeat(np.repeat(border, step, 0), step, 1)


def _stroma(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    fibres = c.noise(1.2, aspect=10.0, transpose=transpose)
    waves = c.noise(8.0)
    e = 0.42 + 0.16 * fibres + 0.06 * waves
    h = 0.05 + 0.02 * waves
    nuc = c.nuclei(c.points(0.0012), (2.2, 0.4), elongation=3.5, angle=np.pi / 2 if transpose else 0.0)
    return h + 1.1 * nuc, e * (1 - 0.5 * nuc)


def _fat(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    border = c.cells(diameter_um=float(c.rng.uniform(45, 65)), border_um=3.5)
    e = 0.07 + 0.50 * border + 0.03 * c.noise(20.0) * border
    nuc = c.nuclei(c.points(0.00015), (2.0, 0.3), elongation=2.5) * border
    return 0.01 + 0.08 * border + 1.0 * nuc, e


def _glands(c: _Canvas, centres: np.ndarray, lumen_um: float, wall_um: float) -> tuple[np.ndarray, np.ndarray]:
    lumen = np.clip(c.convolve(c.impulses(centres), c.ellipse_kernel(lumen_um, lumen_um, 0.0)), 0, 1)
    outer = lumen_um + wall_um
    wall = np.clip(c.convolve(c.impulses(centres), c.ellipse_kernel(outer, outer, 0.0)), 0, 1)
    return lumen, np.clip(wall - lumen, 0, 1)


def _epithelium(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    centres = c.points(1.0 / 4500.0)
    lumen, wall = _glands(c, centres, lumen_um=10.0, wall_um=13.0)
    nuc = c.nuclei(c.ring_points(centres, radius_um=17.0, spacing_um=6.5, jitter_um=0.6), (2.8, 0.3), elongation=1.4)
    stroma_h, stroma_e = _stroma(c, transpose)
    tissue = np.clip(wall + lumen, 0, 1)
    e = stroma_e * (1 - tissue) + 0.30 * wall + 0.02 * lumen
    h = stroma_h * (1 - tissue) + 0.10 * wall
    return h * (1 - nuc) + 1.3 * nuc, e * (1 - 0.6 * nuc)


def _lymphocytes(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    clump = c.noise(25.0)
    pts = c.points(0.011)
    keep = c.rng.uniform(size=len(pts)) < np.clip(0.65 + 0.3 * clump[np.mod(pts[:, 0].astype(int), c.size), np.mod(pts[:, 1].astype(int), c.size)], 0.1, 1.0)
    nuc = c.nuclei(pts[keep], (2.6, 0.25), elongation=1.05)
    e = 0.20 + 0.04 * c.noise(6.0)
    return 0.06 + 1.45 * nuc, e * (1 - 0.6 * nuc)


def _necrosis(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    blotch = c.noise(10.0)
    debris = c.nuclei(c.points(0.006), (1.0, 0.4), elongation=1.6, n_bins=3)
    ghosts = c.nuclei(c.points(0.002), (3.5, 0.8), elongation=1.2, n_bins=2)
    e = 0.50 + 0.10 * blotch
    h = 0.10 + 0.05 * c.noise(3.0) + 0.12 * ghosts + 0.9 * debris
    return h, e * (1 - 0.3 * debris)


def _tumour_glandular(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    centres = c.points(1.0 / 2600.0)
    lumen, wall = _glands(c, centres, lumen_um=7.0, wall_um=18.0)
    crowd = c.nuclei(c.points(0.0035), (4.2, 1.1), elongation=1.3, rim=0.45, n_bins=6)
    ring = c.nuclei(c.ring_points(centres, radius_um=13.0, spacing_um=7.5, jitter_um=2.5), (4.5, 1.2), elongation=1.5, rim=0.45, n_bins=6)
    nuc = np.clip(crowd * np.clip(1 - lumen, 0, 1) + ring, 0, 1)
    e = 0.30 + 0.05 * c.noise(4.0) - 0.26 * lumen
    h = 0.16 + 0.04 * c.noise(2.0)
    return h * (1 - nuc) + 1.45 * nuc, e * (1 - 0.5 * nuc)


def _tumour_solid(c: _Canvas, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    outlines = c.cells(diameter_um=float(c.rng.uniform(16, 22)), border_um=0.8)
    pearls = np.clip(c.noise(14.0) - 1.4, 0, 1)
    nuc = c.nuclei(c.points(0.0042), (4.0, 1.4), elongation=1.25, rim=0.3, n_bins=6)
    e = 0.48 + 0.10 * outlines + 0.35 * pearls + 0.05 * c.noise(5.0)
    h = 0.10 + 0.06 * outlines
    return h * (1 - nuc) + 1.35 * nuc, e * (1 - 0.5 * nuc)


_RECIPES = {
    1: _stroma,
    2: _fat,
    3: _epithelium,
    4: _lymphocytes,
    5: _necrosis,
    6: _tumour_glandular,
    7: _tumour_solid,
}


def render_class_texture(class_id: int, size: int, mpp: float, seed: int) -> np.ndarray:
    """One periodic texture of ``class_id``: ``[size, size, 2]`` uint8 (H, E concentrations)."""
    if class_id not in _RECIPES:
        raise ValueError(f"unknown tissue class {class_id}; known: {sorted(_RECIPES)}")
    rng = np.random.default_rng(seed)
    canvas = _Canvas(size, mpp, rng)
    h, e = _RECIPES[class_id](canvas, transpose=bool(rng.integers(2)))
    return np.stack([_od(h), _od(e)], axis=-1)


@dataclass(frozen=True)
class TextureBank:
    """Periodic stain-concentration textures for every tissue class.

    Attributes:
        textures: ``[N_CLASSES, V, T, T, 2]`` uint8; index 0 (background) is unused.
        mpp: micrometres per pixel the textures were rendered at.
    """

    textures: np.ndarray
    mpp: float

    @property
    def size(self) -> int:
        return int(self.textures.shape[2])

    @property
    def n_variants(self) -> int:
        return int(self.textures.shape[1])


def render_texture_bank(mpp: float, size: int = 512, n_variants: int = 3, seed: int = 0) -> TextureBank:
    """Render ``n_variants`` textures of each tissue class at ``mpp`` (deterministic in ``seed``)."""
    bank = np.zeros((N_CLASSES, n_variants, size, size, 2), np.uint8)
    for class_id in _RECIPES:
        for v in range(n_variants):
            bank[class_id, v] = render_class_texture(class_id, size, mpp, seed=int(np.random.SeedSequence([seed, class_id, v]).generate_state(1)[0]))
    return TextureBank(bank, mpp)
