"""Multiple-instance learning heads on precomputed tile embeddings.

A slide is a *bag* of ``N`` tile embeddings ``[N, D_in]``. Every model here
starts with the same shared instance encoder (:class:`InstanceEncoder`,
``Linear + BatchNorm1d`` as in WENO's ``camelyon_feat_projecter``) and returns
bag logits ``[1, 2]`` plus one score per instance ``[N]`` (what a heatmap shows
and what instance AUC is computed on):

* :class:`PoolingMIL` - mean or max pooling baseline; the instance score is the
  bag classifier applied to the instance alone (``P(positive)``).
* :class:`AttentionMIL` - ABMIL (Ilse, Tomczak, Welling, ICML 2018), non-gated
  (``tanh``) or gated (``tanh * sigmoid``); the instance score is the attention
  logit before the softmax over the bag (what WENO's code normalises into
  pseudo labels).
* :class:`StudentHead` - WENO's instance classifier (Qu et al., NeurIPS 2022).
* :class:`MILModel` - encoder + bag head (+ student for WENO), built by
  :func:`build_mil_model` from a :class:`~wsiscale.config.MilConfig`.

Sizes and initialisation follow micciaif/WENO (``teacher_Attention_head``:
``Dropout(0.5) Linear(D_in, 1024) ReLU Dropout(0.5) Linear(1024, 1024) ReLU``,
attention ``1024 -> 512 -> 1``, classifier ``1024 -> 2``; ``student_head``:
``Linear(D_in, 4096) ReLU Linear(4096, 4096) ReLU Linear(4096, 2)``; linear
weights ``N(0, 0.01)``, zero biases).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsiscale.models.distributed_batchnorm import DistributedBatchNorm1d


def _init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class InstanceEncoder(nn.Module):
    """Shared instance feature extractor: ``[N, D_in] -> [N, D]`` (``Linear + BatchNorm1d``).

    The norm is a :class:`~wsiscale.models.distributed_batchnorm.DistributedBatchNorm1d`: plain BatchNorm
    per bag, and over the global batch of every worker in WENO's student phase (the state dict of
    ``nn.BatchNorm1d``).
    """

    def __init__(self, input_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, dim)
        self.norm = DistributedBatchNorm1d(dim, synchronised=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _mlp(input_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True))


class AttentionMIL(nn.Module):
    """ABMIL bag head: ``h = mlp(x)``, ``a = w^T tanh(V h)`` (gated: ``w^T (tanh(V h) * sigmoid(U h))``),
    bag ``z = softmax_N(a) h``, logits ``W z``.

    ``forward(x [N, D], scores=None) -> (logits [1, 2], a [N])``. ``scores [N]`` replaces the
    attention logits (WENO's evaluation with the student's scores, ``scores_replaceAS``).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 1024, attention_dim: int = 512, gated: bool = False,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.mlp = _mlp(input_dim, hidden_dim, dropout)
        self.attention_v = nn.Linear(hidden_dim, attention_dim)
        self.attention_u = nn.Linear(hidden_dim, attention_dim) if gated else None
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, 2)
        _init_linear(self)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Attention logits ``[N]`` of hidden features ``h [N, hidden]``."""
        v = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            v = v * torch.sigmoid(self.attention_u(h))
        return self.attention_w(v).squeeze(-1)

    def instance_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Attention logits ``[N]`` of instances ``x [N, D]`` (independent of the rest of the bag)."""
        return self.attention(self.mlp(x))

    def forward(self, x: torch.Tensor, scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(x)
        a = self.attention(h)
        weights = F.softmax(a if scores is None else scores, dim=0)
        return self.classifier(weights @ h).unsqueeze(0), a


class PoolingMIL(nn.Module):
    """Mean- or max-pooling baseline: ``logits = W pool_N(mlp(x))``; instance scores ``softmax(W mlp(x_i))[1]``.

    ``forward(x [N, D]) -> (logits [1, 2], P(positive) per instance [N])``.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 1024, pooling: str = "mean", dropout: float = 0.5) -> None:
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"pooling must be mean or max, not {pooling!r}")
        self.pooling = pooling
        self.mlp = _mlp(input_dim, hidden_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, 2)
        _init_linear(self)

    def instance_scores(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.classifier(self.mlp(x)), dim=-1)[:, 1]

    def forward(self, x: torch.Tensor, scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(x)
        z = h.mean(0) if self.pooling == "mean" else h.max(0).values
        return self.classifier(z).unsqueeze(0), F.softmax(self.classifier(h), dim=-1)[:, 1].detach()


class StudentHead(nn.Module):
    """WENO's instance classifier: ``[N, D] -> [N, 2]`` logits (two hidden ReLU layers)."""

    def __init__(self, input_dim: int, hidden_dim: int = 4096) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 2))
        _init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MILModel(nn.Module):
    """``encoder`` (shared) + ``bag`` head (+ ``student`` for WENO).

    ``forward(x [N, D_in]) -> (bag logits [1, 2], instance scores [N])``.
    """

    def __init__(self, encoder: InstanceEncoder, bag: nn.Module, student: StudentHead | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.bag = bag
        self.student = student

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bag(self.encoder(x))

    def student_probability(self, feat: torch.Tensor) -> torch.Tensor:
        """``P(positive)`` ``[N]`` of encoded instances ``feat [N, D]`` by the student."""
        return F.softmax(self.student(feat), dim=-1)[:, 1]


def build_mil_model(mil: Any, input_dim: int) -> MILModel:
    """The model of ``mil.method`` (``meanpool``, ``maxpool``, ``abmil``, ``weno``) on ``input_dim`` embeddings."""
    encoder = InstanceEncoder(input_dim, mil.projection_dim)
    if mil.method in ("meanpool", "maxpool"):
        bag = PoolingMIL(mil.projection_dim, mil.hidden_dim, mil.method[:-4], mil.dropout)
    else:
        bag = AttentionMIL(mil.projection_dim, mil.hidden_dim, mil.attention_dim, mil.gated, mil.dropout)
    student = StudentHead(mil.projection_dim, mil.student_hidden_dim) if mil.method == "weno" else None
    return MILModel(encoder, bag, student)
