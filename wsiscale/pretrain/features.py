"""Features of a (teacher) DINO model for whole slides, in Ray Data actors: SLPD's clustering and the probes.

:class:`TeacherFeatures` rebuilds the model from a state dict (an object-store
reference is resolved first: every actor shares one copy) and embeds

* region grids ``[n, D, g, g]``: the backbone's CLS feature ``[n, embed_dim]``
  of the whole grid (or of its centre ``crop`` tokens), or the L2-normalised
  bottleneck of the DINO head ``[n, 256]`` (``head=True``, SLPD's
  clustering feature);
* tiles ``[n, S, S, 3]`` uint8: resized to the global view size and
  normalised as the patch encoder expects.

:func:`read_slide_items` reads one slide's grids or decoded tiles from its shard files.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def read_slide_items(uris: list[str], storage: Any, shape: list[int], level: str) -> np.ndarray:
    """A slide's region grids ``[n, D, g, g]`` float32 or tiles ``[n, S, S, 3]`` uint8 from its shard files."""
    if level == "region":
        from wsiscale.pretrain.data import read_region_grids

        return np.concatenate([read_region_grids(u, storage, shape) for u in uris])
    from wsiscale.data.readers import tile_images
    from wsiscale.models.preprocess import resize_tiles
    from wsiscale.runs.shards import read_parquet

    out = []
    for u in uris:
        tiles = tile_images(read_parquet(str(u), storage, ["image", "tile_size"]))
        if len(tiles):
            out.append(resize_tiles(tiles, shape[1]))
    return np.concatenate(out) if out else np.zeros((0, shape[1], shape[1], 3), np.uint8)


class TeacherFeatures:
    """The teacher of a pretraining run on CPU, in eval mode (built from its state dict)."""

    def __init__(self, teacher_state: Any, pretrain: dict, shape: list[int], batch: int = 128) -> None:
        import torch

        from wsiscale.config import DinoConfig
        from wsiscale.pretrain.model import build_model, image_normaliser

        self.p = DinoConfig.model_validate(pretrain)
        self.model = build_model(self.p, shape, drop_path=0.0)
        self.load(teacher_state)
        self.shape, self.batch, self.torch = shape, batch, torch
        self.normalise = image_normaliser(self.p) if self.p.level == "patch" else None

    def load(self, teacher_state: Any) -> None:
        """Load a state dict (or an object-store reference to one: every actor shares one copy)."""
        if not isinstance(teacher_state, dict):
            import ray

            teacher_state = ray.get(teacher_state)
        self.model.load_state_dict(teacher_state)
        self.model.eval()

    def __call__(self, items: np.ndarray, crop: int | None = None, head: bool = False) -> np.ndarray:
        """``[n, embed_dim]`` backbone features (or ``[n, bottleneck]`` normalised head features)."""
        torch = self.torch
        if self.normalise is None and crop is not None:
            lo = (items.shape[-1] - crop) // 2
            items = items[:, :, lo : lo + crop, lo : lo + crop]
        out = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(items[i : i + self.batch]))
                if self.normalise is not None:
                    x = self.normalise(x)
                _, z, f = self.model([x])
                out.append((z if head else f).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
