"""Ray Train checkpoints of the training loops (pretraining, MIL, Giga-SSL): ``state.pt`` + ``meta.json``.

A checkpoint directory holds ``state.pt`` (tensors: model, optimiser, position; read back with
``torch.load(weights_only=True)``, so no pickle from storage is executed) and ``meta.json`` (the
resolved config, histories, results). Rank 0 writes it; every rank reports, as Ray Train requires.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def read_checkpoint(checkpoint: Any, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` of a Ray Train checkpoint written by :func:`report_checkpoint`."""
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE_FILE), map_location=map_location, weights_only=True)
        with open(os.path.join(d, META_FILE)) as fh:
            meta = json.load(fh)
    return state, meta


def report_checkpoint(metrics: dict[str, Any], rank: int, state: dict[str, Any] | None,
                      meta: dict[str, Any] | None) -> None:
    """``ray.train.report(metrics)`` with a checkpoint of ``state``/``meta`` from rank 0 (others pass None)."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            torch.save(state, os.path.join(d, STATE_FILE))
            with open(os.path.join(d, META_FILE), "w") as fh:
                json.dump(meta, fh)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)
