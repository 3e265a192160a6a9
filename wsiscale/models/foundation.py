"""Public pathology foundation models, registered by architecture only.

Every spec rebuilds the tile encoder the way its model card does with timm, so the
official checkpoint loads *strictly* through :func:`wsiscale.models.encoders.load_weights`
(same keys, same shapes). No weights ship with wsiscale and nothing is downloaded:
each model has its own licence and access conditions (most are gated on Hugging Face),
so users fetch the checkpoint themselves and point ``embed.weights`` / ``load_encoder(name,
weights=...)`` at the local file. ``needs_weights=True`` turns ``load_encoder(name)``
without weights into an :class:`~wsiscale.models.encoders.EncoderWeightsError`.

=================  ===============================================  =====  =====  ===========
name               architecture (timm)                              dim    input  weights
=================  ===============================================  =====  =====  ===========
``uni``            ViT-L/16 ``vit_large_patch16_224``               1024   224    MahmoodLab/UNI
``uni2_h``         ViT-H/14, SwiGLU, 8 registers                    1536   224    MahmoodLab/UNI2-h
``conch_vit_b16``  ViT-B/16 at 448 px (CONCH ``visual.trunk``)      768    448    MahmoodLab/CONCH
``virchow2``       ViT-H/14, SwiGLU, 4 registers; CLS ++ mean       2560   224    paige-ai/Virchow2
``h_optimus_0``    ViT-g/14 ``vit_giant_patch14_reg4_dinov2``       1536   224    bioptimus/H-optimus-0
``prov_gigapath``  ViT-g DINOv2 (patch 16 in the released config)   1536   224    prov-gigapath/prov-gigapath
=================  ===============================================  =====  =====  ===========

:func:`model_card` returns the exact ``(architecture, kwargs)`` pair; :func:`build_foundation`
accepts overrides (``depth=2, embed_dim=32, ...``) so tests can exercise the same code
path on tiny models. The registered specs always use the published sizes.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch import nn

from wsiscale.models.errors import EncoderError
from wsiscale.models.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: ``model_args`` of timm's ``vit_huge_patch14_224`` entry point. The Virchow2 encoder is a
#: subclass of timm's VisionTransformer instantiated directly with these + the model card's
#: kwargs; tests check that its state dict is identical to ``timm.create_model``'s.
VIT_HUGE_PATCH14_ARGS: dict[str, Any] = dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16)

FOUNDATION_MODELS = ("uni", "uni2_h", "conch_vit_b16", "virchow2", "h_optimus_0", "prov_gigapath")


def model_card(name: str) -> tuple[str, dict[str, Any]]:
    """``(timm architecture, kwargs)`` exactly as the model card of foundation model ``name`` builds it.

    A fresh dict on every call (callers may update it).
    """
    from timm.layers import SwiGLUPacked

    cards: dict[str, tuple[str, dict[str, Any]]] = {
        # huggingface.co/MahmoodLab/UNI
        "uni": ("vit_large_patch16_224", dict(
            img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)),
        # huggingface.co/MahmoodLab/UNI2-h
        "uni2_h": ("vit_giant_patch14_224", dict(
            img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
            mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked,
            act_layer=nn.SiLU, reg_tokens=8, dynamic_img_size=True)),
        # github.com/mahmoodlab/CONCH, conch/open_clip_custom/coca_model.py::_build_vision_tower builds
        # VisionTransformer(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, img_size=448,
        # patch_size=16, num_classes=0, dynamic_img_size=True): timm's vit_base_patch16_224 with these.
        "conch_vit_b16": ("vit_base_patch16_224", dict(img_size=448, num_classes=0, dynamic_img_size=True)),
        # huggingface.co/paige-ai/Virchow2 (config.json model_args + the card's mlp_layer / act_layer)
        "virchow2": ("vit_huge_patch14_224", dict(
            img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
            dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)),
        # huggingface.co/bioptimus/H-optimus-0
        "h_optimus_0": ("vit_giant_patch14_reg4_dinov2", dict(
            img_size=224, init_values=1e-5, dynamic_img_size=False, num_classes=0)),
        # huggingface.co/prov-gigapath/prov-gigapath config.json model_args. NB: patch_size=16
        # overrides the entry point's 14 (pos_embed [1, 197, 1536]); SwiGLU comes from the entry point.
        "prov_gigapath": ("vit_giant_patch14_dinov2", dict(
            img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
            init_values=1e-5, mlp_ratio=5.33334, num_classes=0)),
    }
    if name not in cards:
        raise EncoderError(f"no foundation model card {name!r}; known: {', '.join(cards)}")
    arch, kwargs = cards[name]
    return arch, dict(kwargs)


_CLASSES: dict[str, type] = {}


def _cls_mean_patch_vit() -> type:
    """The :class:`ClsMeanPatchViT` class (defined on first use: importing timm costs ~1 s)."""
    if "ClsMeanPatchViT" not in _CLASSES:
        from timm.models.vision_transformer import VisionTransformer

        class ClsMeanPatchViT(VisionTransformer):
            """A timm VisionTransformer whose output is ``concat(CLS, mean of patch tokens)``: ``[B, 2 * D]``.

            Register tokens are excluded from the mean (they sit at ``1 .. num_prefix_tokens - 1``),
            which is Virchow / Virchow2's published tile embedding. Being a VisionTransformer
            itself (not a wrapper), its state dict has exactly the keys of the timm model, so the
            official checkpoint loads without any key renaming. Built with ``num_classes=0,
            global_pool=""`` (Virchow2's card); ``fc_norm`` / ``head`` are then identities and
            are bypassed, and ``num_features`` stays ``D`` (the output is ``2 * D``).
            """

            def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
                return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

        # importable as wsiscale.models.foundation.ClsMeanPatchViT (module __getattr__), so it pickles
        ClsMeanPatchViT.__module__ = __name__
        ClsMeanPatchViT.__qualname__ = "ClsMeanPatchViT"
        _CLASSES["ClsMeanPatchViT"] = ClsMeanPatchViT
    return _CLASSES["ClsMeanPatchViT"]


def __getattr__(name: str) -> Any:  # PEP 562: ``from wsiscale.models.foundation import ClsMeanPatchViT``
    if name == "ClsMeanPatchViT":
        return _cls_mean_patch_vit()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_foundation(name: str, **overrides: Any) -> nn.Module:
    """Build foundation model ``name`` (random initialisation) from its model card.

    ``overrides`` update the card's kwargs (``depth``, ``embed_dim``, ``num_heads``, ...) - for
    tests on tiny models only; the registered specs call this without overrides.
    """
    arch, kwargs = model_card(name)
    kwargs.update(overrides)
    if name == "virchow2":
        return _cls_mean_patch_vit()(**{**VIT_HUGE_PATCH14_ARGS, **kwargs})
    import timm

    # use_naflex=False pins timm's classic VisionTransformer (TIMM_USE_NAFLEXVIT=true would
    # otherwise build NaFlexVit, whose keys differ from the released checkpoints).
    return timm.create_model(arch, pretrained=False, use_naflex=False, **kwargs)


def _terms(repo: str, licence: str) -> str:
    return (f"weights not included: obtain them yourself from huggingface.co/{repo} ({licence}; "
            "you must accept the model's terms of use) and pass the local file")


#: Normalisation of ``[0, 1]`` RGB by the name ``foundation_models.yaml`` uses.
NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "openai_clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                  "h_optimus": (H_OPTIMUS_MEAN, H_OPTIMUS_STD)}


def _specs() -> tuple[EncoderSpec, ...]:
    """The registered foundation models, from their model-card data (``foundation_models.yaml``, 0.5 um/px,
    weights required)."""
    from importlib.resources import files

    import yaml

    cards = yaml.safe_load(files("wsiscale.models").joinpath("foundation_models.yaml").read_text())
    specs = []
    for name, card in cards.items():
        mean, std = NORMALISATIONS[card.get("normalisation", "imagenet")]
        weights = card["weights"]
        specs.append(EncoderSpec(
            name, partial(build_foundation, name), dim=card["dim"], input_size=card.get("input_size", 224), mpp=0.5,
            mean=mean, std=std, needs_weights=True, prefixes=tuple(card.get("prefixes", ())),
            reference=card["reference"],
            description=f"{card['description']}; {_terms(weights['repo'], weights['licence'])}"))
    return tuple(specs)


SPECS: tuple[EncoderSpec, ...] = _specs()

for _spec in SPECS:
    try:
        register(_spec)
    except EncoderError:  # a spec of this name registered earlier (by the user) takes precedence
        log.info("encoder %r is already registered; keeping that one", _spec.name)
