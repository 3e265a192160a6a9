"""BatchNorm whose batch statistics span every Ray Train worker (SyncBatchNorm that also runs on gloo/CPU).

``torch.nn.SyncBatchNorm`` needs CUDA. :class:`DistributedBatchNorm1d` all-reduces
the per-feature ``count``, ``sum`` and ``sum of squares`` with the differentiable
``torch.distributed.nn.functional.all_reduce``, so the forward pass *and* the
gradients equal those of one ``BatchNorm1d`` over the workers' concatenated
batches. SimCLR-style contrastive training depends on this (global BN; Chen et
al., ICML 2020): with per-worker statistics a model can tell which worker a
sample came from. Outside a process group, or in eval mode, it is ``BatchNorm1d``.

A worker holding no rows of a step still takes part (its sums are zero): every worker must call the
forward and the backward of every synchronised step, or the collectives do not match. A norm built with
``synchronised=False`` normalises each call's rows by themselves until :func:`batch_norm_across_workers`
switches it on - WENO's shared instance encoder: one bag at a time in the bag phase, the global instance
batch of all workers in the student phase.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class DistributedBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over ``[N, C]`` with statistics all-reduced over the process group in training
    (when ``synchronised``; the global batch must hold at least two rows)."""

    def __init__(self, *args, synchronised: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.synchronised = synchronised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.synchronised or _world() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n = torch.tensor([float(x.shape[0])], device=x.device, dtype=x.dtype)
        stats = torch.cat([n, x.sum(0), (x * x).sum(0)])
        stats = all_reduce(stats)
        count, c = stats[0], x.shape[1]
        if float(count) < 2:
            raise ValueError(f"batch statistics need at least 2 rows over all workers, got {float(count):.0f}")
        mean = stats[1:1 + c] / count
        var = (stats[1 + c:] / count - mean * mean).clamp(min=0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d`` in ``module`` by a :class:`DistributedBatchNorm1d` with its state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            new = DistributedBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


@contextmanager
def batch_norm_across_workers(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`DistributedBatchNorm1d` of ``module`` normalises over all workers' rows."""
    norms = [(m, m.synchronised) for m in module.modules() if isinstance(m, DistributedBatchNorm1d)]
    for m, _ in norms:
        m.synchronised = True
    try:
        yield
    finally:
        for m, was in norms:
            m.synchronised = was
