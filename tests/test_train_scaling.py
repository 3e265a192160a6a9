"""The training stages' Ray Train worker groups (:mod:`wsiscale.train.scaling`) on a real local Ray (2 CPUs, no GPU)."""

from __future__ import annotations

import logging

import pytest

from wsiscale.config import ConfigError, WsiscaleConfig
from wsiscale.train.scaling import scaling_config


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("section", ["pretrain", "mil", "gigassl", "five"])
def test_gpu_workers_on_a_cluster_without_gpus(section, caplog):
    """A local Ray without GPUs refuses ``use_gpu`` at once, naming the setting (Ray Train would wait forever);
    a cluster joined by address only warns (its autoscaler may add GPU nodes); CPU groups pass untouched."""
    cfg = WsiscaleConfig()
    with pytest.raises(ConfigError, match=rf"{section}\.use_gpu asks for one GPU per training worker \(2 at least\) "
                                          rf"and the cluster has 0: set {section}\.use_gpu=false"):
        scaling_config(cfg, section, (2, 4), 0.5, True)
    cpu = scaling_config(cfg, section, (1, 1), 0.5, False)
    assert (cpu.num_workers, cpu.use_gpu, cpu.resources_per_worker) == (1, False, {"CPU": 0.5})
    cfg.ray.address = "auto"
    with caplog.at_level(logging.WARNING, logger="wsiscale.train.scaling"):
        gpu = scaling_config(cfg, section, (1, 3), 0.5, True, resize_check_s=5.0)
    assert "waiting for the autoscaler to add GPU nodes" in caplog.text
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 0.5, "GPU": 1}
    assert gpu.num_workers == (1, 3) and gpu.elastic_resize_monitor_interval_s == 5.0


@pytest.mark.usefixtures("ray_local")
def test_pretraining_with_use_gpu_on_a_cpu_machine_fails_fast(tmp_path):
    """``wsiscale pretrain`` with ``pretrain.use_gpu`` on a CPU-only local Ray: a clear error before any worker starts."""
    from test_pretrain import _region_run, _tiny

    from wsiscale.pretrain.run import run_pretraining

    run = str(tmp_path / "emb")
    _region_run(run, slides=2, regions=8)
    cfg = _tiny(WsiscaleConfig())
    cfg.pretrain.use_gpu = True
    with pytest.raises(ConfigError, match="pretrain.use_gpu"):
        run_pretraining(cfg, run, str(tmp_path / "pre"))
    assert not (tmp_path / "pre" / "pretrain").exists()
