"""Pretraining building blocks against hand-computed values (DINO loss, centering, SLPD targets, schedules, EMA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from wsiscale.pretrain.augment import grid_multicrop
from wsiscale.pretrain.heads import DINOHead
from wsiscale.pretrain.losses import DINOLoss, prototype_targets
from wsiscale.pretrain.region_vit import RegionViT
from wsiscale.pretrain.schedules import ema_update, teacher_temp_schedule
from wsiscale.train.schedules import cosine_schedule

LN2, LN3, LN4, LN43 = math.log(2), math.log(3), math.log(4), math.log(4 / 3)


def test_dino_loss_and_centering_by_hand():
    # teacher targets q0 = softmax([0, ln3]) = [1/4, 3/4], q1 = [3/4, 1/4]; student views give log-probs
    # s0 = [-ln2, -ln2], s1 = [ln 1/4, ln 3/4], s2 = [ln 3/4, ln 1/4]; pairs (q0,s1) (q0,s2) (q1,s0) (q1,s2)
    loss = DINOLoss(out_dim=2, student_views=3, teacher_views=2, student_temp=1.0, center_momentum=0.9)
    teacher = torch.tensor([[0.0, LN3], [LN3, 0.0]])
    student = torch.tensor([[0.0, 0.0], [0.0, LN3], [LN3, 0.0]])
    expected = ((0.25 * LN4 + 0.75 * LN43) + (0.25 * LN43 + 0.75 * LN4) + LN2 + (0.75 * LN43 + 0.25 * LN4)) / 4
    assert loss(student, teacher, teacher_temp=1.0).item() == pytest.approx(expected, abs=1e-6)  # 0.732365
    assert expected == pytest.approx(0.732365, abs=1e-6)
    # centre: 0.9 * 0 + 0.1 * mean of the teacher outputs = 0.1 * [ln3 / 2, ln3 / 2]
    np.testing.assert_allclose(loss.center.numpy(), [[0.1 * LN3 / 2] * 2], atol=1e-7)
    # the centre is subtracted before sharpening: q = softmax(([0, ln3] - [0, ln3]) / 0.5) = [1/2, 1/2]
    one = DINOLoss(out_dim=2, student_views=2, teacher_views=1, student_temp=0.5)
    one.center.copy_(torch.tensor([[0.0, LN3]]))
    # T = 1: view 0 is skipped; student view 1 = [0, ln3] / 0.5 = [0, 2 ln3] -> log p = [ln 1/10, ln 9/10]
    got = one(torch.tensor([[5.0, 5.0], [0.0, LN3]]), torch.tensor([[0.0, LN3]]), teacher_temp=0.5,
              update_center=False)
    assert got.item() == pytest.approx(-0.5 * (math.log(0.1) + math.log(0.9)), abs=1e-6)


def test_sinkhorn_knopp_centering_by_hand():
    # exp(t / tau) = [[2, 1], [1, 1]] (2 samples x 2 dims); / total 5 -> [[.4, .2], [.2, .2]]; one iteration:
    # dims (over samples) [.6, .4] -> each to mass 1/2: [[1/3, 1/6], [1/4, 1/4]] (rows: dims);
    # samples [7/12, 5/12] -> each to 1: sample 0 = [4/7, 3/7], sample 1 = [2/5, 3/5]
    from wsiscale.pretrain.losses import sinkhorn_knopp

    t = 0.5 * torch.log(torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(sinkhorn_knopp(t, 0.5, iterations=1).numpy(), [[4 / 7, 3 / 7], [2 / 5, 3 / 5]],
                               atol=1e-6)
    # nearly equal logits (a collapsed head): softmax targets are near uniform, equipartition still splits them
    close = torch.tensor([[0.01, 0.0], [0.0, 0.01], [0.012, 0.0], [0.0, 0.011]])
    q = sinkhorn_knopp(close, 0.04, iterations=20)
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(q.sum(0).numpy(), [2.0, 2.0], atol=1e-3)
    # the loss uses them in place of the centred softmax, and leaves the centre alone
    loss = DINOLoss(out_dim=2, student_views=2, teacher_views=1, student_temp=1.0, centering="sinkhorn")
    student = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5],
                                      [0.25, 0.75], [0.25, 0.75], [0.25, 0.75], [0.25, 0.75]]))
    want = -(q * torch.log(torch.tensor([0.25, 0.75]))).sum(1).mean()
    assert loss(student, close, teacher_temp=0.04).item() == pytest.approx(want.item(), abs=1e-5)
    assert not loss.center.any()
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(out_dim=2, student_views=2, centering="mean")


def _sinkhorn_ranks(rank: int, port: int, out: str, split: int) -> None:
    import torch.distributed as dist

    from wsiscale.pretrain.losses import sinkhorn_knopp

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    t = torch.linspace(-1, 1, 5 * 7).reshape(5, 7).sin()
    mine = t[:split] if rank == 0 else t[split:]
    np.save(f"{out}/sk{rank}.npy", sinkhorn_knopp(mine, 0.1).numpy())
    dist.destroy_process_group()


@pytest.mark.parametrize("split", [2, 5])
def test_sinkhorn_knopp_on_two_gloo_workers_equals_one_process_on_the_whole_batch(tmp_path, split):
    """Equipartition is over the global batch: rows split 2/3 (and 5/0: a worker without rows joins the
    all-reduces) give the targets of one process holding all 5 rows."""
    import torch.multiprocessing as mp
    from ports import free_port

    from wsiscale.pretrain.losses import sinkhorn_knopp

    mp.spawn(_sinkhorn_ranks, args=(free_port(), str(tmp_path), split), nprocs=2, join=True)
    got = np.concatenate([np.load(tmp_path / f"sk{r}.npy") for r in (0, 1)])
    want = sinkhorn_knopp(torch.linspace(-1, 1, 5 * 7).reshape(5, 7).sin(), 0.1).numpy()
    assert got.shape == (5, 7)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_slpd_prototype_targets_by_hand():
    protos = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # 2 slides x 3 prototypes x 2-d
    slide, assign = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    np.testing.assert_array_equal(prototype_targets(assign, slide, protos).numpy(), [[4, 5], [6, 7], [8, 9]])
    # slide 0's nearest slide is 1 and vice versa; prototype p of a slide matches prototype (2 - p) of the other
    nb_slides = torch.tensor([[1], [0]])
    nb_protos = torch.tensor([[[2], [1], [0]], [[2], [1], [0]]])
    inter = prototype_targets(assign, slide, protos, nb_slides, nb_protos)
    # region 0: slide 0, proto 2 -> slide 1 proto 0 = [6, 7]; region 1: slide 1, proto 0 -> slide 0 proto 2 = [4, 5];
    # region 2: slide 1, proto 1 -> slide 0 proto 1 = [2, 3]
    np.testing.assert_array_equal(inter.numpy(), [[6, 7], [4, 5], [2, 3]])


def test_schedules_and_ema_by_hand():
    np.testing.assert_allclose(cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=2, warmup_epochs=1),
                               [0.0, 1.0, 1.0, 0.5])
    s = cosine_schedule(0.996, 1.0, epochs=10, steps_per_epoch=3)
    assert s[0] == pytest.approx(0.996) and len(s) == 30 and (np.diff(s) >= 0).all() and s[-1] < 1.0
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    teacher, student = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    teacher.weight.data.fill_(1.0)
    student.weight.data.fill_(3.0)
    ema_update(teacher, student, 0.75)
    assert teacher.weight.item() == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)  # 1.5


def test_region_vit_head_and_multicrop_shapes():
    torch.manual_seed(0)
    vit = RegionViT(input_dim=32, embed_dim=24, depth=2, num_heads=4, grid=16)
    rng = np.random.default_rng(0)
    region = rng.normal(size=(32, 16, 16)).astype(np.float32)
    views = grid_multicrop(region, rng, global_crops=2, local_crops=3)
    assert [v.shape for v in views] == [(32, 14, 14)] * 2 + [(32, 6, 6)] * 3
    for v in views:  # each view is a sub-grid of the region, possibly flipped left-right
        found = any(np.array_equal(v, c) or np.array_equal(v[:, :, ::-1], c)
                    for i in range(17 - v.shape[1]) for j in range(17 - v.shape[2])
                    for c in [region[:, i : i + v.shape[1], j : j + v.shape[2]]])
        assert found
    for size in (16, 14, 6):
        assert vit(torch.randn(3, 32, size, size)).shape == (3, 24)
    with pytest.raises(ValueError, match="expects 32"):
        vit(torch.randn(1, 16, 16, 16))
    head = DINOHead(24, 100, hidden_dim=64, bottleneck_dim=16)
    logits, z = head(torch.randn(5, 24))
    assert logits.shape == (5, 100) and z.shape == (5, 16)
    np.testing.assert_allclose(z.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)
    assert logits.abs().max().item() <= 1.0 + 1e-5  # unit bottleneck x unit-norm weight rows (g fixed at 1)
    np.testing.assert_allclose(head.last(z * 3).detach().numpy(), logits.detach().numpy(), atol=1e-5)


def test_dino_head_batchnorm_standardises_hidden_features_over_the_batch():
    """``head_use_bn`` (DINO's ``--use_bn_in_head``): a BatchNorm after each hidden linear, so inputs that share
    a large common component (a random encoder on similar tiles) still give outputs that differ across the batch."""
    from wsiscale.config import DinoConfig
    from wsiscale.models.distributed_batchnorm import DistributedBatchNorm1d
    from wsiscale.pretrain.model import build_model

    torch.manual_seed(0)
    x = 10.0 + 0.2 * torch.randn(32, 24)  # nearly identical inputs (cosine ~ 0.9998)
    plain = DINOHead(24, 100, hidden_dim=64, bottleneck_dim=16)
    bn = DINOHead(24, 100, hidden_dim=64, bottleneck_dim=16, use_bn=True)
    for a, b in zip([m for m in plain.mlp if isinstance(m, nn.Linear)], [m for m in bn.mlp if isinstance(m, nn.Linear)]):
        b.load_state_dict(a.state_dict())  # the same linear weights
    bn.last_layer.load_state_dict(plain.last_layer.state_dict())
    assert [type(m).__name__ for m in bn.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU",
                                                "Linear"]
    h = bn.mlp[0](x)
    by_hand = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)  # standardised over the batch
    np.testing.assert_allclose(bn.mlp[1](h).detach().numpy(), by_hand.detach().numpy(), atol=1e-4)

    def spread(z: torch.Tensor) -> float:  # 1 - mean pairwise cosine of the normalised bottleneck
        return float(1 - (z @ z.T).mean())

    assert spread(bn(x)[1]) > 100 * spread(plain(x)[1])
    p = DinoConfig(embed_dim=24, depth=1, heads=4, out_dim=100, head_hidden_dim=64, head_bottleneck_dim=16,
                   head_use_bn=True)
    model = build_model(p, [8, 4, 4])
    assert sum(isinstance(m, DistributedBatchNorm1d) for m in model.head.modules()) == 2  # global statistics


def _region_run(run: str, slides: int = 8, regions: int = 8, dim: int = 16, grid: int = 16, seed: int = 0) -> None:
    """A regions-mode embedding run written by the real writers: token grids mixing 2 patterns per slide class."""
    import pyarrow as pa
    from embedding_runs import patch_table, write_slide

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.embedding import _region_table, embed_state

    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(4, dim)) * 2
    state = embed_state(run, WsiscaleConfig())
    for s in range(slides):
        sid = f"slide-{s:02d}"
        pick = patterns[[2 * (s % 2), 2 * (s % 2) + 1]]
        labels = rng.integers(0, 2, size=(regions, grid, grid))
        tokens = pick[labels] + 0.5 * rng.normal(size=(regions, grid, grid, dim))  # [R, g, g, D], region-major
        merged = patch_table(tokens.reshape(-1, dim))
        write_slide(state, sid, _region_table(sid, merged, dim, grid, pa.float16()), tiles=merged.num_rows)
    state.consolidate()


@pytest.mark.usefixtures("ray_local")
def test_epoch_batches_mix_slides_and_repeat_per_seed_epoch_and_rank(tmp_path):
    """Read tasks yield one slide at a time; the worker's seeded shuffle buffer makes every batch mix several
    slides, visits each region once per epoch, repeats an epoch's batches exactly for the same (seed, epoch,
    rank) (what a resumed run relies on) and changes them with the epoch. Buffer 0 keeps the read order."""
    import ray

    from wsiscale.pretrain.data import region_dataset, region_files
    from wsiscale.pretrain.loop import epoch_batches

    run = str(tmp_path / "emb")
    _region_run(run, slides=8, regions=8, dim=4, grid=2)
    files, _, shape = region_files(run)
    options = ray.data.DataContext.get_current().execution_options
    kept, options.preserve_order = options.preserve_order, True  # as run_pretraining's DataConfig
    try:
        ds = region_dataset(files, shape, seed=3)  # the dataset keeps the context it was made in
    finally:
        options.preserve_order = kept

    def epoch(buffer, key):
        got = [(b["slide"].numpy(), b["region"].numpy()) for b in epoch_batches(ds, 8, buffer, key)]
        return [s for s, _ in got], [list(zip(s.tolist(), r.tolist())) for s, r in got]

    _check_epoch_batches(epoch)


def _check_epoch_batches(epoch) -> None:
    """8 slides x 8 regions, batches of 8, a buffer of 32 (``epoch(buffer, key)``: an epoch's slide ids, items)."""
    slides, items = epoch(32, (0, 0, 0))
    assert len(items) == 8 and sorted(x for b in items for x in b) == sorted((s, r) for s in range(8) for r in range(8))
    assert np.mean([len(set(s.tolist())) for s in slides]) >= 3  # a batch holds several slides' regions
    assert epoch(32, (0, 0, 0))[1] == items  # the same epoch again: the same batches
    assert epoch(32, (0, 1, 0))[1] != items  # the next epoch: another order
    plain, _ = epoch(0, (0, 0, 0))
    assert all(len(set(s.tolist())) == 1 for s in plain)  # read order: one slide per batch
    first = [int(s[0]) for s in plain]
    assert first != sorted(first) and first == [int(s[0]) for s in epoch(0, (5, 5, 5))[0]]  # files: seeded order


def _tiny(cfg, epochs: int = 6):
    p = cfg.pretrain
    p.method, p.embed_dim, p.depth, p.heads, p.out_dim = "dino", 32, 2, 4, 128
    p.head_hidden_dim, p.head_bottleneck_dim, p.momentum_teacher = 64, 32, 0.9  # a fast teacher for 24 steps
    p.batch_size, p.epochs, p.lr, p.lr_warmup_epochs, p.local_crops = 8, epochs, 0.016, 1, 4  # peak lr 1e-3
    p.checkpoint_every, p.log_every, p.cpus_per_worker, p.num_workers = 8, 2, 0.5, (2, 2)
    return cfg


@pytest.mark.usefixtures("ray_local")
def test_region_dino_on_two_workers_learns_and_resumes(tmp_path):
    """2-worker CPU DDP (gloo) DINO on region grids: loss falls, checkpoints, a rerun resumes and exports the encoder."""
    import json
    from pathlib import Path

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.data import region_files
    from wsiscale.pretrain.run import run_pretraining

    run = str(tmp_path / "emb")
    _region_run(run)
    files, ids, shape = region_files(run)
    assert shape == [16, 16, 16] and len(ids) == 8 and sum(f.rows for f in files) == 64
    cfg = _tiny(WsiscaleConfig())
    out = tmp_path / "pre"
    greedy = _tiny(WsiscaleConfig())
    greedy.pretrain.cpus_per_worker = 1.0  # 2 workers x 1 CPU on the 2-CPU local Ray: nothing left to read data
    from wsiscale.config import ConfigError

    with pytest.raises(ConfigError, match="hold 2 of the cluster's 2 CPUs"):
        run_pretraining(greedy, run, str(out))
    summary = run_pretraining(cfg, run, str(out))
    m = summary["metrics"]
    assert m["world"] == 2 and m["step"] == m["total_steps"] == 6 * (64 // 2 // 8)
    assert (m["device"], m["backend"], m["precision"]) == ("cpu", "gloo", "fp32")  # autocast is GPU-only
    ckpts = sorted(p for p in (out / "pretrain").glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 2 and summary["checkpoint"] == str(ckpts[-1])  # num_to_keep=2: steps 16 and 24
    history = json.loads((ckpts[-1] / "meta.json").read_text())["history"]
    losses = [h["loss"] for h in history]
    assert len(losses) == 24 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    spec = json.loads((out / "encoder" / "encoder.json").read_text())
    assert spec["step"] == 24 and (out / "encoder" / "region_vit.safetensors").exists()
    # the exported region ViT is the final teacher's backbone; the tile-encoder registry refuses it by name
    from wsiscale.models.errors import EncoderError
    from wsiscale.pretrain.region_vit import load_region_encoder

    teacher = torch.load(Path(summary["checkpoint"]) / "state.pt", weights_only=True)["teacher"]
    vit = load_region_encoder(str(out / "encoder"))
    for k, v in vit.state_dict().items():
        assert torch.equal(v, teacher[f"backbone.{k}"]), k
    from wsiscale.models.encoders import load_encoder

    with pytest.raises(EncoderError, match="region_vit"):
        load_encoder(str(out / "encoder"))
    # the same job again through jobs/pretrain.py (same storage path and name): it resumes from the last
    # checkpoint and finds nothing left to do
    import importlib.util

    from wsiscale.runs.config_file import save_config

    spec = importlib.util.spec_from_file_location("pretrain_job", Path(__file__).parents[1] / "jobs" / "pretrain.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    save_config(cfg, str(tmp_path))
    assert job.main(["--config", str(tmp_path / "wsiscale.config.yaml"), "--embeddings", run, "--out", str(out)]) == 0
    again = json.loads((out / "encoder" / "encoder.json").read_text())
    assert again["step"] == 24
    assert job.main(["--embeddings", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def _kill_a_worker_after_the_first_checkpoint(out, killed: list[dict]):
    """A thread that SIGKILLs a Ray Train worker of this run once the run has registered a checkpoint."""
    from ray_faults import kill_a_train_worker_after_the_first_checkpoint

    return kill_a_train_worker_after_the_first_checkpoint(out / "pretrain" / "checkpoint_manager_snapshot.json", killed)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_killed_training_worker_resumes_from_the_last_checkpoint(tmp_path):
    """SIGKILL one of the 2 training workers after the first checkpoint: the worker group restarts from it
    (FailureConfig) and the run ends at the same total step count."""
    import json

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.run import run_pretraining

    run = str(tmp_path / "emb")
    _region_run(run)
    cfg = _tiny(WsiscaleConfig(), epochs=8)
    cfg.pretrain.checkpoint_every = 8
    out = tmp_path / "pre"
    killed: list[dict] = []
    thread = _kill_a_worker_after_the_first_checkpoint(out, killed)
    summary = run_pretraining(cfg, run, str(out))
    thread.join(5)
    assert killed, "no training worker of this run was killed"
    at_kill = killed[0]["metas"][-1]["metrics"]["step"]
    starts = summary["starts"]  # the run's own record: one restart, on 2 workers, from a checkpoint
    assert [(s["attempt"], s["world"]) for s in starts] == [(1, 2), (2, 2)], starts
    assert starts[0]["from"] is None and at_kill <= starts[1]["from"]["step"] < 32 and starts[1]["from"]["step"] % 8 == 0
    assert summary["metrics"]["step"] == summary["metrics"]["total_steps"] == 8 * 4
    history = json.loads((out / "pretrain" / summary["checkpoint"].rsplit("/", 1)[-1] / "meta.json").read_text())
    steps = [h["step"] for h in history["history"]]
    assert steps == list(range(1, 33))  # the history of the attempts joins up: no step lost or repeated
    assert summary["metrics"]["resumed_from"] == starts[1]["from"]["step"]  # the last attempt began there


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_resumed_run_matches_the_uninterrupted_run(tmp_path):
    """One worker, same seed: a run whose worker is SIGKILLed after its first checkpoint and that resumes from it
    ends with the teacher, student and loss history of the uninterrupted run (fixed data order, views and
    drop-path draws seeded by step)."""
    import json

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.run import run_pretraining

    run = str(tmp_path / "emb")
    _region_run(run)
    results = {}
    for name in ("straight", "killed"):
        cfg = _tiny(WsiscaleConfig(), epochs=3)
        cfg.pretrain.num_workers, cfg.pretrain.checkpoint_every, cfg.pretrain.drop_path = (1, 1), 8, 0.1
        out = tmp_path / name
        killed: list[dict] = []
        thread = _kill_a_worker_after_the_first_checkpoint(out, killed) if name == "killed" else None
        summary = run_pretraining(cfg, run, str(out))
        if thread is not None:
            thread.join(5)
            assert killed and [s["attempt"] for s in summary["starts"]] == [1, 2], summary["starts"]
            assert summary["metrics"]["resumed_from"] == summary["starts"][1]["from"]["step"] in (8, 16)
        else:
            assert summary["starts"] == [{"attempt": 1, "world": 1, "from": None}]
        final = out / "pretrain" / summary["checkpoint"].rsplit("/", 1)[-1]
        results[name] = (torch.load(final / "state.pt", weights_only=True),
                         json.loads((final / "meta.json").read_text())["history"])
    (a, ha), (b, hb) = results["straight"], results["killed"]
    assert a["step"] == b["step"] == 24
    for part in ("teacher", "student"):
        for k, v in a[part].items():
            np.testing.assert_allclose(b[part][k].numpy(), v.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose([h["loss"] for h in hb], [h["loss"] for h in ha], rtol=1e-4)


@pytest.mark.usefixtures("ray_local")
def test_slpd_cluster_step_prototypes_assignments_and_neighbours(tmp_path):
    """SLPD's clustering step on a persistent pool of clustering actors: per-slide prototypes of teacher
    features, each region's prototype, each slide's nearest slide by prototype matching and the matched
    prototypes; the same actors serve the next epoch's teacher."""
    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.data import read_region_grids, region_files
    from wsiscale.pretrain.model import build_model
    from wsiscale.pretrain.slpd import ClusterPool, SlideClusterer, cluster_step

    run = str(tmp_path / "emb")
    _region_run(run, slides=8, regions=8, dim=16)
    files, ids, shape = region_files(run)
    p = _tiny(WsiscaleConfig()).pretrain
    torch.manual_seed(0)
    state = build_model(p, shape, drop_path=0.0).state_dict()
    kw = dict(m=2, iters=10, restarts=2, actors=1, cpus_per_actor=0.5)
    pj = p.model_dump(mode="json")
    pool = ClusterPool(pj, shape, min_regions=4, **kw)
    torch.manual_seed(1)
    later = build_model(p, shape, drop_path=0.0).state_dict()  # "the next epoch's teacher"
    try:
        res = cluster_step(files, len(ids), shape, state, pj, m=2, neighbours=1, pool=pool)
        res_later = cluster_step(files, len(ids), shape, later, pj, m=2, neighbours=1, pool=pool)
        actors = list(pool.actors)
    finally:
        pool.close()
    assert len(actors) == 1 and pool.version == 2  # one actor served both teachers
    assert res.valid.all() and res.prototypes.shape == (8, 2, 32)
    np.testing.assert_allclose(np.linalg.norm(res.prototypes, axis=-1), 1.0, atol=1e-5)
    local = SlideClusterer(pj, shape, m=2, min_regions=4, iters=10, restarts=2)
    for r, teacher in ((res, state), (res_later, later)):
        local.load(teacher, version=0, seed=0)
        for f in files:  # one file per slide here: each region's prototype is its nearest by cosine
            z = local.features(read_region_grids(f.uri, None, shape))
            np.testing.assert_array_equal(r.assign[f.slide], (z @ r.prototypes[f.slide].T).argmax(1))
    assert not np.allclose(res.prototypes, res_later.prototypes)  # the actor did load the later teacher
    nb = res.neighbour_slides[:, 0]
    assert (nb != np.arange(8)).all() and (nb % 2 == np.arange(8) % 2).all()  # slide parity is its class
    for s in range(8):
        sim = res.prototypes[s] @ res.prototypes[nb[s]].T
        np.testing.assert_array_equal(res.neighbour_protos[s, :, 0], sim.argmax(1))
    # the targets as the region read tasks see them: per region, its prototype (intra) and the matched prototype
    # of the nearest slide (inter), equal to the hand-checked prototype_targets lookup
    from wsiscale.pretrain.losses import prototype_targets
    from wsiscale.pretrain.slpd import write_targets
    from wsiscale.pretrain.slpd_targets import read_region_targets

    uri = str(tmp_path / "targets")
    assert read_region_targets(uri, 0, 0, 3)["target_epoch"].tolist() == [-1] * 3  # nothing written yet
    write_targets(res, uri, epoch=5)
    protos, nbs, nbp = (torch.from_numpy(a) for a in (res.prototypes, res.neighbour_slides, res.neighbour_protos))
    for s in range(8):
        got = read_region_targets(uri, s, 2, 5)  # regions 2..6 of slide s
        a, sl = torch.from_numpy(res.assign[s][2:7]), torch.full((5,), s)
        assert got["target_ok"].all() and (got["target_epoch"] == 5).all()
        np.testing.assert_array_equal(got["intra"], prototype_targets(a, sl, protos).numpy())
        np.testing.assert_array_equal(got["inter"][:, 0], prototype_targets(a, sl, protos, nbs, nbp).numpy())
    none = cluster_step(files, len(ids), shape, state, pj, min_regions=100, neighbours=1, **kw)  # its own pool
    assert not none.valid.any() and (none.neighbour_slides == -1).all() and all(len(a) == 0 for a in none.assign)
    write_targets(none, uri, epoch=6)  # no slide clustered: regions get no target
    got = read_region_targets(uri, 3, 0, 4)
    assert not got["target_ok"].any() and (got["target_epoch"] == 6).all()


@pytest.mark.usefixtures("ray_local")
def test_slpd_loop_adds_intra_and_inter_slide_losses_after_the_warm_up(tmp_path):
    """SLPD on 2 workers: plain DINO for the warm-up epochs, then every epoch rank 0 runs the clustering step
    with the current teacher, broadcasts it, and the intra-/inter-slide prototype losses join the DINO loss."""
    import json

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.run import run_pretraining

    run = str(tmp_path / "emb")
    _region_run(run)
    cfg = _tiny(WsiscaleConfig(), epochs=4)
    p = cfg.pretrain
    p.method, p.warmup_epochs, p.prototypes, p.min_regions, p.cluster_cpus = "slpd", 2, 2, 4, 0.25
    p.checkpoint_every = 100
    summary = run_pretraining(cfg, run, str(tmp_path / "pre"))
    assert summary["metrics"]["step"] == 16
    history = json.loads((tmp_path / "pre" / "pretrain" / summary["checkpoint"].rsplit("/", 1)[-1] / "meta.json")
                         .read_text())["history"]
    warm = [h for h in history if h["epoch"] < 2]
    slpd = [h for h in history if h["epoch"] >= 2]
    assert len(warm) == len(slpd) == 8
    losses = [h["loss"] for h in history]  # DINO + intra + inter: it falls over the run, through the SLPD phase
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses
    assert all(h["intra_loss"] == 0 and h["inter_loss"] == 0 and h["clustered_slides"] == 0 for h in warm)
    assert all(h["intra_loss"] > 0 and h["inter_loss"] > 0 and h["clustered_slides"] == 8 for h in slpd)
    for h in slpd:
        assert h["loss"] == pytest.approx(h["dino_loss"] + h["intra_loss"] + h["inter_loss"], rel=1e-5)
    assert json.loads((tmp_path / "pre" / "encoder" / "encoder.json").read_text())["method"] == "slpd"


def _export_region_vit(p, shape, directory, seed: int) -> None:
    """An encoder directory as `wsiscale pretrain` exports it, from a freshly initialised region ViT."""
    import json

    from safetensors.torch import save_file

    from wsiscale.pretrain.model import build_model

    torch.manual_seed(seed)
    backbone = build_model(p, shape, drop_path=0.0).backbone
    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(directory / "region_vit.safetensors"))
    (directory / "encoder.json").write_text(json.dumps({
        "architecture": "region_vit", "input_dim": shape[0], "grid": shape[1], "embed_dim": p.embed_dim,
        "depth": p.depth, "heads": p.heads, "weights": "region_vit.safetensors", "step": seed}))


@pytest.mark.usefixtures("ray_local")
def test_region_features_of_an_exported_encoder(tmp_path):
    """The features stage: every region's feature under the exported region ViT, written as an embedding run
    (one row per region, the region's corner) that resumes, and refuses features of another encoder."""
    import pyarrow.parquet as pq

    from wsiscale.config import ConfigError, WsiscaleConfig
    from wsiscale.pretrain.data import read_region_grids, region_files
    from wsiscale.pretrain.region_features import run_region_features
    from wsiscale.pretrain.region_vit import load_region_encoder

    run = str(tmp_path / "emb")
    _region_run(run, slides=4, regions=8, dim=16)
    files, ids, shape = region_files(run)
    cfg = _tiny(WsiscaleConfig())
    cfg.pretrain.cluster_cpus = 0.5
    enc, out = tmp_path / "encoder", str(tmp_path / "features")
    _export_region_vit(cfg.pretrain, shape, enc, seed=3)
    s = run_region_features(cfg, run, str(enc), out)
    assert s["slides"]["done"] == 4 and s["regions"] == {"total": 32, "this_run": 32} and s["dim"] == 32
    vit = load_region_encoder(str(enc))
    for f in files:  # one file per slide here
        got = pq.read_table(f"{out}/embeddings/{ids[f.slide]}/embeddings.parquet")
        with torch.no_grad():
            want = vit(torch.from_numpy(read_region_grids(f.uri, None, shape))).numpy()
        feats = np.asarray(got.column("embedding").to_pylist(), np.float32)
        np.testing.assert_allclose(feats, want, rtol=2e-3, atol=2e-3)  # float16 storage
        src = pq.read_table(f.uri, columns=["x", "y"])
        assert got.column("x").to_pylist() == src.column("x").to_pylist()
        assert got.column("y").to_pylist() == src.column("y").to_pylist()
    again = run_region_features(cfg, run, str(enc), out)
    assert again["slides"]["skipped_already_done"] == 4 and again["regions"]["this_run"] == 0
    other = tmp_path / "other-encoder"
    _export_region_vit(cfg.pretrain, shape, other, seed=4)
    with pytest.raises(ConfigError, match="another encoder"):
        run_region_features(cfg, run, str(other), out)


def test_shuffled_batches_keep_every_row_once_and_mix_within_the_buffer():
    """The reservoir: every row out once (a partial last batch dropped), the same output for the same seed,
    another for another seed; with a buffer of 1 the read order is kept, with a buffer larger than the stream
    the output is a permutation of the whole stream; a row leaves after it came, about ``buffer`` rows later on
    average (geometric)."""
    from wsiscale.pretrain.shuffle import shuffled_batches

    def run(n, chunk, batch, buffer, seed):
        x = torch.arange(n)
        stream = ({"i": x[i : i + chunk], "f": x[i : i + chunk, None].float() * 2} for i in range(0, n, chunk))
        out = list(shuffled_batches(stream, batch, buffer, np.random.default_rng(seed)))
        assert all(len(b["i"]) == batch and torch.equal(b["f"][:, 0], b["i"].float() * 2) for b in out)
        return torch.cat([b["i"] for b in out]).tolist() if out else []

    got = run(103, 8, 8, 20, 0)
    assert len(got) == 96 and len(set(got)) == 96 and set(got) <= set(range(103)) and got != sorted(got)
    assert run(103, 8, 8, 20, 0) == got and run(103, 8, 8, 20, 1) != got
    assert run(40, 1, 8, 1, 0) == list(range(40))  # a one-row reservoir fed row by row delays each row by one
    whole = run(40, 8, 8, 64, 0)
    assert sorted(whole) == list(range(40)) and whole != list(range(40))
    assert sorted(run(50, 30, 8, 20, 0)) == sorted(run(50, 30, 8, 20, 0)) and len(run(50, 30, 8, 20, 0)) == 48
    # residence in a long stream: rows out between a row's arrival and its leaving. None leaves before it came
    # (>= 0); the stay is geometric, about the buffer on average and as spread (a FIFO would give a constant).
    n, chunk, buffer = 4000, 8, 20
    pos = np.empty(n, int)
    pos[run(n, chunk, 8, buffer, 0)] = np.arange(n)
    rows = np.arange(2 * buffer, n - 10 * buffer)
    residence = pos[rows] - ((rows // chunk + 1) * chunk - buffer)
    assert residence.min() >= 0, residence.min()
    assert 0.5 * buffer < residence.mean() < 1.5 * buffer and residence.std() > 0.5 * buffer, (residence.mean(),
                                                                                            residence.std())
    with pytest.raises(ValueError, match="at least 1"):
        run(8, 8, 8, 0, 0)
