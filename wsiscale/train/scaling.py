"""Ray Train worker groups of the training stages (pretrain, mil, gigassl, five): one ``ScalingConfig`` recipe.

Each stage's config section has ``num_workers: (min, max)`` (elastic when they differ),
``cpus_per_worker`` and ``use_gpu`` (one GPU per worker). Before the group is asked for,
:func:`check_gpus` makes sure the cluster can hold it: Ray Train otherwise waits forever
for GPUs that a local Ray will never have.
"""

from __future__ import annotations

import logging
from typing import Any

from wsiscale.config import ConfigError, WsiscaleConfig

log = logging.getLogger(__name__)

#: CPUs per Ray Data task reading a training stage's input (region embeddings, tiles, Giga-SSL views).
READ_TASK_CPUS = 0.5


def check_gpus(cfg: WsiscaleConfig, section: str, workers: int, use_gpu: bool) -> None:
    """With ``use_gpu``, the cluster needs one GPU per training worker (``workers``: the group's minimum).

    On a fixed (local) cluster too few GPUs is an error; on a cluster joined by address the
    autoscaler may add GPU nodes, so it is a warning.
    """
    if not use_gpu:
        return
    import ray

    total = ray.cluster_resources().get("GPU", 0.0)
    if total >= workers:
        return
    refuse_or_wait(cfg, f"{section}.use_gpu asks for one GPU per training worker ({workers} at least) and the "
                        f"cluster has {total:g}: set {section}.use_gpu=false to train on CPUs, lower "
                        f"{section}.num_workers, or add GPU nodes", "GPU nodes")


def refuse_or_wait(cfg: WsiscaleConfig, msg: str, missing: str) -> None:
    """A worker group the cluster cannot hold now: a ``ConfigError`` on a fixed (local) Ray, which never grows;
    a warning on a cluster joined by address, whose autoscaler may add the ``missing`` resources."""
    if cfg.ray.address is None:
        raise ConfigError(msg)
    log.warning("%s (waiting for the autoscaler to add %s)", msg, missing)


def scaling_config(cfg: WsiscaleConfig, section: str, num_workers: tuple[int, int], cpus_per_worker: float,
                   use_gpu: bool, resize_check_s: float | None = None) -> Any:
    """``ray.train.ScalingConfig`` for ``section``'s worker group, after :func:`check_gpus`.

    ``num_workers``: ``(min, max)``, a fixed group when equal, else elastic (Ray Train looks for room
    to grow every ``resize_check_s`` seconds, its default when None).
    """
    import ray.train

    lo, hi = num_workers
    check_gpus(cfg, section, lo, use_gpu)
    elastic = {"elastic_resize_monitor_interval_s": resize_check_s} if lo != hi and resize_check_s else {}
    return ray.train.ScalingConfig(num_workers=lo if lo == hi else (lo, hi), use_gpu=use_gpu,
                                   resources_per_worker={"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {}),
                                   **elastic)


def check_data_cpus(cfg: WsiscaleConfig, workers: int, cpus_per_worker: float, section: str, reading: str,
                    also_held: tuple[float, str, str] | None = None) -> None:
    """Ray Data's read tasks need CPUs the training workers do not hold, or the run stalls forever.

    ``also_held``: ``(cpus, who, settings)`` of other actors that live as long as the worker group
    (SLPD's clustering actors). On a fixed (local) cluster too few free CPUs is an error; on a
    cluster joined by address the autoscaler may add nodes, so it is a warning.
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    held = workers * cpus_per_worker
    holders, fix = f"the {workers} training workers hold", f"{section}.cpus_per_worker or {section}.num_workers"
    if also_held is not None:
        cpus, who, settings = also_held
        held += cpus
        holders = f"the {workers} training workers and {who} hold"
        fix += f", {settings}"
    if total - held >= READ_TASK_CPUS:
        return
    msg = (f"{holders} {held:g} of the cluster's {total:g} CPUs, leaving less than the "
           f"{READ_TASK_CPUS:g} CPU that {reading} needs: lower {fix}, or add CPUs")
    refuse_or_wait(cfg, msg, "CPUs")
