"""Sums and averages over the training workers (``torch.distributed``; a no-op on one worker).

Used by the loops that all-reduce gradients by hand instead of wrapping the model in DDP
(MIL's per-fold models, Giga-SSL's sparse encoder, FiVE's adapters): every worker calls
:func:`allreduce_gradients` after its backward pass, with the same parameter list.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def active_group() -> Any:
    """``torch.distributed`` when a process group of more than one worker is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def allreduce_gradients(params: list[nn.Parameter]) -> None:
    """Sum every parameter's gradient over the workers (missing gradients count as zeros)."""
    dist = active_group()
    if dist is None:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def average_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics over the workers (each saw different instances)."""
    dist = active_group()
    if dist is None:
        return
    for name, buf in model.named_buffers():
        if buf.dtype.is_floating_point:
            dist.all_reduce(buf)
            buf /= dist.get_world_size()
