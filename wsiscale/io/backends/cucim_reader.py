"""cuCIM backend (default when installed): fast multi-threaded TIFF/SVS decoding.

cuCIM needs a local path (remote slides are staged) and reports a spacing of
1.0 for Aperio SVS, so mpp comes from wsiscale's own parser. It is imported
through :mod:`wsiscale.io.cucim_guard` to avoid the torch-first import hang.
"""

from __future__ import annotations

import json

import numpy as np

from wsiscale.io.cucim_guard import import_cucim
from wsiscale.io.slide_base import Slide


def ensure_cucim(timeout_s: float = 60.0) -> None:
    """Raise :class:`BackendUnavailableError` unless cuCIM is importable and safe here."""
    import_cucim(timeout_s)


class CucimSlide(Slide):
    backend = "cucim"
    needs_local_file = True

    def __init__(self, uri, local, summary, mpp_override, image) -> None:
        super().__init__(uri, local, summary, mpp_override)
        self._img = image
        res = image.resolutions
        self._dims = tuple((int(w), int(h)) for w, h in res["level_dimensions"])
        self._ds = tuple(float(d) for d in res["level_downsamples"])

    @classmethod
    def open(cls, uri, local, summary, mpp_override, storage=None) -> "CucimSlide":
        cucim = import_cucim()
        image = cucim.CuImage(local)
        return cls(uri, local, summary, mpp_override, image)

    @property
    def level_dimensions(self):
        return self._dims

    @property
    def level_downsamples(self):
        return self._ds

    @property
    def properties(self) -> dict[str, str]:
        meta = self._img.metadata
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                return {}
        flat: dict[str, str] = {}

        def walk(prefix, node):
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat[prefix] = str(node)

        walk("", meta)
        return flat

    def _read(self, x, y, level, w, h) -> np.ndarray:
        region = self._img.read_region(location=(x, y), size=(w, h), level=level)
        arr = np.asarray(region)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        return np.ascontiguousarray(arr, dtype=np.uint8)

    def close(self) -> None:
        close = getattr(self._img, "close", None)
        if close is not None:
            close()
