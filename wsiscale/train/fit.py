"""The Ray Train driver recipe of every training stage: one ``TorchTrainer`` fit, checked.

Ray Train's examples write the recipe once (``ScalingConfig``, ``RunConfig``, ``FailureConfig``,
``fit``, read the result); :func:`fit` is that recipe for pretraining, MIL, Giga-SSL and FiVE:

* the worker group from the stage's config section (:func:`wsiscale.train.scaling.scaling_config`,
  which refuses a group a local Ray can never hold);
* checkpoints under ``<out>/<name>`` (``RunConfig(storage_path=out, name=name)``): resubmitting the
  same job resumes from the latest one, and ``FailureConfig(max_failures)`` restarts a failed worker
  group from it; two checkpoints are kept;
* the loop's progress record at ``progress_uri`` shown as a rich progress bar while it runs;
* the result checked: a failed fit raises its error, a fit without a checkpoint raises, and the
  final checkpoint is read back (``state``, ``meta``: :mod:`wsiscale.train.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from wsiscale.config import WsiscaleConfig
from wsiscale.io.uri import normalize_uri, ray_storage
from wsiscale.progress import watch_progress
from wsiscale.train.checkpoints import read_checkpoint
from wsiscale.train.scaling import scaling_config


@dataclass
class FitResult:
    """A finished fit: the final checkpoint, its tensors and metadata, the last reported metrics."""

    checkpoint: Any
    state: dict[str, Any]
    meta: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def starts(self) -> list[dict[str, Any]]:
        """The run's attempts (:mod:`wsiscale.train.worker`): restarts and where each resumed."""
        return list(self.meta.get("starts", []))


def fit(cfg: WsiscaleConfig, section: str, loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any],
        out: str, progress_uri: str, *, name: str = "train", datasets: dict[str, Any] | None = None,
        dataset_config: Any = None, description: str | None = None) -> FitResult:
    """Fit ``loop`` on the worker group of ``cfg.<section>`` with checkpoints under ``<out>/<name>``.

    ``cfg.<section>`` supplies ``num_workers`` (``(min, max)``: elastic when they differ),
    ``cpus_per_worker``, ``use_gpu``, ``max_failures`` and, if it has one, ``resize_check_s``.

    Raises:
        ConfigError: a worker group the local cluster cannot hold.
        RuntimeError: the fit ended without a checkpoint.
        Exception: the training error of a fit that failed for good (after ``max_failures`` restarts).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    settings = getattr(cfg, section)
    scaling = scaling_config(cfg, section, tuple(settings.num_workers), settings.cpus_per_worker, settings.use_gpu,
                             getattr(settings, "resize_check_s", None))
    run_config = ray.train.RunConfig(name=name, **ray_storage(normalize_uri(out), cfg.storage),
                                     failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
                                     checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))
    extra = {"datasets": datasets} if datasets else {}
    if dataset_config is not None:
        extra["dataset_config"] = dataset_config
    trainer = TorchTrainer(loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config, **extra)
    with watch_progress(progress_uri, cfg.storage, description or section):
        result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"{section} training ended without a checkpoint under {out}/{name}")
    state, meta = read_checkpoint(result.checkpoint)
    return FitResult(result.checkpoint, state, meta, dict(result.metrics or {}))
