"""DINO loss with centering (Caron et al., ICCV 2021) and SLPD prototype distillation (Yu et al., MICCAI 2023).

Notation: ``B`` regions (or tiles) per batch, ``K`` head output dimension,
``S`` student views, ``T`` teacher targets per region.

DINO: the teacher's outputs on the global views are centred and sharpened,
``p_t = softmax((t - c) / tau_t)``; each student view gives
``log p_s = log_softmax(s / tau_s)``; the loss is the mean over every
(teacher target, student view) pair except a view with itself of
``-sum_k p_t[k] log p_s[k]``, averaged over the batch. After each step the
centre follows the teacher outputs: ``c <- m c + (1 - m) mean(t)`` (mean over
the global batch of all workers when torch.distributed is initialised).

With ``centering="sinkhorn"`` (DINOv2, Oquab et al. 2023, after SwAV) the teacher
targets are instead ``softmax(t / tau_t)`` rescaled by a few Sinkhorn-Knopp
iterations so that over the global batch every output dimension gets the same
mass (:func:`sinkhorn_knopp`); no running centre. The EMA centre lags the
teacher: when the young head maps every input near one direction, the centred
logits differ by less than ``tau_t`` and the targets are uniform (the loss sits
at ``ln K``, no gradient tells inputs apart). Equipartition makes the targets
of a batch differ however close the logits are.

SLPD reuses this loss with different teacher targets (as its official code
does, each with its own centre): intra-slide, the target of a region is its
assigned prototype passed through the teacher head's last layer (``T = 1``);
inter-slide, the matched prototype of each of the ``r`` nearest slides
(``T = r``). As in the official code the pair (target ``i``, student view
``i``) is skipped, so with ``T = 1`` the first global view does not take part.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce(x: torch.Tensor, op: Any = None) -> torch.Tensor:
    """``x`` reduced in place over every worker (sum unless ``op``) when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=op if op is not None else dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn_knopp(teacher_out: torch.Tensor, teacher_temp: float, iterations: int = 3) -> torch.Tensor:
    """``[N, K]`` teacher logits -> ``[N, K]`` targets: rows sum to 1, and over the rows of every worker
    (``N_total``) each of the ``K`` columns sums to ``N_total / K`` (up to the last iteration's row step).

    ``Q = exp(t / tau)`` is scaled alternately so that its columns (output dimensions) have equal
    mass and its rows (samples) sum to 1, as DINOv2's ``SinkhornKnoppTeacher``; the sums over
    samples are all-reduced, so the result equals one process holding the global batch. A worker
    with ``N = 0`` rows joins the all-reduces.
    """
    x = teacher_out.float() / teacher_temp
    peak = _all_reduce(x.max().reshape(1) if x.numel() else x.new_full((1,), -torch.inf),
                       dist.ReduceOp.MAX if dist.is_available() else None)
    q = torch.exp(x - peak).t()  # [K, N]
    k = q.shape[0]
    n = _all_reduce(torch.tensor([float(q.shape[1])], device=q.device))
    q /= _all_reduce(q.sum().reshape(1)).clamp_min(1e-30)
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)  # each dimension: mass 1 / K
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)  # each sample: mass 1 / N
        q /= n
    return (q * n).t()


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher targets and student views, with a running centre.

    Args:
        out_dim: ``K``.
        student_views: ``S`` (2 global + local crops for DINO; the crops for SLPD's losses).
        teacher_views: ``T`` targets per region (2 global views for DINO; 1 or ``r`` for SLPD).
        student_temp: ``tau_s`` (0.1).
        center_momentum: ``m`` (0.9).
        centering: ``"ema"`` (DINO's running centre) or ``"sinkhorn"`` (:func:`sinkhorn_knopp`).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3, as DINOv2).
    """

    def __init__(self, out_dim: int, student_views: int, teacher_views: int = 2, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: str = "ema", sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', not {centering!r}")
        self.centering, self.sinkhorn_iterations = centering, sinkhorn_iterations
        self.student_views = student_views
        self.teacher_views = teacher_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float,
                update_center: bool = True, teacher_views: int | None = None) -> torch.Tensor:
        """Loss for ``student_out [S * B, K]`` (view-major) and ``teacher_out [T * B, K]`` (target-major).

        ``teacher_views`` overrides ``T`` (SLPD's shared prototype loss: 1 intra, ``r`` inter).
        With ``B = 0`` the loss is 0, and the centre update still takes part in the all-reduce
        (every worker must join it).
        """
        sinkhorn = self.centering == "sinkhorn"
        if student_out.shape[0] == 0:
            if sinkhorn:
                sinkhorn_knopp(teacher_out, teacher_temp, self.sinkhorn_iterations)  # joins the all-reduces
            elif update_center:
                self.update_center(teacher_out)
            return student_out.new_zeros((), dtype=torch.float32)
        s = (student_out.float() / self.student_temp).chunk(self.student_views)
        if sinkhorn:
            q = sinkhorn_knopp(teacher_out, teacher_temp, self.sinkhorn_iterations)
        else:
            q = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1)
        t = q.detach().chunk(teacher_views or self.teacher_views)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for i, q in enumerate(t):
            for v, sv in enumerate(s):
                if v == i:
                    continue
                total = total + torch.sum(-q * F.log_softmax(sv, dim=-1), dim=-1).mean()
                terms += 1
        if update_center and not sinkhorn:
            self.update_center(teacher_out)
        return total / max(terms, 1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean of teacher_out`` over the batch of every worker."""
        total = _all_reduce(teacher_out.float().sum(dim=0, keepdim=True))
        count = _all_reduce(torch.tensor([teacher_out.shape[0]], dtype=torch.float32, device=total.device))
        if count.item() > 0:
            self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)


def prototype_targets(assign: torch.Tensor, slide: torch.Tensor, prototypes: torch.Tensor,
                      neighbour_slides: torch.Tensor | None = None,
                      neighbour_protos: torch.Tensor | None = None) -> torch.Tensor:
    """SLPD targets in the prototype space (before the teacher's last layer).

    Args:
        assign: ``[B]`` prototype index of each region within its slide.
        slide: ``[B]`` slide index of each region.
        prototypes: ``[N_slides, M, D]`` per-slide prototypes (L2-normalised).
        neighbour_slides: ``[N_slides, r]`` nearest other slides (inter-slide), or None (intra-slide).
        neighbour_protos: ``[N_slides, M, r]`` for each prototype, the most similar prototype
            of each neighbour slide.

    Returns:
        intra: ``[B, D]`` (the region's own prototype); inter: ``[r * B, D]``
        (target-major: the matched prototype in neighbour 1 for every region, then neighbour 2...).
    """
    if neighbour_slides is None:
        return prototypes[slide, assign]
    out = []
    for j in range(neighbour_slides.shape[1]):
        other = neighbour_slides[slide, j]
        out.append(prototypes[other, neighbour_protos[slide, assign, j]])
    return torch.cat(out, dim=0)
