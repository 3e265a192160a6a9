"""One slide-reader interface over cuCIM, OpenSlide and tiffslide.

``open_slide(uri)`` hides the backend, the storage (file://, s3://, gs://)
and the metadata quirks of each reader:

* coordinates follow OpenSlide: ``read_region((x, y), level, (w, h))`` takes
  the top-left corner in level-0 pixels and a size in ``level`` pixels;
* pixels come back as ``[h, w, 3]`` uint8 RGB; area outside the slide is
  white (glass), whatever the backend does there;
* mpp is parsed by wsiscale (:mod:`wsiscale.io.mpp`), not taken from the
  reader, and can be overridden per slide;
* failures raise :class:`~wsiscale.io.errors.SlideError` subclasses naming the URI.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from wsiscale.io.errors import (
    BackendUnavailableError,
    SlideError,
    UnsupportedSlideError,
)
from wsiscale.io.slide_base import Slide
from wsiscale.io.staging import StagingCache, default_cache, object_info
from wsiscale.io.tiff_meta import read_tiff_summary
from wsiscale.io.uri import filesystem, normalize_uri

if TYPE_CHECKING:
    from wsiscale.config import StorageConfig

log = logging.getLogger(__name__)

BACKENDS = ("cucim", "openslide", "tiffslide")
def available_backends() -> list[str]:
    """Backends importable in this environment (cuCIM only if safe to import here)."""
    import importlib.util

    out = []
    for name, module in (("cucim", "cucim"), ("openslide", "openslide"), ("tiffslide", "tiffslide")):
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def _backend_class(name: str, timeout_s: float) -> type[Slide]:
    if name == "cucim":
        from wsiscale.io.backends.cucim_reader import CucimSlide, ensure_cucim

        ensure_cucim(timeout_s)
        return CucimSlide
    if name == "openslide":
        from wsiscale.io.backends.openslide_reader import OpenSlideSlide, ensure_openslide

        ensure_openslide()
        return OpenSlideSlide
    if name == "tiffslide":
        from wsiscale.io.backends.tiffslide_reader import TiffSlideSlide, ensure_tiffslide

        ensure_tiffslide()
        return TiffSlideSlide
    raise ValueError(f"unknown reader backend {name!r}; choose one of {', '.join(BACKENDS)} or 'auto'")


def resolve_backend(backend: str = "auto", timeout_s: float = 60.0) -> type[Slide]:
    """The reader class for ``backend``; ``auto`` prefers cuCIM, then OpenSlide, then tiffslide."""
    if backend != "auto":
        return _backend_class(backend, timeout_s)
    errors = []
    for name in BACKENDS:
        try:
            return _backend_class(name, timeout_s)
        except BackendUnavailableError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendUnavailableError("no slide reader is usable: " + "; ".join(errors))


def open_slide(
    uri: str,
    backend: str = "auto",
    mpp: float | None = None,
    storage: "StorageConfig | None" = None,
    cache: StagingCache | None = None,
    cucim_timeout_s: float = 60.0,
) -> Slide:
    """Open the slide at ``uri`` (file://, s3://, gs:// or a path).

    Args:
        uri: where the slide is.
        backend: ``auto``, ``cucim``, ``openslide`` or ``tiffslide``.
        mpp: override of level-0 microns per pixel (for slides without metadata).
        storage: object-storage options (endpoint, region...).
        cache: staging cache for remote objects (default: the node-wide cache).

    Raises:
        SlideNotFoundError, EmptySlideError, UnsupportedSlideError, CorruptSlideError: bad input, naming ``uri``.
        BackendUnavailableError: the requested backend cannot be used here.
    """
    uri = normalize_uri(uri)
    if mpp is not None and not (mpp > 0):
        raise ValueError(f"{uri}: mpp override must be positive, got {mpp}")
    cls = resolve_backend(backend, cucim_timeout_s)
    info = object_info(uri, storage)
    size = int(info["size"])
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as fh:
        summary = read_tiff_summary(fh, uri, size)
    if not any(tiled for _, _, tiled in summary.pages):
        log.warning("%s has no tiled pages; reads will decode whole strips (slow for large slides)", uri)
    if cls.needs_local_file:  # type: ignore[attr-defined]
        local = str((cache or default_cache(storage)).fetch(uri, storage, info))
    else:
        local = uri
    try:
        return cls.open(uri, local, summary, mpp, storage)  # type: ignore[attr-defined]
    except SlideError:
        raise
    except Exception as exc:
        raise UnsupportedSlideError(
            uri, f"{cls.backend} cannot open it ({type(exc).__name__}: {exc})", "try reader.backend=openslide or tiffslide"
        ) from exc
