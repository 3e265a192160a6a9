"""Where a stage runs: join ``cfg.ray.address`` or start a local Ray, and the Ray Data context.

Every stage (CLI, ``jobs/``, the pipeline, the demo) reaches Ray through
:func:`ray_session` or :func:`start_ray`, so a local run and a submitted job
differ only in ``ray.address``: ``None`` starts a local Ray sized by
``ray.num_cpus`` / ``ray.num_gpus``, ``auto`` (or ``host:port``) joins a
cluster and never starts one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from wsiscale.config import WsiscaleConfig


def start_ray(cfg: WsiscaleConfig) -> bool:
    """Connect to ``cfg.ray.address`` or start a local Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(address=cfg.ray.address, include_dashboard=False, log_to_driver=False)
    if cfg.ray.address is None:
        kwargs.update(num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus)
    ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})
    return True


@contextmanager
def ray_session(cfg: WsiscaleConfig) -> Iterator[None]:
    """Join ``cfg.ray.address`` or start a local Ray for the block (shut down after if started here)."""
    started = start_ray(cfg)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def configure_ray_data(show_progress: bool) -> None:
    """Ray Data's own progress bars on or off for this driver (wsiscale draws its own with rich)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = show_progress
    ctx.enable_operator_progress_bars = show_progress
