"""OpenSlide backend: the reference reader for vendor formats (wheel-shipped C library)."""

from __future__ import annotations

import numpy as np

from wsiscale.io.errors import BackendUnavailableError
from wsiscale.io.slide_base import Slide


def ensure_openslide() -> None:
    try:
        import openslide  # noqa: F401
    except Exception as exc:  # ImportError or a missing shared library
        raise BackendUnavailableError(
            f"OpenSlide is not usable ({exc}); pip install openslide-python openslide-bin"
        ) from exc


class OpenSlideAPISlide(Slide):
    """A reader object with OpenSlide's API (``level_dimensions``, ``level_downsamples``, ``properties``,
    ``read_region``, ``close``) behind :class:`Slide`: OpenSlide itself, and tiffslide, which mimics it."""

    def __init__(self, uri, local, summary, mpp_override, handle) -> None:
        super().__init__(uri, local, summary, mpp_override)
        self._osr = handle

    @property
    def level_dimensions(self):
        return tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)

    @property
    def level_downsamples(self):
        return tuple(float(d) for d in self._osr.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._osr.properties.items()}

    def close(self) -> None:
        self._osr.close()


class OpenSlideSlide(OpenSlideAPISlide):
    backend = "openslide"
    needs_local_file = True

    @classmethod
    def open(cls, uri, local, summary, mpp_override, storage=None) -> "OpenSlideSlide":
        import openslide

        return cls(uri, local, summary, mpp_override, openslide.OpenSlide(local))

    def _read(self, x, y, level, w, h) -> np.ndarray:
        rgba = np.asarray(self._osr.read_region((x, y), level, (w, h)))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if alpha.min() < 255:  # premultiplied: composite on white
            rgb = (rgb.astype(np.uint16) + (255 - alpha[..., None])).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)
