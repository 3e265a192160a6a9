"""Slide I/O (torch-free): readers, storage, tissue detection, tile planning.

This package must never import torch: tiling actors run it in processes that
may also load cuCIM, and cuCIM must be imported before torch (see
:mod:`wsiscale.io.cucim_guard`).
"""

from wsiscale.io.errors import (
    BackendUnavailableError,
    CorruptSlideError,
    EmptySlideError,
    MissingMppError,
    SlideError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from wsiscale.io.slide import available_backends, open_slide
from wsiscale.io.slide_base import Slide, SlideInfo
from wsiscale.io.staging import StagingCache
from wsiscale.io.tiling import TilePlan, choose_level, plan_grid, plan_tiles, read_tile
from wsiscale.io.tissue import TissueMask, detect_slide_tissue, detect_tissue

__all__ = [
    "BackendUnavailableError",
    "CorruptSlideError",
    "EmptySlideError",
    "MissingMppError",
    "Slide",
    "SlideError",
    "SlideInfo",
    "SlideNotFoundError",
    "StagingCache",
    "TilePlan",
    "TissueMask",
    "UnsupportedSlideError",
    "available_backends",
    "choose_level",
    "detect_slide_tissue",
    "detect_tissue",
    "open_slide",
    "plan_grid",
    "plan_tiles",
    "read_tile",
]
