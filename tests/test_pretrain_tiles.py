"""DINO on tiles (patch encoder): CPU multi-crop augmentations, the Ray Train loop on a real tiling run,
export to the encoder registry; slide-level probes against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wsiscale.eval.probe import auc, holdout_split, knn_probe, linear_probe
from wsiscale.pretrain.tile_augment import augment_view, color_jitter, random_resized_crop_box, tile_multicrop


def test_random_resized_crop_box_follows_torchvision():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(256, 256, rng, (0.05, 0.4))
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 256
        assert 0.05 * 0.98 <= h * w / 256**2 <= 0.4 * 1.02 and 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # an impossible request (every drawn crop larger than a 4 x 100 image) falls back to the centre crop of the
    # nearest allowed aspect ratio: width 100 > 4 * 4/3 -> 4 x round(4 * 4/3) = 4 x 5 at left (100 - 5) // 2 = 47
    assert random_resized_crop_box(4, 100, np.random.default_rng(1), (0.9, 1.0)) == (0, 47, 4, 5)


def test_colour_jitter_and_views_by_hand():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 8, 3)).astype(np.float32)
    # zero strengths: every op is the identity (brightness x1, contrast/saturation blend 0, hue shift 0)
    np.testing.assert_allclose(color_jitter(x, rng, 0.0, 0.0, 0.0, 0.0), x, atol=1e-5)
    # saturation alone (factor f from [0, 2]) blends with torchvision's grayscale 0.299 R + 0.587 G + 0.114 B;
    # the other ops draw their (neutral) factors in the same random order
    got = color_jitter(x, np.random.default_rng(3), 0.0, 0.0, 1.0, 0.0)
    s = np.random.default_rng(3)
    f = [s.uniform(*((0.0, 2.0) if op == 2 else (1.0, 1.0) if op < 2 else (0.0, 0.0))) for op in s.permutation(4)]
    f = f[list(np.random.default_rng(3).permutation(4)).index(2)]
    expected = np.clip(f * x + (1 - f) * (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 0, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    tile = (rng.uniform(size=(64, 64, 3)) * 255).astype(np.uint8)
    views = tile_multicrop(tile, rng, global_crops=2, local_crops=3, global_size=32, local_size=16)
    assert [v.shape for v in views] == [(32, 32, 3)] * 2 + [(16, 16, 3)] * 3 and all(v.dtype == np.uint8 for v in views)
    # a flat tile stays flat whatever the crop, flip, blur and jitter (solarisation maps 200 -> 55)
    flat = np.full((64, 64, 3), 200, np.uint8)
    for seed in range(20):
        v = augment_view(flat, 16, (0.1, 1.0), np.random.default_rng(seed), blur_p=1.0, solarize_p=0.0)
        assert (v == v.flat[0]).all() or np.ptp(v.reshape(-1, 3), axis=0).max() <= 1
    assert (augment_view(np.zeros((8, 8, 3), np.uint8) + 200, 8, (1.0, 1.0), _rng_skipping_jitter(), 0.0, 1.0)
            == 55).all()


def _rng_skipping_jitter():
    """A generator whose draws skip flip, jitter, grayscale and blur, then solarise (checked below)."""
    for seed in range(1000):
        r = np.random.default_rng(seed)
        random_resized_crop_box(8, 8, r, (1.0, 1.0))
        draws = r.random(5)  # flip, jitter, gray, blur (p 0), solarise (p 1)
        if draws[1] >= 0.8 and draws[2] >= 0.2:
            return np.random.default_rng(seed)
    raise AssertionError("no seed found")


def test_probes_by_hand():
    assert auc(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])) == 0.75
    # kNN (k = 2, T = 1): test vector [1, 0] has cosine 1 with [2, 0] (class 1) and 0.6 with [3, 4] (class 0),
    # and -1 with [-1, 0] (class 0, not among the 2 nearest): votes e^0.6 (class 0) and e^1 (class 1)
    train_x = np.array([[2.0, 0.0], [3.0, 4.0], [-1.0, 0.0]])
    train_y = np.array([1, 0, 0])
    got = knn_probe(train_x, train_y, np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 0]), k=2, temperature=1.0)
    # second test vector [0, 1]: cosine 0 with [2, 0], 0.8 with [3, 4] -> class 0 wins; both correct
    assert got["accuracy"] == 1.0
    p1 = math.e / (math.e + math.exp(0.6))  # class-1 score of the first test vector
    p2 = 1.0 / (1.0 + math.exp(0.8))  # class-1 score of the second
    assert p1 > p2 and got["auc"] == 1.0
    lin = linear_probe(np.array([[1.0, 0.1], [0.9, -0.1], [-1.0, 0.2], [-0.8, -0.2]]), np.array([1, 1, 0, 0]),
                       np.array([[0.7, 0.0], [-0.6, 0.1]]), np.array([1, 0]))
    assert lin == {"auc": 1.0, "accuracy": 1.0}
    train, test = holdout_split(np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1]), 0.3, seed=0)
    assert len(test) == 1 + 2 and sorted(np.r_[train, test].tolist()) == list(range(10))  # round(1.2), round(1.8)
    from wsiscale.config import ConfigError
    from wsiscale.pretrain.evaluate import check_holdout

    check_holdout(np.array([0, 0, 1, 1]), 0.5, seed=0)
    with pytest.raises(ConfigError, match="at least 2 slides in each of 2 classes"):
        check_holdout(np.array([0, 1, 2]), 0.5, seed=0)  # one slide per class: nothing to hold out


def _tile_cfg(tmp_path):
    from wsiscale.config import WsiscaleConfig

    cfg = WsiscaleConfig()
    cfg.storage.staging_dir = str(tmp_path / "staging")
    cfg.ingest.ray_progress = False
    cfg.ingest.actors = (1, 1)
    cfg.ingest.memory_gb_per_actor = 0.5
    cfg.tiling.mpp, cfg.tiling.tile_size = 4.0, 64  # 64 px tiles at 4 um/px: ~30 tissue tiles per slide
    p = cfg.pretrain
    p.level, p.method, p.patch_encoder = "patch", "dino", "timm:test_vit"  # timm's 0.3M-parameter test ViT
    p.global_image_size, p.local_image_size, p.local_crops = 48, 32, 2
    p.out_dim, p.head_hidden_dim, p.head_bottleneck_dim, p.momentum_teacher = 256, 128, 64, 0.9
    p.head_use_bn = True  # DINO's --use_bn_in_head: without it the random test ViT's near-constant outputs stay uniform
    p.batch_size, p.epochs, p.lr, p.lr_warmup_epochs = 16, 2, 0.008, 1
    p.checkpoint_every, p.log_every, p.cpus_per_worker, p.num_workers = 1000, 1, 0.5, (2, 2)
    return cfg


@pytest.mark.usefixtures("ray_local")
def test_tile_dino_on_two_workers_trains_exports_and_evaluates(cohort, tmp_path):
    """DINO on JPEG tiles of generated slides with 2 Ray Train workers: Ray Data cuts and colour-augments the views,
    every step trains and the loss falls, the held-out probe runs every epoch, and the exported teacher embeds
    tiles through the registry.

    The head has BatchNorm with statistics over both workers (``head_use_bn``): a randomly initialised small ViT
    gives these tiles nearly identical features (cosine ~0.97), and without it the centred teacher is uniform and
    the loss climbs towards ln K in the first tens of steps (docs/pretraining.md, learning checks)."""
    from wsiscale.data.embedding import read_embeddings, run_embedding
    from wsiscale.data.readers import read_tile_table, tile_images
    from wsiscale.data.tiling import run_tiling
    from wsiscale.models.encoders import load_encoder
    from wsiscale.pretrain.run import run_pretraining

    _, manifest = cohort
    cfg = _tile_cfg(tmp_path)
    tiles = tmp_path / "tiles"
    run_tiling(cfg, manifest=str(manifest), out=str(tiles), show_progress=False)
    n = read_tile_table(str(tiles)).num_rows
    cfg.pretrain.eval_labels, cfg.pretrain.eval_every, cfg.pretrain.eval_holdout = str(manifest), 1, 0.5
    cfg.pretrain.cluster_cpus = 0.25
    summary = run_pretraining(cfg, str(tiles), str(tmp_path / "pre"))
    m = summary["metrics"]
    assert summary["unit"] == "tiles" and summary["tiles"] == n and summary["shape"] == [3, 48, 48]
    assert m["step"] == m["total_steps"] == 2 * (n // 2 // 16)
    meta = json.loads((tmp_path / "pre" / "pretrain" / summary["checkpoint"].rsplit("/", 1)[-1] / "meta.json")
                      .read_text())
    assert [h["step"] for h in meta["history"]] == list(range(1, m["step"] + 1))
    assert all(np.isfinite(h["loss"]) and h["dino_loss"] == h["loss"] for h in meta["history"])
    losses = [h["loss"] for h in meta["history"]]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 0.5 and last < np.log(256) - 0.5, losses  # below its start and below uniform (ln K)
    assert [e["epoch"] for e in meta["evaluations"]] == [0, 1]  # every epoch (eval_every 1)
    for e in meta["evaluations"]:  # 6 labelled slides, 3 classes: one held out per class
        assert e["eval_slides"] == 3 and 0.0 <= e["probe_accuracy"] <= 1.0 and 0.0 <= e["knn_auc"] <= 1.0
    assert "probe_auc" in m and "knn_accuracy" in m
    # the exported teacher is a registry encoder: load it by directory, and embed a tiling run with it
    enc_dir = tmp_path / "pre" / "encoder"
    spec = json.loads((enc_dir / "encoder.json").read_text())
    assert spec["encoder"] == "timm:test_vit" and spec["step"] == m["step"]
    enc = load_encoder(str(enc_dir), device="cpu")
    from safetensors.torch import load_file

    teacher = load_file(str(enc_dir / "model.safetensors"))
    got = enc.model.state_dict()
    assert all(np.array_equal(got[k].numpy(), v.numpy()) for k, v in teacher.items()) and len(teacher) == len(got)
    cfg.embed.encoder, cfg.embed.dtype, cfg.embed.cpus_per_actor, cfg.embed.reader_cpus = str(enc_dir), "float32", 1, 0.5
    cfg.embed.actors = cfg.embed.reader_actors = (1, 1)
    cfg.embed.memory_gb_per_actor = 0.5
    small = tmp_path / "manifest-1.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(manifest).slice(0, 1), small)
    one = tmp_path / "tiles-1"
    run_tiling(cfg, manifest=str(small), out=str(one), show_progress=False)
    run_embedding(cfg, source=str(one), out=str(tmp_path / "emb"), show_progress=False)
    emb = read_embeddings(str(tmp_path / "emb"))
    table = read_tile_table(str(one))
    direct = enc.embed(tile_images(table)).numpy()
    vecs = emb.column("embedding").combine_chunks().flatten().to_numpy().reshape(emb.num_rows, -1)
    assert vecs.shape == direct.shape
    order = {(x, y): i for i, (x, y) in enumerate(zip(emb.column("x").to_pylist(), emb.column("y").to_pylist()))}
    rows = [order[(x, y)] for x, y in zip(table.column("x").to_pylist(), table.column("y").to_pylist())]
    np.testing.assert_allclose(vecs[rows], direct, rtol=1e-3, atol=1e-3)


@pytest.mark.usefixtures("ray_local")
def test_tile_pretraining_refuses_coordinate_runs_and_slpd(cohort, tmp_path):
    import pyarrow.parquet as pq

    from wsiscale.config import ConfigError
    from wsiscale.data.tiling import run_tiling
    from wsiscale.pretrain.run import run_pretraining

    _, manifest = cohort
    cfg = _tile_cfg(tmp_path)
    cfg.ingest.pixels = "none"
    small = tmp_path / "manifest-1.parquet"
    pq.write_table(pq.read_table(manifest).slice(0, 1), small)
    run_tiling(cfg, manifest=str(small), out=str(tmp_path / "coords"), show_progress=False)
    with pytest.raises(ConfigError, match="ingest.pixels=jpeg"):
        run_pretraining(cfg, str(tmp_path / "coords"), str(tmp_path / "pre"))
    cfg.pretrain.method = "slpd"
    with pytest.raises(ConfigError, match="level=region"):
        run_pretraining(cfg, str(tmp_path / "coords"), str(tmp_path / "pre"))


def test_driver_progress_follows_the_progress_file(tmp_path):
    """The driver's bar (watch_progress) polls the JSON record rank 0 rewrites, skipping a half-written file."""
    import io
    import time

    from rich.console import Console
    from rich.progress import Progress

    from wsiscale.io.uri import write_bytes_atomic
    from wsiscale.progress import watch_progress

    uri = str(tmp_path / "progress.json")
    (tmp_path / "progress.json").write_text('{"step": 3, "tot')  # half-written: ignored
    bar = Progress(console=Console(file=io.StringIO(), force_terminal=True))
    with watch_progress(uri, description="pretrain", every_s=0.05, bar=bar) as shown:
        time.sleep(0.3)
        assert shown is bar and not bar.tasks
        write_bytes_atomic(uri, json.dumps({"step": 7, "total_steps": 20, "epoch": 1, "loss": 2.5, "lr": 1e-4,
                                            "probe_auc": 0.75, "knn_accuracy": 0.5}).encode())
        deadline = time.time() + 5
        while time.time() < deadline and not (bar.tasks and bar.tasks[0].completed == 7):
            time.sleep(0.05)
    task = bar.tasks[0]
    assert task.completed == 7 and task.total == 20
    assert "epoch 2" in task.description and "loss 2.500" in task.description and "probe_auc 0.750" in task.description


def test_tile_views_skip_a_corrupt_tile(tmp_path):
    """A tile shard with one undecodable JPEG: the read task cuts the other tiles' views and names the shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.tiles import encode_jpeg, tile_schema
    from wsiscale.pretrain.tile_data import _view_batches, view_settings

    rng = np.random.default_rng(0)
    images = [encode_jpeg((rng.uniform(size=(64, 64, 3)) * 255).astype(np.uint8), 90) for _ in range(3)]
    images[1] = images[1][:40]  # truncated JPEG
    schema = tile_schema("jpeg")
    table = pa.table({"slide_id": ["s"] * 3, "x": [0, 64, 128], "y": [0, 0, 0], "level": pa.array([0] * 3, pa.int16()),
                      "read_size": pa.array([64] * 3, pa.int32()), "tile_size": pa.array([64] * 3, pa.int32()),
                      "mpp": pa.array([1.0] * 3, pa.float32()), "tissue": pa.array([1.0] * 3, pa.float32()),
                      "image": pa.array(images, pa.binary())}, schema=schema)
    pq.write_table(table, tmp_path / "shard.parquet")
    p = WsiscaleConfig().pretrain
    p.global_image_size, p.local_image_size, p.local_crops = 32, 16, 2
    batch = {"uri": np.array([str(tmp_path / "shard.parquet")]), "slide": np.array([4]), "first_region": np.array([10])}
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("wsiscale.pretrain.tile_data")
    logger.addHandler(handler)
    try:
        out = list(_view_batches(batch, None, view_settings(p)))
    finally:
        logger.removeHandler(handler)
    assert len(out) == 1 and out[0]["tile"].tolist() == [10, 12] and out[0]["slide"].tolist() == [4, 4]
    assert out[0]["view_0"].shape == (2, 32, 32, 3) and out[0]["view_3"].shape == (2, 16, 16, 3)
    assert any("shard.parquet: tile 11 cannot be decoded" in r.getMessage() for r in records)
