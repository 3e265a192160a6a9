"""A Giga-SSL cohort from the synthetic generator's layouts, as an *augmented* tiles-mode embedding run.

Each slide is :func:`wsiscale.synth.layout.make_layout` with its label's tissue mix (labels 1 and 2,
glandular vs solid tumour: a subtyping task like LUAD vs LUSC) on a grid of cells, one cell per tile.
A tile's embedding stands in for a frozen encoder: a fixed (seeded) vector per tissue class plus noise,
plus the two things tile-level augmentation is about in real archives:

* a per-slide *stain/scanner* shift ``s`` (shared by all the slide's tiles) in a ``stain_dims``
  subspace - the slide-to-slide variation that dominates mean-pooled features;
* ``augmentations`` slide-shared augmentations ``a_k`` in the same subspace (what
  ``embed.augmentations`` computes by embedding colour/stain-jittered tiles): augmented copy ``k``
  of a tile is its embedding plus ``a_k`` plus a little per-tile noise.

:func:`write_gigassl_cohort` writes the run with the project's writers (``embeddings.parquet`` and
``augmented/<slide>.parquet``, done records, ``slides.parquet``) and a labels table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsiscale.synth.layout import LayoutParams, make_layout
from wsiscale.synth.textures import N_CLASSES


@dataclass
class GigaSSLCohortSpec:
    slides_per_label: int = 60
    cells: int = 24  # slide side in cells (tiles)
    cell_px: int = 256
    mpp: float = 0.5
    dim: int = 32
    class_scale: float = 1.0  # norm of a tissue class vector / (noise per dimension * sqrt(dim))
    tumour_similarity: float = 0.8  # cosine of the two tumour classes' vectors
    noise: float = 1.0
    stain_dims: int = 12
    stain_scale: float = 2.0  # per-slide stain shift, per dimension of the stain subspace
    augment_scale: float = 2.0  # per augmentation shift, per dimension of the stain subspace
    augment_noise: float = 0.3
    augmentations: int = 8
    labels: tuple[int, int] = (1, 2)
    layout: LayoutParams = field(default_factory=lambda: LayoutParams(dust=False, region_um=600.0))


def _class_vectors(rng: np.random.Generator, spec: GigaSSLCohortSpec, basis: np.ndarray) -> np.ndarray:
    d = spec.dim
    v = rng.normal(size=(N_CLASSES, d)) @ basis.T @ basis  # tissue signal outside the stain subspace
    v *= spec.class_scale * np.sqrt(d) / np.linalg.norm(v, axis=1, keepdims=True)
    a, b = v[6], v[7]  # the two tumour classes: similar vectors
    b = b - (b @ a) / (a @ a) * a
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    v[7] = spec.tumour_similarity * a + np.sqrt(1 - spec.tumour_similarity ** 2) * b
    return v


def write_gigassl_cohort(root: Path, spec: GigaSSLCohortSpec, seed: int) -> tuple[str, str]:
    """Write the cohort under ``root``; returns ``(embedding run URI, labels table path)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.embedding import _tile_table, augmented_bytes, augmented_uri, embed_state
    from wsiscale.runs.state import safe_name
    from wsiscale.io.uri import join_uri, write_bytes_atomic

    rng = np.random.default_rng((seed, 777))
    d = spec.dim
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    stain_basis, tissue_basis = q[:, :spec.stain_dims].T, q[:, spec.stain_dims:].T  # [u, d], [d - u, d]
    vecs = _class_vectors(rng, spec, tissue_basis)
    run = (root / "embeddings").as_uri()
    cfg = WsiscaleConfig()
    cfg.embed.augmentations = spec.augmentations
    state = embed_state(run, cfg)
    rows = []
    for n in range(spec.slides_per_label * 2):
        label = spec.labels[n % 2]
        sid = f"ssl-{n:03d}"
        srng = np.random.default_rng((seed, n, 1))
        side = spec.cells * spec.cell_px
        lay = make_layout(srng, side, side, spec.mpp, label, spec.layout, cell_px=spec.cell_px)
        rr, cc = np.nonzero(lay.tissue)
        classes = lay.classes[rr, cc].astype(np.int64)
        stain = (srng.normal(size=spec.stain_dims) * spec.stain_scale) @ stain_basis
        x = vecs[classes] + stain + spec.noise * srng.normal(size=(len(classes), d))
        augs = srng.normal(size=(spec.augmentations, spec.stain_dims)) * spec.augment_scale @ stain_basis  # [K, d]
        aug = (x[:, None, :] + augs[None] + spec.augment_noise * srng.normal(size=(len(classes), spec.augmentations, d)))
        merged = pa.table({
            "x": pa.array(cc * spec.cell_px, pa.int64()), "y": pa.array(rr * spec.cell_px, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), d),
            "augmented": pa.FixedSizeListArray.from_arrays(pa.array(aug.astype(np.float16).ravel()),
                                                           spec.augmentations * d)})
        name = safe_name(sid)
        emb_uri = join_uri(state.slide_dir(name), "embeddings.parquet")
        sink = pa.BufferOutputStream()
        pq.write_table(_tile_table(sid, merged, d, pa.float16()), sink)
        write_bytes_atomic(emb_uri, sink.getvalue().to_pybytes())
        aug_uri = augmented_uri(state, name)
        write_bytes_atomic(aug_uri, augmented_bytes(merged, spec.augmentations, d))
        state.write_done(name, {"status": "done", "slide_id": sid, "name": name, "tiles": len(classes), "dim": d,
                                "mode": "tiles", "mpp": spec.mpp, "tile_size": spec.cell_px, "encoder": "synthetic",
                                "shards": [{"path": state.relative(emb_uri), "rows": len(classes), "bytes": None}],
                                "augmented": state.relative(aug_uri), "augmentations": spec.augmentations})
        rows.append({"slide_id": sid, "label": label})
    state.consolidate()
    labels = root / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(rows), labels)
    return run, str(labels)
