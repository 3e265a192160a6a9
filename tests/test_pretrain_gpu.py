"""Pretraining on a CUDA GPU: NCCL process groups, autocast (bf16, and fp16 with a GradScaler), the losses
on the device. Marked ``gpu`` and skipped where torch sees no CUDA device (CI's CPU machines); run them on a
GPU machine with ``pytest -m gpu`` (``benchmarks/gpu_checks.sh`` runs them with the GPU benchmarks).

The CPU tests (``tests/test_pretrain.py``) cover the same loops under gloo in fp32; these check what only a
GPU exercises: the loop's tensors and targets on the device, the autocast forward pass with fp32 losses, the
scaler state in checkpoints and a resumed run.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from test_pretrain import _region_run, _tiny

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]


@pytest.mark.parametrize("centering", ["ema", "sinkhorn"])
def test_dino_loss_on_the_gpu_matches_the_cpu(centering):
    """The same logits give the same DINO loss and centre on the GPU as on the CPU (fp32 and bf16 inputs)."""
    from wsiscale.pretrain.losses import DINOLoss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4 * 6, 64, generator=g), torch.randn(2 * 6, 64, generator=g)
    cpu = DINOLoss(64, 4, 2, centering=centering)
    gpu = DINOLoss(64, 4, 2, centering=centering).cuda()
    want = cpu(student, teacher, 0.04)
    got = gpu(student.cuda(), teacher.cuda(), 0.04)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu.center.cpu(), cpu.center, rtol=1e-5, atol=1e-6)
    # autocast hands the loss bf16 logits: it computes in fp32 and lands within bf16's rounding of the fp32 loss
    low = DINOLoss(64, 4, 2, centering=centering).cuda()(student.cuda().bfloat16(), teacher.cuda().bfloat16(), 0.04)
    assert low.dtype == torch.float32 and abs(low.item() - want.item()) < 0.05 * want.item()


@pytest.mark.parametrize("method, precision", [("dino", "bf16"), ("slpd", "fp16")])
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray (not on a bare GPU machine)")
@pytest.mark.usefixtures("ray_local")
def test_region_pretraining_on_the_gpu_trains_under_autocast_and_resumes(tmp_path, method, precision):
    """One GPU worker (NCCL process group, autocast): the loss falls as on the CPU, checkpoints carry the fp16
    scaler, SLPD's prototype losses join after the warm-up, and a rerun resumes the finished run."""
    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.run import run_pretraining

    run = str(tmp_path / "emb")
    _region_run(run)
    cfg = _tiny(WsiscaleConfig())
    p = cfg.pretrain
    p.use_gpu, p.precision, p.num_workers, p.cpus_per_worker = True, precision, (1, 1), 0.5
    if method == "slpd":
        p.method, p.warmup_epochs, p.prototypes, p.min_regions, p.cluster_cpus = "slpd", 3, 2, 4, 0.25
    out = tmp_path / "pre"
    summary = run_pretraining(cfg, run, str(out))
    m = summary["metrics"]
    assert (m["device"], m["backend"], m["precision"]) == ("cuda", "nccl", precision), m
    assert m["step"] == m["total_steps"] == 6 * (64 // 8)
    history = json.loads((out / "pretrain" / summary["checkpoint"].rsplit("/", 1)[-1] / "meta.json").read_text())
    losses = [h["loss"] for h in history["history"]]
    assert all(np.isfinite(losses)) and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    state = torch.load(f"{summary['checkpoint']}/state.pt", weights_only=True, map_location="cpu")
    assert bool(state["scaler"]) == (precision == "fp16")  # GradScaler state only for fp16
    assert all(v.device.type == "cpu" for v in state["teacher"].values())  # checkpoints load without a GPU
    if method == "slpd":
        late = [h for h in history["history"] if h["epoch"] >= 3]
        assert late and all(h["intra_loss"] > 0 and h["inter_loss"] > 0 and h["clustered_slides"] == 8 for h in late)
    again = run_pretraining(cfg, run, str(out))
    assert again["metrics"]["step"] == m["step"]


def test_tile_dino_step_under_bf16_autocast_follows_fp32():
    """ViT-S/16 DINO on 224 / 96 px views (the tile loop's model): a bf16 autocast step's loss is within
    bf16's rounding of the fp32 step from the same weights, and its gradients point the same way."""
    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.loop import _autocast
    from wsiscale.pretrain.losses import DINOLoss
    from wsiscale.pretrain.model import build_model

    p = WsiscaleConfig().pretrain
    p.level, p.out_dim, p.local_crops = "patch", 4096, 2
    torch.manual_seed(0)
    model = build_model(p, [3, 224, 224], drop_path=0.0).cuda()  # no random depth: both steps see one network
    g = torch.Generator(device="cuda").manual_seed(0)
    crops = [torch.randn(4, 3, 224, 224, device="cuda", generator=g) for _ in range(2)] + \
            [torch.randn(4, 3, 96, 96, device="cuda", generator=g) for _ in range(2)]
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        loss_fn = DINOLoss(p.out_dim, 4, 2).cuda()
        model.zero_grad(set_to_none=True)
        with _autocast(torch.device("cuda"), precision):
            s = model(crops)[0]
            with torch.no_grad():
                t = model(crops[:2])[0]
            loss = loss_fn(s, t, 0.04)
        loss.backward()
        losses[precision] = loss.item()
        grads[precision] = torch.cat([q.grad.flatten().float() for q in model.parameters() if q.grad is not None])
    assert np.isfinite(losses["bf16"]) and abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"], losses
    cos = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0).item()
    assert cos > 0.9, cos
