"""Giga-SSL's slide encoder: SparseConvMIL (a sparse ResNet stage over the tile grid) + SimCLR projection head.

Following trislaz/gigassl (``networks.FullSparseConvMIL``, ``simclr.SimCLRMIL``;
Lazard et al., CVPRW 2023):

* the tile embeddings ``[N, D_in]`` (ResNet-18 ``layer3``, 256-d, in the paper)
  are placed on the slide's tile grid (:func:`~wsiscale.gigassl.sparse.sparse_map`);
* a sparse ResNet-18 ``layer4``: ``BasicBlock(D_in -> width, stride 2)`` then
  ``blocks - 1`` ``BasicBlock(width -> width)``; a block is ``conv3x3 -> BN ->
  ReLU -> conv3x3 -> BN`` plus the identity path (downsampling blocks:
  ``AveragePooling(3, 2) -> conv1x1 -> BN``), then ReLU;
* per-slide global average pooling -> the slide representation ``[B, width]``
  (512), what ``wsiscale gigassl embed`` writes;
* the projection MLP ``width -> width -> width -> proj`` (``Linear, ReLU,
  BatchNorm1d`` twice, then ``Linear``) whose output the NT-Xent loss sees.

The official code initialises the sparse stage from ImageNet ResNet-18's
``layer4``; here it is Kaiming-initialised as torchvision's ResNet (no download
at run time), or loaded from a local torchvision ResNet-18 state dict
(``gigassl.init_weights``, :func:`load_resnet_layer4`). BatchNorms are
:class:`~wsiscale.models.distributed_batchnorm.DistributedBatchNorm1d`, so a
multi-worker step normalises over the global batch as one process would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsiscale.gigassl.sparse import (
    SparseMap,
    global_avg_pool,
    relu,
    sparse_map,
    strided_avg_pool,
    strided_conv,
    strided_sites,
    submanifold_conv,
)
from wsiscale.models.distributed_batchnorm import DistributedBatchNorm1d


class SparseConv2d(nn.Module):
    """A sparse 3x3/1x1 convolution (bias-free, as sparseconvnet's): submanifold at stride 1, strided otherwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # torchvision ResNet's init

    def forward(self, x: SparseMap, out_coords: torch.Tensor | None = None) -> SparseMap:
        if self.stride == 1:
            return submanifold_conv(x, self.weight)
        return strided_conv(x, self.weight, self.stride, out_coords=out_coords)


class SparseBatchNorm(DistributedBatchNorm1d):
    """BatchNorm over the active sites' features (sparseconvnet's ``BatchNormalization``)."""

    def forward(self, x: SparseMap) -> SparseMap:  # type: ignore[override]
        return x.with_features(super().forward(x.features))


class SparseBasicBlock(nn.Module):
    """ResNet ``BasicBlock`` on a sparse map (gigassl ``SparseBasicBlock``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = SparseConv2d(cin, cout, 3, stride)
        self.bn1 = SparseBatchNorm(cout, eps=1e-5, momentum=0.1)
        self.conv2 = SparseConv2d(cout, cout, 3, 1)
        self.bn2 = SparseBatchNorm(cout, eps=1e-5, momentum=0.1)
        self.downsample = stride > 1
        self.convd = SparseConv2d(cin, cout, 1, 1) if self.downsample and cin != cout else None
        self.bnd = SparseBatchNorm(cout, eps=1e-5, momentum=0.1) if self.downsample else None

    def forward(self, x: SparseMap) -> SparseMap:
        out_coords = strided_sites(x.coords, 3, self.stride) if self.downsample else None
        a = relu(self.bn1(self.conv1(x, out_coords)))
        a = self.bn2(self.conv2(a))
        if self.downsample:
            ident = strided_avg_pool(x, 3, self.stride, out_coords)
            if self.convd is not None:
                ident = self.convd(ident)
            ident = self.bnd(ident)
        else:
            ident = x
        return relu(a.with_features(a.features + ident.features))


class SparseConvMIL(nn.Module):
    """Tile embeddings on the grid -> sparse ResNet stage -> per-slide mean: ``[N, D_in] -> [B, width]``."""

    def __init__(self, input_dim: int, width: int = 512, blocks: int = 2) -> None:
        super().__init__()
        layers = [SparseBasicBlock(input_dim, width, 2)] + [SparseBasicBlock(width, width, 1) for _ in range(blocks - 1)]
        self.blocks = nn.ModuleList(layers)
        self.width = width

    def forward(self, tiles: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch: torch.Tensor,
                batch_size: int) -> torch.Tensor:
        """``tiles [N, D_in]``; ``rows``/``cols`` grid positions and ``batch`` slide index ``[N]``."""
        x = sparse_map(tiles, rows, cols, batch, batch_size)
        for block in self.blocks:
            x = block(x)
        return global_avg_pool(x)


class ProjectionMLP(nn.Module):
    """SimCLR's projector as gigassl's ``projection_MLP``: ``(Linear, ReLU, BN) x 2, Linear``."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), DistributedBatchNorm1d(dim),
                                 nn.Linear(dim, dim), nn.ReLU(inplace=True), DistributedBatchNorm1d(dim),
                                 nn.Linear(dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class GigaSSLModel(nn.Module):
    """Slide encoder + projector; ``encode`` gives the slide representation, ``forward`` the projection."""

    def __init__(self, input_dim: int, width: int = 512, blocks: int = 2, projection_dim: int = 256) -> None:
        super().__init__()
        self.encoder = SparseConvMIL(input_dim, width, blocks)
        self.projector = ProjectionMLP(width, projection_dim)

    def encode(self, tiles: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch: torch.Tensor,
               batch_size: int) -> torch.Tensor:
        return self.encoder(tiles, rows, cols, batch, batch_size)

    def forward(self, tiles: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch: torch.Tensor,
                batch_size: int) -> torch.Tensor:
        return self.projector(self.encode(tiles, rows, cols, batch, batch_size))


def build_gigassl_model(g: Any, input_dim: int) -> GigaSSLModel:
    """The model of a :class:`~wsiscale.config.GigaSSLConfig` on ``input_dim`` tile embeddings."""
    model = GigaSSLModel(input_dim, g.embed_dim, g.blocks, g.projection_dim)
    if g.init_weights:
        load_resnet_layer4(model.encoder, g.init_weights)
    return model


def load_resnet_layer4(encoder: SparseConvMIL, path: str) -> None:
    """Initialise the sparse stage from a local torchvision ResNet-18 state dict's ``layer4`` (as gigassl).

    Channel counts must match (``layer4`` maps 256 -> 512: tile embeddings of ResNet-18's ``layer3``).
    Loaded with ``torch.load(weights_only=True)`` or safetensors; never downloaded.
    """
    from wsiscale.models.encoders import load_state_dict_file

    state = load_state_dict_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for i, block in enumerate(encoder.blocks):
        pre = f"layer4.{i}."
        if pre + "conv1.weight" not in state:
            raise ValueError(f"{path}: no {pre}conv1.weight - gigassl.init_weights must be a torchvision ResNet-18 "
                             "state dict (layer4 initialises the sparse stage)")
        pairs = [(block.conv1.weight, "conv1.weight"), (block.conv2.weight, "conv2.weight")]
        if block.convd is not None:
            pairs.append((block.convd.weight, "downsample.0.weight"))
        for param, key in pairs:
            w = state[pre + key]
            if tuple(w.shape) != tuple(param.shape):
                raise ValueError(f"{path}: {pre + key} has shape {tuple(w.shape)}, the sparse stage needs "
                                 f"{tuple(param.shape)} (tile embeddings of {param.shape[1]} channels)")
            param.data.copy_(w)
        bns = [(block.bn1, "bn1"), (block.bn2, "bn2")] + ([(block.bnd, "downsample.1")] if block.bnd is not None else [])
        for bn, key in bns:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, attr).data.copy_(state[f"{pre}{key}.{attr}"])


def grid_positions(x: torch.Tensor, y: torch.Tensor, tile_extent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-0 tile corners ``x``/``y`` ``[N]`` -> grid ``(rows, cols)`` (gigassl divides by ``downmap``)."""
    return torch.floor(y / tile_extent).long(), torch.floor(x / tile_extent).long()

