"""Per-step teacher schedules of DINO/SLPD (Caron et al. 2021; the official DINO/HIPT/SLPD code).

Every schedule is an array with one value per optimisation step, so a resumed
run indexes it by its global step and continues exactly where it stopped.
"""

from __future__ import annotations

import numpy as np


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """``[epochs]`` teacher temperatures: linear from ``warmup_temp`` to ``temp``, then constant."""
    warm = min(warmup_epochs, epochs)
    return np.concatenate([np.linspace(warmup_temp, temp, warm), np.full(epochs - warm, temp)])


def ema_update(teacher, student, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter (no grad)."""
    import torch

    with torch.no_grad():
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
