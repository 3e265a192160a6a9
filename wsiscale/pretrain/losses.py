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

SLPD reuses this loss with different teacher targets (as its official code
does, each with its own centre): intra-slide, the target of a region is its
assigned prototype passed through the teacher head's last layer (``T = 1``);
inter-slide, the matched prototype of each of the ``r`` nearest slides
(``T = r``). As in the official code the pair (target ``i``, student view
``i``) is skipped, so with ``T = 1`` the first global view does not take part.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Cross-entropy between centred, sharpened teacher targets and student views, with a running centre.

    Args:
        out_dim: ``K``.
        student_views: ``S`` (2 global + local crops for DINO; the crops for SLPD's losses).
        teacher_views: ``T`` targets per region (2 global views for DINO; 1 or ``r`` for SLPD).
        student_temp: ``tau_s`` (0.1).
        center_momentum: ``m`` (0.9).
    """

    def __init__(self, out_dim: int, student_views: int, teacher_views: int = 2, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
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
        if student_out.shape[0] == 0:
            if update_center:
                self.update_center(teacher_out)
            return student_out.new_zeros((), dtype=torch.float32)
        s = (student_out.float() / self.student_temp).chunk(self.student_views)
        t = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1).detach().chunk(
            teacher_views or self.teacher_views)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for i, q in enumerate(t):
            for v, sv in enumerate(s):
                if v == i:
                    continue
                total = total + torch.sum(-q * F.log_softmax(sv, dim=-1), dim=-1).mean()
                terms += 1
        if update_center:
            self.update_center(teacher_out)
        return total / max(terms, 1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean of teacher_out`` over the batch of every worker."""
        total = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_out.shape[0]], dtype=torch.float32, device=total.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
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
