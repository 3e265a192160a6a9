"""Giga-SSL building blocks: sparse convolutions against dense references, NT-Xent by hand, the slide encoder,
and the global BatchNorm / NT-Xent on two real gloo processes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ports import free_port

from wsiscale.gigassl.losses import nt_xent
from wsiscale.gigassl.sparse import (
    global_avg_pool,
    sparse_map,
    strided_avg_pool,
    strided_conv,
    strided_sites,
    submanifold_conv,
    to_dense,
)


def _random_map(seed: int, batch: int = 2, side: int = 9, density: float = 0.4, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    rows, cols, bs = [], [], []
    for b in range(batch):
        mask = torch.rand(side, side, generator=g) < density
        mask[0, 0] = True  # the slide's top-left site is (0, 0) after sparse_map's shift
        r, cc = torch.nonzero(mask, as_tuple=True)
        rows.append(r)
        cols.append(cc)
        bs.append(torch.full_like(r, b))
    rows, cols, bs = torch.cat(rows), torch.cat(cols), torch.cat(bs)
    feats = torch.randn(len(rows), c, generator=g, dtype=torch.float64)
    return sparse_map(feats, rows, cols, bs, batch), side


def test_submanifold_conv_equals_dense_conv_at_active_sites():
    x, side = _random_map(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    out = submanifold_conv(x, w)
    dense = F.conv2d(to_dense(x, side, side), w, padding=1)  # [B, 4, side, side]
    c = out.coords
    torch.testing.assert_close(out.features, dense[c[:, 0], :, c[:, 1], c[:, 2]])
    assert torch.equal(out.coords, x.coords)  # submanifold: the active sites do not grow
    k1 = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(submanifold_conv(x, k1).features, x.features @ k1[:, :, 0, 0].T)


def test_strided_conv_and_pool_equal_dense_at_active_output_sites():
    x, side = _random_map(1, side=11)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    pad = side + 4  # dense grid padded at the far side so every output window exists
    dense_in = to_dense(x, pad, pad)
    out = strided_conv(x, w, 2)
    dense = F.conv2d(dense_in, w, stride=2)
    c = out.coords
    torch.testing.assert_close(out.features, dense[c[:, 0], :, c[:, 1], c[:, 2]])
    # active outputs are exactly the windows holding an input site
    occupied = F.max_pool2d((dense_in.abs().sum(1, keepdim=True) > 0).double(), 3, 2)[:, 0]
    expected = torch.nonzero(occupied > 0)
    assert torch.equal(out.coords, expected)
    assert torch.equal(strided_sites(x.coords, 3, 2), expected)
    # average pooling: the mean over the active inputs of each window
    pooled = strided_avg_pool(x, 3, 2)
    sums = F.avg_pool2d(dense_in, 3, 2, divisor_override=1)
    counts = F.avg_pool2d((dense_in.abs().sum(1, keepdim=True) > 0).double(), 3, 2, divisor_override=1)
    ref = (sums / counts.clamp(min=1))[c[:, 0], :, c[:, 1], c[:, 2]]
    torch.testing.assert_close(pooled.features, ref)


def test_sparse_map_shifts_each_slide_and_averages_shared_sites():
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    rows = torch.tensor([10, 10, 11, -3])
    cols = torch.tensor([4, 4, 6, 2])
    batch = torch.tensor([0, 0, 0, 1])
    m = sparse_map(feats, rows, cols, batch, 2)
    assert m.coords.tolist() == [[0, 0, 0], [0, 1, 2], [1, 0, 0]]
    assert m.features.flatten().tolist() == [2.0, 5.0, 7.0]  # two tiles on one site: averaged
    assert global_avg_pool(m).flatten().tolist() == [3.5, 7.0]


def test_sparse_ops_scale_with_tiles_not_with_the_bounding_box():
    """Two far-apart tiles on a 10^6 x 10^6 grid: the ops touch 2 rows, never a dense grid."""
    feats = torch.randn(2, 3, dtype=torch.float64)
    m = sparse_map(feats, torch.tensor([0, 10**6]), torch.tensor([0, 10**6]), torch.tensor([0, 0]), 1)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    out = submanifold_conv(m, w)
    torch.testing.assert_close(out.features, feats @ w[:, :, 1, 1].T)  # isolated sites: only the centre tap
    # (0, 0) is seen by output (0, 0) only; (10^6, 10^6) by outputs 499999..500000 on each axis
    assert strided_conv(m, w, 2).coords[:, 1:].tolist() == [[0, 0], [499999, 499999], [499999, 500000],
                                                           [500000, 499999], [500000, 500000]]


def test_nt_xent_against_a_hand_computed_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # row 0 (slide 0, view 1): positive sim 1, the other two rows have sim 0 -> -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)
    # non-unit vectors are normalised; an orthogonal pair: every row -log(e^0 / (e^0 + e^{2 c1} + e^{2 c2}))
    z1 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # rows: a0=(1,0), a1=(0,1), b0=(0,1), b1=(1,0); row a0: pos b0 sim 0, others a1 0, b1 1
    row = -math.log(1 / (1 + 1 + math.exp(2)))
    assert nt_xent(z1, z2, t).item() == pytest.approx(row, rel=1e-6)


def test_gigassl_model_shapes_and_permutation_invariance():
    from wsiscale.gigassl.model import GigaSSLModel

    torch.manual_seed(0)
    model = GigaSSLModel(input_dim=8, width=16, blocks=2, projection_dim=6).eval()
    n = [7, 12]
    tiles = torch.randn(sum(n), 8)
    rows = torch.randint(0, 10, (sum(n),))
    cols = torch.randint(0, 10, (sum(n),))
    batch = torch.cat([torch.zeros(n[0]), torch.ones(n[1])]).long()
    h = model.encode(tiles, rows, cols, batch, 2)
    z = model(tiles, rows, cols, batch, 2)
    assert h.shape == (2, 16) and z.shape == (2, 6)
    perm = torch.randperm(sum(n))
    torch.testing.assert_close(model.encode(tiles[perm], rows[perm], cols[perm], batch[perm], 2), h)
    # a slide's vector depends on its own tiles only
    alone = model.encode(tiles[n[0]:], rows[n[0]:], cols[n[0]:], torch.zeros(n[1]).long(), 1)
    torch.testing.assert_close(alone[0], h[1])
    # and on their arrangement: shuffling positions changes it
    moved = model.encode(tiles, rows.flip(0), cols, batch, 2)
    assert not torch.allclose(moved, h)


def _ranks(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from wsiscale.gigassl.losses import distributed_nt_xent
    from wsiscale.models.distributed_batchnorm import DistributedBatchNorm1d
    from wsiscale.train.distributed import allreduce_gradients

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(8, 5, dtype=torch.float64)
    lin = torch.nn.Linear(5, 4).double()
    bn = DistributedBatchNorm1d(4).double()
    head = torch.nn.Linear(4, 3).double()
    v1, v2 = x[rank * 4:(rank + 1) * 4], x[rank * 4:(rank + 1) * 4] * 0.9 + 0.1
    z1 = head(bn(lin(v1)))
    z2 = head(bn(lin(v2)))
    loss = distributed_nt_xent(z1, z2, 0.1)
    loss.backward()
    params = [*lin.parameters(), *bn.parameters(), *head.parameters()]
    allreduce_gradients(params)
    total = loss.detach().clone()
    dist.all_reduce(total)
    flat = torch.cat([p.grad.flatten() for p in params] + [bn.running_mean, bn.running_var, total.reshape(1)])
    np.save(os.path.join(out, f"rank{rank}.npy"), flat.numpy())
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: autograd/gloo threads can abort it ("terminate called") under load


def test_global_batchnorm_and_nt_xent_on_two_gloo_processes_equal_one_process(tmp_path):
    """Two workers with 4 slides each: the summed loss, gradients and BN running stats equal one process with 8."""
    import torch.multiprocessing as mp

    from wsiscale.models.distributed_batchnorm import DistributedBatchNorm1d

    mp.spawn(_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    x = torch.randn(8, 5, dtype=torch.float64)
    lin = torch.nn.Linear(5, 4).double()
    bn = DistributedBatchNorm1d(4).double()  # no process group here: plain BatchNorm1d
    head = torch.nn.Linear(4, 3).double()
    z1 = head(bn(lin(x)))
    # one process: BN statistics per view batch as the workers compute them per view (8 rows each)
    z2 = head(bn(lin(x * 0.9 + 0.1)))
    loss = nt_xent(z1, z2, 0.1)
    loss.backward()
    params = [*lin.parameters(), *bn.parameters(), *head.parameters()]
    ref = torch.cat([p.grad.flatten() for p in params] + [bn.running_mean, bn.running_var, loss.detach().reshape(1)])
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), ref.numpy(), rtol=1e-9, atol=1e-12)
