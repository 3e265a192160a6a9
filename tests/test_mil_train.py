"""MIL on Ray Train end to end: 1 vs 2 workers, a killed worker, the CLI and job, and the whole chain on
generated slides (tiling, embedding, instance labels from the truth files, heatmaps)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from mil_cohort import MilCohortSpec, write_mil_cohort


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mil-cohort")
    spec = MilCohortSpec(slides_per_label=12, cells=14, salient_share=0.5)
    spec.layout.tumour_fraction = (0.15, 0.3)  # more tumour than CAMELYON: a few epochs learn it
    run, manifest, _ = write_mil_cohort(root, spec, seed=5)
    return run, manifest


def _cfg(method="weno", workers=1, epochs=12):
    from wsiscale.config import WsiscaleConfig

    cfg = WsiscaleConfig()
    m = cfg.mil
    m.method, m.epochs, m.folds, m.heatmaps, m.patience = method, epochs, 2, 0, 100
    m.projection_dim, m.hidden_dim, m.attention_dim, m.student_hidden_dim = 128, 256, 128, 256
    m.optimizer, m.lr, m.hard_mining_warmup_epochs, m.instance_batch = "adam", 2e-3, 4, 64
    m.student_negative_weight = 0.5
    m.num_workers, m.cpus_per_worker, m.checkpoint_every = (workers, workers), 0.5, 3
    return cfg


@pytest.mark.usefixtures("ray_local")
def test_two_workers_give_the_metrics_of_one(small_cohort, tmp_path):
    """WENO with the same seed on 1 and 2 Ray Train workers (dropout off, so no draw depends on the world; SGD):
    every bag-phase step sums the same per-bag gradients, and every student-phase step normalises its global
    instance batch with BatchNorm statistics all-reduced over the workers (forward and backward) against the
    all-reduced pseudo-label range, so the bag and student losses, the mined instances, and the hard mining
    decisions agree up to float summation order. Evaluation uses BatchNorm running statistics, which each
    worker accumulates over its own bags in the bag phase (averaged after each epoch), so validation losses,
    test probabilities and scores agree closely, and so do the metrics."""
    from wsiscale.mil.run import run_mil

    run, manifest = small_cohort

    def cfg(workers):
        c = _cfg("weno", workers=workers)
        # SGD: Adam turns float-order noise in near-zero gradients into lr-sized steps (~1e-3 apart in 12 epochs)
        c.mil.dropout, c.mil.optimizer, c.mil.lr = 0.0, "sgd", 0.1
        c.mil.hard_mining_threshold = 0.25  # mining on from epoch 5 while SGD is still early on
        return c

    docs = {w: run_mil(cfg(w), run, manifest, str(tmp_path / f"w{w}")) for w in (1, 2)}
    one, two = docs[1], docs[2]
    assert [f["test_slides"] for f in one["folds"]] == [f["test_slides"] for f in two["folds"]] == [12, 12]
    for a, b in zip(one["folds"], two["folds"]):
        assert a["epochs_run"] == b["epochs_run"] == 12
        for key in ("train_loss", "student_loss"):  # the same steps, up to float32 summation order (~1e-8)
            ka, kb = [h[key] for h in a["history"]], [h[key] for h in b["history"]]
            np.testing.assert_allclose(ka, kb, atol=1e-6, err_msg=key)
        assert [h["mined_instances"] for h in a["history"]] == [h["mined_instances"] for h in b["history"]]
        np.testing.assert_allclose([h["val_loss"] for h in a["history"]], [h["val_loss"] for h in b["history"]],
                                   atol=0.01)
        for key in ("bag_auc", "bag_accuracy", "instance_auc", "attention_instance_auc"):
            assert a[key] == pytest.approx(b[key], abs=0.02), key
    assert sum(h["mined_instances"] for f in one["folds"] for h in f["history"]) > 0  # mining was on (epochs 5-12)
    for fold in (0, 1):
        p1 = pq.read_table(tmp_path / "w1" / "predictions" / f"fold-{fold}.parquet")
        p2 = pq.read_table(tmp_path / "w2" / "predictions" / f"fold-{fold}.parquet")
        assert p1.column("slide_id").to_pylist() == p2.column("slide_id").to_pylist()
        np.testing.assert_allclose(p1.column("bag_prob").to_numpy(), p2.column("bag_prob").to_numpy(), atol=0.01)
        i1 = pq.read_table(tmp_path / "w1" / "instances" / f"fold-{fold}.parquet")
        i2 = pq.read_table(tmp_path / "w2" / "instances" / f"fold-{fold}.parquet")
        for key in ("score", "student_prob"):
            assert np.corrcoef(i1.column(key).to_numpy(), i2.column(key).to_numpy())[0, 1] > 0.99, key
    # every slide is tested once, with its instances and their truth labels
    inst = pq.read_table(tmp_path / "w2" / "instances")
    labels = {r["slide_id"]: r["label"] for r in pq.read_table(manifest).to_pylist()}
    assert set(inst.column("slide_id").to_pylist()) == set(labels)
    per_slide: dict[str, list[int]] = {}
    for sid, lab in zip(inst.column("slide_id").to_pylist(), inst.column("instance_label").to_pylist()):
        per_slide.setdefault(sid, []).append(lab)
    assert all(max(v) == labels[s] for s, v in per_slide.items())  # tumour tiles in positive slides only
    assert (tmp_path / "w2" / "models" / "fold-1.safetensors").exists()
    assert "mean +- std" in (tmp_path / "w2" / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_killed_worker_resumes_and_ends_with_every_fold(small_cohort, tmp_path):
    """SIGKILL one of the run's 2 training workers (found in this job's actor table) after the first checkpoint:
    the run itself restarts the group once, from the newest checkpoint at the kill or a later one (its recorded
    start), and ends with both folds, their full epoch histories and test predictions for every slide."""
    from ray_faults import kill_a_train_worker_after_the_first_checkpoint

    from wsiscale.mil.run import run_mil

    run, manifest = small_cohort
    out = tmp_path / "mil"
    killed: list[dict] = []
    thread = kill_a_train_worker_after_the_first_checkpoint(out / "train" / "checkpoint_manager_snapshot.json", killed)
    doc = run_mil(_cfg(workers=2), run, manifest, str(out))
    thread.join(5)
    assert killed, "no training worker of this run was killed"

    def position(meta: dict) -> tuple[int, int]:  # (fold, epoch) a checkpoint resumes at
        h = meta["history"]
        return (h[-1]["fold"], h[-1]["epoch"]) if h else (len(meta["results"]), 0)

    at_kill = position(killed[0]["metas"][-1])
    starts = doc["starts"]
    assert [(s["attempt"], s["world"]) for s in starts] == [(1, 2), (2, 2)], starts  # one restart, 2 workers again
    assert starts[0]["from"] is None
    resumed = (starts[1]["from"]["fold"], starts[1]["from"]["epoch"])
    assert at_kill <= resumed < (2, 0), (at_kill, resumed)  # from a checkpoint, not from scratch, not finished
    assert resumed[1] % 3 == 0  # checkpoints every 3 epochs (or at a fold's end)
    assert [f["fold"] for f in doc["folds"]] == [0, 1]
    for f in doc["folds"]:
        assert [h["epoch"] for h in f["history"]] == list(range(1, 13))  # no epoch lost or repeated
    preds = pq.read_table(out / "predictions")
    assert sorted(preds.column("slide_id").to_pylist()) == sorted(r["slide_id"] for r in pq.read_table(manifest)
                                                                   .to_pylist())


@pytest.mark.usefixtures("ray_local")
def test_train_mil_job_and_bad_input(small_cohort, tmp_path):
    """jobs/train_mil.py runs ABMIL and writes the resolved config; a missing run, a label column with three
    values and too few slides per class exit 2 with the reason."""
    import jobs.train_mil as job

    run, manifest = small_cohort
    out = tmp_path / "abmil"
    sets = ["--set", "mil.epochs=3", "--set", "mil.folds=2", "--set", "mil.heatmaps=0", "--set", "mil.projection_dim=16",
            "--set", "mil.hidden_dim=16", "--set", "mil.attention_dim=8", "--set", "mil.cpus_per_worker=0.5",
            "--set", "ray.address=auto"]
    assert job.main(["--method", "abmil", "--embeddings", run, "--labels", manifest, "--out", str(out), *sets]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["method"] == "abmil" and doc["slides"] == 24 and len(doc["folds"]) == 2
    assert "attention_instance_auc" not in doc["summary"] and "instance_auc" in doc["summary"]
    assert "method: abmil" in (out / "wsiscale.config.yaml").read_text()
    assert job.main(["--embeddings", str(tmp_path / "missing"), "--labels", manifest, "--out", str(tmp_path / "x"),
                     *sets]) == 2
    three = tmp_path / "three.csv"
    rows = pq.read_table(manifest).to_pylist()
    three.write_text("slide_id,label\n" + "".join(f"{r['slide_id']},{i % 3}\n" for i, r in enumerate(rows)))
    assert job.main(["--embeddings", run, "--labels", str(three), "--out", str(tmp_path / "y"), *sets]) == 2
    few = tmp_path / "few.csv"
    few.write_text("slide_id,label\n" + "".join(f"{r['slide_id']},{int(i == 0)}\n" for i, r in enumerate(rows)))
    assert job.main(["--embeddings", run, "--labels", str(few), "--out", str(tmp_path / "z"), *sets]) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_train_mil_on_generated_slides_with_heatmaps(ray_local, tmp_path):
    """The whole chain: a CAMELYON-like generated cohort (shared tissue mix, small tumour regions) is tiled and
    embedded, `wsiscale train-mil --method weno` runs as a separate driver on the same Ray, instance labels
    come from the generator's truth files and heatmaps are drawn over the slide thumbnails."""
    from PIL import Image

    from wsiscale.config import SynthConfig, WsiscaleConfig
    from wsiscale.data.embedding import run_embedding
    from wsiscale.data.tiling import run_tiling
    from wsiscale.synth.cohort import build_cohort

    manifest = build_cohort(SynthConfig(n_slides=6, width=4096, height=4096, seed=11, pen_mark_probability=0.0,
                                        shared_mix=True, tumour_fraction=(0.05, 0.10), label_weights=[1.0, 1.0, 0.0]),
                            tmp_path / "slides", workers=2)
    cfg = WsiscaleConfig()
    cfg.storage.staging_dir = str(tmp_path / "staging")
    cfg.ingest.ray_progress, cfg.ingest.actors, cfg.ingest.memory_gb_per_actor = False, (1, 1), 0.5
    cfg.tiling.mpp, cfg.tiling.tile_size = 2.0, 64
    cfg.embed.encoder, cfg.embed.weights, cfg.embed.dtype = "resnet18_l3", "random", "float32"
    cfg.embed.actors = cfg.embed.reader_actors = (1, 1)
    cfg.embed.cpus_per_actor, cfg.embed.reader_cpus, cfg.embed.memory_gb_per_actor = 1, 0.5, 0.5
    run_tiling(cfg, manifest=str(manifest), out=str(tmp_path / "tiles"), show_progress=False)
    run_embedding(cfg, source=str(tmp_path / "tiles"), out=str(tmp_path / "emb"), show_progress=False)
    out = tmp_path / "weno"
    cmd = [sys.executable, "-m", "wsiscale.cli", "train-mil", "--method", "weno", "--embeddings", str(tmp_path / "emb"),
           "--labels", str(manifest), "--out", str(out), "--json", "--set", f"ray.address={ray_local}",
           "--set", "mil.folds=3", "--set", "mil.epochs=4", "--set", "mil.heatmaps=1", "--set", "mil.projection_dim=32",
           "--set", "mil.hidden_dim=32", "--set", "mil.attention_dim=16", "--set", "mil.student_hidden_dim=64",
           "--set", "mil.cpus_per_worker=0.5", "--set", "mil.hard_mining_warmup_epochs=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["slides"] == 6
    doc = json.loads((out / "results.json").read_text())
    inst = pq.read_table(out / "instances").to_pandas()
    truth = {r["slide_id"]: r["label"] for r in pq.read_table(manifest).to_pylist()}
    share = inst.groupby("slide_id")["instance_label"].mean()
    for sid, label in truth.items():  # tumour tiles (>= half tumour) in tumour slides only, 1-15 % of their tiles
        assert (share[sid] == 0) if label == 0 else (0.01 <= share[sid] <= 0.15), (sid, share[sid])
    assert doc["summary"]["instance_auc"]["n"] == 3 and doc["positive_slides"] == 3
    assert len(doc["heatmaps"]) == 3  # one test slide per fold (a tumour slide first)
    for uri in doc["heatmaps"]:
        png = Image.open(uri.removeprefix("file://"))
        assert png.format == "PNG" and png.width > 4 * png.height / 2  # thumbnail + 3 panels side by side
