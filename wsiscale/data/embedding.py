"""Embed slide archives: CPU reader actors -> encoder actor pool -> one Parquet per slide (resumable).

Pipeline (``wsiscale embed``, :func:`run_embedding`)::

    slides (a tiling run's completed slides, or a manifest tiled on the fly)
      --Ray Data, one task per slide--> TileChunkUDF on CPU actors: read the
      slide's tiles (decode stored JPEG/raw pixels, or read the slide at the
      planned/stored coordinates), resize to the encoder's input size, emit
      chunks of ``embed.chunk_tiles`` uint8 tiles with their tile index
      --> EmbedUDF on the encoder pool (``num_gpus`` each on GPU nodes; AMP +
      channels_last on GPU): normalise, forward in batches of
      ``embed.batch_size``, write the chunk's embeddings as a part file
      ``parts/<name>/part-<lo>-<hi>-of-<n>.parquet``; the actor that completes a
      slide merges its parts into ``embeddings/<name>/embeddings.parquet``
      (+ optional CLAM/TRIDENT HDF5) and writes the done record.

Part names are deterministic tile-index ranges, so a retried chunk rewrites
the same file and merging drops duplicate tile indices: nothing is lost or
duplicated. Slides whose parts were complete but not merged (two actors
racing on the last chunks, an interrupted run) are merged by the driver at
the end. A rerun skips slides with a done record.

Regions mode (SLPD/HIPT): each ``embed.region_size`` px region at
``tiling.mpp`` is read as a ``region_grid`` x ``region_grid`` grid of
patches; the slide's output has one row per region with the patch
embeddings as ``[D, grid, grid]`` (C order, flattened).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import numpy as np
import pyarrow as pa

from wsiscale.config import WsiscaleConfig
from wsiscale.data.slide_stage import StageRun, done_tiles, failure_rows, pending_slides, slide_counts, slide_stage
from wsiscale.data.tiles import decode_image
from wsiscale.data.tiling import _describe_error, _limit_threads, _manifest_blocks, _mpp_value, _now
from wsiscale.io.tiling import TilePlan, read_tile
from wsiscale.io.uri import filesystem, join_uri, normalize_uri, write_bytes_atomic
from wsiscale.models.preprocess import resize_tiles
from wsiscale.runs.config_file import save_config
from wsiscale.runs.layout import RunLayout
from wsiscale.runs.shards import list_names, parquet_bytes, read_parquet, remove_uris
from wsiscale.runs.state import RunState, safe_name

log = logging.getLogger(__name__)

PART_RE = re.compile(r"^part-(\d{9})-(\d{9})-of-(\d{9})\.parquet$")
EMBED_SLIDE_COLUMNS = {
    "slide_id": pa.string(), "name": pa.string(), "uri": pa.string(), "tiles": pa.int64(), "regions": pa.int64(),
    "dim": pa.int32(), "encoder": pa.string(), "dtype": pa.string(), "mode": pa.string(), "mpp": pa.float64(),
    "tile_size": pa.int32(), "seconds": pa.float64(), "finished_at": pa.string(), "shards": pa.string(),
    "h5": pa.string(), "augmented": pa.string(), "augmentations": pa.int32(),
}


def embed_state(run_uri: str, cfg: WsiscaleConfig) -> RunState:
    return RunState(run_uri, cfg.storage, data_dir="embeddings", slide_columns=EMBED_SLIDE_COLUMNS)


# -- stage 1: read + preprocess on CPU actors ------------------------------------------------------


class TileChunkUDF:
    """Stage 1 (CPU actors): a slide -> chunks of resized uint8 tiles with their tile indices.

    Input rows: ``uri``, ``slide_id``, optional ``mpp``, and for a tiling-run
    source ``shards`` (JSON) and ``pixels``. Output chunks: ``slide_id``,
    ``tile_index``, ``slide_tiles``, ``x``, ``y``, ``image [n, S, S, 3]`` uint8.
    """

    def __init__(self, cfg: WsiscaleConfig, run_uri: str, input_size: int, dim: int, source_uri: str | None) -> None:
        import wsiscale  # noqa: F401 - cuCIM first

        self.cfg = cfg
        self.dim = dim
        self.state = embed_state(run_uri, cfg)
        self.size = input_size
        self.source = RunState(source_uri, cfg.storage) if source_uri else None
        _limit_threads(cfg.embed.reader_cpus)

    def _plan(self, slide) -> TilePlan:
        from wsiscale.io import detect_slide_tissue, plan_tiles
        from wsiscale.io.planning import plan_region_patches, plan_regions

        cfg = self.cfg
        tissue = detect_slide_tissue(slide, cfg.tissue)
        if cfg.embed.mode == "regions":
            return plan_region_patches(plan_regions(slide, tissue, cfg), cfg.embed.region_grid)
        return plan_tiles(slide, cfg.tiling, tissue)

    def _chunks_from_slide(self, uri: str, slide_id: str, mpp: float | None, coords: pa.Table | None):
        from wsiscale.io import open_slide

        cfg = self.cfg
        with open_slide(uri, backend=cfg.reader.backend, mpp=mpp, storage=cfg.storage,
                        cucim_timeout_s=cfg.reader.cucim_import_timeout_s) as slide:
            if coords is None:
                plan = self._plan(slide)
            else:  # coordinates of a tiling run (pixels: none)
                first = coords.slice(0, 1).to_pylist()[0] if coords.num_rows else {"level": 0, "read_size": 1, "tile_size": 1}
                plan = TilePlan(uri, cfg.tiling.mpp, int(first["tile_size"]), int(first["level"]), 0.0,
                                int(first["read_size"]), 0.0, 0.0, (0, 0), coords.column("x").to_numpy(),
                                coords.column("y").to_numpy(), coords.column("tissue").to_numpy())
            n = len(plan)
            yield n
            for lo in range(0, n, cfg.embed.chunk_tiles):
                hi = min(lo + cfg.embed.chunk_tiles, n)
                tiles = np.stack([read_tile(slide, plan, i) for i in range(lo, hi)])
                yield self._chunk(uri, slide_id, lo, hi, n, plan.x[lo:hi], plan.y[lo:hi], resize_tiles(tiles, self.size))

    def _chunks_from_shards(self, uri: str, slide_id: str, shards: list[dict], pixels: str):
        """Decode a slide's stored tiles shard by shard (memory: one shard + one chunk)."""
        n = sum(int(s["rows"]) for s in shards)
        yield n
        step, lo, pending = self.cfg.embed.chunk_tiles, 0, None
        for s in shards:
            table = read_parquet(self.source.absolute(s["path"]), self.cfg.storage, ["x", "y", "tile_size", "image"])
            pending = table if pending is None else pa.concat_tables([pending, table])
            while pending.num_rows >= step or (pending.num_rows and lo + pending.num_rows == n):
                part, pending = pending.slice(0, step), pending.slice(step)
                sizes = part.column("tile_size").to_numpy()
                tiles = np.stack([decode_image(b, pixels, int(z)) for b, z in zip(part.column("image").to_pylist(), sizes)])
                hi = lo + part.num_rows
                yield self._chunk(uri, slide_id, lo, hi, n, part.column("x").to_numpy(), part.column("y").to_numpy(),
                                  resize_tiles(tiles, self.size))
                lo = hi
        if lo != n:
            raise RuntimeError(f"{uri}: the tiling run's shards hold {lo} tiles, its record says {n}")

    @staticmethod
    def _chunk(uri, slide_id, lo, hi, n, x, y, images) -> dict[str, np.ndarray]:
        k = hi - lo
        return {"uri": np.array([uri] * k, dtype=object), "slide_id": np.array([slide_id] * k, dtype=object), "tile_index": np.arange(lo, hi, dtype=np.int32),
                "slide_tiles": np.full(k, n, np.int32), "x": np.asarray(x, np.int64), "y": np.asarray(y, np.int64),
                "image": images}

    def __call__(self, batch: dict[str, np.ndarray]):
        mpps = batch.get("mpp")
        for i, (uri, slide_id) in enumerate(zip(batch["uri"], batch["slide_id"])):
            uri, slide_id = str(uri), str(slide_id)
            name = safe_name(slide_id)
            t0 = time.perf_counter()
            try:
                if self.source is not None:
                    shards = json.loads(str(batch["shards"][i]))
                    pixels = str(batch["pixels"][i])
                    if pixels == "none":
                        coords = pa.concat_tables([read_parquet(self.source.absolute(s["path"]), self.cfg.storage)
                                                   for s in shards]) if shards else None
                        chunks = self._chunks_from_slide(uri, slide_id, None, coords)
                    else:
                        chunks = self._chunks_from_shards(uri, slide_id, shards, pixels)
                else:
                    chunks = self._chunks_from_slide(uri, slide_id, _mpp_value(mpps[i]) if mpps is not None else None, None)
                n = next(chunks)
                if n == 0:  # no tissue: complete with an empty output
                    finalize_slide(self.state, self.cfg, slide_id, uri, 0, t0, dim=self.dim)
                    continue
                yield from chunks
            except Exception as exc:  # noqa: BLE001 - one bad slide never stops the run
                message = _describe_error(exc, uri)
                log.warning("%s", message)
                self.state.write_failure(name, {"status": "failed", "slide_id": slide_id, "name": name, "uri": uri,
                                                "error_type": type(exc).__name__, "message": message,
                                                "seconds": time.perf_counter() - t0, "failed_at": _now()})


# -- stage 2: encoder actors --------------------------------------------------------------------


def _parts_dir(state: RunState, name: str) -> str:
    return join_uri(state.uri, "parts", name)


def _list_parts(state: RunState, name: str) -> list[tuple[int, int, int, str]]:
    directory = _parts_dir(state, name)
    out = []
    for n in list_names(directory, state.storage):
        m = PART_RE.match(n)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), int(m.group(3)), join_uri(directory, m.group(0))))
    return sorted(out)


def _covered(parts: list[tuple[int, int, int, str]], n: int) -> bool:
    """Do the ``[lo, hi)`` ranges cover ``[0, n)``?"""
    reach = 0
    for lo, hi, _, _ in parts:
        if lo > reach:
            return False
        reach = max(reach, hi)
    return reach >= n


def finalize_slide(state: RunState, cfg: WsiscaleConfig, slide_id: str, uri: str, n: int, t0: float | None = None,
                   dim: int | None = None) -> bool:
    """Merge a slide's parts into its output and write the done record, if all ``n`` tiles are embedded.

    Idempotent and safe to race: every caller writes the same files. Returns True if the slide is complete.
    """
    name = safe_name(slide_id)
    parts = [p for p in _list_parts(state, name) if p[2] == n]
    if n and not _covered(parts, n):
        return False
    try:
        tables = [read_parquet(p[3], state.storage) for p in parts]
    except FileNotFoundError:  # another actor merged and removed the parts meanwhile
        return bool(state.completed() & {name})
    emb_type = pa.float16() if cfg.embed.dtype == "float16" else pa.float32()
    if tables:
        merged = pa.concat_tables(tables).sort_by("tile_index")
        idx = merged.column("tile_index").to_numpy()
        keep = np.ones(len(idx), bool)
        keep[1:] = idx[1:] != idx[:-1]  # retried chunks: identical duplicates
        merged = merged.filter(pa.array(keep))
        if merged.num_rows != n:
            raise RuntimeError(f"{uri}: {merged.num_rows} distinct tiles embedded, expected {n}")
        dim = merged.schema.field("embedding").type.list_size
    else:
        merged, dim = None, dim or 0
    record: dict[str, Any] = {"status": "done", "slide_id": slide_id, "name": name, "uri": uri, "encoder": cfg.embed.encoder,
                              "dtype": cfg.embed.dtype, "mode": cfg.embed.mode, "dim": dim, "mpp": cfg.tiling.mpp,
                              "tile_size": cfg.tiling.tile_size, "finished_at": _now(), "seconds": (
                                  time.perf_counter() - t0) if t0 is not None else None}
    if cfg.embed.mode == "regions":
        out = _region_table(slide_id, merged, dim, cfg.embed.region_grid, emb_type)
        record.update(tiles=n, regions=out.num_rows)
    else:
        out = _tile_table(slide_id, merged, dim, emb_type)
        record.update(tiles=out.num_rows)
    final = join_uri(state.slide_dir(name), "embeddings.parquet")
    write_bytes_atomic(final, parquet_bytes(out), state.storage)
    record["shards"] = [{"path": state.relative(final), "rows": out.num_rows, "bytes": None}]
    if cfg.embed.augmentations and cfg.embed.mode == "tiles":
        aug_uri = augmented_uri(state, name)
        write_bytes_atomic(aug_uri, augmented_bytes(merged, cfg.embed.augmentations, dim), state.storage)
        record.update(augmented=state.relative(aug_uri), augmentations=cfg.embed.augmentations)
    if cfg.embed.hdf5 and cfg.embed.mode == "tiles":
        h5 = join_uri(state.uri, "h5", f"{name}.h5")
        write_bytes_atomic(h5, _h5_bytes(out, cfg), state.storage)
        record["h5"] = state.relative(h5)
    state.write_done(name, record)
    remove_uris([p[3] for p in _list_parts(state, name)], state.storage)
    fs, path = filesystem(_parts_dir(state, name), state.storage)
    try:  # local filesystems keep empty directories
        fs.rmdir(path)
    except (OSError, NotImplementedError):
        pass
    return True


def _tile_table(slide_id: str, merged: pa.Table | None, dim: int, emb_type: pa.DataType) -> pa.Table:
    n = merged.num_rows if merged is not None else 0
    if merged is None:
        emb = pa.FixedSizeListArray.from_arrays(pa.array([], emb_type), dim)
        x = y = pa.array([], pa.int64())
    else:
        flat = merged.column("embedding").combine_chunks().flatten().cast(emb_type)
        emb = pa.FixedSizeListArray.from_arrays(flat, dim)
        x, y = merged.column("x"), merged.column("y")
    return pa.table({"slide_id": pa.array([slide_id] * n, pa.string()), "x": x, "y": y, "embedding": emb},
                    metadata={b"wsiscale.format": b"embeddings/1"})


def augmented_uri(state: RunState, name: str) -> str:
    """``<run>/augmented/<slide>.parquet``: beside, not inside, the run's ``embeddings/`` dataset, whose
    directory globs (``pq.read_table(<run>/embeddings)``) must see tile embeddings only."""
    return join_uri(state.uri, "augmented", f"{name}.parquet")


def augmented_bytes(merged: pa.Table | None, n_aug: int, dim: int) -> bytes:
    """Giga-SSL's augmented embeddings of one slide as Parquet: row group ``k`` holds augmentation ``k``.

    Rows are augmentation-major (``n_aug * n`` rows of ``embedding [D]`` float16, tile order as in
    ``embeddings.parquet``), one row group per augmentation, so a training view reads one row group
    (``n * D * 2`` bytes) and never the whole ``[n_aug, n, D]`` block.
    """
    import pyarrow.parquet as pq

    n = merged.num_rows if merged is not None else 0
    if n:
        flat = merged.column("augmented").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        block = flat.reshape(n, n_aug, dim).transpose(1, 0, 2)  # [n_aug, n, D]
    else:
        block = np.zeros((n_aug, 0, dim), np.float16)
    values = pa.array(np.ascontiguousarray(block, dtype=np.float16).ravel())
    table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(values, dim)},
                     metadata={b"wsiscale.format": b"augmented-embeddings/1",
                               b"wsiscale.augmentations": str(n_aug).encode(), b"wsiscale.tiles": str(n).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=max(n, 1))
    return sink.getvalue().to_pybytes()


def _region_table(slide_id: str, merged: pa.Table | None, dim: int, grid: int, emb_type: pa.DataType) -> pa.Table:
    """One row per region: corner (its first patch) and ``[D, grid, grid]`` patch embeddings, flattened."""
    g2 = grid * grid
    if merged is None or merged.num_rows == 0:
        regions, x, y, flat = 0, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    else:
        regions = merged.num_rows // g2
        e = merged.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        e = e.reshape(regions, grid, grid, dim).transpose(0, 3, 1, 2)  # [R, D, grid, grid]
        flat = np.ascontiguousarray(e).ravel()
        x = merged.column("x").to_numpy()[::g2]
        y = merged.column("y").to_numpy()[::g2]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(flat.astype(np.float32)).cast(emb_type), dim * g2)
    meta = {b"wsiscale.format": b"region-embeddings/1", b"wsiscale.region_shape": json.dumps([dim, grid, grid]).encode()}
    return pa.table({"slide_id": pa.array([slide_id] * regions, pa.string()), "x": pa.array(x, pa.int64()),
                     "y": pa.array(y, pa.int64()), "embedding": emb}, metadata=meta)


def _h5_bytes(table: pa.Table, cfg: WsiscaleConfig) -> bytes:
    """CLAM/TRIDENT layout: ``features [N, D]`` float32 and ``coords [N, 2]`` int64 (level-0 x, y)."""
    import io

    import h5py

    n = table.num_rows
    dim = table.schema.field("embedding").type.list_size
    feats = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("features", data=feats.reshape(n, dim).astype(np.float32))
        coords = f.create_dataset("coords", data=np.stack([table.column("x").to_numpy(),
                                                           table.column("y").to_numpy()], 1).astype(np.int64))
        coords.attrs["patch_size"] = cfg.tiling.tile_size
        coords.attrs["target_mpp"] = cfg.tiling.mpp
        f.attrs["encoder"] = cfg.embed.encoder
    return buf.getvalue()


class EmbedUDF:
    """Stage 2 (encoder actors): embed chunks, write part files, finalize completed slides."""

    def __init__(self, cfg: WsiscaleConfig, run_uri: str) -> None:
        import torch

        import wsiscale  # noqa: F401 - cuCIM before torch
        from wsiscale.models.encoders import load_encoder

        self.cfg = cfg
        self.state = embed_state(run_uri, cfg)
        torch.set_num_threads(max(1, int(round(cfg.embed.cpus_per_actor))))
        device = "cuda" if cfg.embed.num_gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        self.encoder = load_encoder(cfg.embed.encoder, cfg.embed.weights, device=device,
                                    precision=cfg.embed.precision, seed=cfg.embed.seed)
        self.t0: dict[str, float] = {}

    def _embed(self, images: np.ndarray) -> np.ndarray:
        bs = self.cfg.embed.batch_size
        return np.concatenate([self.encoder.embed(images[i: i + bs]).numpy() for i in range(0, len(images), bs)])

    def _augmented(self, images: np.ndarray, slide_id: str) -> pa.Array:
        """``[n, N_aug * D]`` float16: the tiles embedded under each slide-shared augmentation (Giga-SSL)."""
        from wsiscale.data.augment import augment_tiles, augmentation_rng

        e = self.cfg.embed
        embs = [self._embed(augment_tiles(images, augmentation_rng(e.seed, slide_id, k))) for k in range(e.augmentations)]
        block = np.stack(embs, 1).astype(np.float16)  # [n, N_aug, D]
        return pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), block.shape[1] * block.shape[2])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"slide_id": [], "lo": [], "hi": [], "slide_tiles": [], "finalized": []}
        ids = np.asarray(batch["slide_id"]).astype(str)
        for slide_id in dict.fromkeys(ids.tolist()):
            rows = np.flatnonzero(ids == slide_id)
            rows = rows[np.argsort(batch["tile_index"][rows], kind="stable")]
            idx = batch["tile_index"][rows]
            n = int(batch["slide_tiles"][rows[0]])
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            for run in np.split(rows, breaks):
                lo, hi = int(batch["tile_index"][run[0]]), int(batch["tile_index"][run[-1]]) + 1
                images = np.asarray(batch["image"][run])
                emb = self._embed(images)
                dim = emb.shape[1]
                table = pa.table({
                    "tile_index": pa.array(batch["tile_index"][run], pa.int32()),
                    "x": pa.array(batch["x"][run], pa.int64()), "y": pa.array(batch["y"][run], pa.int64()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel()), dim),
                })
                if self.cfg.embed.augmentations:
                    table = table.append_column("augmented", self._augmented(images, slide_id))
                name = safe_name(slide_id)
                part = join_uri(_parts_dir(self.state, name), f"part-{lo:09d}-{hi:09d}-of-{n:09d}.parquet")
                write_bytes_atomic(part, parquet_bytes(table), self.state.storage)
                self.t0.setdefault(slide_id, time.perf_counter())
                uri = str(batch["uri"][run[0]])
                done = finalize_slide(self.state, self.cfg, slide_id, uri, n, self.t0[slide_id])
                for k, v in (("slide_id", slide_id), ("lo", lo), ("hi", hi), ("slide_tiles", n), ("finalized", done)):
                    out[k].append(v)
        return out


# -- driver ---------------------------------------------------------------------------------------

#: Settings that change what a completed slide's embeddings are: a run directory keeps one value of each.
EMBED_OUTPUT_SETTINGS = ("tiling", "tissue", "embed.encoder", "embed.weights", "embed.mode", "embed.region_size",
                         "embed.region_grid", "embed.dtype", "embed.precision", "embed.source", "embed.augmentations")


def _inputs(cfg: WsiscaleConfig, source: str | None, manifest: str | None) -> tuple[pa.Table, str]:
    """Slides to embed: a tiling run's completed slides (with their shards) or a manifest."""
    from wsiscale.io.manifest import read_manifest

    if source:
        src = RunState(source, cfg.storage)
        slides = src.read_table("slides.parquet")
        if slides is None:
            raise FileNotFoundError(f"{src.uri} has no slides.parquet: run `wsiscale tile` first, or embed from a manifest")
        pixels = [p or "none" for p in slides.column("pixels").to_pylist()]
        table = pa.table({"uri": slides.column("uri"), "slide_id": slides.column("slide_id"),
                          "shards": slides.column("shards"), "pixels": pa.array(pixels, pa.string())})
        return table, src.uri
    uri = normalize_uri(manifest or cfg.embed.manifest or cfg.ingest.manifest or RunLayout(cfg.output).manifest)
    return read_manifest(uri, cfg.storage), uri


def _check_settings(state: RunState, cfg: WsiscaleConfig) -> None:
    from wsiscale.data.tiling import _check_same_settings

    _check_same_settings(state, cfg, EMBED_OUTPUT_SETTINGS)


def run_embedding(cfg: WsiscaleConfig, source: str | None = None, manifest: str | None = None, out: str | None = None,
                  show_progress: bool = True) -> dict[str, Any]:
    """Embed every slide of a tiling run (``source``) or a manifest into ``out`` (resumable); returns the summary.

    Args:
        cfg: configuration (``embed`` above all; ``tiling``/``tissue``/``reader`` when tiling on the fly).
        source: tiling run directory (default ``cfg.embed.source``); None tiles the manifest on the fly.
        manifest: manifest URI when there is no source.
        out: run directory (default ``<cfg.output>/embeddings``).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from wsiscale.config import ConfigError
    from wsiscale.data.tiling import _null_progress
    from wsiscale.models.encoders import get_spec
    from wsiscale.progress import progress_bar

    spec = get_spec(cfg.embed.encoder)
    source = source or cfg.embed.source
    if cfg.embed.augmentations and cfg.embed.mode == "regions":
        raise ConfigError("embed.augmentations (Giga-SSL) needs embed.mode=tiles: regions are SLPD's input")
    if source and cfg.embed.mode == "regions":
        raise ConfigError("embed.mode=regions reads each region's patch grid from the slides: give a manifest "
                          "(no embed.source / --source); a tiling run's tiles are not grouped into regions")
    if source:
        cfg.embed.source = normalize_uri(source)
    table, input_uri = _inputs(cfg, source, manifest)
    layout = RunLayout(cfg.output)
    out_uri = normalize_uri(out or (layout.regions if cfg.embed.mode == "regions" else layout.embeddings))
    state = embed_state(out_uri, cfg)
    _check_settings(state, cfg)
    save_config(cfg, out_uri)
    names, done_before, todo = pending_slides(table, state)
    log.info("%d slides from %s: %d already embedded, %d to embed with %s -> %s", table.num_rows, input_uri,
             len(done_before & set(names)), todo.num_rows, spec.name, out_uri)
    e = cfg.embed
    counts = {"tiles": 0, "finalized": 0}
    result: dict[str, Any] = {}

    def finish(run: StageRun) -> None:
        result["summary"] = _finish_embedding(state, cfg, table, names, done_before, counts["tiles"], run, input_uri)

    if not todo.num_rows:
        finish(StageRun(time.perf_counter()))
        return result["summary"]
    with slide_stage(cfg, show_progress, finish) as run:
        ds = ray.data.from_arrow(_manifest_blocks(todo, cfg.ingest.max_blocks,
                                                  ("uri", "slide_id", "mpp", "shards", "pixels")))
        ds = ds.map_batches(
            TileChunkUDF, batch_size=1,
            fn_constructor_kwargs={"cfg": cfg, "run_uri": out_uri, "input_size": spec.input_size, "dim": spec.dim,
                                   "source_uri": normalize_uri(source) if source else None},
            compute=ActorPoolStrategy(min_size=e.reader_actors[0], max_size=e.reader_actors[1],
                                      max_tasks_in_flight_per_actor=2),
            num_cpus=e.reader_cpus, memory=int(e.memory_gb_per_actor * 2**30))
        ds = ds.map_batches(
            EmbedUDF, batch_size=None, fn_constructor_kwargs={"cfg": cfg, "run_uri": out_uri},
            compute=ActorPoolStrategy(min_size=e.actors[0], max_size=e.actors[1], max_tasks_in_flight_per_actor=2),
            num_cpus=e.cpus_per_actor, num_gpus=e.num_gpus_per_actor or None,
            memory=int(e.memory_gb_per_actor * 2**30))
        with progress_bar() if show_progress else _null_progress() as bar:
            task = bar.add_task("embedding", total=todo.num_rows) if bar is not None else None
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                counts["tiles"] += int(np.sum(batch["hi"] - batch["lo"]))
                counts["finalized"] += int(np.sum(batch["finalized"]))
                if bar is not None:
                    rate = counts["tiles"] / max(time.perf_counter() - run.t0, 1e-9)
                    bar.update(task, completed=counts["finalized"], description=(
                        f"embedding: {counts['finalized']} slides, {counts['tiles']:,} tiles, {rate:,.1f} tiles/s"))
    return result["summary"]


def _finish_embedding(state: RunState, cfg: WsiscaleConfig, table: pa.Table, names: list[str], done_before: set[str],
                      tiles: int, run: StageRun, input_uri: str) -> dict[str, Any]:
    """Merge slides whose parts are complete, consolidate records, write ``run_summary.json``."""
    done = state.completed()
    failed = state.failed()
    if run.interrupted is None:  # sweep slides whose last chunks raced, or whose merge was interrupted
        for slide_id, uri, name in zip(table.column("slide_id").to_pylist(), table.column("uri").to_pylist(), names):
            if name in done or name in failed:
                continue
            parts = _list_parts(state, name)
            if parts and finalize_slide(state, cfg, slide_id, uri, parts[0][2]):
                continue
            if parts:
                log.warning("%s: only part of its tiles were embedded; it will be redone on the next run", uri)
    slides, failures = state.consolidate()
    seconds = run.seconds
    summary = {
        "run": state.uri, "input": input_uri, "encoder": cfg.embed.encoder, "mode": cfg.embed.mode,
        "finished_at": _now(), "interrupted": run.interrupted,
        "slides": slide_counts(names, done_before, slides, failures),
        "tiles": {"this_run": tiles, "total": done_tiles(names, slides)},
        "seconds": seconds, "tiles_per_s": tiles / seconds if seconds > 0 else 0.0,
        "failures": failure_rows(failures, names),
    }
    write_bytes_atomic(join_uri(state.uri, "run_summary.json"), json.dumps(summary, indent=1).encode(), state.storage)
    return summary


def read_embeddings(run_uri: str, storage=None, slide_ids: list[str] | None = None) -> pa.Table:
    """All completed slides' embeddings as one table (``slide_id, x, y, embedding``)."""
    from wsiscale.runs.embedding_run import EmbeddingRun

    run = EmbeddingRun(run_uri, storage)
    wanted = set(slide_ids) if slide_ids is not None else None
    parts = []
    for sid, shards in zip(run.table.column("slide_id").to_pylist(), run.table.column("shards").to_pylist()):
        if wanted is None or sid in wanted:
            parts.extend(read_parquet(run.absolute(s["path"]), storage) for s in json.loads(shards))
    return pa.concat_tables(parts) if parts else pa.table({})
