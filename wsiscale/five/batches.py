"""Assembling FiVE's inputs: sampled tiles of a batch of slides, and text features.

Shared by the Ray Train loop (:mod:`wsiscale.five.loop`) and evaluation
(:mod:`wsiscale.five.evaluate`). Training draws one random tile per segment
(seeded per seed, epoch, step and slide, so runs repeat); evaluation takes the
segments' middles of ``five.eval_tiles`` segments.
"""

from __future__ import annotations

import numpy as np
import torch

from wsiscale.data.bags import BagStore
from wsiscale.five.data import seed_of
from wsiscale.five.sampling import pad_batch, relative_positions, segment_sample


def slide_batch(store: BagStore, indices: list[int], segments: int, seeds: list[int] | None,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tiles [b, T, D], positions [b, T], mask [b, T], valid [b])`` for slides ``indices`` of ``store``.

    ``seeds[i]`` seeds slide i's draw (None: deterministic segment middles). A slide whose
    embeddings cannot be read is a single zero tile with ``valid`` False (its loss row is dropped).
    """
    feats, positions, valid = [], [], []
    dim = None
    for j, i in enumerate(indices):
        bag = store.get(i)
        if bag is None:
            feats.append(None)
            positions.append(np.zeros(1, np.float32))
            valid.append(False)
            continue
        dim = bag.feats.shape[1]
        rng = None if seeds is None else np.random.default_rng(seeds[j])
        pick = segment_sample(len(bag.feats), segments, rng)
        feats.append(bag.feats[pick])
        positions.append(relative_positions(pick, len(bag.feats)))
        valid.append(True)
    if dim is None:
        raise RuntimeError(f"none of the slides {[store.specs[i].slide_id for i in indices]} could be read")
    feats = [np.zeros((1, dim), np.float32) if f is None else f for f in feats]
    tiles, pos, mask = pad_batch(feats, positions)
    return (torch.from_numpy(tiles).to(device), torch.from_numpy(pos).to(device), torch.from_numpy(mask).to(device),
            torch.as_tensor(valid, device=device))


def train_seeds(seed: int, epoch: int, step: int, indices: list[int]) -> list[int]:
    return [seed_of(seed, epoch, step, i) for i in indices]


def text_features(encoder, texts: list[str], trainable: bool) -> torch.Tensor:
    """``[len(texts), D_text]``: through the encoder with autograd (LoRA) or from its cache (frozen)."""
    if trainable:
        return encoder(texts)
    return encoder.encode_cached(texts)
