"""DINO projection head (Caron et al. 2021), as used by HIPT and SLPD.

``x [B, in_dim]`` -> 3-layer MLP (GELU, hidden 2048; BatchNorm after each hidden
linear with ``use_bn``, DINO's ``--use_bn_in_head``) -> bottleneck ``[B, 256]``
-> L2-normalise -> weight-normalised linear ``[B, out_dim]``. SLPD clusters the
teacher's normalised bottleneck (``forward`` returns it as the second output)
and maps prototypes to logits with :meth:`DINOHead.last` (the last layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def trunc_normal_init(m: nn.Module) -> None:
    """ViT/DINO initialisation: linear weights ~ truncated N(0, 0.02), zero biases; LayerNorm to identity."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim if nlayers > 1 else bottleneck_dim)]
        for i in range(max(nlayers - 1, 0)):
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim if i < nlayers - 2 else bottleneck_dim)]
        self.mlp = nn.Sequential(*layers)
        self.apply(trunc_normal_init)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)  # weight-norm gain g = 1
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, out_dim], normalised bottleneck [B, bottleneck_dim])``."""
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(z), z

    def last(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of (normalised) bottleneck vectors, e.g. SLPD prototypes ``[P, 256]`` -> ``[P, out_dim]``."""
        return self.last_layer(F.normalize(z, dim=-1, p=2))
