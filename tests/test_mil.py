"""MIL heads and WENO: losses, pseudo labels and hard positive mining against hand-computed values,
distributed normalisation and gradient sums on two real gloo processes, folds and metrics."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from ports import free_port

from wsiscale.config import ConfigError, MilConfig
from wsiscale.mil.folds import stratified_folds
from wsiscale.mil.losses import bag_loss, global_range, hard_positive_keep, pseudo_labels, student_loss
from wsiscale.models.mil import AttentionMIL, PoolingMIL, build_mil_model


def test_bag_and_student_losses_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # P(positive) = 3/4
    assert bag_loss(logits, 1.0).item() == pytest.approx(-math.log(0.75 + 1e-5), rel=1e-6)
    assert bag_loss(logits, 0.0).item() == pytest.approx(-math.log(0.25 + 1e-5), rel=1e-6)
    s_logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # p1 = 1/2, 3/4
    targets = torch.tensor([1.0, 0.0])
    # -(0.1 (1 - q) log p0 + 0.9 q log p1): instance 1 -0.9 log 0.5, instance 2 -0.1 log 0.25
    want = [-0.9 * math.log(0.5 + 1e-5), -0.1 * math.log(0.25 + 1e-5)]
    assert student_loss(s_logits, targets, 0.1).item() == pytest.approx(np.mean(want), rel=1e-6)
    assert student_loss(s_logits, targets, 0.1, reduction="sum").item() == pytest.approx(sum(want), rel=1e-6)
    # soft targets mix both terms: q = 0.25 on p = (1/2, 1/2)
    q = torch.tensor([0.25])
    want = -(0.1 * 0.75 * math.log(0.5 + 1e-5) + 0.9 * 0.25 * math.log(0.5 + 1e-5))
    assert student_loss(torch.zeros(1, 2), q, 0.1).item() == pytest.approx(want, rel=1e-6)


def test_pseudo_labels_normalise_with_the_global_range_and_zero_negative_bags():
    scores = torch.tensor([1.0, 3.0, 5.0, 7.0])
    got = pseudo_labels(scores, lo=1.0, hi=5.0, bag_label=torch.tensor([1, 1, 1, 1]))
    np.testing.assert_allclose(got.numpy(), [1e-5, 0.5, 1 - 1e-5, 1 - 1e-5], rtol=1e-6)  # clamped to [eps, 1 - eps]
    mixed = pseudo_labels(scores, 1.0, 5.0, torch.tensor([1, 0, 1, 0]))
    np.testing.assert_allclose(mixed.numpy(), [1e-5, 0.0, 1 - 1e-5, 0.0], rtol=1e-6)
    assert pseudo_labels(scores, 1.0, 5.0, 0).sum().item() == 0.0


def test_hard_positive_mining_keeps_what_the_student_does_not_yet_call_positive():
    keep = hard_positive_keep(torch.tensor([0.2, 0.7, 0.5, 0.9, 0.1]), 0.5)
    assert keep.tolist() == [0, 2, 4]  # 0.5 is kept (P <= threshold), 0.7 and 0.9 dropped
    assert hard_positive_keep(torch.tensor([0.6, 0.95, 0.8]), 0.5).tolist() == [1]  # all above: the most positive


def test_bag_phase_drops_exactly_the_mined_instances():
    """After the warm-up, a positive bag loses the instances its student scores above the threshold
    (the same probabilities computed here from the same train-mode encoder), a negative bag none."""
    from wsiscale.data.bags import Bag, BagSpec, BagStore
    from wsiscale.mil.loop import _optimizers, bag_phase

    mil = MilConfig(method="weno", projection_dim=8, hidden_dim=8, attention_dim=4, student_hidden_dim=8,
                    hard_mining_warmup_epochs=2, hard_mining_threshold=0.5)
    torch.manual_seed(0)
    model = build_mil_model(mil, 6)
    with torch.no_grad():  # a student that calls about half of the instances positive
        model.student.net[-1].bias.copy_(torch.tensor([0.0, 0.0]))
        model.student.net[-1].weight.normal_(0, 3.0)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 6)).astype(np.float32)
    specs = [BagSpec("pos", 1, "1", [], 40), BagSpec("neg", 0, "0", [], 40)]
    store = BagStore(specs)
    for i in (0, 1):
        store.put(i, Bag(feats, np.zeros(40, np.int64), np.zeros(40, np.int64), None))
    model.train()
    with torch.no_grad():
        p = model.student_probability(model.encoder(torch.from_numpy(feats)))
    expected = int((p > 0.5).sum())
    assert 0 < expected < 40
    opts = _optimizers(model, mil)
    for g in opts.values():  # no update: the probabilities stay those computed above
        for group in g.param_groups:
            group["lr"] = 0.0
    stats = bag_phase(model, opts, store, [0], mil, fold=0, epoch=3, rank=0, world=1, device=torch.device("cpu"))
    assert stats["dropped"] == expected and stats["bags"] == 1
    assert bag_phase(model, opts, store, [1], mil, 0, 3, 0, 1, torch.device("cpu"))["dropped"] == 0
    assert bag_phase(model, opts, store, [0], mil, 0, 2, 0, 1, torch.device("cpu"))["dropped"] == 0  # warm-up


def test_attention_and_pooling_heads_by_hand():
    torch.manual_seed(0)
    head = AttentionMIL(4, hidden_dim=6, attention_dim=3, dropout=0.0).eval()
    x = torch.randn(5, 4)
    logits, a = head(x)
    h = head.mlp(x)
    w = torch.softmax(torch.tanh(head.attention_v(h)) @ head.attention_w.weight.T + head.attention_w.bias, 0)
    torch.testing.assert_close(logits, head.classifier((w.T @ h)).reshape(1, 2))
    torch.testing.assert_close(a, head.instance_scores(x))
    fixed = torch.tensor([0.0, 0.0, 0.0, 0.0, 50.0])  # replaced scores: the bag is its last instance
    torch.testing.assert_close(head(x, scores=fixed)[0], head.classifier(h[4:5]), atol=1e-5, rtol=1e-5)
    gated = AttentionMIL(4, 6, 3, gated=True, dropout=0.0).eval()
    assert gated(x)[0].shape == (1, 2) and gated(x)[1].shape == (5,)
    pool = PoolingMIL(4, 6, "max", dropout=0.0).eval()
    logits, p = pool(x)
    torch.testing.assert_close(logits, pool.classifier(pool.mlp(x).max(0).values).unsqueeze(0))
    torch.testing.assert_close(p, torch.softmax(pool.classifier(pool.mlp(x)), -1)[:, 1])


def test_stratified_folds_test_every_slide_once():
    labels = np.array([0] * 13 + [1] * 7)
    folds = stratified_folds(labels, 5, seed=3, val_fraction=0.2)
    tested = sorted(i for f in folds for i in f["test"])
    assert tested == list(range(20))
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and not (set(f["train"]) | set(f["val"])) & set(f["test"])
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == 20
        assert sorted(np.bincount(labels[f["test"]], minlength=2).tolist()) in ([1, 2], [1, 3], [2, 2], [2, 3])
        assert set(labels[f["val"]]) == {0, 1}
    with pytest.raises(ConfigError, match="at least 5 slides of each class"):
        stratified_folds(np.array([0] * 10 + [1] * 4), 5)


def test_fold_metrics_by_hand():
    from wsiscale.mil.results import fold_metrics, summarise

    recs = [
        {"label": 1, "bag_prob": 0.9, "score": np.array([0.1, 0.8]), "instance_label": np.array([0, 1]),
         "student_prob": np.array([0.2, 0.9]), "student_max_prob": 0.9, "bag_prob_student_attention": 0.8},
        {"label": 0, "bag_prob": 0.6, "score": np.array([0.3, 0.2]), "instance_label": np.array([0, 0]),
         "student_prob": np.array([0.1, 0.95]), "student_max_prob": 0.95, "bag_prob_student_attention": 0.3},
        {"label": 0, "bag_prob": 0.2, "score": np.array([0.9]), "instance_label": np.array([0]),
         "student_prob": np.array([0.05]), "student_max_prob": 0.05, "bag_prob_student_attention": 0.1},
    ]
    m = fold_metrics(recs, "weno")
    assert m["bag_auc"] == 1.0 and m["bag_accuracy"] == pytest.approx(2 / 3)  # 0.6 on a negative bag is wrong
    # student instance scores: positive 0.9 vs negatives 0.2, 0.1, 0.95, 0.05 -> beats 3 of 4
    assert m["instance_auc"] == pytest.approx(3 / 4) and m["test_instances"] == 5 and m["positive_instances"] == 1
    # attention: positive 0.8 vs 0.1, 0.3, 0.2, 0.9 -> 3 of 4
    assert m["attention_instance_auc"] == pytest.approx(3 / 4)
    assert m["student_bag_auc"] == pytest.approx(0.5) and m["bag_auc_student_attention"] == 1.0
    s = summarise([m, m | {"bag_auc": 0.5}])
    assert s["bag_auc"] == {"mean": 0.75, "std": 0.25, "n": 2}


def _two_ranks(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from wsiscale.train.distributed import allreduce_gradients, average_buffers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    lo, hi = global_range([1.5, -2.0][rank], [4.0, 3.0][rank])
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
    if rank == 0:
        layer(torch.tensor([[1.0, 2.0]])).sum().backward()  # rank 1 has no gradient: counts as zeros
    allreduce_gradients(list(layer.parameters()))
    bn = torch.nn.BatchNorm1d(1)
    bn.running_mean.fill_(float(rank * 2))  # ranks 0 and 2 -> mean 1
    average_buffers(bn)
    np.save(os.path.join(out, f"rank{rank}.npy"), np.array([lo, hi, *layer.weight.grad.flatten().tolist(),
                                                            float(layer.bias.grad), float(bn.running_mean)]))
    dist.destroy_process_group()


def test_distributed_range_gradients_and_batchnorm_on_two_gloo_processes(tmp_path):
    """The pseudo-label range is the min/max over every worker; gradients are summed; BN statistics averaged."""
    import torch.multiprocessing as mp

    mp.spawn(_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npy")
        np.testing.assert_allclose(got, [-2.0, 4.0, 1.0, 2.0, 1.0, 1.0])


def _batch(seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Five rows of 3 features and fixed upstream gradients for the synchronised-BatchNorm checks."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, generator=g) * 2 + 1, torch.randn(5, 3, generator=g)


def _norm():
    """WENO's encoder norm: per call (bag) unless :func:`batch_norm_across_workers` is on."""
    from wsiscale.models.distributed_batchnorm import DistributedBatchNorm1d

    bn = DistributedBatchNorm1d(3, momentum=0.25, synchronised=False)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return bn


def _norm_ranks(rank: int, port: int, out: str, split: int) -> None:
    """Rank 0 holds rows ``[:split]``, rank 1 rows ``[split:]`` (possibly none) of one global batch."""
    import torch.distributed as dist

    from wsiscale.models.distributed_batchnorm import batch_norm_across_workers
    from wsiscale.train.distributed import allreduce_gradients

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x, upstream = _batch()
    rows = slice(0, split) if rank == 0 else slice(split, 5)
    xr = x[rows].clone().requires_grad_(True)
    bn = _norm()
    local = bn(x[:2] if rank == 0 else x[2:]).detach()  # not synchronised: each worker's own rows (a bag)
    bn.load_state_dict(_norm().state_dict())  # undo that call's running-statistics update
    with batch_norm_across_workers(bn):
        y = bn(xr)
        refused = ""
        try:
            bn(x[:1] if rank == 0 else x[:0])  # one row over both workers
        except ValueError as e:
            refused = str(e)
    (y * upstream[rows]).sum().backward()
    allreduce_gradients(list(bn.parameters()))
    np.savez(os.path.join(out, f"norm{rank}.npz"), y=y.detach().numpy(), dx=xr.grad.numpy(),
             dw=bn.weight.grad.numpy(), db=bn.bias.grad.numpy(), rm=bn.running_mean.numpy(),
             rv=bn.running_var.numpy(), synced=bn.synchronised, local=local.numpy(), refused=refused)
    dist.destroy_process_group()


@pytest.mark.parametrize("split", [2, 5])
def test_batch_norm_across_two_gloo_workers_equals_one_process_on_the_whole_batch(tmp_path, split):
    """WENO's student phase on N workers: BatchNorm over the global batch (forward, input and parameter gradients,
    running statistics) as nn.BatchNorm1d on all rows in one process - also when a worker holds no rows; outside
    the context (the bag phase) each worker normalises its own rows; a global batch of one row is refused."""
    import torch.multiprocessing as mp

    x, upstream = _batch()
    ref = torch.nn.BatchNorm1d(3, momentum=0.25)
    ref.load_state_dict(_norm().state_dict())
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    (y * upstream).sum().backward()
    mp.spawn(_norm_ranks, args=(free_port(), str(tmp_path), split), nprocs=2, join=True)
    got = [np.load(tmp_path / f"norm{r}.npz") for r in (0, 1)]
    np.testing.assert_allclose(np.concatenate([got[0]["y"], got[1]["y"]]), y.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.concatenate([got[0]["dx"], got[1]["dx"]]), xr.grad.numpy(), atol=1e-5)
    for r, g in enumerate(got):
        np.testing.assert_allclose(g["dw"], ref.weight.grad.numpy(), atol=1e-5)
        np.testing.assert_allclose(g["db"], ref.bias.grad.numpy(), atol=1e-5)
        np.testing.assert_allclose(g["rm"], ref.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(g["rv"], ref.running_var.numpy(), atol=1e-6)
        assert not g["synced"]  # the context restores the bag phase's per-call statistics
        own = torch.nn.BatchNorm1d(3)
        own.load_state_dict(_norm().state_dict())
        np.testing.assert_allclose(g["local"], own(x[:2] if r == 0 else x[2:]).detach().numpy(), atol=1e-6)
        assert "at least 2 rows over all workers, got 1" in str(g["refused"])
    if split == 5:
        assert got[1]["y"].shape == (0, 3)


def test_bag_store_leaves_out_unreadable_and_nan_slides_with_a_warning(tmp_path):
    """A slide whose embeddings are missing or hold NaN is skipped (None) with a warning naming it; a good one loads
    with its instance labels from the truth file."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.data.bags import BagSpec, BagStore

    def table(vals):
        vals = np.asarray(vals, np.float32)
        return pa.table({"x": pa.array([0, 16, 0, 16], pa.int64()), "y": pa.array([0, 0, 16, 16], pa.int64()),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vals.ravel()), vals.shape[1])})

    good, bad = tmp_path / "good.parquet", tmp_path / "nan.parquet"
    pq.write_table(table(np.arange(8).reshape(4, 2)), good)
    pq.write_table(table([[0, 1], [np.nan, 2], [3, 4], [5, 6]]), bad)
    truth = tmp_path / "t.truth.npz"
    np.savez(truth, tumour=np.array([[1, 0], [0, 0]], bool), cell_px=np.int64(16))
    specs = [BagSpec("good", 1, "1", [str(good)], 4, tile_extent=16.0, truth_uri=truth.as_uri()),
             BagSpec("nan", 0, "0", [str(bad)], 4), BagSpec("gone", 0, "0", [str(tmp_path / "missing.parquet")], 4)]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("wsiscale.data.bags").addHandler(handler)
    try:
        store = BagStore(specs)
        bag = store.get(0)
        assert bag.feats.shape == (4, 2) and bag.instance_labels.tolist() == [1, 0, 0, 0]
        assert store.get(1) is None and store.get(2) is None
    finally:
        logging.getLogger("wsiscale.data.bags").removeHandler(handler)
    text = " ".join(r.getMessage() for r in records)
    assert "slide nan" in text and "NaN" in text and "slide gone" in text and "missing.parquet" in text
