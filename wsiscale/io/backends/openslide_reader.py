"""OpenSlide backend: the reference reader for vendor formats (wheel-shipped C library)."""

from __future__ import annotations

import numpy as np

from wsiscale.io.errors import BackendUnavailableError
from wsiscale.io.slide import Slide


def ensure_openslide() -> None:
    try:
        import openslide  # noqa: F401
    except Exception as exc:  # ImportError or a missing shared library
        raise BackendUnavailableError(
            f"OpenSlide is not usable ({exc}); pip install openslide-python openslide-bin"
        ) from exc


class OpenSlideSlide(Slide):
    backend = "openslide"
    needs_local_file = True

    def __init__(self, uri, local, summary, mpp_override, osr) -> None:
        super().__init__(uri, local, summary, mpp_override)
        self._osr = osr

    @classmethod
    def open(cls, uri, local, summary, mpp_override, storage=None) -> "OpenSlideSlide":
        import openslide

        return cls(uri, local, summary, mpp_override, openslide.OpenSlide(local))

    @property
    def level_dimensions(self):
        return tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)

    @property
    def level_downsamples(self):
        return tuple(float(d) for d in self._osr.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    def _read(self, x, y, level, w, h) -> np.ndarray:
        rgba = np.asarray(self._osr.read_region((x, y), level, (w, h)))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if alpha.min() < 255:  # premultiplied: composite on white
            rgb = (rgb.astype(np.uint16) + (255 - alpha[..., None])).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        self._osr.close()
