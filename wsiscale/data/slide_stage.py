"""What every resumable Ray Data stage over slides shares (tiling, embedding, region features).

A stage reads its slide list, skips the slides its run directory already holds (done records,
:mod:`wsiscale.runs.state`), runs the rest on Ray Data actor pools and, however the run ends
(finished, interrupted, a failed actor pool), consolidates the records that were written and
writes ``run_summary.json`` with the same slide counts. This module holds those shared steps:

* :func:`pending_slides`: the manifest rows still to do;
* :func:`slide_stage`: joins or starts Ray, sets Ray Data's progress bars, times the run and calls the
  stage's finish step on every exit, recording an exception as the run's interruption;
* :func:`slide_counts`: the ``slides`` block of every summary;
* :func:`failure_rows`: the failures a summary lists (at most 100).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa

from wsiscale.config import WsiscaleConfig
from wsiscale.runs.state import RunState, safe_name


@dataclass
class StageRun:
    """The clock and outcome of one run of a stage: ``seconds`` (after Ray is up) and ``interrupted``
    (the exception text when the run did not finish)."""

    t0: float
    seconds: float = 0.0
    interrupted: str | None = None


def pending_slides(table: pa.Table, state: RunState, retry_failed: bool = True) -> tuple[list[str], set[str], pa.Table]:
    """``(names, done_before, todo)``: every row's run name, the slides already done, and the rows still to do
    (failed slides too, with ``retry_failed``)."""
    names = [safe_name(s) for s in table.column("slide_id").to_pylist()]
    done_before = state.completed()
    skip = done_before | (set() if retry_failed else state.failed())
    return names, done_before, table.filter(pa.array([n not in skip for n in names]))


@contextmanager
def slide_stage(cfg: WsiscaleConfig, show_progress: bool, finish: Callable[[StageRun], None]) -> Iterator[StageRun]:
    """Ray up (joined or started; shut down after if started here), Ray Data's own bars on or off, the
    run timed from here (throughput includes starting actors, not Ray). ``finish(run)`` consolidates
    on every exit, so what finished before an interruption is kept; the exception is re-raised."""
    from wsiscale.runtime import configure_ray_data, start_ray

    started = start_ray(cfg)
    configure_ray_data(show_progress and cfg.ingest.ray_progress)
    run = StageRun(time.perf_counter())
    try:
        yield run
    except BaseException as exc:
        run.interrupted = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run.seconds = time.perf_counter() - run.t0
        try:
            finish(run)
        finally:
            if started:
                import ray

                ray.shutdown()


def slide_counts(names: list[str], done_before: set[str], slides: pa.Table, failures: pa.Table,
                 done_this_run: int | None = None) -> dict[str, int]:
    """The ``slides`` block of a summary, over the slides of this manifest (``names``): total, done,
    skipped as already done, done this run, failed, pending."""
    wanted = set(names)
    done = set(slides.column("name").to_pylist()) & wanted
    failed = set(failures.column("name").to_pylist()) & wanted
    return {"total": len(names), "done": len(done), "skipped_already_done": len(done_before & wanted),
            "done_this_run": len(done - done_before) if done_this_run is None else done_this_run,
            "failed": len(failed), "pending": len(wanted - done - failed)}


def done_tiles(names: list[str], slides: pa.Table, column: str = "tiles") -> int:
    """Tiles (or regions) of this manifest's done slides."""
    wanted = set(names)
    return int(sum(t or 0 for n, t in zip(slides.column("name").to_pylist(), slides.column(column).to_pylist())
                   if n in wanted))


def failure_rows(failures: pa.Table, names: list[str]) -> list[dict[str, Any]]:
    """The failed slides of this manifest as a summary lists them (at most 100; all in ``failures.parquet``)."""
    wanted = set(names)
    return [{"slide_id": r["slide_id"], "uri": r["uri"], "error_type": r["error_type"], "message": r["message"]}
            for r in failures.to_pylist() if r["name"] in wanted][:100]
