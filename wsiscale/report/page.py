"""The report page: :func:`write_report` gathers a run's facts and writes one self-contained HTML file.

Sections: stages (status, seconds, throughput), failed slides, pretraining curves (each loss term,
held-out probe / kNN over steps), evaluation (retrieval@k overall and per class), a slide gallery
(thumbnail, tissue mask, tiles coloured by their slide prototype), retrieval examples (query and its
nearest slides with labels and scores) and any heatmap PNGs the run holds. Images are PNG data URIs
and charts inline SVG: the page opens anywhere, also when copied out of object storage.
"""

from __future__ import annotations

import html
import logging
import time
from typing import Any

import numpy as np

from wsiscale.io.uri import join_uri, normalize_uri, read_json, write_bytes_atomic
from wsiscale.report.collect import RunFacts, nearest_prototype, slide_prototypes, slide_tile_vectors, tile_extent
from wsiscale.report.figures import line_chart_svg, png_data_uri, prototype_map, tissue_overlay

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"

#: Per stage: the count a throughput is computed from (``<count>/s`` over the stage's seconds).
THROUGHPUT = {"tile": "tiles", "embed": "tiles", "regions": "regions", "pretrain": "regions",
              "features": "regions", "index": "vectors"}

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#b00}.done{color:#070}.gallery{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;font-size:12px}figure img{display:block;border:1px solid #ccc}
.row{display:flex;gap:6px;align-items:flex-start}.hit{outline:3px solid #2a2}.miss{outline:3px solid #c22}
.chart .title{font-size:13px;font-weight:600}.chart .tick{font-size:10px;fill:#444}
pre{background:#f7f7f7;padding:8px;font-size:11px;max-height:320px;overflow:auto}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else _e(v)


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_num(c)}</td>' if isinstance(c, (int, float))
                                    else f"<td>{c if isinstance(c, Markup) else _e(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


class Markup(str):
    """Text already escaped (a cell with markup)."""


def _stage_items(stage: str, fig: dict[str, Any]) -> tuple[int | str, str]:
    """``(items, throughput)`` of a stage: its count (``{"total", "this_run"}`` or a number) and the rate of
    this run's items over the stage's seconds (pretraining: its own steady-state rate)."""
    key = THROUGHPUT.get(stage)
    v = fig.get(key) if key else None
    total, this_run = (v.get("total"), v.get("this_run")) if isinstance(v, dict) else (v, v)
    secs = fig.get("seconds")
    if stage == "pretrain":
        rate = next((r for k, r in (fig.get("metrics") or {}).items() if k.endswith("_per_s")), None)
        return (total if total is not None else "", f"{rate:,.1f} {key}/s (training)" if rate else "")
    rate = f"{this_run / secs:,.1f} {key}/s" if isinstance(this_run, (int, float)) and this_run and secs else ""
    return (int(total) if isinstance(total, (int, float)) else "", rate)


def stages_section(facts: RunFacts) -> str:
    stages = (facts.pipeline or {}).get("stages") or {}
    if not stages:
        return "<p>No <code>pipeline.json</code> in this run.</p>"
    rows = []
    for name, fig in stages.items():
        slides = fig.get("slides")
        done = slides.get("done") if isinstance(slides, dict) else slides
        failed = slides.get("failed", 0) if isinstance(slides, dict) else 0
        items, rate = _stage_items(name, fig)
        secs = fig.get("seconds")
        state = "writing this page" if name == "report" and fig.get("status") == "running" else fig.get("status")
        status = Markup(f'<span class="{_e(fig.get("status"))}">{_e(state)}</span>'
                        + (f"<br>{_e(fig['error'])}" if fig.get("error") else ""))
        rows.append([name, status, secs if secs is not None else "", done if done is not None else "",
                     failed, items, rate])
    total = (facts.pipeline or {}).get("seconds")
    return (_table(["stage", "status", "seconds", "slides", "failed", "items", "throughput"], rows, "stages")
            + (f"<p>Whole run: {total:,.1f} s.</p>" if total else ""))


def failures_section(facts: RunFacts) -> str:
    if not facts.failures:
        return '<p class="done">No slide failed.</p>'
    rows = [[f["stage"], f["slide_id"], f["uri"], f["error_type"], f["message"]] for f in facts.failures]
    return _table(["stage", "slide", "uri", "error", "message"], rows, "failures")


def training_section(facts: RunFacts) -> str:
    meta = facts.pretrain
    if not meta or not meta.get("history"):
        return "<p>No pretraining checkpoint in this run.</p>"
    h = meta["history"]
    steps = [r["step"] for r in h]
    terms = [k for k in ("loss", "dino_loss", "intra_loss", "inter_loss") if any(r.get(k) for r in h)]
    charts = [line_chart_svg([(k, steps, [float(r.get(k, np.nan)) for r in h]) for k in terms],
                             f"{(meta.get('pretrain') or {}).get('method', 'dino').upper()} loss per step", "step"),
              line_chart_svg([("lr", steps, [float(r.get("lr", np.nan)) for r in h])], "learning rate", "step")]
    ev = meta.get("evaluations") or []
    if ev:
        keys = [k for k in ("probe_auc", "knn_auc", "probe_accuracy") if any(k in e for e in ev)]
        charts.append(line_chart_svg([(k, [e["step"] for e in ev], [float(e.get(k, np.nan)) for e in ev])
                                      for k in keys], "held-out probe of the teacher", "step"))
    last = h[-1]
    facts_line = (f"<p>{len(h)} steps recorded; last step {last['step']}: loss {last['loss']:.4f}, "
                  f"teacher temperature {last.get('teacher_temp', float('nan')):.3f}, "
                  f"clustered slides {last.get('clustered_slides', 0)}.</p>")
    return facts_line + '<div class="gallery">' + "".join(charts) + "</div>"


def evaluation_section(facts: RunFacts) -> str:
    ret = facts.retrieval
    parts = []
    if ret:
        overall = [[k, ret[k]] for k in ("k", "queries", "top1_accuracy", "majority_vote_accuracy", "map_at_k",
                                           "precision_at_k") if k in ret]
        parts.append("<h3>Slide retrieval</h3>" + _table(["measure", "value"], overall, "retrieval"))
        per = ret.get("per_class") or {}
        if per:
            cols = sorted({k for v in per.values() for k in v})
            parts.append(_table(["class", *cols], [[c, *[v.get(k, "") for k in cols]] for c, v in per.items()]))
    probe = ((facts.pipeline or {}).get("stages") or {}).get("evaluate", {}).get("linear_probe")
    if probe:
        parts.append("<h3>Linear probe</h3>" + _table(["measure", "value"],
                                                      [[k, v] for k, v in probe.items()
                                                       if isinstance(v, (int, float, str))]))
    return "".join(parts) or "<p>No evaluation in this run.</p>"


class Thumbnails:
    """Slide thumbnails and tissue masks, read once per slide (at most ``size`` px on the long side)."""

    def __init__(self, facts: RunFacts, storage: Any, size: int) -> None:
        self.facts, self.storage, self.size = facts, storage, size
        self.cache: dict[str, tuple[np.ndarray, np.ndarray | None, tuple[int, int]] | None] = {}

    def get(self, sid: str) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]] | None:
        if sid not in self.cache:
            self.cache[sid] = self._read(sid)
        return self.cache[sid]

    def _read(self, sid: str):
        from wsiscale.io.slide import open_slide
        from wsiscale.io.tissue import detect_slide_tissue

        info = self.facts.slides.get(sid)
        if not info:
            return None
        try:
            with open_slide(info["uri"], mpp=info.get("mpp"), storage=self.storage) as slide:
                thumb = slide.thumbnail(self.size)
                try:
                    mask = detect_slide_tissue(slide).mask
                except Exception as exc:  # a slide without mpp: thumbnail only
                    log.warning("report: no tissue mask for %s (%s)", info["uri"], exc)
                    mask = None
                return thumb, mask, tuple(slide.dimensions)
        except Exception as exc:  # a bad slide is named in the failures table, never aborts the report
            log.warning("report: no thumbnail for %s (%s)", info["uri"], exc)
            return None


def _img(uri: str, caption: str, cls: str = "", alt: str = "") -> str:
    return (f'<figure><img class="{cls}" src="{uri}" alt="{_e(alt or caption)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def gallery_section(facts: RunFacts, thumbs: Thumbnails, shown: list[str], storage: Any) -> tuple[str, int]:
    """Per shown slide: thumbnail, tissue mask and prototype map. Returns ``(html, images)``."""
    if not shown:
        return "<p>No slide to show.</p>", 0
    protos = slide_prototypes(join_uri(facts.run, "slide-index"), shown, storage)
    # the vectors the index was built on: region features (SLPD) or tile embeddings
    meta = read_json(join_uri(facts.run, "slide-index", "index.json"), storage) or {}
    source = meta.get("embeddings") or join_uri(facts.run, "embeddings")
    tiles = slide_tile_vectors(source, shown, storage)
    unit = "regions" if source.rstrip("/").endswith("region-features") else "tiles"
    blocks, images = [], 0
    for sid in shown:
        got = thumbs.get(sid)
        if got is None:
            continue
        thumb, mask, dims = got
        label = facts.slides.get(sid, {}).get("label")
        figs = [_img(png_data_uri(thumb), f"{_e(sid)}" + (f" ({_e(label)})" if label is not None else ""))]
        if mask is not None:
            figs.append(_img(png_data_uri(tissue_overlay(thumb, mask)), f"tissue {mask.mean():.0%}"))
        if sid in protos and sid in tiles:
            x, y, v = tiles[sid]
            assign = nearest_prototype(v, protos[sid])
            counts = np.bincount(assign, minlength=len(protos[sid]))
            figs.append(_img(png_data_uri(prototype_map(thumb, x, y, tile_extent(x, y), dims, assign)),
                             f"{len(protos[sid])} prototypes: " + " / ".join(str(c) for c in counts) + f" {unit}",
                             alt=f"prototype map of {sid}"))
        images += len(figs)
        blocks.append(f'<div class="row slide" data-slide="{_e(sid)}">' + "".join(figs) + "</div>")
    return '<div class="gallery">' + "".join(blocks) + "</div>", images


def retrieval_section(facts: RunFacts, thumbs: Thumbnails, queries: int, k: int) -> tuple[str, int]:
    if not facts.neighbours:
        return "<p>No slide index with neighbours in this run.</p>", 0
    rows, images = [], 0
    for q in sorted(facts.neighbours)[:queries]:
        got = thumbs.get(q)
        if got is None:
            continue
        q_label = facts.slides.get(q, {}).get("label")
        figs = [_img(png_data_uri(got[0]), f"query {_e(q)}" + (f" ({_e(q_label)})" if q_label is not None else ""))]
        for sid, score in facts.neighbours[q][:k]:
            n = thumbs.get(sid)
            if n is None:
                continue
            label = facts.slides.get(sid, {}).get("label")
            cls = "" if q_label is None or label is None else ("hit" if label == q_label else "miss")
            figs.append(_img(png_data_uri(n[0]), f"{_e(sid)} ({_e(label)}) score {score:.3f}", cls))
        images += len(figs)
        rows.append(f'<div class="row query" data-query="{_e(q)}">' + "".join(figs) + "</div>")
    return "".join(rows), images


def heatmaps_section(run: str, storage: Any, limit: int = 12) -> tuple[str, int]:
    """Heatmap PNGs the run holds (``<run>/**/heatmaps/*.png``, e.g. MIL's), embedded as they are."""
    import base64

    from wsiscale.io.uri import filesystem

    fs, root = filesystem(run, storage)
    try:
        found = sorted(fs.glob(root.rstrip("/") + "/**/heatmaps/*.png"))[:limit]
    except (FileNotFoundError, OSError):
        found = []
    figs = []
    for path in found:
        with fs.open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode()
        figs.append(_img("data:image/png;base64," + data, _e(path.rsplit("/", 1)[-1])))
    return ('<div class="gallery">' + "".join(figs) + "</div>" if figs else "<p>No heatmaps in this run.</p>",
            len(figs))


def write_report(run: str, out: str | None = None, storage: Any = None, slides: int = 6, queries: int = 4,
                 k: int = 4, thumb_size: int = 256, label_column: str = "label") -> dict[str, Any]:
    """Write the HTML report of the pipeline run ``run`` to ``out`` (default ``<run>/report.html``), atomically.

    Returns ``{"out", "images", "charts", "failures", "slides", "queries"}``.
    """
    t0 = time.perf_counter()
    run = normalize_uri(run)
    facts = RunFacts.gather(run, storage, label_column)
    if facts.pipeline is None and not facts.slides and facts.pretrain is None:
        raise FileNotFoundError(f"{run}: no pipeline.json, manifest or pretraining checkpoint: is this the output "
                                "of `jobs/pipeline.py` (its `output`)?")
    thumbs = Thumbnails(facts, storage, thumb_size)
    failed = {f["slide_id"] for f in facts.failures}
    shown = [s for s in sorted(facts.slides) if s not in failed][:slides]
    gallery, n_gallery = gallery_section(facts, thumbs, shown, storage)
    retrieval, n_retrieval = retrieval_section(facts, thumbs, queries, k)
    heatmaps, n_heat = heatmaps_section(run, storage)
    training = training_section(facts)
    body = [f"<h1>wsiscale run report</h1><p>Run <code>{_e(run)}</code>, {len(facts.slides)} slides in the "
            f"manifest, written {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>",
            '<h2 id="stages">Stages and throughput</h2>', stages_section(facts),
            '<h2 id="failures">Failed slides</h2>', failures_section(facts),
            '<h2 id="training">Pretraining</h2>', training,
            '<h2 id="evaluation">Evaluation</h2>', evaluation_section(facts),
            '<h2 id="slides">Slides: tissue and prototypes</h2>', gallery,
            '<h2 id="retrieval">Retrieval examples</h2>',
            "<p>Green frame: same label as the query; red: another label.</p>" + retrieval,
            '<h2 id="heatmaps">Heatmaps</h2>', heatmaps]
    if facts.config_yaml:
        body.append(f'<h2 id="config">Resolved config</h2><details><summary>wsiscale.config.yaml</summary>'
                    f"<pre>{_e(facts.config_yaml)}</pre></details>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>wsiscale report - {_e(run)}</title>'
            f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>")
    target = normalize_uri(out) if out else join_uri(run, REPORT_FILE)
    write_bytes_atomic(target, page.encode(), storage)
    log.info("report: %s (%d images) in %.1f s", target, n_gallery + n_retrieval + n_heat, time.perf_counter() - t0)
    return {"out": target, "images": n_gallery + n_retrieval + n_heat, "charts": training.count("<svg"),
            "failures": len(facts.failures), "slides": len(shown), "queries": min(queries, len(facts.neighbours))}
