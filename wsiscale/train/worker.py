"""The start of a Ray Train worker: who it is, where it runs, and the checkpoint it resumes from.

Every training loop (pretraining, MIL, Giga-SSL, FiVE) begins with :func:`start_worker`. A worker
group that Ray Train restarts after a failure (``FailureConfig``), or a resubmitted job, gets the
latest checkpoint back; :class:`WorkerStart` carries its tensors and metadata, and the run's list
of **starts**: one record per attempt (``attempt``, ``world``, and ``from``, the position it
resumed at, None for a fresh start). Each loop saves ``starts`` in every checkpoint's metadata, so
a finished run tells how often it was restarted and where each attempt picked up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from wsiscale.train.checkpoints import read_checkpoint


@dataclass
class WorkerStart:
    """This worker's rank, world size and device, and the checkpoint of the attempt (None when fresh)."""

    rank: int
    world: int
    device: torch.device
    state: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    starts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resuming(self) -> bool:
        return self.state is not None

    def resumed_at(self, **position: Any) -> None:
        """Record where this attempt picked up (e.g. ``step=40`` or ``fold=1, epoch=4``); fresh starts leave it None."""
        if self.resuming:
            self.starts[-1]["from"] = position


def start_worker(map_location: str = "device") -> WorkerStart:
    """Rank, world, device (``ray.train.torch.get_device``) and the latest checkpoint of the run, read
    onto ``map_location`` (``"device"`` or ``"cpu"``), with this attempt appended to the run's starts."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    start = WorkerStart(ctx.get_world_rank(), ctx.get_world_size(), device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start.state, start.meta = read_checkpoint(checkpoint, device if map_location == "device" else map_location)
    before = list((start.meta or {}).get("starts", []))
    start.starts = before + [{"attempt": len(before) + 1, "world": start.world, "from": None}]
    return start
