"""Per-slide summary: metadata, tissue and planned tiles (what ``wsiscale info`` and the demo show)."""

from __future__ import annotations

import logging
import time
from typing import Any

from wsiscale.config import WsiscaleConfig
from wsiscale.io import SlideError, detect_slide_tissue, plan_tiles
from wsiscale.io.planning import open_configured, plan_regions

log = logging.getLogger(__name__)

def summarize_slide(uri: str, cfg: WsiscaleConfig, mpp: float | None = None, slide_id: str | None = None) -> dict[str, Any]:
    """Open a slide, detect tissue and plan its tiles and regions.

    Never raises for a bad slide: the returned row has ``error`` set instead, naming
    the URI and the fix, so a batch over many slides always completes.
    """
    row: dict[str, Any] = {"uri": uri, "slide_id": slide_id or uri.rsplit("/", 1)[-1], "error": None}
    t0 = time.perf_counter()
    try:
        with open_configured(uri, cfg, mpp) as slide:
            info = slide.info()
            row.update(
                backend=info.backend,
                vendor=info.vendor,
                width=info.width,
                height=info.height,
                levels=[list(d) for d in info.level_dimensions],
                downsamples=[round(d, 4) for d in info.level_downsamples],
                mpp=info.mpp[0] if info.mpp else None,
                mpp_source=info.mpp_source,
            )
            # step by step: a slide without mpp still shows its metadata and tissue, then the error
            tissue = detect_slide_tissue(slide, cfg.tissue)
            row["tissue_fraction"] = tissue.fraction
            plan = plan_tiles(slide, cfg.tiling, tissue)
            row.update(tiles=len(plan), tile_level=plan.level, tile_read_size=plan.read_size, tile_mpp=plan.effective_mpp)
            row["regions"] = len(plan_regions(slide, tissue, cfg))
            row["region_size"] = cfg.embed.region_size
    except SlideError as exc:  # the caller shows it (one line per slide): not logged here as well
        log.debug("%s", exc)
        row["error"] = str(exc)
    row["seconds"] = time.perf_counter() - t0
    return row
