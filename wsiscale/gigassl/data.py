"""Giga-SSL training data: an embedding run's augmented tile embeddings as a Ray Dataset of view pairs.

``wsiscale embed --set embed.augmentations=N`` writes, per slide,
``embeddings.parquet`` (``x, y, embedding``) and ``augmented/<slide>.parquet`` (row
group ``k`` = the slide's tiles under augmentation ``k``, float16). Each epoch
a Ray Data task per block of slides reads, for every slide, two random row
groups and draws one view from each (:mod:`wsiscale.gigassl.views`); the
rows - ``slide``, ``tiles_a/b [T, D]``, ``rows_a/b``, ``cols_a/b [T]`` -
reach the training workers through ``get_dataset_shard``. A read touches
``2 T``-tile views' row groups only, never the archive on the driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SlideEntry:
    """One slide of an augmented embedding run."""

    slide: int  # index in the run's slides.parquet order
    slide_id: str
    embeddings: str  # URI of embeddings.parquet (x, y, un-augmented embedding)
    augmented: str  # URI of <run>/augmented/<slide>.parquet (row group k = augmentation k)
    tiles: int
    augmentations: int


def _tile_slides(run: str, storage: Any, hint: str) -> tuple[Any, list[Any]]:
    """``(run, its slides with tiles)`` of a tiles-mode embedding run."""
    from wsiscale.config import ConfigError
    from wsiscale.runs.embedding_run import EmbeddingRun

    try:
        opened = EmbeddingRun(run, storage)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}: {hint}") from None
    slides = opened.slides(mode="tiles", user="Giga-SSL")
    if not slides:
        raise ConfigError(f"{opened.uri} holds no slide with tiles")
    return opened, slides


def gigassl_slides(run: str, storage: Any = None) -> tuple[list[SlideEntry], int]:
    """The completed slides of an augmented tiles-mode embedding run and the embedding dimension."""
    from wsiscale.config import ConfigError

    opened, slides = _tile_slides(run, storage, "run `wsiscale embed --set embed.augmentations=25` first "
                                                "(Giga-SSL trains on augmented tile embeddings)")
    missing = [s.slide_id for s in slides if not s.record.get("augmented")]
    if missing:
        raise ConfigError(f"{opened.uri}: {len(missing)} slides (e.g. {missing[0]}) have no augmented embeddings: "
                          "embed the run with embed.augmentations > 0 (a new run directory)")
    entries = [SlideEntry(i, s.slide_id, s.files[0], opened.absolute(s.record["augmented"]), s.tiles,
                          int(s.record["augmentations"])) for i, s in enumerate(slides)]
    return entries, opened.dim(slides)


def embedding_entries(run: str, storage: Any = None) -> list[dict[str, Any]]:
    """``[{slide_id, embeddings, source}]`` of a tiles-mode run's slides with tiles (augmented or not)."""
    _, slides = _tile_slides(run, storage, "give a `wsiscale embed` run directory")
    return [{"slide_id": s.slide_id, "embeddings": s.files[0], "source": s.uri} for s in slides]


def read_positions(uri: str, storage: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` lattice positions of a slide's tiles (from ``embeddings.parquet``'s corners)."""
    from wsiscale.gigassl.views import grid_positions
    from wsiscale.runs.shards import read_parquet

    t = read_parquet(uri, storage, ["x", "y"])
    return grid_positions(t.column("x").to_numpy(), t.column("y").to_numpy())


def read_tiles(uri: str, storage: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A slide's un-augmented tile embeddings ``[n, D]`` float32 and their ``(rows, cols)``, in one read."""
    from wsiscale.gigassl.views import grid_positions
    from wsiscale.runs.shards import read_parquet

    t = read_parquet(uri, storage, ["x", "y", "embedding"])
    col = t.column("embedding").combine_chunks()
    feats = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)
    return (feats, *grid_positions(t.column("x").to_numpy(), t.column("y").to_numpy()))


def read_augmentations(uri: str, ks: list[int], storage: Any = None) -> list[np.ndarray]:
    """Augmentations ``ks`` of a slide, each ``[n, D]`` float32: row groups of ``augmented/<slide>.parquet``.

    A local file is read row group by row group. A remote one is fetched once and parsed from memory
    (pyarrow on a Python file object can abort the interpreter at exit: apache/arrow#33975).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.io.uri import filesystem, is_local, local_path

    if is_local(uri):
        f = pq.ParquetFile(local_path(uri))
    else:
        fs, path = filesystem(uri, storage)
        with fs.open(path, "rb") as fh:
            f = pq.ParquetFile(pa.BufferReader(fh.read()))
    out = []
    for k in ks:
        col = f.read_row_group(int(k)).column("embedding").combine_chunks()
        out.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1))
    return out


def read_augmentation(uri: str, k: int, storage: Any = None) -> np.ndarray:
    """Augmentation ``k`` of a slide, ``[n, D]`` float32 (:func:`read_augmentations`)."""
    return read_augmentations(uri, [k], storage)[0]


def _read_pairs(batch: dict[str, np.ndarray], gigassl: dict[str, Any], storage: Any) -> dict[str, np.ndarray]:
    from wsiscale.config import GigaSSLConfig
    from wsiscale.gigassl.views import jitter_positions, sample_view

    g = GigaSSLConfig.model_validate(gigassl)
    rng = np.random.default_rng()  # fresh views every epoch (the dataset is re-executed per epoch)
    out: dict[str, list] = {k: [] for k in ("slide", "tiles_a", "rows_a", "cols_a", "tiles_b", "rows_b", "cols_b")}
    for i in range(len(batch["slide"])):
        entry = {k: batch[k][i] for k in batch}
        rows, cols = read_positions(str(entry["embeddings"]), storage)
        views = [sample_view(int(entry["tiles"]), g.tiles_per_view, int(entry["augmentations"]), rng)
                 for _ in range(2)]
        feats = read_augmentations(str(entry["augmented"]), [k for k, _ in views], storage)
        for tag, (_, idx), f in zip(("a", "b"), views, feats):
            r, c = jitter_positions(rows[idx], cols[idx], rng, g.flip, g.rotate, g.scale)
            out[f"tiles_{tag}"].append(f[idx])
            out[f"rows_{tag}"].append(r)
            out[f"cols_{tag}"].append(c)
        out["slide"].append(int(entry["slide"]))
    return {k: np.stack(v) for k, v in out.items()}


def pair_dataset(entries: list[SlideEntry], g: Any, storage: Any = None, slides_per_task: int = 8):
    """A Ray Dataset with one row of two views per slide (re-drawn each time it is iterated).

    Blocks of ``slides_per_task`` slides are visited in a random order every epoch; the training
    workers shuffle rows further in a local buffer (a global all-to-all shuffle of the slide list
    would cost more than the epoch itself on small cohorts).
    """
    import ray

    items = [asdict(e) for e in entries]
    blocks = max(1, len(items) // max(1, slides_per_task))
    ds = ray.data.from_items(items, override_num_blocks=blocks).randomize_block_order()  # + a local shuffle buffer
    from wsiscale.train.scaling import READ_TASK_CPUS

    return ds.map_batches(_read_pairs, batch_size=slides_per_task, num_cpus=READ_TASK_CPUS,
                          fn_kwargs={"gigassl": g.model_dump(mode="json"), "storage": storage})
