"""SimCLR's NT-Xent loss (Chen et al., ICML 2020), as Giga-SSL computes it (``simclr.NT_XentLoss``).

For ``N`` slides with two views each, ``z = normalise([z1; z2])`` ``[2N, P]``,
``s = z z^T / T``; the loss of row ``i`` is ``-log softmax`` of its positive (the
other view of the same slide) among the ``2N - 1`` other rows, averaged over
the ``2N`` rows. Giga-SSL's temperature is 0.05.

Across Ray Train workers (:func:`distributed_nt_xent`) every worker gathers all
projections (``all_gather`` with autograd), so the negatives are the global
batch's; each worker scores its own rows, divided by the global ``2N``. The
workers' losses sum to the single-process loss and, with gradients summed over
workers (:func:`wsiscale.train.distributed.allreduce_gradients`), so do the gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _row_losses(q: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor, self_index: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """``-log`` softmax of ``keys[positive[i]]`` for query ``q[i]`` over ``keys`` minus ``keys[self_index[i]]``."""
    logits = q @ keys.T / temperature  # [m, 2N]
    logits = logits.masked_fill(F.one_hot(self_index, keys.shape[0]).bool(), float("-inf"))
    return F.cross_entropy(logits, positive, reduction="none")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """NT-Xent of two views ``z1``, ``z2`` ``[N, P]`` (row ``i`` of each is slide ``i``); a scalar."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    idx = torch.arange(2 * n, device=z.device)
    positive = torch.cat([idx[n:], idx[:n]])
    return _row_losses(z, z, positive, idx, temperature).mean()


def distributed_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """This worker's share of the global NT-Xent (every worker holds the same number of slides).

    Outside a process group it is :func:`nt_xent`. Rows are ordered as one process would order the
    concatenated batches (worker 0's slides first), so the sum over workers equals :func:`nt_xent`
    of the concatenation.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return nt_xent(z1, z2, temperature)
    from torch.distributed.nn.functional import all_gather

    world, rank, n = dist.get_world_size(), dist.get_rank(), z1.shape[0]
    a = F.normalize(z1, dim=1)
    b = F.normalize(z2, dim=1)
    keys = torch.cat([torch.cat(all_gather(a)), torch.cat(all_gather(b))])  # [2 N W, P]: all first views, then second
    total = world * n
    local = torch.arange(n, device=z1.device) + rank * n  # this worker's slides in the global order
    q = torch.cat([a, b])
    self_index = torch.cat([local, local + total])
    positive = torch.cat([local + total, local])
    return _row_losses(q, keys, positive, self_index, temperature).sum() / (2 * total)
