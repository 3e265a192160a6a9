"""The resolved config saved beside every output (``<run>/wsiscale.config.yaml``)."""

from __future__ import annotations

from typing import Any

import yaml

from wsiscale.config import CONFIG_FILENAME, StorageConfig, WsiscaleConfig, config_to_yaml
from wsiscale.io.uri import join_uri, read_bytes, write_bytes_atomic


def save_config(cfg: WsiscaleConfig, directory: str, storage: StorageConfig | None = None) -> str:
    """Write the resolved config as ``<directory>/wsiscale.config.yaml`` atomically; returns its URI."""
    uri = join_uri(directory, CONFIG_FILENAME)
    write_bytes_atomic(uri, config_to_yaml(cfg).encode(), storage or cfg.storage)
    return uri


def read_saved_config(directory: str, storage: StorageConfig | None = None) -> dict[str, Any] | None:
    """The config a run directory was written with (plain YAML mapping), or None when it has none yet."""
    try:
        return yaml.safe_load(read_bytes(join_uri(directory, CONFIG_FILENAME), storage)) or {}
    except FileNotFoundError:
        return None
