"""Encoder registry: builds, preprocessing, local weights round trip and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsiscale.models.encoders import (
    EncoderError,
    EncoderWeightsError,
    get_spec,
    list_encoders,
    load_encoder,
)


@pytest.mark.parametrize("name, dim, size", [("resnet18_l3", 256, 224), ("vit_s16", 384, 256), ("timm:resnet18", 512, 224)])
def test_builtin_encoders_shapes(name, dim, size):
    enc = load_encoder(name, weights="random", device="cpu")
    assert enc.dim == dim and enc.input_size == size
    tiles = np.random.default_rng(0).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8)
    out = enc.embed(tiles)
    assert out.shape == (3, dim) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_truncated_resnet_is_layer3_pooled():
    """resnet18_l3 = mean over space of timm resnet18's layer3 output (hand-built reference)."""
    import timm

    enc = load_encoder("resnet18_l3", weights="random", device="cpu", seed=3)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    ref.load_state_dict(enc.model.state_dict(), strict=False)
    ref.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        h = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
        h = ref.layer3(ref.layer2(ref.layer1(h))).mean((2, 3))
        assert torch.allclose(enc.model(x), h, atol=1e-6)


def test_preprocess_normalises_and_resizes():
    enc = load_encoder("resnet18_l3", weights="random", device="cpu")
    tiles = np.full((1, 256, 256, 3), 255, np.uint8)
    x = enc.preprocess(tiles)
    assert x.shape == (1, 3, 224, 224)
    expected = (1.0 - torch.tensor(enc.spec.mean)) / torch.tensor(enc.spec.std)
    assert torch.allclose(x[0, :, 100, 100], expected, atol=1e-6)


def test_safetensors_round_trip_and_prefixes(tmp_path):
    from safetensors.torch import save_file

    a = load_encoder("vit_s16", weights="random", device="cpu", seed=1)
    b_random = load_encoder("vit_s16", weights="random", device="cpu", seed=2)
    tiles = np.random.default_rng(1).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)
    assert not torch.allclose(a.embed(tiles), b_random.embed(tiles))
    state = {k: v.contiguous() for k, v in a.model.state_dict().items()}
    save_file(state, tmp_path / "vit.safetensors")
    loaded = load_encoder("vit_s16", weights=tmp_path / "vit.safetensors", device="cpu", seed=2)
    assert torch.allclose(loaded.embed(tiles), a.embed(tiles), atol=1e-6)
    # a DDP/DINO-style checkpoint: torch.save of {"teacher": {"module.backbone.<key>": ...}}
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "dino.pth")
    dino = load_encoder("vit_s16", weights=tmp_path / "dino.pth", device="cpu", seed=2)
    assert torch.allclose(dino.embed(tiles), a.embed(tiles), atol=1e-6)
    # a directory holding the file
    (tmp_path / "dir").mkdir()
    (tmp_path / "vit.safetensors").rename(tmp_path / "dir" / "model.safetensors")
    assert torch.allclose(load_encoder("vit_s16", weights=tmp_path / "dir", device="cpu").embed(tiles), a.embed(tiles), atol=1e-6)


def test_wrong_weights_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(EncoderWeightsError, match=r"does not exist.*never downloaded"):
        load_encoder("resnet18_l3", weights=tmp_path / "missing.safetensors", device="cpu")
    r18 = load_encoder("resnet18_l3", weights="random", device="cpu").model.state_dict()
    save_file({k: v.contiguous() for k, v in r18.items()}, tmp_path / "r18.safetensors")
    with pytest.raises(EncoderWeightsError) as err:  # a ResNet-18 checkpoint for a ResNet-50 encoder
        load_encoder("resnet50_l3", weights=tmp_path / "r18.safetensors", device="cpu")
    text = str(err.value)
    assert "resnet50_l3" in text and "missing keys" in text and "shape mismatch conv1.weight" not in text
    assert "layer1.0.conv3.weight" in text  # a key ResNet-50 has and ResNet-18 lacks
    bad = dict(r18)
    bad["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    save_file({k: v.contiguous() for k, v in bad.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(EncoderWeightsError, match=r"shape mismatch conv1.weight: file \[64, 3, 5, 5\], model \[64, 3, 7, 7\]"):
        load_encoder("resnet18_l3", weights=tmp_path / "bad.safetensors", device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match="junk.pth: not a readable"):
        load_encoder("resnet18_l3", weights=tmp_path / "junk.pth", device="cpu")


def test_unknown_names():
    with pytest.raises(EncoderError, match="did you mean 'resnet18_l3'"):
        get_spec("resnet18_l")
    with pytest.raises(EncoderError, match="timm has no architecture"):
        get_spec("timm:not_a_model")
    names = {s.name for s in list_encoders()}
    assert {"resnet18_l3", "resnet50_l3", "vit_s16"} <= names
