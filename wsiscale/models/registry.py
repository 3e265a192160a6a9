"""The encoder registry: names -> :class:`EncoderSpec` (how to build, preprocess and describe a model).

Like timm's ``_registry.py``, this module imports none of the models: model modules
(:mod:`wsiscale.models.builtin`, :mod:`wsiscale.models.foundation`, a user's own) call
:func:`register`, and :mod:`wsiscale.models.encoders` looks names up after importing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from wsiscale.models.errors import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder.

    Attributes:
        name: registry name.
        build: returns the untrained architecture (an ``nn.Module`` mapping
            ``[B, 3, S, S]`` float to ``[B, dim]``).
        dim: embedding dimension.
        input_size: side ``S`` of the model input (tiles are resized to it).
        mpp: microns per pixel the model was trained at (tiles should match).
        mean, std: normalisation of ``[0, 1]`` RGB.
        needs_weights: True for models that are useless without a checkpoint
            (foundation models): ``weights=None`` is an error, not random init.
        prefixes: extra checkpoint key prefixes to strip for this model.
        reference: paper / model card.
    """

    name: str
    build: Callable[[], nn.Module]
    dim: int
    input_size: int = 224
    mpp: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    needs_weights: bool = False
    prefixes: tuple[str, ...] = ()
    reference: str = ""
    description: str = ""


_REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec, overwrite: bool = False) -> EncoderSpec:
    """Add an encoder spec under ``spec.name``."""
    if spec.name in _REGISTRY and not overwrite:
        raise EncoderError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registered() -> dict[str, EncoderSpec]:
    """The specs registered so far, by name (a copy)."""
    return dict(_REGISTRY)
