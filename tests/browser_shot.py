"""Render an HTML file in a real headless Chromium (Qt WebEngine, offscreen) and take a screenshot.

    python tests/browser_shot.py PAGE.html SHOT.png LAYOUT.json

After the page has loaded, the browser reports its layout (every ``<img>``: whether it decoded, its
natural size and its box on the page; every SVG ``<polyline>``'s box; the page height); the window
is resized to the whole page and grabbed. Used by ``tests/test_report.py``; run in its own process
(a Qt application per process, no Ray in it).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")  # root in CI containers
os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--disable-gpu --no-sandbox")

LAYOUT_JS = """
(() => {
  const box = e => { const r = e.getBoundingClientRect();
                     return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; };
  return JSON.stringify({
    height: document.documentElement.scrollHeight,
    width: document.documentElement.scrollWidth,
    images: Array.from(document.images).map(i => ({complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
                                                  box: box(i), alt: i.alt})),
    polylines: Array.from(document.querySelectorAll('polyline')).map(p => ({series: p.dataset.series, box: box(p)})),
    title: document.title});
})()
"""


def main(page: str, shot: str, layout_out: str, width: int = 1280) -> int:
    from PyQt6.QtCore import QSize, QTimer, QUrl
    from PyQt6.QtWebEngineWidgets import QWebEngineView
    from PyQt6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    view = QWebEngineView()
    view.resize(QSize(width, 800))
    state: dict = {"rc": 1}

    def grab() -> None:
        img = view.grab()
        state["rc"] = 0 if img.save(shot) else 1
        app.quit()

    def measured(result: str) -> None:
        layout = json.loads(result)
        with open(layout_out, "w") as fh:
            json.dump(layout, fh)
        view.resize(QSize(width, int(layout["height"])))  # the whole page in one screenshot
        QTimer.singleShot(1500, grab)

    def loaded(ok: bool) -> None:
        if not ok:
            app.quit()
            return
        QTimer.singleShot(500, lambda: view.page().runJavaScript(LAYOUT_JS, 0, measured))

    view.loadFinished.connect(loaded)
    view.load(QUrl.fromLocalFile(os.path.abspath(page)))
    view.show()
    QTimer.singleShot(90_000, app.quit)  # never hang a test run
    app.exec()
    return state["rc"]


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
