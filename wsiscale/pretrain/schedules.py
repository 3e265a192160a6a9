"""Per-step training schedules of DINO/SLPD (Caron et al. 2021; the official DINO/HIPT/SLPD code).

Every schedule is an array with one value per optimisation step, so a resumed
run indexes it by its global step and continues exactly where it stopped.
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """``[epochs * steps_per_epoch]`` values: linear warm-up to ``base``, then cosine decay to ``final``.

    ``value(i) = final + (base - final) * (1 + cos(pi * i / n)) / 2`` for the
    ``n`` steps after warm-up (DINO's ``cosine_scheduler``).
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs}, {steps_per_epoch}")
    warm = min(warmup_epochs, epochs) * steps_per_epoch
    warmup = np.linspace(warmup_start, base, warm) if warm else np.zeros(0)
    rest = epochs * steps_per_epoch - warm
    i = np.arange(rest)
    decay = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / rest))
    return np.concatenate([warmup, decay])


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
