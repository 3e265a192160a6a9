"""Cheap, backend-independent checks and metadata of TIFF-based slides.

Before a slide reaches a reader, wsiscale reads its TIFF directory (a few KB
to a few MB, never pixel data) to fail early and clearly on what readers
report badly: a file that is not a TIFF, a truncated object (tile data past
the end of the file), and missing or wrong resolution metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

import tifffile

from wsiscale.io.errors import CorruptSlideError, UnsupportedSlideError
from wsiscale.io.mpp import mpp_from_aperio, mpp_from_ome, mpp_from_resolution

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass
class TiffSummary:
    """What the TIFF directory says about a slide."""

    description: str = ""
    mpp: tuple[float, float] | None = None
    mpp_source: str | None = None
    vendor: str = "generic-tiff"
    pages: list[tuple[int, int, bool]] = field(default_factory=list)  # (height, width, tiled)


def is_tiff_header(head: bytes) -> bool:
    return head[:4] in TIFF_MAGICS


def read_tiff_summary(fh: BinaryIO, uri: str, size: int) -> TiffSummary:
    """Parse the TIFF directory of an open file, checking that all image data is present.

    Raises:
        UnsupportedSlideError: not a TIFF.
        CorruptSlideError: unreadable directory, or tile/strip data beyond ``size`` (truncated upload).
    """
    fh.seek(0)
    head = fh.read(8)
    if not is_tiff_header(head):
        raise UnsupportedSlideError(
            uri,
            f"not a TIFF-based slide (file starts with {head[:8]!r})",
            "wsiscale reads pyramidal TIFF slides (Aperio SVS, generic tiled TIFF, OME-TIFF); "
            "check the URI points at the slide, or convert the slide to a pyramidal TIFF",
        )
    fh.seek(0)
    try:
        with tifffile.TiffFile(fh) as tf:
            summary = TiffSummary()
            first = tf.pages.first
            summary.description = first.description or ""
            for i, page in enumerate(tf.pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                if offsets:
                    end = max(o + c for o, c in zip(offsets, counts))
                    if end > size:
                        raise CorruptSlideError(
                            uri,
                            f"truncated: image data of page {i} ends at byte {end} but the object has {size} bytes",
                            "the upload or copy was interrupted; copy the slide again",
                        )
                summary.pages.append((int(page.imagelength), int(page.imagewidth), bool(page.is_tiled)))
            aperio = mpp_from_aperio(summary.description)
            if summary.description.startswith("Aperio"):
                summary.vendor = "aperio"
            if aperio is not None:
                summary.mpp, summary.mpp_source = (aperio, aperio), "aperio"
            elif (ome := mpp_from_ome(summary.description)) is not None:
                summary.mpp, summary.mpp_source, summary.vendor = ome, "ome", "ome-tiff"
            else:
                tags = first.tags
                xr = tags.get("XResolution")
                yr = tags.get("YResolution")
                unit = tags.get("ResolutionUnit")

                def ratio(tag):
                    if tag is None:
                        return None
                    num, den = tag.value
                    return num / den if den else None

                res = mpp_from_resolution(ratio(xr), ratio(yr), unit.value if unit else None)
                if res is not None:
                    summary.mpp, summary.mpp_source = res, "tiff-resolution"
            return summary
    except (UnsupportedSlideError, CorruptSlideError):
        raise
    except Exception as exc:  # tifffile raises a zoo of types on damaged files
        raise CorruptSlideError(uri, f"unreadable TIFF directory ({type(exc).__name__}: {exc})", "the file is damaged; copy or re-export it") from exc
