"""Per-slide summary: metadata, tissue and planned tiles (what ``wsiscale info`` and the demo show)."""

from __future__ import annotations

import logging
import time
from typing import Any

from wsiscale.config import TilingConfig, WsiscaleConfig
from wsiscale.io import SlideError, detect_slide_tissue, open_slide, plan_tiles

log = logging.getLogger(__name__)

#: SLPD/HIPT regions: 4096 px at the tiling mpp.
REGION_SIZE = 4096


def summarize_slide(uri: str, cfg: WsiscaleConfig, mpp: float | None = None, slide_id: str | None = None) -> dict[str, Any]:
    """Open a slide, detect tissue and plan its tiles and regions.

    Never raises for a bad slide: the returned row has ``error`` set instead, naming
    the URI and the fix, so a batch over many slides always completes.
    """
    row: dict[str, Any] = {"uri": uri, "slide_id": slide_id or uri.rsplit("/", 1)[-1], "error": None}
    t0 = time.perf_counter()
    try:
        with open_slide(uri, backend=cfg.reader.backend, mpp=mpp, storage=cfg.storage,
                        cucim_timeout_s=cfg.reader.cucim_import_timeout_s) as slide:
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
            tissue = detect_slide_tissue(slide, cfg.tissue)
            row["tissue_fraction"] = tissue.fraction
            plan = plan_tiles(slide, cfg.tiling, tissue)
            row.update(tiles=len(plan), tile_level=plan.level, tile_read_size=plan.read_size, tile_mpp=plan.effective_mpp)
            region_cfg = TilingConfig(**(cfg.tiling.model_dump() | {"tile_size": REGION_SIZE, "stride": None}))
            row["regions"] = len(plan_tiles(slide, region_cfg, tissue))
    except SlideError as exc:  # the caller shows it (one line per slide): not logged here as well
        log.debug("%s", exc)
        row["error"] = str(exc)
    row["seconds"] = time.perf_counter() - t0
    return row
