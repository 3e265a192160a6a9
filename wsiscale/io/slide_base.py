"""The slide-reader interface every backend implements: :class:`Slide` and :class:`SlideInfo`.

The backends (:mod:`wsiscale.io.backends`) subclass :class:`Slide`; the factory that
picks one for a URI is :func:`wsiscale.io.slide.open_slide`. Coordinates follow
OpenSlide (top-left corner in level-0 pixels, size in ``level`` pixels); pixels are
``[h, w, 3]`` uint8 RGB with white (glass) outside the slide.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from wsiscale.io.errors import CorruptSlideError, MissingMppError, SlideError
from wsiscale.io.tiff_meta import TiffSummary

#: Largest image read_level/thumbnail will materialise (pixels).
MAX_LEVEL_PIXELS = 256 * 2**20


@dataclass(frozen=True)
class SlideInfo:
    """Summary of an open slide (what ``wsiscale info`` prints)."""

    uri: str
    backend: str
    vendor: str
    width: int
    height: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    mpp_source: str | None


class Slide(ABC):
    """An open whole-slide image. Use as a context manager or call :meth:`close`."""

    backend: str = ""

    def __init__(self, uri: str, local: str, summary: TiffSummary | None, mpp_override: float | None) -> None:
        self.uri = uri
        self.local = local
        self.summary = summary or TiffSummary()
        self._mpp_override = mpp_override

    # -- backend hooks -------------------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every level, level 0 first."""

    @property
    @abstractmethod
    def properties(self) -> dict[str, str]:
        """Backend metadata (vendor keys as the backend names them)."""

    @abstractmethod
    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """Pixels of an in-bounds box: level-0 corner, level-``level`` size -> ``[h, w, 3]`` uint8."""

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    # -- common API ----------------------------------------------------------------------
    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri} {self.dimensions[0]}x{self.dimensions[1]} levels={self.level_count}>"

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        w0, h0 = self.dimensions
        return tuple(((w0 / w) + (h0 / h)) / 2.0 for w, h in self.level_dimensions)

    @property
    def mpp_or_none(self) -> tuple[float, float] | None:
        if self._mpp_override is not None:
            return (float(self._mpp_override), float(self._mpp_override))
        if self.summary.mpp is not None:
            return self.summary.mpp
        from wsiscale.io.mpp import mpp_from_properties

        return mpp_from_properties(self.properties)

    @property
    def mpp_source(self) -> str | None:
        if self._mpp_override is not None:
            return "override"
        if self.summary.mpp is not None:
            return self.summary.mpp_source
        return "backend" if self.mpp_or_none is not None else None

    @property
    def mpp(self) -> tuple[float, float]:
        """``(mpp_x, mpp_y)`` of level 0.

        Raises:
            MissingMppError: no resolution in the metadata and no override.
        """
        mpp = self.mpp_or_none
        if mpp is None:
            raise MissingMppError(
                self.uri,
                "slide has no resolution metadata (no Aperio MPP, OME PhysicalSize or TIFF resolution)",
                "give the slide's microns per pixel explicitly: an `mpp` column in the manifest or --mpp",
            )
        return mpp

    def level_mpp(self, level: int) -> float:
        """Mean microns per pixel of ``level``."""
        mx, my = self.mpp
        return (mx + my) / 2.0 * self.level_downsamples[level]

    def info(self) -> SlideInfo:
        return SlideInfo(
            uri=self.uri,
            backend=self.backend,
            vendor=self.summary.vendor,
            width=self.dimensions[0],
            height=self.dimensions[1],
            level_dimensions=tuple(self.level_dimensions),
            level_downsamples=tuple(self.level_downsamples),
            mpp=self.mpp_or_none,
            mpp_source=self.mpp_source,
        )

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of a box: ``location`` in level-0 pixels, ``size`` in level pixels.

        Returns:
            ``[h, w, 3]`` uint8 RGB; parts outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.uri}: level {level} out of range (slide has {self.level_count})")
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.uri}: region size must be positive, got {w}x{h}")
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        # Clip to the level, read the inside, paste into white.
        lx0, ly0 = x / ds, y / ds
        cx0, cy0 = max(0, int(np.floor(lx0))), max(0, int(np.floor(ly0)))
        ox, oy = cx0 - int(np.floor(lx0)), cy0 - int(np.floor(ly0))
        cw, ch = min(w - ox, lw - cx0), min(h - oy, lh - cy0)
        if ox == 0 and oy == 0 and cw == w and ch == h:
            return self._read_checked(x, y, level, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if cw > 0 and ch > 0:
            inner = self._read_checked(int(round(cx0 * ds)), int(round(cy0 * ds)), level, cw, ch)
            out[oy : oy + ch, ox : ox + cw] = inner
        return out

    def _read_checked(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            arr = self._read(x, y, level, w, h)
        except SlideError:
            raise
        except Exception as exc:
            raise CorruptSlideError(
                self.uri, f"{self.backend} failed to read {w}x{h} at ({x}, {y}) level {level}: {type(exc).__name__}: {exc}",
                "the slide data is damaged; copy or re-export it, or try another reader backend",
            ) from exc
        if arr.shape != (h, w, 3):
            raise CorruptSlideError(self.uri, f"{self.backend} returned shape {arr.shape} for a {w}x{h} read", "try another backend")
        return arr

    def read_level(self, level: int) -> np.ndarray:
        """A whole (small) level as ``[h, w, 3]`` uint8."""
        w, h = self.level_dimensions[level]
        if w * h > MAX_LEVEL_PIXELS:
            raise ValueError(f"{self.uri}: level {level} is {w}x{h}, too large to read whole; read regions instead")
        return self.read_region((0, 0), level, (w, h))

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= ``downsample`` (level 0 if none)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i
        return best

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """An RGB overview whose longer side is at most ``max_size`` pixels."""
        from PIL import Image

        w0, h0 = self.dimensions
        ds = max(w0, h0) / max_size
        level = self.best_level_for_downsample(max(ds, 1.0))
        img = self.read_level(level)
        tw, th = max(1, round(w0 / max(ds, 1.0))), max(1, round(h0 / max(ds, 1.0)))
        if (img.shape[1], img.shape[0]) != (tw, th):
            img = np.asarray(Image.fromarray(img).resize((tw, th), Image.Resampling.BOX))
        return img
