"""A CAMELYON-like MIL cohort from the synthetic generator's layouts, as a tiles-mode embedding run.

Each slide is :func:`wsiscale.synth.layout.make_layout` with ``shared_mix=True`` (negative and
positive slides share the tissue mix, so only tumour tells them apart) on a grid of cells, one
cell per tile (``cell_px`` level-0 pixels). Positive slides (label 1) hold small tumour regions
(``tumour_fraction``, 1-10 % of the tissue by default). A tile's embedding stands in for a frozen
patch encoder: a fixed (seeded) vector per tissue class plus isotropic noise. Tumour tiles come in
two variants: a *salient* one (large norm) and a *subtle* one (``subtle`` times the salient norm),
so an attention pool can classify the bag from the salient tiles alone while instance labels need
both - the situation WENO's hard positive mining is for.

:func:`write_mil_cohort` writes the run with the project's writers (``slides.parquet`` records with
``mpp`` and ``tile_size``), each slide's ground truth as the generator does (``.truth.npz`` with the
``tumour`` mask on the cell grid) and a manifest (``slide_id, label, mpp, truth_uri``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsiscale.synth.layout import LayoutParams, make_layout
from wsiscale.synth.textures import N_CLASSES, TUMOUR_CLASSES


@dataclass
class MilCohortSpec:
    slides_per_label: int = 20
    cells: int = 28  # slide side in cells (tiles)
    cell_px: int = 256
    mpp: float = 0.5
    dim: int = 32
    class_scale: float = 1.2  # norm of a tissue class vector relative to the noise per dimension (x sqrt(dim))
    tumour_scale: float = 1.2
    subtle: float = 0.45  # subtle tumour tiles' vector norm relative to the salient ones
    salient_share: float = 0.3  # share of tumour tiles that are salient
    noise: float = 1.0
    layout: LayoutParams = field(default_factory=lambda: LayoutParams(
        shared_mix=True, dust=False, tumour_fraction=(0.01, 0.10), region_um=600.0))


def write_mil_cohort(root: Path, spec: MilCohortSpec, seed: int) -> tuple[str, str, dict]:
    """Write the cohort under ``root``; returns ``(embedding run URI, manifest path, stats)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.embedding import _tile_table, embed_state
    from wsiscale.runs.state import safe_name
    from wsiscale.io.uri import join_uri, write_bytes_atomic

    rng = np.random.default_rng((seed, 4242))
    d = spec.dim
    vecs = rng.normal(size=(N_CLASSES, d))
    vecs *= spec.class_scale * np.sqrt(d) / np.linalg.norm(vecs, axis=1, keepdims=True)
    salient = rng.normal(size=d)
    salient *= spec.tumour_scale * np.sqrt(d) / np.linalg.norm(salient)
    subtle = rng.normal(size=d)
    subtle *= spec.subtle * spec.tumour_scale * np.sqrt(d) / np.linalg.norm(subtle)
    run = (root / "embeddings").as_uri()
    state = embed_state(run, WsiscaleConfig())
    rows, tumour_share = [], []
    root.joinpath("truth").mkdir(parents=True, exist_ok=True)
    for n in range(spec.slides_per_label * 2):
        label = n % 2
        sid = f"mil-{n:03d}"
        srng = np.random.default_rng((seed, n))
        side = spec.cells * spec.cell_px
        lay = make_layout(srng, side, side, spec.mpp, label, spec.layout, cell_px=spec.cell_px)
        rr, cc = np.nonzero(lay.tissue)
        classes = lay.classes[rr, cc].astype(np.int64)
        tumour = np.isin(classes, TUMOUR_CLASSES)
        base = np.where(tumour[:, None], 0.0, vecs[np.where(tumour, 1, classes)])  # tumour tiles: stroma-free
        is_salient = srng.uniform(size=len(classes)) < spec.salient_share
        tum = np.where(is_salient[:, None], salient, subtle)
        x = base + tumour[:, None] * (tum + vecs[1] * 0.5) + spec.noise * srng.normal(size=(len(classes), d))
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
        truth = root / "truth" / f"{sid}.truth.npz"
        np.savez_compressed(truth, tissue=lay.tissue, classes=lay.classes, tumour=lay.tumour,
                            cell_px=np.int64(spec.cell_px))
        rows.append({"slide_id": sid, "label": label, "mpp": spec.mpp, "truth_uri": truth.resolve().as_uri()})
        if label:
            tumour_share.append(float(tumour.mean()))
    state.consolidate()
    manifest = root / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return run, str(manifest), {"tumour_share": (min(tumour_share), max(tumour_share))}
