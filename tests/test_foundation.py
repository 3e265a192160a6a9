"""Foundation-model specs: architectures match the model cards, weights load through the registry.

The real models (0.09 - 1.1 B parameters) are only ever built on the ``meta`` device here;
weight round trips use tiny configurations of the same code path or ``vit_s16``.
"""

from __future__ import annotations

from functools import cache, partial

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from wsiscale.models import registry
from wsiscale.models.encoders import EncoderSpec, EncoderWeightsError, get_spec, list_encoders, load_encoder
from wsiscale.models.foundation import FOUNDATION_MODELS, build_foundation, model_card

#: Published parameter counts (model cards / papers), checked within 5 %.
PUBLISHED_PARAMS = {
    "uni": 303e6,            # ViT-L/16
    "uni2_h": 681e6,         # ViT-H/14 SwiGLU
    "conch_vit_b16": 86e6,   # ViT-B/16 trunk
    "virchow2": 631e6,       # ViT-H/14 SwiGLU ("632M" in the paper)
    "h_optimus_0": 1.1e9,    # ViT-g/14
    "prov_gigapath": 1.13e9,  # ViT-g tile encoder
}

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def _meta_build(spec: EncoderSpec) -> torch.nn.Module:
    with torch.device("meta"):
        return spec.build()


@cache
def _meta_model(name: str) -> torch.nn.Module:
    """The registered foundation model ``name`` on the meta device (no memory), built once per session."""
    return _meta_build(get_spec(name))


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def temp_spec(monkeypatch):
    """Register a spec for the duration of one test."""
    list_encoders()  # built-ins first, so they are not re-registered inside the patched registry

    def add(spec: EncoderSpec) -> EncoderSpec:
        monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
        return spec

    return add


def test_all_foundation_models_are_registered():
    names = {s.name for s in list_encoders()}
    assert set(FOUNDATION_MODELS) <= names
    assert {"resnet18_l3", "resnet50_l3", "vit_s16"} <= names
    for name in FOUNDATION_MODELS:
        spec = get_spec(name)
        assert spec.needs_weights
        assert spec.reference and spec.description
        assert "weights not included" in spec.description and "terms" in spec.description


@pytest.mark.parametrize("name", FOUNDATION_MODELS)
def test_meta_build_shape_and_size(name):
    spec = get_spec(name)
    model = _meta_model(name)
    out = model(torch.empty(2, 3, spec.input_size, spec.input_size, device="meta"))
    assert tuple(out.shape) == (2, spec.dim)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.05, f"{name}: {n / 1e6:.1f}M parameters"


@pytest.mark.parametrize("name", FOUNDATION_MODELS)
def test_keys_match_plain_timm_construction(name):
    """What the model card's ``timm.create_model(arch, **kwargs)`` builds is what we build (keys and shapes)."""
    import timm

    arch, kwargs = model_card(name)
    with torch.device("meta"):
        reference = timm.create_model(arch, pretrained=False, **kwargs)
    assert _shapes(_meta_model(name)) == _shapes(reference)


def test_specific_published_shapes():
    shapes = {name: _shapes(_meta_model(name)) for name in FOUNDATION_MODELS}
    assert shapes["uni"]["pos_embed"] == (1, 197, 1024)
    assert shapes["uni2_h"]["pos_embed"] == (1, 256, 1536) and shapes["uni2_h"]["reg_token"] == (1, 8, 1536)
    assert shapes["conch_vit_b16"]["pos_embed"] == (1, 785, 768)
    assert shapes["virchow2"]["pos_embed"] == (1, 261, 1280) and shapes["virchow2"]["reg_token"] == (1, 4, 1280)
    assert shapes["virchow2"]["blocks.0.mlp.fc1.weight"] == (6832, 1280)
    assert shapes["h_optimus_0"]["pos_embed"] == (1, 256, 1536) and shapes["h_optimus_0"]["reg_token"] == (1, 4, 1536)
    # Prov-GigaPath's released config overrides the entry point's patch size 14 with 16.
    assert shapes["prov_gigapath"]["patch_embed.proj.weight"] == (1536, 3, 16, 16)
    assert shapes["prov_gigapath"]["pos_embed"] == (1, 197, 1536)
    assert "reg_token" not in shapes["prov_gigapath"]
    for name in ("uni2_h", "h_optimus_0", "prov_gigapath"):
        assert shapes[name]["blocks.0.mlp.fc1.weight"] == (8192, 1536)  # SwiGLU, 2 x 4096 packed
        assert shapes[name]["blocks.0.mlp.fc2.weight"] == (1536, 4096)


def test_conch_trunk_matches_conchs_own_construction():
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):  # conch/open_clip_custom/coca_model.py::_build_vision_tower
        conch_trunk = VisionTransformer(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, img_size=448,
                                        patch_size=16, num_classes=0, dynamic_img_size=True)
    assert _shapes(_meta_model("conch_vit_b16")) == _shapes(conch_trunk)
    assert "visual.trunk." in get_spec("conch_vit_b16").prefixes


@pytest.mark.parametrize("name", FOUNDATION_MODELS)
def test_no_weights_is_an_error(name):
    with pytest.raises(EncoderWeightsError, match="weights"):
        load_encoder(name, device="cpu")


def test_virchow2_round_trip_from_a_plain_timm_checkpoint(tmp_path, temp_spec):
    """The official checkpoint is a plain timm VisionTransformer state dict: it loads into our subclass."""
    import timm

    arch, kwargs = model_card("virchow2")
    torch.manual_seed(3)
    official = timm.create_model(arch, pretrained=False, **{**kwargs, **TINY}).eval()
    save_file(official.state_dict(), str(tmp_path / "model.safetensors"))

    spec = temp_spec(EncoderSpec("virchow2_tiny", partial(build_foundation, "virchow2", **TINY), dim=64,
                                 input_size=224, needs_weights=True))
    enc = load_encoder(spec.name, weights=tmp_path, device="cpu")  # directory with one safetensors file
    for k, v in official.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k

    tiles = _tiles(2, 224)
    emb = enc.embed(tiles)
    assert emb.shape == (2, 64)
    with torch.inference_mode():
        tokens = official(enc.preprocess(tiles))  # [B, 1 + 4 + 256, D] as on the model card
        assert tokens.shape == (2, 261, 32)
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)  # card: skip CLS + 4 registers
    torch.testing.assert_close(emb, expected)


def test_conch_checkpoint_keys_load_with_the_visual_trunk_prefix(tmp_path, temp_spec):
    """A CONCH-style checkpoint (whole CoCa model) loads its ``visual.trunk.*`` part; the rest is ignored."""
    torch.manual_seed(4)
    trunk = build_foundation("conch_vit_b16", **TINY)
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state.update({
        "visual.attn_pool_contrast.query": torch.zeros(1, 512),
        "visual.ln_contrast.weight": torch.ones(512),
        "visual.proj_contrast": torch.zeros(512, 512),
        "text.token_embedding.weight": torch.zeros(10, 768),
        "logit_scale": torch.zeros(()),
    })
    torch.save(state, tmp_path / "pytorch_model.bin")
    spec = temp_spec(EncoderSpec("conch_tiny", partial(build_foundation, "conch_vit_b16", **TINY), dim=32,
                                 input_size=448, needs_weights=True, prefixes=("visual.trunk.",)))
    enc = load_encoder(spec.name, weights=tmp_path / "pytorch_model.bin", device="cpu")
    for k, v in trunk.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    assert enc.embed(_tiles(1, 64)).shape == (1, 32)


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    import timm

    # vit_s16 is ViT-S/16 at 256 px (pos_embed [1, 257, 384]); a 224-px checkpoint has [1, 197, 384].
    other = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    save_file(other.state_dict(), str(tmp_path / "vits224.safetensors"))
    with pytest.raises(EncoderWeightsError) as err:
        load_encoder("vit_s16", weights=tmp_path / "vits224.safetensors", device="cpu")
    msg = str(err.value)
    assert "pos_embed" in msg and "[1, 197, 384]" in msg and "[1, 257, 384]" in msg


def test_wrong_architecture_names_missing_keys(tmp_path, temp_spec):
    torch.manual_seed(5)
    uni_like = build_foundation("uni", **TINY)  # no register tokens
    save_file(uni_like.state_dict(), str(tmp_path / "w.safetensors"))
    temp_spec(EncoderSpec("virchow2_tiny", partial(build_foundation, "virchow2", **TINY), dim=64, needs_weights=True))
    with pytest.raises(EncoderWeightsError, match="reg_token"):
        load_encoder("virchow2_tiny", weights=tmp_path / "w.safetensors", device="cpu")


@pytest.mark.parametrize("prefix,fmt", [("module.", "pt"), ("model.", "safetensors"), ("module.", "lightning")])
def test_prefixed_checkpoints_load(tmp_path, temp_spec, prefix, fmt):
    spec = temp_spec(EncoderSpec("uni_tiny", partial(build_foundation, "uni", **TINY), dim=32, needs_weights=True))
    torch.manual_seed(6)
    src = spec.build()
    state = {prefix + k: v.clone() for k, v in src.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "pt":  # DDP-wrapped model saved with torch.save
        path = tmp_path / "w.pt"
        torch.save(state, path)
    else:  # a Lightning-style checkpoint: the state dict under "state_dict"
        path = tmp_path / "w.ckpt.pth"
        torch.save({"state_dict": state, "epoch": torch.tensor(3)}, path)
    enc = load_encoder(spec.name, weights=path, device="cpu")
    for k, v in src.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k

def test_virchow2_model_pickles():
    """Ray ships models between processes: the lazily defined subclass must pickle by reference."""
    import pickle

    from wsiscale.models.foundation import ClsMeanPatchViT

    model = build_foundation("virchow2", **TINY)
    assert type(pickle.loads(pickle.dumps(model))) is ClsMeanPatchViT
