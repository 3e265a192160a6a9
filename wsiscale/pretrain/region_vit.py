"""Region ViT over a grid of patch embeddings (HIPT's ViT-4K, SLPD's region encoder).

A 4096 px region at 20x is a ``16 x 16`` grid of 256 px patches, each embedded
by a frozen patch encoder (384-d for ViT-S/16): ``x [B, 384, 16, 16]``. Tokens
are projected (``Linear(384, 192) + GELU``), a CLS token and learned position
embeddings are added (bicubically interpolated for crops: 14 x 14 global,
6 x 6 local views), and 6 transformer blocks (6 heads, MLP ratio 4) follow;
the output is the normalised CLS token ``[B, 192]`` (Chen et al., CVPR 2022;
Yu et al., MICCAI 2023).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from wsiscale.pretrain.heads import trunc_normal_init


class RegionViT(nn.Module):
    def __init__(self, input_dim: int = 384, embed_dim: int = 192, depth: int = 6, num_heads: int = 6,
                 grid: int = 16, mlp_ratio: float = 4.0, drop_path_rate: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.input_dim, self.embed_dim, self.grid = input_dim, embed_dim, grid
        self.phi = nn.Sequential(nn.Linear(input_dim, embed_dim), nn.GELU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=r,
                                           norm_layer=norm) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(trunc_normal_init)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        if h == w == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, input_dim, h, w]`` -> CLS embedding ``[B, embed_dim]``."""
        b, d, h, w = x.shape
        if d != self.input_dim:
            raise ValueError(f"region grids have {d} channels, the region ViT expects {self.input_dim} "
                             "(the patch encoder's dimension)")
        tokens = self.phi(x.flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self._pos(h, w)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)





def load_region_encoder(directory: str, storage=None) -> "RegionViT":
    """The region ViT exported by ``wsiscale pretrain`` (``encoder.json`` + ``region_vit.safetensors``), eval mode."""
    import json

    from safetensors.torch import load

    from wsiscale.io.uri import filesystem, join_uri

    fs, path = filesystem(join_uri(directory, "encoder.json"), storage)
    try:
        with fs.open(path, "rb") as fh:
            spec = json.loads(fh.read())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{directory} has no encoder.json: give the encoder/ directory of a pretraining run")\
            from exc
    if spec.get("architecture") != "region_vit":
        raise ValueError(f"{directory} holds a {spec.get('architecture')!r} encoder, not a region ViT "
                         "(a patch encoder loads with wsiscale.models.encoders.load_encoder)")
    fs, path = filesystem(join_uri(directory, spec["weights"]), storage)
    with fs.open(path, "rb") as fh:
        state = load(fh.read())
    model = RegionViT(input_dim=spec["input_dim"], embed_dim=spec["embed_dim"], depth=spec["depth"],
                      num_heads=spec["heads"], grid=spec["grid"], drop_path_rate=0.0)
    model.load_state_dict(state)
    return model.eval()
