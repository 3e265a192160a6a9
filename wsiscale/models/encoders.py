"""Tile encoder registry: architectures by name, weights from LOCAL files only.

``load_encoder(name, weights)`` returns an :class:`Encoder`: the model in
eval mode, its preprocessing (uint8 RGB tiles -> normalised float tensors at
the model's input size), the embedding dimension and the resolution the
model expects. Nothing is downloaded: weights come from a local safetensors
file, a torch state dict (read with ``weights_only=True``), or a directory
holding one of them. A missing file or a checkpoint that does not fit the
architecture raises :class:`EncoderWeightsError` naming the keys and shapes.

Built-in names (see :func:`list_encoders`):

* ``resnet18_l3``, ``resnet50_l3``: ResNet truncated after ``layer3`` +
  global average pooling (256 / 1024-d), as in CLAM and Giga-SSL;
* ``vit_s16``: ViT-S/16 at 256 px (DINO/HIPT patch encoder, 384-d);
* ``timm:<architecture>``: any timm model, classifier removed;
* pathology foundation models by architecture (UNI, CONCH vision tower,
  Virchow2, H-optimus-0, Prov-GigaPath): :mod:`wsiscale.models.foundation`;
* our own checkpoints: the ``encoder/`` directory a ``wsiscale pretrain`` run exports
  (``embed.encoder=<dir>``), or :func:`register` a spec.

``weights="random"`` builds a seeded random initialisation (tests, demos and
benchmarks on machines without checkpoints); it is never the default.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsiscale.models import builtin, foundation  # noqa: F401 - importing them registers their encoders
from wsiscale.models.errors import EncoderError, EncoderWeightsError
from wsiscale.models.registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register, registered

log = logging.getLogger(__name__)

__all__ = ["Encoder", "EncoderError", "EncoderSpec", "EncoderWeightsError", "exported_encoder", "get_spec",
           "list_encoders", "load_encoder", "load_state_dict_file", "load_weights", "register"]

#: Prefixes stripped from checkpoint keys (DDP, Lightning, DINO teacher/student, timm/open_clip wrappers).
KNOWN_PREFIXES = ("module.", "model.", "backbone.", "teacher.", "student.", "encoder.", "trunk.", "visual.trunk.")


def list_encoders() -> list[EncoderSpec]:
    """Registered specs (``timm:<name>`` works for any timm architecture besides these)."""
    specs = registered()
    return [specs[k] for k in sorted(specs)]


def get_spec(name: str) -> EncoderSpec:
    """The spec for ``name`` (``timm:<architecture>`` builds one on the fly; an exported ``encoder/``
    directory gives its architecture's)."""
    specs = registered()
    if name in specs:
        return specs[name]
    exported = exported_encoder(name)
    if exported is not None:
        return get_spec(exported["encoder"])
    if name.startswith("timm:"):
        return _timm_spec(name[len("timm:") :])
    import difflib

    hint = difflib.get_close_matches(name, list(specs), n=1)
    raise EncoderError(
        f"unknown encoder {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        + f". Registered: {', '.join(sorted(specs))}; or any timm architecture as 'timm:<name>'"
    )


def _timm_spec(arch: str) -> EncoderSpec:
    import timm

    if not timm.is_model(arch):
        raise EncoderError(f"timm has no architecture {arch!r} (timm.list_models() lists them)")
    cfg = timm.models.get_pretrained_cfg(arch)
    size = int((cfg.input_size if cfg is not None else (3, 224, 224))[-1])
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    with torch.device("meta"):
        dim = int(timm.create_model(arch, pretrained=False, num_classes=0).num_features)
    return EncoderSpec(
        name=f"timm:{arch}", build=lambda: timm.create_model(arch, pretrained=False, num_classes=0),
        dim=dim, input_size=size, mean=mean, std=std, reference="timm", description=f"timm {arch}, no classifier",
    )


@dataclass
class Encoder:
    """A ready encoder: ``embed(tiles)`` maps ``[B, H, W, 3]`` uint8 to ``[B, dim]`` float32."""

    spec: EncoderSpec
    model: nn.Module
    device: torch.device
    dtype: torch.dtype = torch.float32  # autocast dtype on GPU (bf16/fp16) or float32
    channels_last: bool = False
    _mean: torch.Tensor = field(init=False, repr=False)
    _std: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def preprocess(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 -> ``[B, 3, S, S]`` float32 normalised, on the encoder's device.

        Tiles of another size are resized to ``S`` = ``spec.input_size``: numpy
        input with :func:`wsiscale.models.preprocess.resize_tiles` (what the pipeline's
        readers do), tensors (e.g. already on the GPU) bilinearly with antialiasing.
        """
        if isinstance(tiles, np.ndarray) and tiles.ndim == 4 and tiles.shape[1] != self.input_size:
            from wsiscale.models.preprocess import resize_tiles

            tiles = resize_tiles(tiles, self.input_size)
        x = torch.as_tensor(tiles).to(self.device, non_blocking=True)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise EncoderError(f"tiles must be [B, H, W, 3] uint8, got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                antialias=True, align_corners=False)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def embed(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 -> ``[B, dim]`` float32 (on CPU)."""
        x = self.preprocess(tiles)
        if self.device.type == "cuda" and self.dtype != torch.float32:
            with torch.autocast("cuda", dtype=self.dtype):
                out = self.model(x)
        else:
            out = self.model(x)
        return out.float().cpu()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, a torch checkpoint (``weights_only=True``), or a directory with one."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors"))  # all shards of a sharded checkpoint
        if not found:
            others = sorted(p.glob("*.bin")) + sorted(p.glob("*.pth")) + sorted(p.glob("*.pt"))
            if not others:
                raise EncoderWeightsError(f"{p}: no *.safetensors, *.bin, *.pth or *.pt weights in this directory")
            if len(others) > 1:
                log.info("%s: several weight files, using %s", p, others[0].name)
            found = others[:1]
        state: dict[str, torch.Tensor] = {}
        for f in found:
            state.update(load_state_dict_file(f))
        return state
    if not p.exists():
        raise EncoderWeightsError(f"weights file {p} does not exist (weights are never downloaded; copy the checkpoint here)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except EncoderWeightsError:
        raise
    except Exception as exc:
        raise EncoderWeightsError(f"{p}: not a readable safetensors file or torch state dict ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and obj[key] and all(
                isinstance(v, torch.Tensor) for v in obj[key].values()):
            log.info("%s: using the %r entry of the checkpoint", p, key)
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(f"{p}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    return obj


def _strip(state: dict[str, torch.Tensor], wanted: set[str], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Strip known key prefixes (repeatedly: ``module.backbone.``) while that makes more keys match the model's."""
    best, best_hits = state, len(wanted & set(state))
    for _ in range(4):
        improved = False
        for prefix in sorted(set(prefixes + KNOWN_PREFIXES), key=len, reverse=True):
            if not any(k.startswith(prefix) for k in best):
                continue
            cand = {k[len(prefix):]: v for k, v in best.items() if k.startswith(prefix)}
            hits = len(wanted & set(cand))
            if hits > best_hits or (hits == best_hits == 0 and len(cand) == len(best)):
                best, best_hits, improved = cand, hits, True
                break
        if not improved:
            break
    return best


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], spec: EncoderSpec, source: str) -> None:
    """Load ``state`` into ``model`` strictly, with an error listing missing/unexpected keys and shape mismatches.

    Classifier/projection heads that the encoder does not have (``head.*``, ``fc.*``) are ignored.
    """
    own = model.state_dict()
    state = _strip(state, set(own), spec.prefixes)
    ignorable = ("head.", "fc.", "classifier.", "head_drop")
    unexpected = sorted(k for k in state if k not in own and not k.startswith(ignorable))
    missing = sorted(k for k in own if k not in state)
    wrong = sorted((k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state
                   and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit encoder {spec.name!r} ({len(own)} tensors expected, {len(state)} in the file):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}"
                         + (" ..." if len(unexpected) > 10 else ""))
        for k, got, want in wrong[:10]:
            lines.append(f"  shape mismatch {k}: file {list(got)}, model {list(want)}")
        lines.append("  check that the checkpoint is for this architecture (wsiscale encoders lists them)")
        raise EncoderWeightsError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


def exported_encoder(name: str) -> dict | None:
    """The ``encoder.json`` of a local directory exported by ``wsiscale pretrain``, if ``name`` is one."""
    import json

    p = Path(name[len("file://"):] if name.startswith("file://") else name)
    if "/" not in name or not (p / "encoder.json").is_file():
        return None
    spec = json.loads((p / "encoder.json").read_text())
    if "encoder" not in spec:
        raise EncoderError(f"{p} holds a {spec.get('architecture')!r} encoder, not a tile encoder: region encoders "
                           "load with wsiscale.pretrain.region_vit.load_region_encoder")
    return spec


def load_encoder(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    seed: int = 0,
) -> Encoder:
    """Build encoder ``name`` with local ``weights`` on ``device`` (default: CUDA if available).

    Args:
        name: registry name, ``timm:<architecture>``, or the ``encoder/`` directory a
            ``wsiscale pretrain`` run exported (its ``encoder.json`` names the architecture;
            its weights are used unless ``weights`` is given).
        weights: local file/directory, ``"random"`` for a seeded random init, or None
            (random init with a warning for generic architectures; an error for
            foundation models).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast on CUDA; CPU runs fp32).
        channels_last: NHWC memory format (default: on CUDA).
    """
    exported = exported_encoder(name)
    if exported is not None:  # the encoder/ directory of a `wsiscale pretrain` run (patch level)
        name, weights = exported["encoder"], Path(name) if weights is None else weights
    spec = get_spec(name)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if weights is None and spec.needs_weights:
        raise EncoderWeightsError(
            f"encoder {name!r} needs its pretrained weights: set embed.weights to the local checkpoint "
            f"({spec.reference or 'see the model card'}); nothing is downloaded at run time"
        )
    torch.manual_seed(seed)
    model = spec.build()
    if weights is None:
        log.warning("encoder %s: no weights given, using a random initialisation (seed %d)", name, seed)
    elif str(weights) != "random":
        load_weights(model, load_state_dict_file(weights), spec, str(weights))
    model.eval().requires_grad_(False)
    cl = dev.type == "cuda" if channels_last is None else channels_last
    model = model.to(dev, memory_format=torch.channels_last) if cl else model.to(dev)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return Encoder(spec=spec, model=model, device=dev, dtype=dtype, channels_last=cl)
