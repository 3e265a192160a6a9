"""Embedding pipeline on a real local Ray: CPU reader actors -> encoder actors -> per-slide Parquet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wsiscale.config import TilingConfig, WsiscaleConfig
from wsiscale.data.embedding import read_embeddings, run_embedding
from wsiscale.data.readers import read_tile_table, tile_images
from wsiscale.data.tiling import run_tiling
from wsiscale.io import detect_slide_tissue, open_slide, plan_tiles, read_tile
from wsiscale.io.planning import plan_region_patches
from wsiscale.models.encoders import load_encoder

pytestmark = pytest.mark.usefixtures("ray_local")


def _cfg(tmp_path, encoder="resnet18_l3", **embed) -> WsiscaleConfig:
    cfg = WsiscaleConfig()
    cfg.storage.staging_dir = str(tmp_path / "staging")
    cfg.ingest.ray_progress = False
    cfg.ingest.actors = (1, 1)
    cfg.ingest.memory_gb_per_actor = 0.5
    cfg.embed.encoder = encoder
    cfg.embed.weights = "random"
    cfg.embed.dtype = "float32"
    cfg.embed.actors = (1, 1)
    cfg.embed.reader_actors = (1, 1)
    cfg.embed.reader_cpus = 0.5
    cfg.embed.cpus_per_actor = 1.5
    cfg.embed.memory_gb_per_actor = 0.5
    cfg.embed.chunk_tiles = 48  # several chunks (part files) per slide
    cfg.embed.batch_size = 16
    for k, v in embed.items():
        setattr(cfg.embed, k, v)
    return cfg


def _subset(manifest, tmp_path, n: int):
    table = pq.read_table(manifest).slice(0, n)
    path = tmp_path / f"manifest-{n}.parquet"
    pq.write_table(table, path)
    return path, table


def _by_xy(table: pa.Table) -> dict[tuple[str, int, int], np.ndarray]:
    emb = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False))
    dim = table.schema.field("embedding").type.list_size
    emb = emb.reshape(-1, dim).astype(np.float32)
    return {(s, int(x), int(y)): e for s, x, y, e in zip(table.column("slide_id").to_pylist(), table.column("x").to_pylist(),
                                                       table.column("y").to_pylist(), emb)}


def test_from_tile_shards_equals_direct_model_call(cohort, tmp_path):
    """resnet18_l3 over a JPEG tiling run: every tile's embedding equals the encoder on the decoded tile."""
    _, manifest = cohort
    sub, _ = _subset(manifest, tmp_path, 2)
    cfg = _cfg(tmp_path, hdf5=True)
    tiles_run = tmp_path / "tiles"
    run_tiling(cfg, manifest=str(sub), out=str(tiles_run), show_progress=False)
    summary = run_embedding(cfg, source=str(tiles_run), out=str(tmp_path / "emb"), show_progress=False)
    assert summary["slides"]["done"] == 2 and summary["slides"]["failed"] == 0
    tiles = read_tile_table(str(tiles_run))
    assert summary["tiles"]["total"] == tiles.num_rows
    enc = load_encoder("resnet18_l3", weights="random", device="cpu", seed=cfg.embed.seed)
    direct = enc.embed(tile_images(tiles)).numpy()
    got = _by_xy(read_embeddings(str(tmp_path / "emb")))
    assert len(got) == tiles.num_rows
    for k, key in enumerate(zip(tiles.column("slide_id").to_pylist(), tiles.column("x").to_pylist(),
                                tiles.column("y").to_pylist())):
        np.testing.assert_allclose(got[key], direct[k], rtol=1e-3, atol=1e-4)
    assert not list((tmp_path / "emb" / "parts").glob("*/*.parquet"))  # parts merged and removed
    # CLAM/TRIDENT HDF5 export next to the Parquet
    import h5py

    sid = tiles.column("slide_id")[0].as_py()
    with h5py.File(tmp_path / "emb" / "h5" / f"{sid}.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
    assert feats.shape[1] == 256 and coords.shape == (feats.shape[0], 2)
    np.testing.assert_allclose(feats[0], got[(sid, *(int(v) for v in coords[0]))], rtol=1e-6)
    # a coordinates-only tiling run (pixels re-read from the slides by the readers): the same embeddings,
    # since pass-through JPEG tiles decode to exactly the reader's pixels
    cfg.ingest.pixels = "none"
    run_tiling(cfg, manifest=str(sub), out=str(tmp_path / "coords"), show_progress=False)
    cfg.embed.hdf5 = False
    run_embedding(cfg, source=str(tmp_path / "coords"), out=str(tmp_path / "emb-coords"), show_progress=False)
    again = _by_xy(read_embeddings(str(tmp_path / "emb-coords")))
    assert again.keys() == got.keys()
    for key in list(got)[::7]:
        np.testing.assert_allclose(again[key], got[key], rtol=1e-3, atol=1e-4)


def test_fused_tiling_with_vit_equals_direct_model_call(cohort, tmp_path):
    """vit_s16 straight from the slides (tiling fused in): same as the encoder on read_tile's pixels."""
    slides_dir, manifest = cohort
    sub, table = _subset(manifest, tmp_path, 2)
    cfg = _cfg(tmp_path, encoder="vit_s16", dtype="float16")
    cfg.tiling.mpp = 1.0  # fewer, resized tiles (512 px read -> 256)
    summary = run_embedding(cfg, manifest=str(sub), out=str(tmp_path / "emb"), show_progress=False)
    assert summary["slides"]["done"] == 2
    enc = load_encoder("vit_s16", weights="random", device="cpu", seed=cfg.embed.seed)
    out = read_embeddings(str(tmp_path / "emb"))
    assert out.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    for sid in table.column("slide_id").to_pylist():
        path = slides_dir / f"{sid}.svs"
        with open_slide(path) as s:
            plan = plan_tiles(s, cfg.tiling, detect_slide_tissue(s, cfg.tissue))
            pick = np.linspace(0, len(plan) - 1, 6).astype(int)
            direct = enc.embed(np.stack([read_tile(s, plan, int(i)) for i in pick])).numpy()
        got = _by_xy(read_embeddings(str(tmp_path / "emb"), slide_ids=[sid]))
        assert len(got) == len(plan)
        for k, i in enumerate(pick):
            np.testing.assert_allclose(got[(sid, int(plan.x[i]), int(plan.y[i]))], direct[k], rtol=2e-2, atol=2e-2)


def test_regions_mode_shapes_and_coordinates(cohort, tmp_path):
    """Regions: one row per 1024 px region (4x4 grid of 256 px patches), [D, 4, 4] in C order."""
    slides_dir, manifest = cohort
    sub, table = _subset(manifest, tmp_path, 1)
    cfg = _cfg(tmp_path, mode="regions", region_size=1024, region_grid=4)
    run_embedding(cfg, manifest=str(sub), out=str(tmp_path / "emb"), show_progress=False)
    out = read_embeddings(str(tmp_path / "emb"))
    assert json.loads(out.schema.metadata[b"wsiscale.region_shape"]) == [256, 4, 4]
    sid = table.column("slide_id")[0].as_py()
    with open_slide(slides_dir / f"{sid}.svs") as s:
        regions = plan_tiles(s, TilingConfig(mpp=0.5, tile_size=1024), detect_slide_tissue(s, cfg.tissue))
        assert out.num_rows == len(regions) > 0
        assert out.column("x").to_pylist() == regions.x.tolist() and out.column("y").to_pylist() == regions.y.tolist()
        patches = plan_region_patches(regions, 4)
        assert len(patches) == 16 * len(regions) and patches.tile_size == 256
        # patch (row i, col j) of region r sits at the region corner + (j, i) * 256
        r, i, j = len(regions) // 2, 1, 3
        k = r * 16 + i * 4 + j
        assert (patches.x[k], patches.y[k]) == (regions.x[r] + j * 256, regions.y[r] + i * 256)
        enc = load_encoder("resnet18_l3", weights="random", device="cpu", seed=cfg.embed.seed)
        direct = enc.embed(read_tile(s, patches, k)[None]).numpy()[0]
    grid = np.asarray(out.column("embedding")[r].values.to_numpy(zero_copy_only=False), np.float32).reshape(256, 4, 4)
    np.testing.assert_allclose(grid[:, i, j], direct, rtol=1e-3, atol=1e-4)


def test_bad_slides_recorded_and_rerun_skips_done(cohort, tmp_path):
    slides_dir, manifest = cohort
    sub, table = _subset(manifest, tmp_path, 2)
    (tmp_path / "empty.svs").write_bytes(b"")
    mixed = pa.concat_tables([table.select(["uri", "slide_id"]),
                              pa.table({"uri": [(tmp_path / "empty.svs").as_uri()], "slide_id": ["empty"]})])
    pq.write_table(mixed, tmp_path / "mixed.parquet")
    cfg = _cfg(tmp_path)
    out = tmp_path / "emb"
    s1 = run_embedding(cfg, manifest=str(tmp_path / "mixed.parquet"), out=str(out), show_progress=False)
    assert s1["slides"]["done"] == 2 and s1["slides"]["failed"] == 1
    fail = pq.read_table(out / "failures.parquet").to_pylist()[0]
    assert fail["error_type"] == "EmptySlideError" and "empty.svs" in fail["message"]
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*/*.parquet")}
    s2 = run_embedding(cfg, manifest=str(tmp_path / "mixed.parquet"), out=str(out), show_progress=False)
    assert s2["slides"]["skipped_already_done"] == 2 and s2["tiles"]["this_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*/*.parquet")} == mtimes
    cfg.embed.encoder = "vit_s16"
    with pytest.raises(ValueError, match=r"embed.encoder: 'resnet18_l3' -> 'vit_s16'"):
        run_embedding(cfg, manifest=str(tmp_path / "mixed.parquet"), out=str(out), show_progress=False)


@pytest.mark.slow
def test_interrupted_run_resumes_without_recomputing(cohort, ray_local, tmp_path):
    """SIGKILL an `wsiscale embed` driver after some slides finished; the rerun embeds only the rest."""
    _, manifest = cohort
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "wsiscale.cli", "embed", "--manifest", str(manifest), "--out", str(out),
           "--set", f"ray.address={ray_local}", "--set", "embed.weights=random", "--set", "embed.dtype=float32",
           "--set", "embed.actors=[1,1]", "--set", "embed.reader_actors=[1,1]", "--set", "embed.reader_cpus=0.5",
           "--set", "embed.cpus_per_actor=1.5", "--set", "embed.memory_gb_per_actor=0.5", "--set", "embed.chunk_tiles=32",
           "--set", "embed.batch_size=16", "--set", "ingest.ray_progress=false",
           "--set", f"storage.staging_dir={tmp_path / 'staging'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    done_dir = out / "_state" / "done"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (done_dir.exists() and len(list(done_dir.iterdir())) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.stem for p in done_dir.iterdir()}
    assert 2 <= len(first) < 6
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*/*.parquet")}
    time.sleep(2.0)  # the killed driver's actors go with it
    cfg = _cfg(tmp_path, chunk_tiles=32)
    summary = run_embedding(cfg, manifest=str(manifest), out=str(out), show_progress=False)
    assert summary["slides"]["done"] == 6 and summary["slides"]["skipped_already_done"] >= len(first)
    for p, t in mtimes.items():  # finished slides were not recomputed
        assert p.stat().st_mtime_ns == t
    got = read_embeddings(str(out))
    expected = sum(r["tiles"] for r in pq.read_table(out / "slides.parquet").to_pylist())
    assert got.num_rows == expected and len(set(zip(got.column("slide_id").to_pylist(), got.column("x").to_pylist(),
                                                    got.column("y").to_pylist()))) == expected
