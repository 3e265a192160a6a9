"""tiffslide backend: pure Python (tifffile + imagecodecs), reads remote objects directly."""

from __future__ import annotations

import numpy as np

from wsiscale.io.backends.openslide_reader import OpenSlideAPISlide
from wsiscale.io.errors import BackendUnavailableError
from wsiscale.io.uri import is_local, local_path, scheme_of, storage_options


def ensure_tiffslide() -> None:
    try:
        import tiffslide  # noqa: F401
    except Exception as exc:
        raise BackendUnavailableError(f"tiffslide is not usable ({exc}); pip install tiffslide") from exc


class TiffSlideSlide(OpenSlideAPISlide):
    backend = "tiffslide"
    needs_local_file = False  # range reads through fsspec

    @classmethod
    def open(cls, uri, local, summary, mpp_override, storage=None) -> "TiffSlideSlide":
        import tiffslide

        if is_local(local):
            ts = tiffslide.TiffSlide(str(local_path(local)))
        else:
            ts = tiffslide.TiffSlide(local, storage_options=storage_options(scheme_of(local), storage))
        return cls(uri, local, summary, mpp_override, ts)

    def _read(self, x, y, level, w, h) -> np.ndarray:
        arr = self._osr.read_region((x, y), level, (w, h), as_array=True)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        return np.ascontiguousarray(arr, dtype=np.uint8)
