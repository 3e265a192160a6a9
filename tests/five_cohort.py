"""A FiVE cohort from the synthetic generator's layouts and reports, as a tiles-mode embedding run.

Each slide is :func:`wsiscale.synth.layout.make_layout` (three labels: normal,
glandular and solid tumour; the tissue mix depends on the label) on a grid of
cells, one cell per tile. Its report is the generator's
(:func:`wsiscale.synth.report.write_report`: free text whose fields follow the
slide's tissue). A tile's embedding stands in for a frozen patch encoder: a
fixed (seeded) vector per tissue class, plus isotropic noise, plus a per-slide
offset (``site_shift``: scanner/stain batch effects) shared by all of a
slide's tiles - the nuisance that makes a linear probe on mean-pooled tiles
need many labelled slides.

:func:`write_five_cohort` writes the run with the project's writers and a
manifest (``slide_id, label, label_name, report``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsiscale.synth.layout import SLIDE_LABELS, LayoutParams, make_layout
from wsiscale.synth.report import write_report
from wsiscale.synth.textures import N_CLASSES


@dataclass
class FiveCohortSpec:
    slides_per_label: int = 30
    cells: int = 20
    cell_px: int = 256
    mpp: float = 0.5
    dim: int = 32
    class_scale: float = 1.0
    noise: float = 1.0
    site_shift: float = 1.5  # norm of the per-slide offset relative to a class vector's
    layout: LayoutParams = field(default_factory=lambda: LayoutParams(dust=False, region_um=500.0))


def write_five_cohort(root: Path, spec: FiveCohortSpec, seed: int, vector_seed: int = 0,
                      prefix: str = "five") -> tuple[str, str]:
    """Write the cohort under ``root``; returns ``(embedding run URI, manifest path)``.

    ``vector_seed`` fixes the tissue-class vectors (the "patch encoder"): cohorts that share it
    are different slides seen through the same encoder.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.embedding import _tile_table, embed_state
    from wsiscale.runs.state import safe_name
    from wsiscale.io.uri import join_uri, write_bytes_atomic

    d = spec.dim
    vrng = np.random.default_rng((vector_seed, 777))
    vecs = vrng.normal(size=(N_CLASSES, d))
    vecs *= spec.class_scale * np.sqrt(d) / np.linalg.norm(vecs, axis=1, keepdims=True)
    run = (root / "embeddings").as_uri()
    state = embed_state(run, WsiscaleConfig())
    rows = []
    labels = sorted(SLIDE_LABELS)
    for n in range(spec.slides_per_label * len(labels)):
        label = labels[n % len(labels)]
        sid = f"{prefix}-{n:03d}"
        srng = np.random.default_rng((seed, n))
        side = spec.cells * spec.cell_px
        lay = make_layout(srng, side, side, spec.mpp, label, spec.layout, cell_px=spec.cell_px)
        rr, cc = np.nonzero(lay.tissue)
        classes = lay.classes[rr, cc].astype(np.int64)
        shift = srng.normal(size=d)
        shift *= spec.site_shift * spec.class_scale * np.sqrt(d) / np.linalg.norm(shift)
        x = vecs[classes] + shift + spec.noise * srng.normal(size=(len(classes), d))
        merged = pa.table({"x": pa.array(cc * spec.cell_px, pa.int64()), "y": pa.array(rr * spec.cell_px, pa.int64()),
                           "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), d)})
        table = _tile_table(sid, merged, d, pa.float32())
        name = safe_name(sid)
        uri = join_uri(state.slide_dir(name), "embeddings.parquet")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_bytes_atomic(uri, sink.getvalue().to_pybytes())
        state.write_done(name, {"status": "done", "slide_id": sid, "name": name, "tiles": table.num_rows, "dim": d,
                                "mode": "tiles", "mpp": spec.mpp, "tile_size": spec.cell_px, "encoder": "synthetic",
                                "shards": [{"path": state.relative(uri), "rows": table.num_rows, "bytes": None}]})
        report = write_report(lay.class_fractions(), label, srng)
        rows.append({"slide_id": sid, "label": label, "label_name": SLIDE_LABELS[label][0], "report": report})
    state.consolidate()
    manifest = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return run, str(manifest)
