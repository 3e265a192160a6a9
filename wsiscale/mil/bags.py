"""Bags for MIL: each slide of a tiles-mode embedding run with its label (and instance labels).

The driver builds one :class:`BagSpec` per labelled slide from the run's
``slides.parquet`` and a labels table (a manifest, CSV or Parquet with
``slide_id`` and the label column; a generated cohort's manifest also has
``truth_uri`` and ``mpp``, which give tile-level tumour labels). Specs are
small (URIs and numbers): the features themselves are read by the Ray Train
workers, slide by slide, through :class:`wsiscale.data.bags.BagStore` (an LRU cache bounded in
bytes), so no process ever holds the whole archive. A slide whose embeddings
cannot be read, or hold NaN/inf, is skipped with a warning naming its URI.
"""

from __future__ import annotations

import logging
from typing import Any

from wsiscale.config import ConfigError
from wsiscale.data.bags import BagSpec

log = logging.getLogger(__name__)


def _positive_names(values: list[str], positive: list[str], column: str, uri: str) -> set[str]:
    distinct = sorted(set(values), key=lambda v: (_as_number(v) is None, _as_number(v) or 0.0, v))
    if positive:
        unknown = set(positive) - set(values)
        if unknown:
            log.warning("mil.positive_labels %s do not occur in %s", sorted(unknown), uri)
        chosen = set(positive) & set(values)
        if not chosen or chosen == set(values):
            raise ConfigError(f"mil.positive_labels={positive} leaves {uri} with one class; labels there are "
                              f"{distinct}")
        return chosen
    if len(distinct) != 2:
        raise ConfigError(f"column {column!r} of {uri} has {len(distinct)} distinct labels {distinct[:10]}: MIL here is "
                          "binary; set mil.positive_labels to the labels that count as positive")
    return {distinct[1]}


def _as_number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def bag_specs(cfg: Any, embeddings: str, labels: str) -> tuple[list[BagSpec], int]:
    """``(specs, dim)``: the labelled slides of tiles-mode embedding run ``embeddings`` in run order."""
    from wsiscale.io.manifest import read_table
    from wsiscale.runs.embedding_run import EmbeddingRun

    mil, storage = cfg.mil, cfg.storage
    run = EmbeddingRun(embeddings, storage)
    table = read_table(labels, storage, "labels table", string_columns=(mil.label_column, "slide_id"))
    for col in ("slide_id", mil.label_column):
        if col not in table.column_names:
            raise ConfigError(f"labels table {labels} has no {col!r} column (columns: {table.column_names}); set "
                              "mil.label_column")
    rows = table.to_pylist()
    names = [str(r[mil.label_column]) for r in rows if r[mil.label_column] is not None]
    positive = _positive_names(names, list(mil.positive_labels), mil.label_column, labels)
    by_id = {str(r["slide_id"]): r for r in rows if r[mil.label_column] is not None}
    specs, missing = [], 0
    slides = run.slides(mode="tiles", user="MIL")
    for slide in slides:
        row = by_id.get(slide.slide_id)
        if row is None:
            missing += 1
            continue
        name = str(row[mil.label_column])
        specs.append(BagSpec(slide.slide_id, int(name in positive), name, slide.files, slide.tiles,
                             slide.uri or row.get("uri"), slide.extent_at(row.get("mpp")), row.get("truth_uri")))
    if missing:
        log.warning("%d slides of %s have no label in %s; left out", missing, run.uri, labels)
    if not specs:
        raise ConfigError(f"no slide of {run.uri} has a label in {labels} (matched by slide_id)")
    return specs, run.dim(slides)
