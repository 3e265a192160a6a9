"""FiVE's visual side and loss: instance sampling, TFS shapes and masking, step texts, the matching loss
against hand values, and the distributed loss on two real gloo processes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from ports import free_port

from wsiscale.config import FiveConfig
from wsiscale.five.data import field_text, step_texts
from wsiscale.five.losses import dedupe_texts, distributed_five_loss, five_loss
from wsiscale.five.model import TFS, FiVEModel, build_five_model, sinusoidal_encoding
from wsiscale.five.sampling import pad_batch, relative_positions, segment_sample


def test_segment_sampling_takes_one_tile_per_equal_segment():
    # 10 tiles, 4 segments: [0, 2) [2, 5) [5, 7) [7, 10); middles 0, 3, 5, 8
    assert segment_sample(10, 4, None).tolist() == [0, 3, 5, 8]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        pick = segment_sample(10, 4, rng)
        assert 0 <= pick[0] < 2 <= pick[1] < 5 <= pick[2] < 7 <= pick[3] < 10
        seen.update(pick.tolist())
    assert seen == set(range(10))  # every tile can be drawn
    assert segment_sample(3, 8, rng).tolist() == [0, 1, 2]  # fewer tiles than segments: all of them
    with pytest.raises(ValueError):
        segment_sample(0, 4, rng)
    np.testing.assert_allclose(relative_positions(np.array([0, 5]), 10), [0.0, 0.5])


def test_pad_batch_masks_the_padding():
    tiles, pos, mask = pad_batch([np.ones((2, 3)), np.ones((4, 3))], [np.zeros(2), np.zeros(4)])
    assert tiles.shape == (2, 4, 3) and mask.tolist() == [[False, False, True, True], [False] * 4]


def _tfs(**kw) -> TFS:
    torch.manual_seed(0)
    return TFS(in_dim=12, text_dim=20, dim=16, heads=2, self_layers=1, cross_layers=kw.get("cross", 1),
               prompt_tokens=kw.get("prompts", 3))


def test_tfs_shapes_and_padding_does_not_change_the_output():
    tfs = _tfs().eval()
    tiles = torch.randn(3, 7, 12)
    pos = torch.rand(3, 7)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 4:] = True
    fields = torch.randn(4, 20)
    slide, q = tfs(tiles, pos, mask, fields)
    assert slide.shape == (3, 20) and q.shape == (3, 4 + 3, 16)
    garbage = tiles.clone()
    garbage[1, 4:] = 1e3
    np.testing.assert_allclose(tfs(garbage, pos, mask, fields)[0].detach(), slide.detach(), atol=1e-5)
    # the slide alone, unpadded, gives the same feature
    alone = tfs(tiles[1:2, :4], pos[1:2, :4], mask[1:2, :4], fields)[0]
    np.testing.assert_allclose(alone.detach()[0], slide.detach()[1], atol=1e-5)
    # the queries matter: other fields give another feature
    assert not torch.allclose(tfs(tiles, pos, mask, fields[:2])[0], slide)
    # and so do the tiles
    assert not torch.allclose(tfs(tiles.flip(1), pos, mask, fields)[0][0], slide[0])


def test_tfs_needs_a_query():
    tfs = _tfs(prompts=0)
    with pytest.raises(ValueError, match="at least one query"):
        tfs(torch.randn(1, 2, 12), torch.rand(1, 2), torch.zeros(1, 2, dtype=torch.bool), torch.zeros(0, 20))


def test_sinusoidal_encoding_values():
    enc = sinusoidal_encoding(torch.tensor([[0.0, 0.001]]), 4)
    # dim 4: frequencies 1 and 1e-2; position 0.001 -> index 1
    np.testing.assert_allclose(enc[0, 0], [0, 0, 1, 1], atol=1e-7)
    np.testing.assert_allclose(enc[0, 1], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], atol=1e-6)


def test_matching_loss_against_hand_values():
    model = FiVEModel(_tfs(), logit_scale=10.0, learn_scale=False)
    slide = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, 0.0]])  # slide 2's text is "a" again: row 2 unused
    texts = ["a", "b", "a"]
    assert dedupe_texts(texts) == ([0, 1], [0, 1, 0])
    # logits: [10, 0], [0, 10], [10/sqrt2, 10/sqrt2]; targets 0, 1, 0
    hand = (2 * math.log(1 + math.exp(-10)) + math.log(2)) / 3
    assert float(five_loss(model, slide, text, texts)) == pytest.approx(hand, rel=1e-6)
    # single-process distributed loss is the same, and an invalid row drops out of the sum
    assert float(distributed_five_loss(model, slide, text, texts, 0)) == pytest.approx(hand, rel=1e-6)
    dropped = float(distributed_five_loss(model, slide, text, texts, 0, torch.tensor([True, True, False])))
    assert dropped == pytest.approx(2 * math.log(1 + math.exp(-10)) / 3, abs=1e-7)


def test_logit_scale_is_clamped_and_learnable():
    model = FiVEModel(_tfs(), logit_scale=1 / 0.07)
    assert model.log_scale.requires_grad and float(model.scale()) == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert float(model.scale()) == pytest.approx(100.0)
    assert not FiVEModel(_tfs(), 300.0, learn_scale=False).log_scale.requires_grad


def test_step_texts_drop_fields_for_the_whole_step_and_shuffle_per_slide():
    names = ["tissue type", "growth pattern", "necrosis", "stroma"]
    fields = [{"tissue type": "adenocarcinoma", "growth pattern": "crowded glands", "necrosis": "focal necrosis",
               "stroma": None}, {"tissue type": "benign tissue", "growth pattern": None, "necrosis": None,
                                 "stroma": "moderate fibrous stroma"}]
    kept_counts, orders = set(), set()
    for step in range(200):
        kept, texts = step_texts(fields, names, 0, step, True, True)
        assert kept and set(kept) <= set(names)
        kept_counts.add(len(kept))
        assert (kept, texts) == step_texts(fields, names, 0, step, True, True)  # deterministic
        for f, t in zip(fields, texts):
            parts = [p.split(": ")[0] for p in t.split("; ")]
            present = [k for k in kept if f.get(k)] or [k for k in names if f.get(k)]
            assert sorted(parts) == sorted(present)
        orders.add(texts[0])
    assert kept_counts == {1, 2, 3, 4}  # 0 .. F-1 fields dropped, never all
    assert len(orders) > 10
    kept, texts = step_texts(fields, names, 0, 1, False, False)
    assert kept == names and texts[0] == field_text(fields[0], names) == (
        "tissue type: adenocarcinoma; growth pattern: crowded glands; necrosis: focal necrosis")


def _ranks(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from wsiscale.train.distributed import allreduce_gradients

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = build_five_model(FiveConfig(dim=16, heads=2, prompt_tokens=2), 6, 8).double()
    tiles, pos = torch.randn(4, 5, 6, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    fields = torch.randn(3, 8, dtype=torch.float64)
    text = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    texts = ["a", "b", "a", "c"]
    mine = slice(rank * 2, rank * 2 + 2)
    slide = model(tiles[mine], pos[mine], mask[mine], fields)
    own_text = text[mine] * 1.0
    loss = distributed_five_loss(model, slide, own_text, texts, rank * 2)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    allreduce_gradients(params)
    total = loss.detach().clone()
    dist.all_reduce(total)
    text_grad = text.grad.clone()
    dist.all_reduce(text_grad)
    flat = torch.cat([p.grad.flatten() for p in params] + [text_grad.flatten(), total.reshape(1)])
    np.save(os.path.join(out, f"rank{rank}.npy"), flat.numpy())
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: autograd/gloo threads can abort it under load


def test_distributed_loss_on_two_gloo_processes_equals_one_process(tmp_path):
    """2 slides per worker: summed loss and gradients (visual side and text features) equal one process."""
    import torch.multiprocessing as mp

    mp.spawn(_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = build_five_model(FiveConfig(dim=16, heads=2, prompt_tokens=2), 6, 8).double()
    tiles, pos = torch.randn(4, 5, 6, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    fields = torch.randn(3, 8, dtype=torch.float64)
    text = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    loss = five_loss(model, model(tiles, pos, mask, fields), text * 1.0, ["a", "b", "a", "c"])
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    ref = torch.cat([p.grad.flatten() for p in params] + [text.grad.flatten(), loss.detach().reshape(1)])
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), ref.numpy(), rtol=1e-8, atol=1e-12)
