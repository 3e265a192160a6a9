"""Per-step schedules shared by the training loops (DINO's ``cosine_scheduler``, Caron et al. 2021).

A schedule is an array with one value per optimisation step, so a resumed run indexes it by
its global step and continues exactly where it stopped.
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
