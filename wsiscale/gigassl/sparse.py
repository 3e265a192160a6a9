"""Sparse 2-D convolutions over a slide's tile grid, in plain PyTorch (no sparseconvnet/spconv build needed).

A slide is a set of *active sites*: tiles at integer grid positions ``(row, col)``
with a feature vector each. A batch of slides is a :class:`SparseMap`:
``coords [N, 3]`` int64 ``(batch, row, col)`` and ``features [N, C]``. Only
active sites are stored and computed, so cost grows with the number of tiles,
not with the slide's bounding box (10^4+ tiles per slide cost 10^4 rows).

The operations mirror sparseconvnet's, which Giga-SSL's SparseConvMIL uses
(Lazard et al., "Giga-SSL: Self-Supervised Learning for Gigapixel Images",
CVPRW 2023; Lerousseau et al., "SparseConvMIL", MICCAI-W 2021):

* :func:`submanifold_conv` - ``SubmanifoldConvolution``: output sites are the
  input sites; ``out[p] = sum_{i,j} W[:, :, i, j] x[p + (i - k//2, j - k//2)]``
  over active neighbours. Equals a dense ``conv2d(padding=k//2)`` of the
  zero-filled grid, read at the active sites.
* :func:`strided_conv` - ``Convolution(k, stride)``: output site ``o`` is active
  when any input lies in its window ``[o*s, o*s + k)``; ``out[o] = sum_{i,j}
  W[:, :, i, j] x[o*s + i, o*s + j]``. Equals a dense ``conv2d(stride=s,
  padding=0)`` read at the active output sites.
* :func:`strided_avg_pool` - ``AveragePooling(k, stride)`` on the same output
  sites as :func:`strided_conv`; the mean over the *active* inputs of the window.
* :func:`global_avg_pool` - per-slide mean of the active sites' features
  (``SparseAdaptiveAvgPool(1)``): ``[N, C] -> [B, C]``.

Neighbour lookup is a sorted-key search (``torch.searchsorted``), so every
operation is ``O(N k^2 log N)`` and runs on CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SparseMap:
    """Active sites of a batch of slides: ``coords [N, 3]`` int64 ``(batch, row, col)``, ``features [N, C]``."""

    coords: torch.Tensor
    features: torch.Tensor
    batch_size: int

    def with_features(self, features: torch.Tensor) -> "SparseMap":
        return SparseMap(self.coords, features, self.batch_size)


def sparse_map(features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch: torch.Tensor,
               batch_size: int) -> SparseMap:
    """Place tiles on the grid; tiles sharing a site are averaged (sparseconvnet's ``InputLayer(mode=4)``).

    ``features [N, C]``, ``rows``/``cols``/``batch`` ``[N]`` integer (rows/cols may be negative: each
    slide's grid is shifted so its top-left active site is at ``(0, 0)``).
    """
    rows, cols, batch = rows.long(), cols.long(), batch.long()
    big = torch.iinfo(torch.int64).max
    rmin = torch.full((batch_size,), big, dtype=torch.int64, device=rows.device).scatter_reduce(0, batch, rows, "amin")
    cmin = torch.full((batch_size,), big, dtype=torch.int64, device=cols.device).scatter_reduce(0, batch, cols, "amin")
    coords = torch.stack([batch, rows - rmin[batch], cols - cmin[batch]], 1)
    uniq, inverse = torch.unique(coords, dim=0, return_inverse=True)
    if len(uniq) == len(coords):
        order = torch.empty_like(inverse)
        order[inverse] = torch.arange(len(inverse), device=inverse.device)
        return SparseMap(uniq, features[order], batch_size)
    sums = torch.zeros(len(uniq), features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, inverse, features)
    counts = torch.zeros(len(uniq), dtype=features.dtype, device=features.device).index_add(
        0, inverse, torch.ones_like(inverse, dtype=features.dtype))
    return SparseMap(uniq, sums / counts[:, None], batch_size)


def _keys(coords: torch.Tensor, span: int) -> torch.Tensor:
    return (coords[:, 0] * span + coords[:, 1]) * span + coords[:, 2]


def _lookup(sorted_keys: torch.Tensor, order: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Index of each query key among the active sites, ``-1`` where absent."""
    pos = torch.searchsorted(sorted_keys, query).clamp(max=len(sorted_keys) - 1)
    found = sorted_keys[pos] == query
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def _span(*coords: torch.Tensor, pad: int) -> int:
    return int(max(int(c[:, 1:].max()) if len(c) else 0 for c in coords)) + 2 * pad + 2


def _gather_apply(features: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[o] = sum_t features[neighbours[o, t]] @ W_t``; ``neighbours [M, T]`` (-1: none), ``weight [Cout, Cin, k, k]``."""
    m, t = neighbours.shape
    cin = features.shape[1]
    padded = torch.cat([features, features.new_zeros(1, cin)])  # row -1 -> zeros
    gathered = padded[neighbours.reshape(-1)].reshape(m, t * cin)  # [M, T * Cin]
    w = weight.permute(2, 3, 1, 0).reshape(t * cin, weight.shape[0])  # [(k k Cin), Cout], offsets row-major
    return gathered @ w


def _offsets(k: int, device) -> torch.Tensor:
    r = torch.arange(k, device=device)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)  # [k*k, 2] (i, j) row-major


def submanifold_conv(x: SparseMap, weight: torch.Tensor, bias: torch.Tensor | None = None) -> SparseMap:
    """Submanifold convolution, ``weight [Cout, Cin, k, k]`` (odd ``k``): output sites = input sites."""
    k = weight.shape[-1]
    if len(x.coords) == 0:
        return x.with_features(x.features.new_zeros(0, weight.shape[0]))
    if k == 1:
        out = x.features @ weight[:, :, 0, 0].T
    else:
        span = _span(x.coords, pad=k)
        shift = torch.tensor([0, k, k], device=x.coords.device)
        keys = _keys(x.coords + shift, span)
        sorted_keys, order = torch.sort(keys)
        off = _offsets(k, x.coords.device) - k // 2  # [T, 2]
        q = x.coords[:, None, :] + shift
        q = torch.cat([q[..., :1].expand(-1, len(off), 1), q[..., 1:] + off[None]], -1)  # [N, T, 3]
        neighbours = _lookup(sorted_keys, order, _keys(q.reshape(-1, 3), span)).reshape(len(x.coords), len(off))
        out = _gather_apply(x.features, neighbours, weight)
    if bias is not None:
        out = out + bias
    return x.with_features(out)


def strided_sites(coords: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Active output sites ``[M, 3]`` (sorted) of a ``k``/``stride`` window over the input sites."""
    lo_r = torch.div(coords[:, 1:] - k + 1 + stride - 1, stride, rounding_mode="floor").clamp(min=0)  # ceil((r-k+1)/s)
    hi_r = torch.div(coords[:, 1:], stride, rounding_mode="floor")
    reach = (k - 1) // stride + 1  # at most this many outputs per axis see an input
    cand = []
    for a in range(reach):
        for b in range(reach):
            o = lo_r + torch.tensor([a, b], device=coords.device)
            ok = (o <= hi_r).all(1)
            cand.append(torch.cat([coords[ok, :1], o[ok]], 1))
    return torch.unique(torch.cat(cand), dim=0)


def _window_neighbours(x: SparseMap, out_coords: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    span = _span(x.coords, out_coords * stride, pad=k)
    sorted_keys, order = torch.sort(_keys(x.coords, span))
    off = _offsets(k, x.coords.device)
    q = torch.cat([out_coords[:, None, :1].expand(-1, len(off), 1), out_coords[:, None, 1:] * stride + off[None]], -1)
    return _lookup(sorted_keys, order, _keys(q.reshape(-1, 3), span)).reshape(len(out_coords), len(off))


def strided_conv(x: SparseMap, weight: torch.Tensor, stride: int, bias: torch.Tensor | None = None,
                 out_coords: torch.Tensor | None = None) -> SparseMap:
    """Strided (downsampling) sparse convolution, ``weight [Cout, Cin, k, k]``, no padding."""
    k = weight.shape[-1]
    out_coords = strided_sites(x.coords, k, stride) if out_coords is None else out_coords
    out = _gather_apply(x.features, _window_neighbours(x, out_coords, k, stride), weight)
    if bias is not None:
        out = out + bias
    return SparseMap(out_coords, out, x.batch_size)


def strided_avg_pool(x: SparseMap, k: int, stride: int, out_coords: torch.Tensor | None = None) -> SparseMap:
    """Mean over the active inputs of each ``k``/``stride`` window (the output sites of :func:`strided_conv`)."""
    out_coords = strided_sites(x.coords, k, stride) if out_coords is None else out_coords
    nb = _window_neighbours(x, out_coords, k, stride)  # [M, T]
    padded = torch.cat([x.features, x.features.new_zeros(1, x.features.shape[1])])
    summed = padded[nb].sum(1)
    count = (nb >= 0).sum(1, keepdim=True).clamp(min=1).to(summed.dtype)
    return SparseMap(out_coords, summed / count, x.batch_size)


def global_avg_pool(x: SparseMap) -> torch.Tensor:
    """Per-slide mean of the active sites' features: ``[N, C] -> [B, C]`` (zeros for a slide with no site)."""
    b = x.coords[:, 0]
    sums = x.features.new_zeros(x.batch_size, x.features.shape[1]).index_add(0, b, x.features)
    counts = torch.bincount(b, minlength=x.batch_size).clamp(min=1).to(sums.dtype)
    return sums / counts[:, None]


def to_dense(x: SparseMap, height: int, width: int) -> torch.Tensor:
    """The zero-filled dense grid ``[B, C, height, width]`` (a reference for tests)."""
    dense = x.features.new_zeros(x.batch_size, x.features.shape[1], height, width)
    dense[x.coords[:, 0], :, x.coords[:, 1], x.coords[:, 2]] = x.features
    return dense


def relu(x: SparseMap) -> SparseMap:
    return x.with_features(F.relu(x.features))
