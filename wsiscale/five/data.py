"""FiVE's slides: a tiles-mode embedding run paired with a manifest's reports and class names.

The driver reads the run's ``slides.parquet`` and the manifest (``slide_id``,
``five.report_column``, ``five.label_column``), turns every report into
fields with the configured extractor (:mod:`wsiscale.five.extract`) and
ships small specs (URIs, numbers, field strings) to the Ray Train workers,
which read the features slide by slide (:class:`wsiscale.data.bags.BagStore`).
A slide without a report is kept for evaluation but never trained on; a
slide without embeddings is left out with a warning.

Step texts (:func:`step_texts`) implement FiVE's text augmentation the way the
reference does: one random set of fields is dropped for the whole step (their
queries too, so the model learns to describe any subset), and each slide's
remaining fields are shuffled.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsiscale.config import ConfigError, FiveConfig, WsiscaleConfig
from wsiscale.data.bags import BagSpec

log = logging.getLogger(__name__)


@dataclass
class FiveSlide:
    """A slide for FiVE: its bag (``label`` = class index, -1 if unlabelled) and report fields."""

    bag: BagSpec
    fields: dict[str, str | None] = field(default_factory=dict)

    @property
    def has_report(self) -> bool:
        return any(v for v in self.fields.values())


def seed_of(*parts: int) -> int:
    return zlib.crc32(np.asarray(parts, np.int64).tobytes())


def field_question(name: str) -> str:
    """The text of a field's TFS query (FiVE's "questions")."""
    return f"What is the {name}?"


def field_text(fields: dict[str, str | None], order: list[str]) -> str:
    """``"field: value; field: value"`` over ``order`` (fields without a value are skipped)."""
    return "; ".join(f"{k}: {fields[k]}" for k in order if fields.get(k))


def step_texts(slides_fields: list[dict[str, str | None]], names: list[str], seed: int, step: int, drop: bool,
               shuffle: bool) -> tuple[list[str], list[str]]:
    """``(kept field names, one text per slide)`` for a training step (deterministic in ``seed, step``).

    Drops ``U{0 .. F-1}`` of the ``F`` fields for the whole step (never all), then shuffles each
    slide's kept fields. A slide none of whose kept fields is stated falls back to all its fields.
    """
    rng = np.random.default_rng(seed_of(seed, step, 17))
    kept = list(names)
    if drop and len(names) > 1:
        n_drop = int(rng.integers(0, len(names)))
        dropped = set(rng.choice(len(names), size=n_drop, replace=False).tolist())
        kept = [f for i, f in enumerate(names) if i not in dropped]
    texts = []
    for fields in slides_fields:
        present = [f for f in kept if fields.get(f)] or [f for f in names if fields.get(f)]
        order = [present[i] for i in rng.permutation(len(present))] if shuffle else present
        texts.append(field_text(fields, order))
    return kept, texts


def class_descriptions(five: FiveConfig, class_names: list[str]) -> list[str]:
    """One description per class (config, else the built-in ones for generated cohorts)."""
    from wsiscale.five.prompts import SYNTHETIC_CLASS_DESCRIPTIONS

    given = dict(five.class_descriptions) or SYNTHETIC_CLASS_DESCRIPTIONS
    missing = [c for c in class_names if c not in given]
    if missing:
        raise ConfigError(f"no class description for {missing}: set five.class_descriptions, e.g. "
                          f"--set 'five.class_descriptions={{\"{missing[0]}\": \"tissue type: ...; growth pattern: "
                          "...\"}}'")
    return [given[c] for c in class_names]


def five_slides(cfg: WsiscaleConfig, embeddings: str, manifest: str) -> tuple[list[FiveSlide], list[str], int]:
    """``(slides, class names, tile feature dim)`` of ``embeddings`` with the reports/labels of ``manifest``."""
    from wsiscale.five.extract import build_extractor
    from wsiscale.io.manifest import read_table
    from wsiscale.runs.embedding_run import EmbeddingRun

    five = cfg.five
    run = EmbeddingRun(embeddings, cfg.storage)
    table = read_table(manifest, cfg.storage, "manifest", string_columns=(five.label_column, "slide_id"))
    for col in ("slide_id", five.report_column, five.label_column):
        if col not in table.column_names:
            raise ConfigError(f"manifest {manifest} has no {col!r} column (columns: {table.column_names}); set "
                              "five.report_column / five.label_column")
    rows = {str(r["slide_id"]): r for r in table.to_pylist()}
    names = sorted({str(r[five.label_column]) for r in rows.values() if r[five.label_column] not in (None, "")})
    index = {n: i for i, n in enumerate(names)}
    slides = run.slides(mode="tiles", user="FiVE")
    picked, missing = [], 0
    for slide in slides:
        row = rows.get(slide.slide_id)
        if row is None:
            missing += 1
            continue
        label = row.get(five.label_column)
        name = "" if label in (None, "") else str(label)
        bag = BagSpec(slide.slide_id, index.get(name, -1), name, slide.files, slide.tiles, slide.uri or row.get("uri"))
        picked.append((bag, row.get(five.report_column) or ""))
    if missing:
        log.warning("%d slides of %s are not in %s; left out", missing, run.uri, manifest)
    if not picked:
        raise ConfigError(f"no slide of {run.uri} is in {manifest} (matched by slide_id)")
    extracted = build_extractor(five).extract_many([r for _, r in picked])
    five_slides = [FiveSlide(bag, {k: v for k, v in f.items() if k in five.fields}) for (bag, _), f in
                   zip(picked, extracted)]
    return five_slides, names, run.dim(slides)


def to_config(slides: list[FiveSlide]) -> list[dict[str, Any]]:
    """Specs as plain dicts (what ``train_loop_config`` carries)."""
    import dataclasses

    return [{"bag": dataclasses.asdict(s.bag), "fields": s.fields} for s in slides]


def from_config(items: list[dict[str, Any]]) -> list[FiveSlide]:
    return [FiveSlide(BagSpec(**d["bag"]), dict(d["fields"])) for d in items]
