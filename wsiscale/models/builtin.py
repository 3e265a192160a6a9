"""The built-in tile encoders: truncated ResNets (CLAM / Giga-SSL features) and ViT-S/16 (DINO / HIPT).

Importing this module registers ``resnet18_l3``, ``resnet50_l3`` and ``vit_s16``.
"""

from __future__ import annotations

import torch
from torch import nn

from wsiscale.models.registry import EncoderSpec, register


class TruncatedResNet(nn.Module):
    """ResNet up to ``layer3`` + global average pooling: ``[B, 3, S, S] -> [B, C3]`` (CLAM / Giga-SSL features)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        import timm

        net = timm.create_model(arch, pretrained=False, num_classes=0)
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))


def _vit_s16() -> nn.Module:
    import timm

    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=256)


def _register_builtin() -> None:
    register(EncoderSpec("resnet18_l3", lambda: TruncatedResNet("resnet18"), dim=256, input_size=224,
                         reference="Lu et al. 2021 (CLAM); Lazard et al. 2023 (Giga-SSL)",
                         description="ResNet-18 truncated after layer3, average pooled"))
    register(EncoderSpec("resnet50_l3", lambda: TruncatedResNet("resnet50"), dim=1024, input_size=224,
                         reference="Lu et al. 2021 (CLAM)", description="ResNet-50 truncated after layer3, average pooled"))
    register(EncoderSpec("vit_s16", _vit_s16, dim=384, input_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                         reference="Caron et al. 2021 (DINO); Chen et al. 2022 (HIPT)",
                         description="ViT-S/16 at 256 px, CLS token (HIPT patch encoder)"))


_register_builtin()
