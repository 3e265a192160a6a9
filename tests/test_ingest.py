"""Ingest end to end: manifest -> Ray Data tiling on a CPU actor pool -> tile shards, on a real local Ray.

Real components only: generated SVS slides, a moto S3 server on 127.0.0.1,
cuCIM/OpenSlide readers, Ray Data actor pools, Parquet shards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from wsiscale.config import WsiscaleConfig
from wsiscale.data.readers import read_tile_table, tile_images
from wsiscale.data.tiling import run_tiling
from wsiscale.io import detect_slide_tissue, open_slide, plan_tiles, read_tile
from wsiscale.io.manifest import build_manifest

pytestmark = pytest.mark.usefixtures("ray_local")


def _cfg(tmp_path: Path, **ingest) -> WsiscaleConfig:
    cfg = WsiscaleConfig()
    cfg.storage.staging_dir = str(tmp_path / "staging")
    cfg.ingest.actors = (2, 2)
    cfg.ingest.ray_progress = False
    cfg.ingest.memory_gb_per_actor = 0.5
    for k, v in ingest.items():
        setattr(cfg.ingest, k, v)
    return cfg


def _planned(path: Path, cfg: WsiscaleConfig):
    with open_slide(path, backend="openslide") as s:
        return plan_tiles(s, cfg.tiling, detect_slide_tissue(s, cfg.tissue))


def _xy(table, slide_id: str) -> list[tuple[int, int]]:
    t = table.filter(np.asarray(table.column("slide_id").to_pylist()) == slide_id)
    return list(zip(t.column("x").to_pylist(), t.column("y").to_pylist()))


def test_s3_end_to_end_tiles_equal_planner_and_reader(cohort, s3_bucket, tmp_path):
    endpoint, bucket, client = s3_bucket
    slides_dir, _ = cohort
    local = sorted(slides_dir.glob("*.svs"))
    for p in local:
        client.upload_file(str(p), bucket, f"archive/{p.name}")
    cfg = _cfg(tmp_path, pixels="raw", shard_mb=2.0, batch_tiles=16)  # small shards: slides span several
    cfg.storage.endpoint_url = endpoint
    manifest_uri = f"s3://{bucket}/manifests/cohort.parquet"
    table, stats = build_manifest(f"s3://{bucket}/archive", out=manifest_uri, storage=cfg.storage)
    assert stats["slides"] == len(local)

    run = f"s3://{bucket}/runs/tiles"
    summary = run_tiling(cfg, manifest=manifest_uri, out=run, show_progress=False)
    assert summary["slides"] == {"total": 6, "done": 6, "skipped_already_done": 0, "done_this_run": 6,
                                 "failed": 0, "pending": 0}

    tiles = read_tile_table(run, cfg.storage)
    assert tiles.num_rows == summary["tiles"]["total"] > 300
    for p in local:
        plan = _planned(p, cfg)
        got = _xy(tiles, p.stem)
        assert len(got) == len(set(got)) == len(plan)  # no duplicates, none lost
        assert set(got) == set(zip(plan.x.tolist(), plan.y.tolist()))
    # pixels: identical to a direct read of the local file (another backend), for a sample of tiles
    rng = np.random.default_rng(0)
    for p in local[:3]:
        plan = _planned(p, cfg)
        t = read_tile_table(run, cfg.storage, slide_ids=[p.stem])
        index = {xy: i for i, xy in enumerate(zip(plan.x.tolist(), plan.y.tolist()))}
        pick = rng.choice(t.num_rows, size=8, replace=False)
        images = tile_images(t.take(pick))
        with open_slide(p, backend="tiffslide") as s:
            for k, row in enumerate(pick):
                xy = (t.column("x")[int(row)].as_py(), t.column("y")[int(row)].as_py())
                assert np.array_equal(images[k], read_tile(s, plan, index[xy]))
    # the outputs are plain Parquet: readable by pandas straight from S3, shards ~shard_mb
    import pandas as pd

    opts = {"client_kwargs": {"endpoint_url": endpoint}}
    df = pd.read_parquet(f"s3://{bucket}/runs/tiles/tiles/{local[0].stem}", storage_options=opts)
    assert len(df) == len(_planned(local[0], cfg))
    slides = pd.read_parquet(f"{run}/slides.parquet", storage_options=opts)
    assert sorted(slides.slide_id) == sorted(p.stem for p in local)
    assert max(len(json.loads(s)) for s in slides.shards) >= 2
    # shards hold tiles_per_shard tiles (16 raw 256 px tiles = 3 MiB: one 16-tile batch is the floor under the
    # 2 MiB target), every shard of a slide full but its last; an object is no bigger than its tiles' bytes
    import s3fs

    from wsiscale.data.tiling import tiles_per_shard

    per_shard, tile_bytes = tiles_per_shard(cfg), 256 * 256 * 3
    assert per_shard == 16
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    objects = client.list_objects_v2(Bucket=bucket, Prefix="runs/tiles/tiles/")["Contents"]
    for sid, names in zip(slides.slide_id, slides.shards):
        keys = sorted(o["Key"] for o in objects if f"/tiles/{sid}/" in o["Key"])
        assert len(keys) == len(json.loads(names))
        rows = [pq.ParquetFile(fs.open(f"{bucket}/{k}")).metadata.num_rows for k in keys]
        assert all(r == per_shard for r in rows[:-1]) and 0 < rows[-1] <= per_shard, (sid, rows)
    assert max(o["Size"] for o in objects) <= per_shard * tile_bytes + 65536
    assert summary["tiles_per_s"] > 0


def test_jpeg_and_coordinate_modes(cohort, tmp_path):
    slides_dir, manifest = cohort
    path = sorted(slides_dir.glob("*.svs"))[0]
    cfg = _cfg(tmp_path, pixels="jpeg", jpeg_quality=95)
    plan = _planned(path, cfg)
    index = {xy: i for i, xy in enumerate(zip(plan.x.tolist(), plan.y.tolist()))}
    for passthrough in (True, False):
        cfg.ingest.jpeg_passthrough = passthrough
        run = tmp_path / f"jpeg-{passthrough}"
        run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)
        slides = pq.read_table(run / "slides.parquet").to_pylist()
        assert {r["slide_id"] for r in slides} == {p.stem for p in slides_dir.glob("*.svs")}
        t = read_tile_table(str(run), slide_ids=[path.stem])
        images = tile_images(t.slice(0, 16))
        with open_slide(path) as s:
            for k in range(16):
                ref = read_tile(s, plan, index[(t.column("x")[k].as_py(), t.column("y")[k].as_py())])
                if passthrough:  # the slide's own JPEG tiles, copied: exactly the reader's pixels
                    assert np.array_equal(images[k], ref)
                else:  # re-encoded at q95
                    assert 0 < np.abs(images[k].astype(int) - ref).mean() < 2.5
    coords = tmp_path / "coords"
    cfg.ingest.pixels = "none"
    summary = run_tiling(cfg, manifest=str(manifest), out=str(coords), show_progress=False)
    ct = pq.read_table(coords / "tiles")  # the directory reads as one table (pyarrow/pandas)
    assert "image" not in ct.column_names
    assert ct.num_rows == summary["tiles"]["total"] == read_tile_table(str(run)).num_rows
    assert json.loads((run / "_state" / "done" / f"{path.stem}.json").read_text())["jpeg_passthrough"] is False
    assert set(ct.column("mpp").to_pylist()) == {0.5} and set(ct.column("tile_size").to_pylist()) == {256}


def _bad_inputs(cohort_dir: Path, into: Path) -> dict[str, tuple[str, str]]:
    """Bad slides next to good ones: name -> (uri, expected error type)."""
    into.mkdir(parents=True, exist_ok=True)
    good = sorted(cohort_dir.glob("*.svs"))[0]
    data = good.read_bytes()
    (into / "truncated.svs").write_bytes(data[: len(data) // 3])
    (into / "empty.svs").write_bytes(b"")
    (into / "notes.svs").write_text("this is not a slide\n")
    return {
        "truncated": ((into / "truncated.svs").as_uri(), "CorruptSlideError"),
        "empty": ((into / "empty.svs").as_uri(), "EmptySlideError"),
        "notes": ((into / "notes.svs").as_uri(), "UnsupportedSlideError"),
        "missing": ((into / "missing.svs").as_uri(), "SlideNotFoundError"),
    }


def test_bad_slides_are_recorded_and_the_batch_completes(cohort, tmp_path):
    import pyarrow as pa

    slides_dir, manifest = cohort
    good = pq.read_table(manifest).select(["uri", "slide_id"])
    bad = _bad_inputs(slides_dir, tmp_path / "bad")
    mixed = pa.concat_tables([good, pa.table({"uri": [u for u, _ in bad.values()], "slide_id": list(bad)})])
    pq.write_table(mixed, tmp_path / "mixed.parquet")
    cfg = _cfg(tmp_path, pixels="none")
    run = tmp_path / "run"
    summary = run_tiling(cfg, manifest=str(tmp_path / "mixed.parquet"), out=str(run), show_progress=False)
    assert summary["slides"]["done"] == good.num_rows
    assert summary["slides"]["failed"] == len(bad) and summary["slides"]["pending"] == 0
    failures = {r["slide_id"]: r for r in pq.read_table(run / "failures.parquet").to_pylist()}
    assert set(failures) == set(bad)
    for name, (uri, error_type) in bad.items():
        assert failures[name]["error_type"] == error_type, failures[name]
        assert uri in failures[name]["message"]  # names the slide
    assert "re-export" in failures["truncated"]["message"] or "copy" in failures["truncated"]["message"]
    assert not any((run / "tiles" / name).exists() and any((run / "tiles" / name).iterdir()) for name in bad)
    # a rerun retries only the failed slides and changes nothing else
    again = run_tiling(cfg, manifest=str(tmp_path / "mixed.parquet"), out=str(run), show_progress=False)
    assert again["slides"]["skipped_already_done"] == good.num_rows and again["slides"]["done_this_run"] == 0
    assert again["slides"]["failed"] == len(bad)
    assert again["tiles"]["total"] == summary["tiles"]["total"]


def _tiling_actors():
    import ray

    return [
        a for a in ray._private.state.actors().values()
        if a["State"] == "ALIVE" and "SlideTilerUDF" in a.get("ActorClassName", "")
    ]


def _expected(cohort_dir: Path, cfg: WsiscaleConfig) -> dict[str, set]:
    return {p.stem: set(zip(*(a.tolist() for a in (lambda pl: (pl.x, pl.y))(_planned(p, cfg)))))
            for p in sorted(cohort_dir.glob("*.svs"))}


def _check_exact(run: Path, expected: dict[str, set]) -> None:
    tiles = read_tile_table(str(run))
    for sid, xy in expected.items():
        got = _xy(tiles, sid)
        assert len(got) == len(set(got)) == len(xy), sid
        assert set(got) == xy
    # also what a glob over the shard files sees (pandas/duckdb users): nothing extra
    globbed = pq.read_table(run / "tiles")
    assert globbed.num_rows == sum(len(v) for v in expected.values())


@pytest.fixture(scope="module")
def big_cohort(tmp_path_factory):
    """Ten 6144 x 6144 slides: long enough to interrupt mid-run."""
    from wsiscale.config import SynthConfig
    from wsiscale.synth.cohort import build_cohort

    out = tmp_path_factory.mktemp("big")
    return out, build_cohort(SynthConfig(n_slides=10, width=6144, height=6144, seed=5, pen_mark_probability=0.0), out, workers=2)


@pytest.mark.slow
def test_killed_actor_mid_run_loses_and_duplicates_nothing(big_cohort, tmp_path):
    """SIGKILL one of the run's tiling actors (found in this job's actor table) once a slide is done: Ray restarts
    the actor, the run itself finishes every slide (no rerun), the slides done before the kill keep their
    shards (the run went on from there) and the output holds every planned tile exactly once."""
    from ray_faults import actor_restarts, job_actors

    slides_dir, manifest = big_cohort
    cfg = _cfg(tmp_path, pixels="raw", batch_tiles=32)
    run = tmp_path / "run"
    result: dict = {}

    def go():
        try:
            result["summary"] = run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    th = threading.Thread(target=go)
    th.start()
    done_dir = run / "_state" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and not (done_dir.exists() and len(list(done_dir.iterdir())) >= 1):
        time.sleep(0.02)
    actors = [a for a in job_actors("SlideTilerUDF") if a.get("Pid")]
    assert actors, "no tiling actor of this run alive"
    before = {f.name: f.read_text() for f in done_dir.iterdir()}
    os.kill(int(actors[0]["Pid"]), signal.SIGKILL)
    th.join(timeout=300)
    restarts = actor_restarts(actors[0]["ActorID"])
    assert 1 <= len(before) < 10, "the kill came after the run had finished"
    assert "error" not in result, result.get("error")  # the faulted run itself finished
    assert restarts >= 1, "Ray did not restart the killed tiling actor"
    assert result["summary"]["slides"]["done"] == 10 and result["summary"]["slides"]["failed"] == 0
    # the slides done before the kill stay done with the same shards (a task whose result died with the actor may be
    # redone: it writes the same shard files, and its record is counted once)
    shards = lambda text: [(s["path"], s["rows"]) for s in json.loads(text)["shards"]]  # noqa: E731
    assert all(shards((done_dir / name).read_text()) == shards(text) for name, text in before.items())
    _check_exact(run, _expected(slides_dir, cfg))


@pytest.mark.slow
def test_interrupted_driver_then_rerun_is_exact(big_cohort, ray_local, tmp_path):
    """SIGKILL a `wsiscale tile` driver (connected to the running Ray) mid-run, then rerun: exact output."""
    slides_dir, manifest = big_cohort
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wsiscale.cli", "tile", "--manifest", str(manifest), "--out", str(run),
           "--pixels", "raw", "--set", f"ray.address={ray_local}", "--set", "ingest.actors=[2,2]",
           "--set", "ingest.batch_tiles=32", "--set", "ingest.memory_gb_per_actor=0.5",
           "--set", "ingest.ray_progress=false", "--set", f"storage.staging_dir={tmp_path / 'staging'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    done_dir = run / "_state" / "done"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (done_dir.exists() and len(list(done_dir.iterdir())) >= 2):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_first = len(list(done_dir.iterdir()))
    assert 2 <= n_first < 10
    deadline = time.time() + 60  # the killed driver's actors go with it
    while time.time() < deadline and _tiling_actors():
        time.sleep(0.2)
    cfg = _cfg(tmp_path, pixels="raw", batch_tiles=32)
    summary = run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)
    assert summary["slides"]["skipped_already_done"] >= n_first
    assert summary["slides"]["done"] == 10 and summary["slides"]["pending"] == 0
    _check_exact(run, _expected(slides_dir, cfg))
    saved = json.loads((run / "run_summary.json").read_text())
    assert saved["slides"] == summary["slides"]
    shutil.rmtree(run)


def test_resume_with_other_settings_is_refused(cohort, tmp_path):
    _, manifest = cohort
    cfg = _cfg(tmp_path, pixels="none")
    run = tmp_path / "run"
    run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)
    cfg.tiling.tile_size = 224
    from wsiscale.config import ConfigError

    with pytest.raises(ConfigError, match=r"tiling: .*'tile_size': 256.*'tile_size': 224.*new --out"):
        run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)
    cfg.tiling.tile_size = 256
    cfg.ingest.actors = (1, 1)  # pool settings may change between runs
    assert run_tiling(cfg, manifest=str(manifest), out=str(run), show_progress=False)["slides"]["done"] == 6


def test_cli_manifest_then_tile(cohort, tmp_path, capsys):
    """`wsiscale manifest DIR --labels` then `wsiscale tile --json`: the commands users run."""
    from wsiscale.cli import main

    slides_dir, cohort_manifest = cohort
    labels = tmp_path / "labels.csv"
    rows = pq.read_table(cohort_manifest).to_pylist()
    labels.write_text("slide_id,diagnosis\n" + "".join(f"{r['slide_id']},{r['label_name']}\n" for r in rows[:4])
                      + "not-a-slide,normal\n")
    manifest = tmp_path / "m.parquet"
    assert main(["manifest", str(slides_dir), "--out", str(manifest), "--labels", str(labels)]) == 0
    said = capsys.readouterr()
    assert "6 slides" in said.err + said.out and "1 label rows matched no slide" in said.err + said.out
    m = pq.read_table(manifest).to_pylist()
    assert len(m) == 6 and sum(r["diagnosis"] is not None for r in m) == 4
    run = tmp_path / "run"
    code = main(["tile", "--manifest", str(manifest), "--out", str(run), "--pixels", "none", "--json",
                 "--set", "ingest.actors=[2,2]", "--set", "ingest.ray_progress=false",
                 "--set", "ingest.memory_gb_per_actor=0.5"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["slides"]["done"] == 6 and summary["pixels"] == "none"
    assert main(["manifest", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err.replace("\n", "")


def test_tile_stream_for_fused_pipelines(cohort, tmp_path):
    """tile_stream: the same tiles as the planner, in memory (raw arrays or JPEG bytes), nothing written."""
    import imagecodecs

    from wsiscale.data.tiling import tile_stream
    from wsiscale.io.manifest import read_manifest

    slides_dir, manifest = cohort
    cfg = _cfg(tmp_path, batch_tiles=40)
    table = read_manifest(str(manifest))
    path = sorted(slides_dir.glob("*.svs"))[1]
    plan = _planned(path, cfg)
    index = {xy: i for i, xy in enumerate(zip(plan.x.tolist(), plan.y.tolist()))}
    for pixels in ("raw", "jpeg"):
        seen: dict[str, list] = {}
        with open_slide(path) as s:
            for batch in tile_stream(table, cfg, pixels=pixels).iter_batches(batch_size=64):
                for k, sid in enumerate(batch["slide_id"]):
                    seen.setdefault(str(sid), []).append((int(batch["x"][k]), int(batch["y"][k])))
                    if str(sid) == path.stem and len(seen[path.stem]) <= 5:
                        img = batch["image"][k] if pixels == "raw" else imagecodecs.jpeg8_decode(batch["image"][k])
                        assert img.shape == (256, 256, 3)
                        assert np.array_equal(img, read_tile(s, plan, index[seen[path.stem][-1]]))
                        assert int(batch["slide_tiles"][k]) == len(plan)
        assert sorted(seen) == sorted(p.stem for p in slides_dir.glob("*.svs"))
        assert sorted(seen[path.stem]) == sorted(zip(plan.x.tolist(), plan.y.tolist()))
