"""Low-rank adapters (LoRA, Hu et al., ICLR 2022) for FiVE's text encoder.

FiVE (Li et al., CVPR 2024) fine-tunes its BioClinicalBERT text encoder with
LoRA instead of full fine-tuning: each targeted ``nn.Linear`` keeps its frozen
weight ``W`` and gains ``B @ A`` (``A: [r, in]``, ``B: [out, r]``) scaled by
``alpha / r``. ``B`` starts at zero, so an adapted encoder is exactly the base
encoder until it trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``y = W x + b + (alpha / r) * B A dropout(x)`` around a frozen ``nn.Linear``.

    Args:
        base: the linear layer to adapt (its parameters are frozen).
        rank: ``r`` (> 0).
        alpha: scaling numerator.
        dropout: dropout on the adapter input.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.scaling = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [..., in] -> [..., out]``."""
        return self.base(x) + self.scaling * (self.dropout(x) @ self.lora_a.T @ self.lora_b.T)


def add_lora(module: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0,
             exclude: tuple[str, ...] = ()) -> list[str]:
    """Freeze ``module`` and wrap each ``nn.Linear`` whose name ends with one of ``targets`` in :class:`LoRALinear`.

    Returns the adapted module names; raises ``ValueError`` when none matched
    (a wrong ``lora_targets`` would otherwise train nothing). Modules under a prefix in ``exclude``
    (e.g. an unused pooler) are left alone.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    names = [n for n, m in module.named_modules()
             if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)
             and not any(n == x or n.startswith(x + ".") for x in exclude)]
    if not names:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named like {targets} in {type(module).__name__}; its linear layers are "
                         f"named {linears}: set five.text.lora_targets")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return names
