"""``wsiscale eval linear-probe``: Giga-SSL's linear evaluation (repeated k-fold, small-data draws) of slide vectors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wsiscale.config import ConfigError, WsiscaleConfig
from wsiscale.eval.linear_probe import (
    kfold_probe,
    mean_pooled_vectors,
    read_slide_vectors,
    run_linear_probe,
    small_data_probe,
    stratified_counts,
)
from wsiscale.eval.probe import linear_probe


def gaussians(n_per_class: list[int], dim: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes ``k`` around ``shift * e_k`` with unit noise: ``x [sum n, dim]``, ``y``."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(n_per_class)])
    x = rng.normal(size=(len(y), dim))
    x[np.arange(len(y)), y] += shift
    return x, y


def test_separable_classes_score_high_in_both_protocols():
    x, y = gaussians([40, 40], 8, 4.0, seed=0)
    k = kfold_probe(x, y, folds=5, repeats=2, c=10.0, seed=0)
    s = small_data_probe(x, y, [20], draws=10, c=10.0, seed=0)
    assert k["auc_mean"] > 0.95 and len(k["results"]) == 10
    assert s["sizes"][0]["auc_mean"] > 0.95 and len(s["sizes"][0]["results"]) == 10


def test_labels_independent_of_features_score_chance():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 10)), rng.permutation(np.repeat([0, 1], 100))
    k = kfold_probe(x, y, folds=5, repeats=4, c=10.0, seed=0)
    s = small_data_probe(x, y, [50], draws=20, c=10.0, seed=0)
    assert abs(k["auc_mean"] - 0.5) < 0.1, k["auc_mean"]
    assert abs(s["sizes"][0]["auc_mean"] - 0.5) < 0.1, s["sizes"][0]["auc_mean"]
    assert k["auc_std"] > 0.02  # real spread over folds, not a constant


def test_stratified_counts():
    assert stratified_counts(np.array([50, 50]), 50).tolist() == [25, 25]
    assert stratified_counts(np.array([30, 70]), 20).tolist() == [6, 14]
    assert stratified_counts(np.array([5, 95]), 10).tolist() == [2, 8]  # at least 2 of the rare class
    assert stratified_counts(np.array([3, 97]), 10) is None  # 2 to train and 2 to test need 4
    assert stratified_counts(np.array([4, 96]), 50).tolist() == [2, 48]  # and 2 of it left to test
    assert stratified_counts(np.array([10, 20, 30]), 12).tolist() == [2, 4, 6]
    assert stratified_counts(np.array([10, 20, 30]), 5) is None  # fewer than 2 per class
    assert stratified_counts(np.array([10, 10]), 17) is None  # fewer than 2 per class left to test
    assert stratified_counts(np.array([10, 10]), 16).tolist() == [8, 8]


def test_small_data_draws_hold_n_slides_of_both_classes_and_test_on_the_rest():
    x, y = gaussians([30, 70], 6, 1.0, seed=2)
    doc = small_data_probe(x, y, [20, 10, 97, 3], draws=8, c=10.0, seed=5)
    assert [s["n"] for s in doc["sizes"]] == [20, 10]
    assert [s["n"] for s in doc["skipped"]] == [97, 3] and all(s["reason"] for s in doc["skipped"])
    for size in doc["sizes"]:
        n = size["n"]
        assert size["n_test"] == 100 - n and len(size["results"]) == 8
        trains = []
        for r in size["results"]:
            train = np.array(r["train"])
            assert len(train) == n and len(set(r["train"])) == n
            assert np.bincount(y[train], minlength=2).tolist() == size["class_counts"]
            assert min(size["class_counts"]) >= 2
            trains.append(tuple(r["train"]))
        assert len(set(trains)) == 8  # different draws
    r = doc["sizes"][0]["results"][3]
    train = np.array(r["train"])
    test = np.setdiff1d(np.arange(100), train)
    assert r["auc"] == linear_probe(x[train], y[train], x[test], y[test], c=10.0, max_iter=1000)["auc"]
    aucs = [r["auc"] for r in doc["sizes"][0]["results"]]
    assert doc["sizes"][0]["auc_mean"] == pytest.approx(np.mean(aucs))
    assert doc["sizes"][0]["auc_std"] == pytest.approx(np.std(aucs))


def test_kfold_tests_every_slide_once_per_repeat():
    x, y = gaussians([12, 25], 4, 1.0, seed=3)
    doc = kfold_probe(x, y, folds=5, repeats=3, c=10.0, seed=0)
    assert doc["folds"] == 5 and len(doc["results"]) == 15
    for rep in range(3):
        tested = np.concatenate([r["test"] for r in doc["results"] if r["repeat"] == rep])
        assert sorted(tested.tolist()) == list(range(len(y)))
    for r in doc["results"]:
        assert r["n_test"] + r["n_train"] == len(y) and set(y[r["test"]].tolist()) == {0, 1}
    splits = [tuple(sorted(r["test"])) for r in doc["results"]]
    assert len(set(splits[:5]) & set(splits[5:10])) < 5  # repeats shuffle differently
    small = kfold_probe(x[9:24], y[9:24], folds=5, repeats=1)
    assert small["folds"] == 3 and small["folds_requested"] == 5  # 3 slides in the rarer class
    with pytest.raises(ValueError, match="at least 2"):
        kfold_probe(x[:13], y[:13], folds=2, repeats=1)


def test_same_seed_same_results_other_seed_other_draws():
    x, y = gaussians([20, 20], 5, 1.0, seed=4)
    a = (kfold_probe(x, y, 4, 2, 10.0, seed=7), small_data_probe(x, y, [10], 5, 10.0, seed=7))
    b = (kfold_probe(x, y, 4, 2, 10.0, seed=7), small_data_probe(x, y, [10], 5, 10.0, seed=7))
    c = (kfold_probe(x, y, 4, 2, 10.0, seed=8), small_data_probe(x, y, [10], 5, 10.0, seed=8))
    assert a == b
    assert [r["train"] for r in a[1]["sizes"][0]["results"]] != [r["train"] for r in c[1]["sizes"][0]["results"]]
    assert [r["test"] for r in a[0]["results"]] != [r["test"] for r in c[0]["results"]]


def test_auc_bookkeeping_by_hand():
    """1-d vectors: the probe scores a slide by the side of the training mean it falls on.

    Negatives at -1 (4), positives at +1 (3) and one positive H at -1. Stratified 2-fold puts 2 of
    each class in each test fold. The fold that tests H: training mean 0, so its test scores are
    high, and H tied with the two negatives: AUC = (2 + 0.5 * 2) / 4 = 0.75. The other fold: 1.0.
    Every repeat: mean 0.875, std 0.125.
    """
    x = np.array([[-1.0]] * 4 + [[1.0]] * 3 + [[-1.0]])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    doc = kfold_probe(x, y, folds=2, repeats=3, c=10.0, seed=0)
    for rep in range(3):
        by_fold = {7 in r["test"]: r["auc"] for r in doc["results"] if r["repeat"] == rep}
        assert by_fold == {True: 0.75, False: 1.0}
    assert doc["auc_mean"] == pytest.approx(0.875) and doc["auc_std"] == pytest.approx(0.125)


def test_multiclass_macro_auc():
    x, y = gaussians([15, 20, 25], 6, 4.0, seed=5)
    k = kfold_probe(x, y, folds=5, repeats=1, c=10.0, seed=0)
    s = small_data_probe(x, y, [12], draws=5, c=10.0, seed=0)
    assert k["auc_mean"] > 0.95
    assert s["sizes"][0]["class_counts"] == [3, 4, 5] and s["sizes"][0]["auc_mean"] > 0.9
    rng = np.random.default_rng(0)
    chance = kfold_probe(rng.normal(size=(90, 6)), np.repeat([0, 1, 2], 30), folds=5, repeats=2)
    assert abs(chance["auc_mean"] - 0.5) < 0.1


def _write_run(root, slides: dict[str, list[np.ndarray]]) -> str:
    """A tiles-mode embedding run written with the project's writers; a slide's list holds its shards."""
    from wsiscale.data.embedding import _tile_table, embed_state
    from wsiscale.runs.state import safe_name
    from wsiscale.io.uri import join_uri, write_bytes_atomic

    run = (root / "embeddings").as_uri()
    state = embed_state(run, WsiscaleConfig())
    for sid, shards in slides.items():
        name = safe_name(sid)
        entries = []
        for i, emb in enumerate(shards):
            merged = pa.table({"x": pa.array(np.arange(len(emb)) * 256, pa.int64()),
                               "y": pa.array(np.zeros(len(emb)), pa.int64()),
                               "embedding": pa.FixedSizeListArray.from_arrays(
                                   pa.array(emb.astype(np.float32).ravel()), emb.shape[1])})
            table = _tile_table(sid, merged, emb.shape[1], pa.float32())
            uri = join_uri(state.slide_dir(name), f"part-{i:05d}.parquet")
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            write_bytes_atomic(uri, sink.getvalue().to_pybytes())
            entries.append({"path": state.relative(uri), "rows": table.num_rows, "bytes": None})
        state.write_done(name, {"status": "done", "slide_id": sid, "name": name, "tiles": sum(len(e) for e in shards),
                                "dim": 3, "mode": "tiles", "encoder": "synthetic", "shards": entries})
    state.consolidate()
    return run


def test_mean_pooled_vectors_equal_numpy_means(tmp_path):
    rng = np.random.default_rng(6)
    a, b1, b2, c = (rng.normal(size=(n, 3)) for n in (5, 4, 7, 1))
    run = _write_run(tmp_path, {"s/a": [a], "b": [b1, b2], "c": [c], "empty": [np.zeros((0, 3))]})
    ids, x = mean_pooled_vectors(run)
    got = dict(zip(ids, x))
    assert sorted(ids) == ["b", "c", "s/a"]  # the slide without tiles is left out
    np.testing.assert_allclose(got["s/a"], a.astype(np.float32).mean(0), rtol=1e-5)
    np.testing.assert_allclose(got["b"], np.concatenate([b1, b2]).astype(np.float32).mean(0), rtol=1e-5)
    np.testing.assert_allclose(got["c"], c[0].astype(np.float32), rtol=1e-6)
    assert x.dtype == np.float32 and x.shape == (3, 3)
    ids2, x2, source = read_slide_vectors(run)  # a run directory is mean-pooled
    assert ids2 == ids and np.array_equal(x2, x) and source == "mean-pooled tile embeddings"


def test_read_slide_vectors_list_or_numeric_columns(tmp_path):
    lists = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"slide_id": ["a", "b"], "feat": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float64())),
                             "note": ["x", "y"]}), lists)
    ids, x, _ = read_slide_vectors(str(lists), column="feat")
    assert ids == ["a", "b"] and x.tolist() == [[1, 2], [3, 4]]
    numeric = tmp_path / "numeric.parquet"
    pq.write_table(pa.table({"slide_id": ["a", "b", "c"], "f0": [1.0, 2.0, float("nan")], "f1": [3, 4, 5],
                             "site": ["p", "q", "r"]}), numeric)
    ids, x, source = read_slide_vectors(numeric.as_uri())
    assert ids == ["a", "b"] and x.tolist() == [[1, 3], [2, 4]] and source == "2 numeric columns"  # NaN row out
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"slide_id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]}), ragged)
    with pytest.raises(ConfigError, match="lengths"):
        read_slide_vectors(str(ragged))


def _cohort(tmp_path, labels: list | None = None, extra_vectors: int = 3, extra_labels: int = 2):
    x, y = gaussians([20, 20], 6, 3.0, seed=8)
    ids = [f"slide-{i:03d}" for i in range(len(y))]
    all_ids = ids + [f"unlabelled-{i}" for i in range(extra_vectors)]
    vx = np.concatenate([x, np.ones((extra_vectors, 6))])
    vectors = tmp_path / "vectors.parquet"
    pq.write_table(pa.table({"slide_id": all_ids, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(vx.astype(np.float32).ravel()), 6)}), vectors)
    names = labels if labels is not None else ["tumour" if v else "normal" for v in y]
    lab = tmp_path / "labels.csv"
    rows = [f"{s},{n}" for s, n in zip(ids, names)] + [f"gone-{i},normal" for i in range(extra_labels)]
    lab.write_text("slide_id,label\n" + "\n".join(rows) + "\n")
    return str(vectors), str(lab), y


def test_cli_end_to_end_writes_results(tmp_path, capsys):
    from wsiscale.cli import main

    vectors, labels, y = _cohort(tmp_path)
    out = tmp_path / "probe"
    argv = ["eval", "linear-probe", "--vectors", vectors, "--labels", labels, "--out", str(out), "--repeats", "2",
            "--train-sizes", "10", "100", "--draws", "5", "--set", "eval.probe_folds=4"]
    assert main(argv + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((out / "linear_probe.json").read_text())
    assert doc["slides"] == 40 and doc["classes"] == ["normal", "tumour"]
    assert doc["class_counts"] == {"normal": 20, "tumour": 20} and doc["task"] == "binary"
    assert doc["left_out"]["vectors_without_label"] == 3 and doc["left_out"]["labels_without_vector"] == 2
    assert doc["config"]["probe_folds"] == 4 and doc["config"]["probe_train_sizes"] == [10, 100]
    assert len(doc["kfold"]["results"]) == 8 and doc["kfold"]["auc_mean"] > 0.95
    assert doc["small_data"]["sizes"][0]["n"] == 10 and len(doc["small_data"]["sizes"][0]["results"]) == 5
    assert doc["small_data"]["skipped"][0]["n"] == 100  # leaves no slide to test
    assert all(doc["slide_ids"][i].startswith("slide-") for i in doc["small_data"]["sizes"][0]["results"][0]["train"])
    md = (out / "linear_probe.md").read_text()
    assert "| 4-fold x 2 |" in md and "small data, n=10" in md and "skipped" in md
    assert main(argv) == 0  # without --json the table is the result: on stdout, and nothing on stderr
    said = capsys.readouterr()
    assert "linear probe: 40 slides" in said.out and "4-fold x 2" in said.out and "AUC" not in said.err


def test_positive_labels_binarise_multiclass_table(tmp_path):
    names = ["a", "b", "c", "d"] * 10
    vectors, labels, _ = _cohort(tmp_path, labels=names)
    cfg = WsiscaleConfig()
    cfg.eval.probe_repeats, cfg.eval.probe_train_sizes, cfg.eval.probe_draws = 1, [8], 2
    doc = run_linear_probe(cfg, vectors, labels, None)
    assert doc["task"] == "multiclass" and doc["classes"] == ["a", "b", "c", "d"]
    cfg.eval.positive_labels = ["b", "d"]
    doc = run_linear_probe(cfg, vectors, labels, None)
    assert doc["task"] == "binary" and doc["class_counts"] == {"a|c": 20, "b|d": 20}


def test_mean_pooled_run_through_the_driver(tmp_path):
    rng = np.random.default_rng(9)
    slides = {f"s{i}": [rng.normal(size=(4, 3)) + (2.0 if i % 2 else 0.0)] for i in range(12)}
    run = _write_run(tmp_path, slides)
    lab = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"slide_id": list(slides), "label": [i % 2 for i in range(12)]}), lab)
    cfg = WsiscaleConfig()
    cfg.eval.probe_repeats, cfg.eval.probe_train_sizes, cfg.eval.probe_draws = 1, [6], 3
    doc = run_linear_probe(cfg, run, str(lab), str(tmp_path / "out"))
    assert doc["source"] == "mean-pooled tile embeddings" and doc["slides"] == 12
    assert doc["classes"] == ["0", "1"] and doc["kfold"]["auc_mean"] > 0.9
    assert (tmp_path / "out" / "linear_probe.md").exists()


def test_clear_errors_for_one_class_and_no_shared_slides(tmp_path):
    from wsiscale.cli import main

    vectors, labels, _ = _cohort(tmp_path, labels=["normal"] * 40, extra_labels=0)
    cfg = WsiscaleConfig()
    with pytest.raises(ConfigError, match="2 classes") as err:
        run_linear_probe(cfg, vectors, labels, None)
    assert labels in str(err.value) and "positive_labels" in str(err.value)
    assert main(["eval", "linear-probe", "--vectors", vectors, "--labels", labels]) == 2

    other = tmp_path / "other.csv"
    other.write_text("slide_id,label\nx1,0\nx2,1\nx3,0\nx4,1\n")
    with pytest.raises(ConfigError, match="no slide id is in both"):
        run_linear_probe(cfg, vectors, str(other), None)

    few = tmp_path / "few.csv"
    few.write_text("slide_id,label\nslide-000,0\nslide-001,1\nslide-002,1\n")
    with pytest.raises(ConfigError, match="at least 4 slides"):
        run_linear_probe(cfg, vectors, str(few), None)

    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "jobs" / "eval_linear_probe.py"
    spec = importlib.util.spec_from_file_location("eval_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--vectors", vectors, "--labels", str(other)]) == 2
    assert job.main(["--vectors", str(tmp_path / "missing.parquet"), "--labels", labels]) == 2
