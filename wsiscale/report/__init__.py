"""A run report: one self-contained HTML page of a pipeline run's figures (``wsiscale report RUN_DIR``).

* :mod:`~wsiscale.report.collect` - what the run wrote: stage summaries, failures, training history,
  neighbours, per-slide prototypes and tile embeddings (only for the slides shown);
* :mod:`~wsiscale.report.figures` - inline SVG line charts and PNG images (thumbnails, tissue masks,
  prototype maps) as data URIs;
* :mod:`~wsiscale.report.page` - the HTML page and :func:`write_report`.
"""

from wsiscale.report.page import write_report

__all__ = ["write_report"]
