"""Tile slide archives with Ray Data on an autoscaling CPU actor pool.

Pipeline (``wsiscale tile``, :func:`run_tiling`)::

    manifest rows (uri, slide_id, mpp) --Ray Data, one task per slide-->
    SlideTilerUDF on ActorPoolStrategy(min, max): open the slide once, detect
    tissue, plan the grid, read tiles in bounded batches and append them to
    size-bounded Parquet shards; write the slide's done record last
    --> one small record per slide back to the driver (progress, summary).

Slide bytes never pass through Ray: actors read them from storage (cuCIM or
OpenSlide through the node's staging cache, or tiffslide directly). Tile
pixels go straight from the actor to the output shards, so the driver only
sees per-slide records. A failing slide is recorded (uri, error type,
message) and the run goes on; a rerun skips completed slides; a retried
attempt can neither lose nor duplicate tiles (see :mod:`wsiscale.runs.state`).

:func:`tile_stream` is the same reader as a streaming dataset of in-memory
tile batches, for pipelines that read and embed in one pass.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from wsiscale.config import WsiscaleConfig
from wsiscale.data.slide_stage import StageRun, done_tiles, failure_rows, pending_slides, slide_counts, slide_stage
from wsiscale.data.tiles import iter_tile_arrays, iter_tile_tables, tile_schema
from wsiscale.io.errors import SlideError
from wsiscale.io.manifest import read_manifest
from wsiscale.io.passthrough import JpegTileSource
from wsiscale.io.uri import join_uri, normalize_uri, write_bytes_atomic
from wsiscale.runs.config_file import read_saved_config, save_config
from wsiscale.runs.layout import RunLayout
from wsiscale.runs.shards import ShardWriter
from wsiscale.runs.state import RunState, safe_name

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

#: Columns of the per-slide records streamed back to the driver (``record``: the whole record as JSON).
RECORD_FIELDS = ("name", "slide_id", "uri", "status", "tiles", "seconds", "error_type", "message", "record")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mpp_value(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _describe_error(exc: BaseException, uri: str) -> str:
    if isinstance(exc, SlideError):
        return str(exc)
    return (f"{uri}: unexpected {type(exc).__name__} while tiling: {exc} "
            "(if the slide opens in another tool, try reader.backend=openslide and report this)")


def tiles_per_shard(cfg: WsiscaleConfig) -> int:
    """Tiles per shard for ``ingest.shard_mb``, a multiple of ``ingest.batch_tiles``.

    Bytes per tile: raw is exact; JPEG assumes about 8:1 (q90 H&E tiles compress 6-12:1).

    A fixed count (not a byte size) so that every attempt at a slide cuts the
    same shards, whatever the codec produces.
    """
    ing, side = cfg.ingest, cfg.tiling.tile_size
    per_tile = {"none": 48, "raw": side * side * 3, "jpeg": side * side * 3 // 8}[ing.pixels]
    n = int(ing.shard_mb * 2**20 // per_tile)
    return max(ing.batch_tiles, n // ing.batch_tiles * ing.batch_tiles)


def tile_one_slide(uri: str, slide_id: str, mpp: float | None, cfg: WsiscaleConfig, state: RunState) -> dict[str, Any]:
    """Tile one slide into its shards and write its done (or failure) record.

    Never raises for a bad slide or a storage error: the returned record has
    ``status`` ``"failed"`` with the error type and a message naming the URI.
    """
    from wsiscale.io.planning import open_planned

    name = safe_name(slide_id)
    attempt = uuid.uuid4().hex[:10]
    t0 = time.perf_counter()
    writer: ShardWriter | None = None
    try:
        with open_planned(uri, cfg, mpp) as (slide, tissue, plan):
            ing = cfg.ingest
            writer = ShardWriter(state.slide_dir(name), "part", tile_schema(ing.pixels),
                                 tiles_per_shard(cfg), cfg.storage, compression={"image": "none"})
            source = JpegTileSource.for_plan(slide, plan) if ing.pixels == "jpeg" and ing.jpeg_passthrough else None
            try:
                for table in iter_tile_tables(slide, plan, slide_id, ing.batch_tiles, ing.pixels, ing.jpeg_quality,
                                              source):
                    writer.write(table)
            finally:
                if source is not None:
                    source.close()
            shards = writer.close()
            record = {
                "status": "done",
                "slide_id": slide_id,
                "name": name,
                "uri": uri,
                "tiles": len(plan),
                "level": plan.level,
                "read_size": plan.read_size,
                "tile_size": plan.tile_size,
                "mpp": plan.effective_mpp,
                "slide_mpp": float(np.mean(slide.mpp)),
                "width": slide.dimensions[0],
                "height": slide.dimensions[1],
                "tissue_fraction": tissue.fraction,
                "backend": slide.backend,
                "pixels": ing.pixels,
                "jpeg_passthrough": source is not None,
                "shards": [{"path": state.relative(s.uri), "rows": s.rows, "bytes": s.bytes} for s in shards],
                "attempt": attempt,
                "host": socket.gethostname(),
                "peak_rss_mib": _peak_rss_mib(),
                "seconds": time.perf_counter() - t0,
                "finished_at": _now(),
            }
            state.write_done(name, record)
            return record
    except Exception as exc:  # noqa: BLE001 - one bad slide must never stop the batch
        if writer is not None:
            writer.abort()  # committed shards stay: a concurrent attempt may own identical ones
        message = _describe_error(exc, uri)
        if isinstance(exc, SlideError):
            log.warning("%s", message)
        else:
            log.warning("%s\n%s", message, traceback.format_exc())
        record = {
            "status": "failed",
            "slide_id": slide_id,
            "name": name,
            "uri": uri,
            "error_type": type(exc).__name__,
            "message": message,
            "attempt": attempt,
            "seconds": time.perf_counter() - t0,
            "failed_at": _now(),
        }
        try:
            state.write_failure(name, record)
        except Exception as exc2:  # noqa: BLE001 - storage down: the driver still gets the record
            log.error("%s: could not write the failure record: %s", uri, exc2)
        return record


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; the actor's high-water mark)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _limit_threads(cpus: float) -> None:
    """Keep native thread pools within the actor's CPU reservation."""
    import cv2

    n = max(1, int(cpus))
    cv2.setNumThreads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except Exception:  # noqa: BLE001 - optional
        pass


class SlideTilerUDF:
    """Ray Data ``map_batches`` callable class: tiles each slide of a batch, returns its record.

    One instance per actor; it keeps no slide open between calls.
    """

    def __init__(self, cfg: WsiscaleConfig, run_uri: str) -> None:
        import wsiscale  # noqa: F401 - cuCIM before anything that could import torch

        self.cfg = cfg
        self.state = RunState(run_uri, cfg.storage)
        _limit_threads(cfg.ingest.cpus_per_actor)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in RECORD_FIELDS}
        mpps = batch.get("mpp")
        for i, (uri, slide_id) in enumerate(zip(batch["uri"], batch["slide_id"])):
            mpp = _mpp_value(mpps[i]) if mpps is not None else None
            rec = tile_one_slide(str(uri), str(slide_id), mpp, self.cfg, self.state)
            rec["record"] = json.dumps(rec, default=str)
            for k in RECORD_FIELDS:
                out[k].append(rec.get(k))
        return out


class SlideTileStreamUDF:
    """Ray Data ``map_batches`` callable class yielding in-memory tile batches of each slide.

    Output batches: the coordinate columns (see :mod:`wsiscale.data.tiles`),
    ``slide_tiles`` (the slide's planned tile count, so a consumer knows when it
    has all of a slide) and, by ``pixels``: ``raw`` -> ``image`` ``[n, tile_size,
    tile_size, 3]`` uint8; ``jpeg`` -> ``image`` JPEG bytes (the slide's own tiles
    when they line up, see :mod:`wsiscale.io.passthrough`: ~10x less data to move
    than raw, decode where the pixels are used); ``none`` -> coordinates only.
    Bad slides yield nothing (a slide failing midway may have yielded some
    batches: count ``slide_tiles``); with ``run_uri`` failure records are written there.
    """

    def __init__(self, cfg: WsiscaleConfig, run_uri: str | None = None, pixels: str = "raw") -> None:
        import wsiscale  # noqa: F401

        self.cfg = cfg
        self.pixels = pixels
        self.state = RunState(run_uri, cfg.storage) if run_uri else None
        _limit_threads(cfg.ingest.cpus_per_actor)

    def _batches(self, slide, plan, slide_id: str):
        ing = self.cfg.ingest
        if self.pixels == "raw":
            yield from iter_tile_arrays(slide, plan, slide_id, ing.batch_tiles)
            return
        source = JpegTileSource.for_plan(slide, plan) if self.pixels == "jpeg" and ing.jpeg_passthrough else None
        try:
            yield from iter_tile_tables(slide, plan, slide_id, ing.batch_tiles, self.pixels, ing.jpeg_quality, source)
        finally:
            if source is not None:
                source.close()

    def __call__(self, batch: dict[str, np.ndarray]):
        from wsiscale.io.planning import open_planned

        cfg = self.cfg
        mpps = batch.get("mpp")
        for i, (uri, slide_id) in enumerate(zip(batch["uri"], batch["slide_id"])):
            uri, slide_id = str(uri), str(slide_id)
            mpp = _mpp_value(mpps[i]) if mpps is not None else None
            try:
                with open_planned(uri, cfg, mpp) as (slide, _, plan):
                    for out in self._batches(slide, plan, slide_id):
                        n = len(out["x"]) if isinstance(out, dict) else out.num_rows
                        total = np.full(n, len(plan), np.int32)
                        if isinstance(out, dict):
                            out["slide_tiles"] = total
                        else:
                            out = out.append_column("slide_tiles", pa.array(total))
                        yield out
            except Exception as exc:  # noqa: BLE001
                message = _describe_error(exc, uri)
                log.warning("%s", message)
                if self.state is not None:
                    self.state.write_failure(safe_name(slide_id), {
                        "status": "failed", "slide_id": slide_id, "name": safe_name(slide_id), "uri": uri,
                        "error_type": type(exc).__name__, "message": message, "failed_at": _now()})


def _manifest_blocks(table: pa.Table, max_blocks: int,
                     columns: tuple[str, ...] = ("uri", "slide_id", "mpp")) -> list[pa.Table]:
    """Split the manifest into at most ``max_blocks`` blocks (one slide per block when possible).

    Only ``columns`` (those present) travel to the actors.
    """
    cols = [c for c in columns if c in table.column_names]
    table = table.select(cols)
    n = table.num_rows
    size = max(1, math.ceil(n / max(1, min(n, max_blocks))))
    return [table.slice(i, size) for i in range(0, n, size)]


def _pool_kwargs(cfg: WsiscaleConfig) -> dict[str, Any]:
    from ray.data import ActorPoolStrategy

    ing = cfg.ingest
    lo, hi = ing.actors
    return dict(
        compute=ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=ing.tasks_in_flight_per_actor),
        num_cpus=ing.cpus_per_actor,
        memory=int(ing.memory_gb_per_actor * 2**30),
    )


def tile_stream(
    manifest: pa.Table, cfg: WsiscaleConfig, run_uri: str | None = None, pixels: str = "raw"
) -> "ray.data.Dataset":
    """A streaming Ray Dataset of the tiles of every slide in ``manifest`` (nothing written).

    Use it to fuse tiling with a downstream stage (e.g. ``.map_batches(Embedder, ...)``):
    each slide is opened once on a tiling actor of the ``cfg.ingest`` pool and its
    tiles flow in batches of ``cfg.ingest.batch_tiles``. ``pixels``: ``raw``
    (uint8 arrays), ``jpeg`` (bytes; decode downstream) or ``none`` (see
    :class:`SlideTileStreamUDF`).
    """
    import ray.data

    if pixels not in ("raw", "jpeg", "none"):
        raise ValueError(f"pixels must be raw, jpeg or none, got {pixels!r}")
    ds = ray.data.from_arrow(_manifest_blocks(manifest, cfg.ingest.max_blocks))
    return ds.map_batches(SlideTileStreamUDF, fn_constructor_kwargs={"cfg": cfg, "run_uri": run_uri, "pixels": pixels},
                          batch_size=1, **_pool_kwargs(cfg))


#: Settings that change what a completed slide's shards contain: a run directory keeps one value of each.
OUTPUT_SETTINGS = ("tiling", "tissue", "ingest.pixels", "ingest.jpeg_quality", "ingest.jpeg_passthrough",
                   "ingest.batch_tiles", "ingest.shard_mb")


def _check_same_settings(state: RunState, cfg: WsiscaleConfig, keys: tuple[str, ...] = OUTPUT_SETTINGS) -> None:
    """Refuse to resume a run directory whose completed slides were tiled with other settings."""
    saved = read_saved_config(state.uri, state.storage)
    if saved is None:
        return
    if not state.completed():
        return
    current = cfg.model_dump(mode="json")
    defaults = type(cfg)().model_dump(mode="json")
    changed = []
    for key in keys:
        a, b, d = saved, current, defaults
        missing = False
        for part in key.split("."):
            missing = missing or part not in (a or {})
            a, b, d = (a or {}).get(part), (b or {}).get(part), (d or {}).get(part)
        if missing and b == d:  # a setting newer than the saved config, left at its default
            continue
        if a != b:
            changed.append(f"{key}: {a!r} -> {b!r}")
    if changed:
        from wsiscale.config import CONFIG_FILENAME, ConfigError

        raise ConfigError(
            f"{state.uri} already holds slides made with other settings ({'; '.join(changed)}); "
            "resuming would mix them. Write to a new --out directory, or restore the settings saved in "
            f"{join_uri(state.uri, CONFIG_FILENAME)}"
        )


def run_tiling(
    cfg: WsiscaleConfig,
    manifest: str | None = None,
    out: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Tile every slide of a manifest into ``out`` (resumable); returns the run summary.

    Args:
        cfg: configuration (``tiling``, ``tissue``, ``reader``, ``ingest``, ``storage``, ``ray``).
        manifest: manifest URI; default ``cfg.ingest.manifest`` or ``<cfg.output>/manifest.parquet``.
        out: run directory; default ``<cfg.output>/tiles``.
        show_progress: live progress on the console.

    The summary (also written to ``<out>/run_summary.json``) has counts of slides
    (total, done, skipped as already done, failed), tiles, throughput and the failures.
    """
    from wsiscale.progress import progress_bar

    manifest_uri = normalize_uri(manifest or cfg.ingest.manifest or RunLayout(cfg.output).manifest)
    out_uri = normalize_uri(out or RunLayout(cfg.output).tiles)
    table = read_manifest(manifest_uri, cfg.storage)
    state = RunState(out_uri, cfg.storage)
    _check_same_settings(state, cfg)
    save_config(cfg, out_uri)

    names, done_before, todo = pending_slides(table, state, cfg.ingest.retry_failed)
    log.info("%d slides in %s: %d already complete, %d to tile -> %s", table.num_rows, manifest_uri,
             len(done_before & set(names)), todo.num_rows, out_uri)

    records: dict[str, dict[str, Any]] = {}  # by slide name: attempts may repeat
    result: dict[str, Any] = {}

    def finish(run: StageRun) -> None:
        result["summary"] = _finish(state, cfg, names, done_before, list(records.values()), run, manifest_uri)

    if not todo.num_rows:
        finish(StageRun(time.perf_counter()))
        return result["summary"]
    import ray

    with slide_stage(cfg, show_progress, finish) as run:
        ds = ray.data.from_arrow(_manifest_blocks(todo, cfg.ingest.max_blocks))
        ds = ds.map_batches(SlideTilerUDF, fn_constructor_kwargs={"cfg": cfg, "run_uri": out_uri},
                            batch_size=1, **_pool_kwargs(cfg))
        tiles = failed = 0
        with progress_bar() if show_progress else _null_progress() as bar:
            task = bar.add_task("tiling", total=todo.num_rows) if bar is not None else None
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    rec = json.loads(row["record"])
                    prev = records.get(rec["name"])
                    if prev is not None and prev["status"] == "done":
                        continue  # a retried/raced attempt of a completed slide: same shards, count once
                    records[rec["name"]] = rec
                    failed -= prev is not None  # only a failed attempt is ever replaced
                    if rec["status"] == "done":
                        tiles += rec["tiles"]
                    else:
                        failed += 1
                    if bar is not None:
                        rate = tiles / max(time.perf_counter() - run.t0, 1e-9)
                        bar.update(task, completed=len(records), description=(
                            f"tiling: {len(records) - failed} done, {failed} failed, {tiles:,} tiles, "
                            f"{rate:,.0f} tiles/s"))
    return result["summary"]


class _null_progress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _finish(state: RunState, cfg: WsiscaleConfig, names: list[str], done_before: set[str],
            records: list[dict[str, Any]], run: StageRun, manifest_uri: str) -> dict[str, Any]:
    """Consolidate records, write ``run_summary.json``; returns the summary."""
    done_now = [r for r in records if r["status"] == "done"]
    slides, failures = state.consolidate(done_now)
    tiles_now = sum(r["tiles"] or 0 for r in done_now)
    seconds = run.seconds
    summary = {
        "run": state.uri,
        "manifest": manifest_uri,
        "finished_at": _now(),
        "interrupted": run.interrupted,
        "slides": slide_counts(names, done_before, slides, failures, done_this_run=len(done_now)),
        "tiles": {"total": done_tiles(names, slides), "this_run": tiles_now},
        "seconds": seconds,
        "tiles_per_s": tiles_now / seconds if seconds > 0 else 0.0,
        "slides_per_s": len(records) / seconds if seconds > 0 else 0.0,
        "pixels": cfg.ingest.pixels,
        "tiling": cfg.tiling.model_dump(),
        "actors": list(cfg.ingest.actors),
        "failures": failure_rows(failures, names),
    }
    write_bytes_atomic(join_uri(state.uri, "run_summary.json"), json.dumps(summary, indent=1).encode(), state.storage)
    return summary
