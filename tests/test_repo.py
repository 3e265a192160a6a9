"""Repository contract: README's two commands, CI runs the test command verbatim, required layout."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_has_the_two_quickstart_commands():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    demo = lines[lines.index("# 1. install and run the end-to-end demo (local Ray, file:// storage, generated slides)") + 1]
    tests = lines[lines.index("# 2. install and run the test suite") + 1]
    assert demo.endswith("wsiscale demo") and "pip install -e ." in demo
    assert "pip install -e '.[test]'" in tests and tests.endswith("-m pytest")


def test_ci_extracts_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert "grep -A1 '^# 2. install and run the test suite' README.md" in script
    out = subprocess.run(
        ["bash", "-c", "grep -A1 '^# 2. install and run the test suite' README.md | tail -n 1"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    lines = (ROOT / "README.md").read_text().splitlines()
    assert out == lines[lines.index("# 2. install and run the test suite") + 1]


def test_required_layout():
    for name in ("pyproject.toml", "wsiscale", "jobs", "cluster.yaml", "tests", "docs", "README.md", "benchmarks"):
        assert (ROOT / name).exists(), name
    ignore = (ROOT / ".gitignore").read_text().split()
    assert "cufile.log" in ignore and ".venv/" in ignore


def test_cluster_yaml_is_valid():
    import yaml

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types["cpu_tiling"]["min_workers"] == 0 and types["gpu_train"]["resources"]["GPU"] >= 1
