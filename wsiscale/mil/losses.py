"""WENO's losses and pseudo labels (Qu et al., NeurIPS 2022; micciaif/WENO).

* :func:`bag_loss` - the teacher's bag cross-entropy, ``-[y log p + (1 - y) log(1 - p)]`` with
  ``p = softmax(logits)[1]`` and WENO's ``+1e-5`` inside the logs.
* :func:`pseudo_labels` - attention logits min-max normalised with the epoch's range over *all*
  training instances (:func:`global_range` all-reduces it across Ray Train workers), clamped to
  ``[1e-5, 1 - 1e-5]``; instances of negative bags get 0.
* :func:`student_loss` - soft cross-entropy of the student against the pseudo labels,
  ``-mean(w_neg (1 - q) log p0 + (1 - w_neg) q log p1)`` (``stu_loss_weight_neg = 0.1``).
* :func:`hard_positive_keep` - WENO's hard positive mining: in a positive bag, the instances the
  student already calls positive (``P > threshold``) are dropped before the teacher sees them;
  if that drops every instance, the most positive one is kept.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def bag_loss(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Bag cross-entropy of ``logits [1, 2]`` against ``label`` (0 or 1); a scalar."""
    p = torch.softmax(logits, dim=-1)[0, 1]
    return -(label * torch.log(p + EPS) + (1.0 - label) * torch.log(1.0 - p + EPS))


def pseudo_labels(scores: torch.Tensor, lo: float, hi: float, bag_label: torch.Tensor | float) -> torch.Tensor:
    """Soft instance labels ``[N]`` from attention logits ``scores [N]`` and the training range ``(lo, hi)``.

    ``bag_label`` is the label of each instance's bag (``[N]`` or a scalar): negative bags' instances get 0.
    """
    q = ((scores - lo) / max(hi - lo, 1e-12)).clamp(EPS, 1.0 - EPS)
    return torch.where(torch.as_tensor(bag_label, device=q.device) > 0, q, torch.zeros_like(q))


def student_loss(logits: torch.Tensor, targets: torch.Tensor, negative_weight: float = 0.1,
                 reduction: str = "mean") -> torch.Tensor:
    """WENO's student loss of ``logits [N, 2]`` against soft labels ``targets [N]`` (``mean`` or ``sum``)."""
    p = torch.softmax(logits, dim=-1)
    per = -(negative_weight * (1.0 - targets) * torch.log(p[:, 0] + EPS)
            + (1.0 - negative_weight) * targets * torch.log(p[:, 1] + EPS))
    return per.sum() if reduction == "sum" else per.mean()


def hard_positive_keep(student_prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Indices ``[K]`` of a positive bag's instances the teacher keeps: ``P <= threshold``, or the argmax if none."""
    keep = torch.nonzero(student_prob <= threshold).flatten()
    if keep.numel() == 0:
        keep = student_prob.argmax().reshape(1)
    return keep


def global_range(lo: float, hi: float, device: torch.device | str = "cpu") -> tuple[float, float]:
    """``(min, max)`` over every Ray Train worker's local range (all-reduced; local values when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return lo, hi
    t = torch.tensor([lo, -hi], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t[0]), float(-t[1])
