"""The run report (``wsiscale report RUN_DIR``): figures against hand values, and a page of a partial run
(generated SVS slides, failure records, hand-written neighbours) read back with an HTML parser.

The whole pipeline's report (tiles, SLPD loss curves, prototype maps from the run's slide index) is
checked in ``tests/test_pipeline.py``, where the submitted job writes it; a real headless Chromium
(Qt WebEngine) renders a report and is screenshotted here.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np


class Page(HTMLParser):
    """Images (decoded), SVG polylines, table rows, sections and classes of a report page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[tuple[dict, np.ndarray]] = []
        self.polylines: list[dict] = []
        self.rows: list[list[str]] = []
        self.ids: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        from PIL import Image

        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,"), a["src"][:40]
            img = Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1])))
            self.images.append((a, np.asarray(img.convert("RGB"))))
        elif tag == "polyline":
            self.polylines.append(a)
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_line_chart_points_by_hand():
    from wsiscale.report.figures import line_chart_svg

    svg = line_chart_svg([("loss", [1, 2, 3], [4.0, 2.0, float("nan")]), ("other", [1, 3], [3.0, 3.0])],
                         "title", "step", width=200, height=100)
    lines = Page(svg).polylines
    assert [p["data-series"] for p in lines] == ["loss", "other"]
    # plot box: x 56..184 (steps 1..3), y 28..64 (values 2..4, top is 4); NaN is left out
    assert lines[0]["points"] == "56.0,28.0 120.0,64.0"
    assert lines[1]["points"] == "56.0,46.0 184.0,46.0"
    assert "no data" in line_chart_svg([("x", [], [])], "t", "s")


def test_prototype_map_and_tissue_overlay_paint_exact_pixels():
    from wsiscale.report.figures import PALETTE, prototype_map, tissue_overlay

    thumb = np.full((20, 40, 3), 100, np.uint8)  # a 4000 x 2000 slide at 1/100
    out = prototype_map(thumb, np.array([0, 1000]), np.array([0, 500]), 500.0, (4000, 2000), np.array([1, 3]),
                        alpha=0.5)
    np.testing.assert_allclose(out[0:5, 0:5], np.broadcast_to(0.5 * 100 + 0.5 * PALETTE[1], (5, 5, 3)), atol=1)
    np.testing.assert_allclose(out[5:10, 10:15], np.broadcast_to(0.5 * 100 + 0.5 * PALETTE[3], (5, 5, 3)), atol=1)
    untouched = np.ones((20, 40), bool)
    untouched[0:5, 0:5] = untouched[5:10, 10:15] = False
    assert (out[untouched] == 100).all()
    mask = np.zeros((2, 4), bool)
    mask[0, 0] = True  # the top-left 10 x 10 of the thumbnail
    tinted = tissue_overlay(thumb, mask)
    assert (tinted[:10, :10] != 100).any(axis=-1).all() and (tinted[10:] == 100).all() and (tinted[:, 10:] == 100).all()


def test_tile_extent_and_nearest_prototype():
    from wsiscale.report.collect import nearest_prototype, tile_extent

    assert tile_extent(np.array([0, 512, 1024, 0]), np.array([0, 0, 0, 512])) == 512
    assert tile_extent(np.array([7]), np.array([9])) == 64.0
    v = np.array([[1.0, 0.1], [0.1, 2.0], [-1.0, 0.0]])
    assert nearest_prototype(v, np.array([[3.0, 0.0], [0.0, 0.5]])).tolist() == [0, 1, 1]


def _partial_run(tmp_path, cohort):
    """A run directory as a pipeline leaves it when its embed stage failed: pipeline.json, the manifest of
    the generated cohort, a failure record of the tile stage and neighbours of a slide index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.runs.state import failures_table
    from wsiscale.io.manifest import read_manifest

    _, manifest = cohort
    run = tmp_path / "run"
    (run / "tiles").mkdir(parents=True)
    (run / "slide-index").mkdir()
    m = read_manifest(str(manifest))
    ids, labels = m.column("slide_id").to_pylist(), m.column("label").to_pylist()
    doc = {"output": run.as_uri(), "manifest": str(manifest), "seconds": 30.0, "stages": {
        "tile": {"status": "done", "seconds": 20.0, "slides": {"done": 6, "failed": 1},
                 "tiles": {"total": 500, "this_run": 400}},  # a resumed run: 400 tiles in this run's 20 s
        "embed": {"status": "failed", "seconds": 1.5, "error": "EncoderError: no weights for <vit>"}}}
    (run / "pipeline.json").write_text(json.dumps(doc))
    pq.write_table(failures_table([{"status": "failed", "slide_id": "broken-7", "name": "broken-7",
                                    "uri": "file:///archive/broken-7.svs", "error_type": "CorruptSlideError",
                                    "message": "file:///archive/broken-7.svs: truncated TIFF"}]),
                   run / "tiles" / "failures.parquet")
    # each slide's two neighbours: the next two slides in the manifest (scores made up)
    nb = [[ids[(i + 1) % 6], ids[(i + 2) % 6]] for i in range(6)]
    pq.write_table(pa.table({"slide_id": ids, "neighbours": nb, "scores": [[0.9, 0.8]] * 6}),
                   run / "slide-index" / "neighbours.parquet")
    # two kept checkpoints (the newer has 3 steps) beside Ray Train's snapshot file
    base = run / "pretrain" / "pretrain"
    hist = [{"step": i, "loss": 4.0 - i, "dino_loss": 4.0 - i, "intra_loss": 0.0, "inter_loss": 0.0, "lr": 1e-3 * i,
             "teacher_temp": 0.04} for i in (1, 2, 3)]
    for name, n in (("checkpoint_2026-12-07_10-00-00.000001", 2), ("checkpoint_2026-12-07_10-00-01.000001", 3)):
        (base / name).mkdir(parents=True)
        (base / name / "meta.json").write_text(json.dumps({"pretrain": {"method": "slpd"}, "history": hist[:n],
                                                            "metrics": {"step": n}}))
    (base / "checkpoint_manager_snapshot.json").write_text("{}")
    return run, ids, labels, nb


def test_report_of_a_partial_run(tmp_path, cohort):
    from wsiscale.report import write_report

    run, ids, labels, nb = _partial_run(tmp_path, cohort)
    got = write_report(str(run), slides=3, queries=2, k=2, thumb_size=128)
    assert got["out"] == (run / "report.html").as_uri() and got["failures"] == 1
    page = Page((run / "report.html").read_text())
    assert {"stages", "failures", "training", "evaluation", "slides", "retrieval", "heatmaps"} <= set(page.ids)
    rows = {r[0]: r for r in page.rows if len(r) == 7}  # the stages table
    assert rows["tile"][1:] == ["done", "20", "6", "1", "500", "20.0 tiles/s"]
    assert rows["embed"][1].startswith("failed") and "no weights for <vit>" in rows["embed"][1]  # escaped, shown
    assert ["tile", "broken-7", "file:///archive/broken-7.svs", "CorruptSlideError",
                             "file:///archive/broken-7.svs: truncated TIFF"] in page.rows
    # gallery: 3 slides x (thumbnail + tissue mask); no slide index prototypes, so no prototype map
    # retrieval: 2 queries x (query + 2 neighbours)
    assert got["images"] == len(page.images) == 3 * 2 + 2 * 3
    thumb, tissue = page.images[0][1], page.images[1][1]
    assert max(thumb.shape[:2]) == 128 and thumb.shape == tissue.shape
    assert (thumb != tissue).any() and (thumb == tissue).any()  # tissue tinted, glass left as it is
    label = dict(zip(ids, labels))
    framed = [a.get("class", "") for a, _ in page.images[6:]]
    expect = []
    for q in sorted(ids)[:2]:
        i = ids.index(q)
        expect += [""] + ["hit" if label[n] == label[q] else "miss" for n in nb[i]]
    assert framed == expect
    curves = {p["data-series"]: p["points"].split() for p in page.polylines}
    assert set(curves) == {"loss", "dino_loss", "lr"} and len(curves["loss"]) == 3  # the newest checkpoint
    assert "SLPD loss per step" in (run / "report.html").read_text()


def test_report_cli_and_not_a_run(tmp_path, cohort, capsys):
    from wsiscale.cli import main

    run, *_ = _partial_run(tmp_path, cohort)
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run), "--out", str(out), "--slides", "1", "--queries", "0"]) == 0
    assert len(Page(out.read_text()).images) == 2
    said = capsys.readouterr()
    assert re.search(r"2\s+images", said.out + said.err)
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    said = capsys.readouterr()
    assert "jobs/pipeline.py" in (said.out + said.err).replace("\n", "")


def test_report_renders_in_headless_chromium(tmp_path, cohort):
    """A real browser (Chromium inside Qt WebEngine, offscreen) loads the report, decodes every image and lays
    out every chart; the screenshot shows the first slide thumbnail, pixel for pixel, where the browser put it."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from wsiscale.report import write_report

    run, *_ = _partial_run(tmp_path, cohort)
    write_report(str(run), slides=2, queries=1, k=2, thumb_size=128)
    shot, layout_file = tmp_path / "shot.png", tmp_path / "layout.json"
    script = Path(__file__).with_name("browser_shot.py")
    done = subprocess.run([sys.executable, str(script), str(run / "report.html"), str(shot), str(layout_file)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.exists(), done.stderr[-3000:]
    layout = json.loads(layout_file.read_text())
    assert layout["title"].startswith("wsiscale report")
    page = Page((run / "report.html").read_text())
    assert len(layout["images"]) == len(page.images) == 2 * 2 + 1 * 3
    for seen, (_, decoded) in zip(layout["images"], page.images):  # the browser decoded each image at its size
        assert seen["complete"] and seen["natural"] == [decoded.shape[1], decoded.shape[0]], seen
    assert {p["series"] for p in layout["polylines"]} == {"loss", "dino_loss", "lr"}
    assert all(p["box"][2] > 50 for p in layout["polylines"])  # drawn across the chart
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= layout["height"] - 1 and img.shape[1] == 1280
    x, y, w, h = (int(round(v)) for v in layout["images"][0]["box"])
    thumb = page.images[0][1]
    inner = img[y + 1 : y + 1 + thumb.shape[0], x + 1 : x + 1 + thumb.shape[1]].astype(int)  # inside the 1 px border
    assert np.abs(inner - thumb.astype(int)).mean() < 2.0
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # text, tables, charts and images, not a blank page
