"""The DINO student/teacher network of pretraining (Caron et al. 2021), for tiles or region grids.

:func:`build_model` gives a :class:`DinoModel`: a backbone (a registered patch encoder at
``pretrain.level=patch``; HIPT/SLPD's region ViT over ``[D, g, g]`` patch-embedding grids at
``level=region``) and the DINO projection head. The training loop (:mod:`wsiscale.pretrain.loop`)
and the teacher-feature readers (:mod:`wsiscale.pretrain.features`) both build it here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsiscale.pretrain.heads import DINOHead
from wsiscale.pretrain.region_vit import RegionViT


class DinoModel(nn.Module):
    """Backbone + DINO head over multi-crop views of different sizes (DINO's ``MultiCropWrapper``).

    ``forward(views)`` with ``views`` a list of ``[B, D, h_i, w_i]`` tensors returns
    ``(logits [V * B, K], bottleneck [V * B, 256], features [V * B, embed_dim])``, view-major.
    Views of the same size go through the backbone together.
    """

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        f = torch.cat(feats)
        logits, z = self.head(f)
        return logits, z, f


def patch_backbone(name: str, drop_path: float) -> tuple[nn.Module, int]:
    """``(backbone, feature dim)`` of registered tile encoder ``name``, trainable at any view size.

    ViTs (``vit_s16``, ``timm:<vit>``) are built with timm's ``dynamic_img_size`` (position
    embeddings interpolated for 96 px local views) and ``drop_path``; the state dict is the
    registry's, so the exported weights load with ``load_encoder(name, weights=...)``.
    """
    import timm

    from wsiscale.models.encoders import get_spec

    spec = get_spec(name)
    arch = {"vit_s16": ("vit_small_patch16_224", {"img_size": 256})}.get(name)
    if arch is None and name.startswith("timm:"):
        arch = (name[len("timm:"):], {})
    if arch is not None:
        try:
            return timm.create_model(arch[0], pretrained=False, num_classes=0, dynamic_img_size=True,
                                     drop_path_rate=drop_path, **arch[1]), spec.dim
        except TypeError:  # not a ViT: convolutional nets take any input size
            pass
    return spec.build(), spec.dim


def build_model(pretrain: Any, shape: list[int], drop_path: float | None = None) -> DinoModel:
    """Student/teacher network for ``shape``: ``[D, g, g]`` region grids or ``[3, S, S]`` tiles (patch level)."""
    p = pretrain
    dp = p.drop_path if drop_path is None else drop_path
    if p.level == "patch":
        backbone, dim = patch_backbone(p.patch_encoder, dp)
    else:
        backbone = RegionViT(input_dim=int(shape[0]), embed_dim=p.embed_dim, depth=p.depth, num_heads=p.heads,
                             grid=int(shape[1]), drop_path_rate=dp)
        dim = p.embed_dim
    head = DINOHead(dim, p.out_dim, hidden_dim=p.head_hidden_dim, bottleneck_dim=p.head_bottleneck_dim,
                    use_bn=p.head_use_bn)
    if p.head_use_bn:  # batch statistics over every worker's batch (DINO's SyncBatchNorm; also on gloo)
        from wsiscale.models.distributed_batchnorm import convert_batchnorm

        convert_batchnorm(head)
    return DinoModel(backbone, head)


def image_normaliser(pretrain: Any):
    """``[B, S, S, 3]`` uint8 tensor -> ``[B, 3, S, S]`` float normalised as the patch encoder expects."""
    from wsiscale.models.encoders import get_spec

    spec = get_spec(pretrain.patch_encoder)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0

    def normalise(x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        return (x - mean.to(x.device)) / std.to(x.device)

    return normalise
