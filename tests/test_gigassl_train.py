"""Giga-SSL end to end: augmented tile embeddings from real slides, training on Ray Train with a killed
worker and a resubmission, slide vectors, the job and its bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from gigassl_cohort import GigaSSLCohortSpec, write_gigassl_cohort


@pytest.fixture(scope="module")
def ssl_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("gigassl-cohort")
    spec = GigaSSLCohortSpec(slides_per_label=12, cells=12, augmentations=3)
    return write_gigassl_cohort(root, spec, seed=3)


def _cfg(workers=1, epochs=6):
    from wsiscale.config import WsiscaleConfig

    cfg = WsiscaleConfig()
    g = cfg.gigassl
    g.batch_size, g.epochs, g.checkpoint_every, g.warmup_epochs, g.lr = 12, epochs, 5, 2, 0.1
    g.embed_dim, g.projection_dim, g.tiles_per_view, g.embed_views = 32, 16, 16, 4
    g.num_workers, g.cpus_per_worker = (workers, workers), 0.5
    return cfg


def test_grid_positions_and_view_jitter():
    from wsiscale.gigassl.views import grid_index, jitter_positions, sample_view

    # a plan with a fractional step (511.5 px): corners floor(i * 511.5), with a gap of 3 steps
    x = np.floor(np.array([0, 1, 2, 5, 6, 1000]) * 511.5).astype(int) + 7
    assert grid_index(x).tolist() == [0, 1, 2, 5, 6, 1000]
    assert grid_index(np.array([4, 4, 4])).tolist() == [0, 0, 0]
    rng = np.random.default_rng(0)
    rows, cols = np.array([3, 4, 4, 9]), np.array([1, 1, 2, 5])
    r, c = jitter_positions(rows, cols, rng, flip=False, rotate=False, scale=False)
    assert (r - rows).std() == 0 and (c - cols).std() == 0  # a pure translation keeps the layout
    r, c = jitter_positions(rows, cols, np.random.default_rng(1), flip=True, rotate=False, scale=False)
    assert np.array_equal(np.abs(np.diff(r)), np.abs(np.diff(rows))) and np.array_equal(np.abs(np.diff(c)),
                                                                                         np.abs(np.diff(cols)))
    k, idx = sample_view(7, 50, 3, rng)
    assert 0 <= k < 3 and idx.shape == (50,) and idx.min() >= 0 and idx.max() < 7 and len(set(idx)) < 50


def test_slide_shared_augmentation_is_deterministic_and_per_slide():
    from wsiscale.data.augment import augment_tiles, augmentation_rng

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, size=(3, 32, 32, 3), dtype=np.uint8)
    a = augment_tiles(tiles, augmentation_rng(0, "slide-a", 1))
    assert a.shape == tiles.shape and a.dtype == np.uint8
    # per tile: the same tile gives the same pixels in any batch (chunk boundaries do not matter)
    assert np.array_equal(augment_tiles(tiles[1:2], augmentation_rng(0, "slide-a", 1)), a[1:2])
    assert not np.array_equal(augment_tiles(tiles, augmentation_rng(0, "slide-a", 2)), a)
    assert not np.array_equal(augment_tiles(tiles, augmentation_rng(0, "slide-b", 1)), a)


@pytest.mark.usefixtures("ray_local")
def test_augmented_embeddings_equal_the_encoder_on_augmented_tiles(cohort, tmp_path):
    """embed.augmentations=2 on a real tiling run: row group k of augmented/<slide>.parquet holds every tile embedded
    under the slide's augmentation k (several chunks per slide share it), float16."""
    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.augment import augment_tiles, augmentation_rng
    from wsiscale.data.embedding import read_embeddings, run_embedding
    from wsiscale.data.readers import read_tile_table, tile_images
    from wsiscale.data.tiling import run_tiling
    from wsiscale.gigassl.data import gigassl_slides, read_augmentation
    from wsiscale.models.encoders import load_encoder

    _, manifest = cohort
    table = pq.read_table(manifest).slice(0, 1)
    pq.write_table(table, tmp_path / "one.parquet")
    cfg = WsiscaleConfig()
    cfg.storage.staging_dir = str(tmp_path / "staging")
    cfg.ingest.ray_progress, cfg.ingest.actors, cfg.ingest.memory_gb_per_actor = False, (1, 1), 0.5
    e = cfg.embed
    e.encoder, e.weights, e.dtype, e.augmentations = "resnet18_l3", "random", "float32", 2
    e.actors, e.reader_actors, e.reader_cpus, e.cpus_per_actor, e.memory_gb_per_actor = (1, 1), (1, 1), 0.5, 1.5, 0.5
    e.chunk_tiles, e.batch_size = 4, 16
    cfg.tiling.mpp = 2.0  # few tiles
    run_tiling(cfg, manifest=str(tmp_path / "one.parquet"), out=str(tmp_path / "tiles"), show_progress=False)
    summary = run_embedding(cfg, source=str(tmp_path / "tiles"), out=str(tmp_path / "emb"), show_progress=False)
    assert summary["slides"]["done"] == 1
    entries, dim = gigassl_slides(str(tmp_path / "emb"))
    (entry,) = entries
    assert dim == 256 and entry.augmentations == 2 and entry.tiles > 2 * e.chunk_tiles  # several chunks
    f = pq.ParquetFile(entry.augmented.removeprefix("file://"))
    assert f.num_row_groups == 2 and f.metadata.num_rows == 2 * entry.tiles
    assert f.schema_arrow.field("embedding").type.value_type == "halffloat"
    tiles = read_tile_table(str(tmp_path / "tiles"))
    images = tile_images(tiles)
    enc = load_encoder("resnet18_l3", weights="random", device="cpu", seed=e.seed)
    plain = read_embeddings(str(tmp_path / "emb"))
    base = np.stack(plain.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    pick = np.array([0, 5, entry.tiles - 1])
    for k in range(2):
        got = read_augmentation(entry.augmented, k)
        assert got.shape == (entry.tiles, 256)
        direct = enc.embed(augment_tiles(images[pick], augmentation_rng(e.seed, entry.slide_id, k))).numpy()
        np.testing.assert_allclose(got[pick], direct, rtol=2e-2, atol=2e-2)
        assert np.abs(got - base).mean() > 1e-3  # augmented copies differ from the plain embeddings
    assert not np.allclose(read_augmentation(entry.augmented, 0), read_augmentation(entry.augmented, 1), atol=1e-3)


@pytest.mark.usefixtures("ray_local")
def test_training_survives_a_killed_worker_resumes_and_embeds(ssl_cohort, tmp_path):
    """2 workers, one of them SIGKILLed after the first checkpoint: the run itself restarts once, from a checkpoint
    (its recorded start), every epoch is in the history once and the loss falls. Resubmitting with more epochs resumes (the first epochs are not redone).
    Embedding writes one vector per slide."""
    from ray_faults import kill_a_train_worker_after_the_first_checkpoint

    from wsiscale.gigassl.run import embed_gigassl, train_gigassl

    run, labels = ssl_cohort
    out = tmp_path / "ssl"
    killed: list[dict] = []
    thread = kill_a_train_worker_after_the_first_checkpoint(out / "train" / "checkpoint_manager_snapshot.json", killed)
    doc = train_gigassl(_cfg(workers=2, epochs=20), run, str(out))
    thread.join(5)
    assert killed, "no training worker of this run was killed"
    spe = 24 // 12
    at_kill = killed[0]["metas"][-1]["metrics"]["step"]  # the newest checkpoint when the worker died
    starts = doc["starts"]
    assert [(s["attempt"], s["world"]) for s in starts] == [(1, 2), (2, 2)], starts  # one restart, 2 workers again
    assert starts[0]["from"] is None and at_kill <= starts[1]["from"]["step"] < 20 * spe, (at_kill, starts)
    assert starts[1]["from"]["step"] % (5 * spe) == 0  # a checkpoint every 5 epochs
    assert [h["epoch"] for h in doc["history"]] == list(range(20)) and doc["steps"] == 20 * spe
    assert [h["step"] for h in doc["history"]] == [spe * (i + 1) for i in range(20)]
    losses = [h["loss"] for h in doc["history"]]  # NT-Xent of 12-slide batches is noisy: compare 5-epoch means
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    again = train_gigassl(_cfg(workers=2, epochs=24), run, str(out))
    assert [h["epoch"] for h in again["history"]] == list(range(24))
    assert again["starts"][:2] == starts and again["starts"][2]["from"] == {"step": 20 * spe}  # the resubmission
    assert again["history"][:20] == doc["history"]  # resumed from the checkpoint, not retrained
    summary = embed_gigassl(_cfg(), run, str(out), str(out / "vectors"))
    vectors = pq.read_table(out / "vectors" / "slide_vectors.parquet")
    ids = sorted(r["slide_id"] for r in pq.read_table(labels).to_pylist())
    assert sorted(vectors.column("slide_id").to_pylist()) == ids
    assert vectors.schema.field("embedding").type.list_size == 32
    assert summary["slides"] == 24 and summary["dim"] == 32 and 0 < summary["bytes_per_slide"] < 2000
    assert json.loads((out / "vectors" / "summary.json").read_text())["slides"] == 24


@pytest.mark.usefixtures("ray_local")
def test_gigassl_job_and_bad_input(ssl_cohort, tmp_path):
    """jobs/gigassl.py trains and embeds, writing the resolved config; a missing run and a run without
    augmented embeddings exit 2 with the fix."""
    import jobs.gigassl as job

    run, _ = ssl_cohort
    out = tmp_path / "job"
    sets = ["--set", "gigassl.epochs=2", "--set", "gigassl.batch_size=8", "--set", "gigassl.warmup_epochs=1", "--set", "gigassl.embed_dim=16",
            "--set", "gigassl.projection_dim=8", "--set", "gigassl.cpus_per_worker=0.5", "--set", "ray.address=auto"]
    assert job.main(["--embeddings", run, "--out", str(out), *sets]) == 0
    assert (out / "model.safetensors").exists() and (out / "vectors" / "slide_vectors.parquet").exists()
    assert "epochs: 2" in (out / "wsiscale.config.yaml").read_text()
    meta = json.loads((out / "gigassl.json").read_text())
    assert meta["slides"] == 24 and len(meta["history"]) == 2
    assert job.main(["--embeddings", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), *sets]) == 2
    from wsiscale.config import ConfigError
    from wsiscale.gigassl.run import train_gigassl

    greedy = _cfg()  # on a fixed cluster: workers holding every CPU would wait for view reads forever
    greedy.gigassl.cpus_per_worker = 2.0
    with pytest.raises(ConfigError, match="gigassl.cpus_per_worker"):
        train_gigassl(greedy, run, str(tmp_path / "greedy"))
    plain = tmp_path / "plain"  # the same run without augmented embeddings
    from wsiscale.runs.state import RunState

    state = RunState(run, None, data_dir="embeddings")
    rows = [r | {"augmented": None, "augmentations": None} for r in state.read_table("slides.parquet").to_pylist()]
    import shutil

    import pyarrow as pa

    shutil.copytree(run.removeprefix("file://"), plain)
    pq.write_table(pa.Table.from_pylist(rows), plain / "slides.parquet")
    assert job.main(["--embeddings", str(plain), "--out", str(tmp_path / "y"), *sets]) == 2


@pytest.mark.usefixtures("ray_local")
def test_training_and_embedding_on_s3(ssl_cohort, s3_bucket):
    """The run on a real S3 endpoint (moto): Ray Data tasks read the augmented row groups from s3://, the
    model, checkpoints and slide vectors are written there."""
    from pathlib import Path

    from wsiscale.gigassl.data import gigassl_slides, read_augmentation
    from wsiscale.gigassl.run import embed_gigassl, train_gigassl

    endpoint, bucket, client = s3_bucket
    run, _ = ssl_cohort
    local = Path(run.removeprefix("file://"))
    for f in local.rglob("*"):
        if f.is_file():
            client.upload_file(str(f), bucket, f"run/{f.relative_to(local)}")
    cfg = _cfg(epochs=2)
    cfg.storage.endpoint_url = endpoint
    remote = f"s3://{bucket}/run"
    entries, _ = gigassl_slides(remote, cfg.storage)
    local_entries, _ = gigassl_slides(run)
    assert entries[3].augmented.startswith("s3://")
    np.testing.assert_array_equal(read_augmentation(entries[3].augmented, 2, cfg.storage),
                                  read_augmentation(local_entries[3].augmented, 2))
    doc = train_gigassl(cfg, remote, f"s3://{bucket}/ssl")
    assert len(doc["history"]) == 2
    summary = embed_gigassl(cfg, remote, f"s3://{bucket}/ssl", f"s3://{bucket}/ssl/vectors")
    assert summary["slides"] == 24
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="ssl/")["Contents"]}
    assert {"ssl/model.safetensors", "ssl/gigassl.json", "ssl/vectors/slide_vectors.parquet"} <= keys
