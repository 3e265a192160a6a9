"""FiVE's visual side: the Task-specific Fine-grained Semantics (TFS) module over tile features.

Li et al., "Generalizable Whole Slide Image Classification with Fine-Grained
Visual-Semantic Interaction", CVPR 2024 (ls1rius/WSI_FiVE, ``PatchFusionTransformer``).

For a batch of ``b`` slides with ``T`` sampled tiles each (``tiles [b, T, D_in]``,
relative positions ``[b, T]``, padding ``mask [b, T]``):

1. tiles are projected to ``dim`` and get a sinusoidal encoding of their
   relative position in the slide; ``self_attention_layers`` pre-LN
   transformer blocks mix them (padding masked); their masked mean is the
   slide's global feature ``g [b, dim]``;
2. the queries - the text features of the field questions kept this step
   (``[F', D_text]``) plus ``prompt_tokens`` learnable prompt vectors in the
   text space, all L2-normalised, projected to ``dim`` - cross-attend to the
   tiles (FiVE's first block has no residual: its output is the attention
   read-out through an MLP); their mean is the field-wise feature ``f [b, dim]``;
3. ``slide = Linear([f, g]) [b, D_text]`` lives in the text encoder's space, and
   is matched with text features by scaled cosine similarity
   (:func:`FiVEModel.similarity`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POSITION_SCALE = 1000.0  # relative positions in [0, 1) are encoded as indices out of this many


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[b, T]`` relative positions -> ``[b, T, dim]`` sin/cos encoding (Vaswani et al. 2017) of ``pos x 1000``."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angle = positions.float()[..., None] * POSITION_SCALE * freq
    enc = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    return F.pad(enc, (0, dim - enc.shape[-1]))


class _MLP(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class SelfAttentionBlock(nn.Module):
    """Pre-LN transformer block over the tiles: ``x + attn(LN x)``, then ``x + MLP(LN x)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = _MLP(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, key_padding_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CrossAttentionBlock(nn.Module):
    """Queries ``[b, Q, dim]`` read the tiles ``[b, T, dim]``; ``residual=False`` is FiVE's first block."""

    def __init__(self, dim: int, heads: int, residual: bool) -> None:
        super().__init__()
        self.ln_q, self.ln_kv, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = _MLP(dim)
        self.residual = residual

    def forward(self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(x)
        read = self.attn(self.ln_q(q), kv, kv, key_padding_mask=mask, need_weights=False)[0]
        if not self.residual:
            return self.mlp(self.ln2(read))
        q = q + read
        return q + self.mlp(self.ln2(q))


class TFS(nn.Module):
    """Task-specific fine-grained semantics module: tile features + field queries -> slide features in text space."""

    def __init__(self, in_dim: int, text_dim: int, dim: int = 256, heads: int = 4, self_layers: int = 1,
                 cross_layers: int = 1, prompt_tokens: int = 16) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"five.dim={dim} must be a multiple of five.heads={heads}")
        self.dim, self.text_dim = dim, text_dim
        self.tile_proj = nn.Linear(in_dim, dim)
        self.self_blocks = nn.ModuleList(SelfAttentionBlock(dim, heads) for _ in range(self_layers))
        self.prompts = nn.Parameter(torch.randn(prompt_tokens, text_dim) * 0.02)
        self.query_proj = nn.Linear(text_dim, dim)
        self.cross_blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, residual=i > 0) for i in range(cross_layers))
        self.out = nn.Linear(2 * dim, text_dim)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def queries(self, field_text: torch.Tensor) -> torch.Tensor:
        """``[F', D_text]`` field-question features -> ``[F' + P, dim]`` queries (normalised, then projected)."""
        q = torch.cat([field_text.to(self.prompts.dtype), self.prompts]) if len(field_text) else self.prompts
        if len(q) == 0:
            raise ValueError("TFS needs at least one query: keep a field or set five.prompt_tokens > 0")
        return self.query_proj(F.normalize(q, dim=-1))

    def forward(self, tiles: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                field_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slide [b, D_text], field-wise features [b, F' + P, dim])``; ``mask`` True marks padding tiles."""
        x = self.tile_proj(tiles.to(self.tile_proj.weight.dtype))
        x = x + sinusoidal_encoding(positions, self.dim).to(x.dtype)
        for block in self.self_blocks:
            x = block(x, mask)
        keep = (~mask).to(x.dtype)[..., None]
        g = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        q = self.queries(field_text).unsqueeze(0).expand(len(x), -1, -1)
        for block in self.cross_blocks:
            q = block(q, x, mask)
        slide = self.out(torch.cat([q.mean(1), g], dim=-1))
        return slide, q


class FiVEModel(nn.Module):
    """TFS + the scale of FiVE's cosine matching (learnable as CLIP's, clamped at 100, or fixed)."""

    def __init__(self, tfs: TFS, logit_scale: float = 1 / 0.07, learn_scale: bool = True) -> None:
        super().__init__()
        self.tfs = tfs
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale)), requires_grad=learn_scale)

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def similarity(self, slide: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``[b, D]`` slide and ``[K, D]`` text features -> ``[b, K]`` scaled cosine similarities."""
        return self.scale() * F.normalize(slide, dim=-1) @ F.normalize(text.to(slide.dtype), dim=-1).T

    def forward(self, tiles: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                field_text: torch.Tensor) -> torch.Tensor:
        return self.tfs(tiles, positions, mask, field_text)[0]


def build_five_model(five, in_dim: int, text_dim: int) -> FiVEModel:
    """The model of a :class:`~wsiscale.config.FiveConfig` for ``in_dim`` tile features and ``text_dim`` text."""
    tfs = TFS(in_dim, text_dim, five.dim, five.heads, five.self_attention_layers, five.cross_attention_layers,
              five.prompt_tokens)
    return FiVEModel(tfs, five.logit_scale, five.learn_logit_scale)
