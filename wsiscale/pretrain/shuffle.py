"""A seeded, deterministic local shuffle of a stream of batches (the training workers' shuffle buffer).

Ray Data's ``local_shuffle_buffer_size`` mixes the blocks that happen to be ready, so the order it
gives depends on timing: two runs with the same seed see different batches. Pretraining needs an
order that depends on (seed, epoch, rank) only, so that a resumed run redoes an epoch's batches
exactly (``tests/test_pretrain.py``). :func:`shuffled_batches` takes the stream in read order
(fixed by Ray Data's ``preserve_order``) and keeps a reservoir of ``buffer`` rows: each incoming
row takes the slot of a row drawn at random, which leaves; when the stream ends the reservoir is
emptied in random order. A row leaves on average ``buffer`` rows after it came, so a batch mixes
the items of every slide read within that span.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def _take(batch: Batch, index: torch.Tensor) -> Batch:
    return {k: v[index] for k, v in batch.items()}


def _cat(parts: list[Batch]) -> Batch:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if len(parts) > 1 else parts[0]


def shuffled_batches(batches: Iterable[Batch], batch: int, buffer: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Re-batch ``batches`` (dicts of tensors with a shared first dimension) into ``batch``-row batches
    shuffled through a ``buffer``-row reservoir drawn with ``rng``; a last partial batch is dropped.

    Every input row is output once (but for the dropped tail); the output depends only on the input
    batches and ``rng``.
    """
    if buffer < 1 or batch < 1:
        raise ValueError(f"a shuffle buffer of {buffer} rows and batches of {batch}: both must be at least 1")
    slots: Batch | None = None  # the reservoir, [buffer, ...] per key once filled
    filling: list[Batch] = []
    n_filling = 0
    out: list[Batch] = []
    n_out = 0
    for b in batches:
        n = len(next(iter(b.values())))
        if slots is None:
            filling.append(b)
            n_filling += n
            if n_filling < buffer:
                continue
            whole = _cat(filling)
            slots, b = _take(whole, torch.arange(buffer)), _take(whole, torch.arange(buffer, n_filling))
            n, filling = n_filling - buffer, []
            if n == 0:
                continue
        if n > buffer:  # more rows than the reservoir holds: shuffled together, the reservoir keeps a random share
            order = torch.from_numpy(rng.permutation(buffer + n))
            whole = _cat([slots, b])
            slots, leaving = _take(whole, order[:buffer]), _take(whole, order[buffer:])
        else:
            picked = torch.from_numpy(rng.choice(buffer, size=n, replace=False))
            leaving = _take(slots, picked)
            for k, v in slots.items():
                v[picked] = b[k]
        out.append(leaving)
        n_out += n
        if n_out >= batch:
            merged, full = _cat(out), n_out - n_out % batch
            for i in range(0, full, batch):
                yield {k: v[i : i + batch] for k, v in merged.items()}
            n_out -= full
            out = [{k: v[full:] for k, v in merged.items()}] if n_out else []
    rest = [slots] if slots is not None else filling
    if rest:
        whole = _cat(out + rest)
        total = len(next(iter(whole.values())))
        tail = total - n_out
        order = torch.cat([torch.arange(n_out), n_out + torch.from_numpy(rng.permutation(tail))])
        for i in range(0, total - batch + 1, batch):
            yield _take(whole, order[i : i + batch])
