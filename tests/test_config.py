"""Configs: YAML in, CLI overrides, clear validation errors, saved next to outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wsiscale.config import CONFIG_FILENAME, ConfigError, WsiscaleConfig, load_config
from wsiscale.runs.config_file import save_config


def test_defaults_are_the_embedded_setup():
    cfg = load_config()
    assert cfg.tiling.mpp == 0.5 and cfg.tiling.tile_size == 256
    assert cfg.ray.address is None and cfg.output.startswith("file://")
    assert cfg.pretrain.teacher_temp == 0.04 and cfg.gigassl.temperature == 0.05 and cfg.mil.student_negative_weight == 0.1


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  mpp: 1.0\n  tile_size: 224\nstorage:\n  endpoint_url: http://127.0.0.1:9000\n")
    cfg = load_config(path, ["tiling.mpp=0.5", "synth.n_slides=3", "embed.actors=[2, 8]", "reader.backend=openslide"])
    assert cfg.tiling.mpp == 0.5 and cfg.tiling.tile_size == 224
    assert cfg.synth.n_slides == 3 and cfg.embed.actors == (2, 8)
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9000"
    assert cfg.reader.backend == "openslide"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["tiling.mppp=0.5"])
    assert "tiling.mppp: unknown key; did you mean 'tiling.mpp'?" in str(exc.value)


def test_invalid_values_are_named(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["tiling.mpp=-1", "tiling.min_tissue=2", "reader.backend=bioformats"])
    msg = str(exc.value)
    assert "tiling.mpp: Input should be greater than 0 (got -1)" in msg
    assert "tiling.min_tissue" in msg and "reader.backend" in msg


def test_bad_yaml_and_bad_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["tiling.mpp"])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_cross_section_check():
    with pytest.raises(ConfigError, match="finer than the slides"):
        load_config(None, ["tiling.mpp=0.05"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["tiling.mpp=1.0", "synth.seed=7"])
    uri = save_config(cfg, str(tmp_path / "out"))
    saved = tmp_path / "out" / CONFIG_FILENAME
    assert uri == saved.as_uri() and saved.exists()
    again = load_config(saved)
    assert again == cfg
    assert yaml.safe_load(saved.read_text())["tiling"]["mpp"] == 1.0
    assert not list((tmp_path / "out").glob("*.part"))  # atomic write leaves no temp files


def test_saved_config_to_s3(s3_bucket):
    """The config goes to S3 through the configured endpoint (read back with boto3, not through wsiscale), and
    the run-directory reader gives it back; a directory without one reads as None."""
    from wsiscale.runs.config_file import read_saved_config

    endpoint, bucket, client = s3_bucket
    cfg = WsiscaleConfig(storage={"endpoint_url": endpoint}, tiling={"mpp": 1.0})
    uri = save_config(cfg, f"s3://{bucket}/runs/1")
    assert uri == f"s3://{bucket}/runs/1/{CONFIG_FILENAME}"
    body = client.get_object(Bucket=bucket, Key=f"runs/1/{CONFIG_FILENAME}")["Body"].read()
    assert yaml.safe_load(body)["storage"]["endpoint_url"] == endpoint
    assert WsiscaleConfig.model_validate(yaml.safe_load(body)) == cfg
    assert read_saved_config(f"s3://{bucket}/runs/1", cfg.storage) == yaml.safe_load(body)
    assert read_saved_config(f"s3://{bucket}/runs/2", cfg.storage) is None
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [f"runs/1/{CONFIG_FILENAME}"]


_JOB_CONFIGS = Path(__file__).parents[1] / "jobs" / "configs"


@pytest.mark.parametrize("name", sorted(p.stem for p in _JOB_CONFIGS.glob("*.yaml")))
def test_job_configs_load(name):
    """Every shipped jobs/configs/*.yaml is a valid config (a typo there would fail a submitted job)."""
    path = _JOB_CONFIGS / f"{name}.yaml"
    assert (Path(__file__).parents[1] / "jobs" / f"{name}.py").exists()  # each config has its job
    cfg = load_config(str(path))
    assert isinstance(cfg, WsiscaleConfig)
