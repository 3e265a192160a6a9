"""The house's floors: the import-linter contracts of pyproject.toml hold, a forbidden import breaks them,
and no module of wsiscale takes part in an import cycle (lazy imports inside functions included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_layering_contracts_hold():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.parametrize("module,line,broken", [
    ("wsiscale/data/tiles.py", "from wsiscale.cli import main", "wsiscale.data is not allowed to import wsiscale.cli"),
    ("wsiscale/mil/folds.py", "import wsiscale.pretrain.losses", "wsiscale.mil is not allowed to import wsiscale.pretrain"),
    ("wsiscale/io/uri.py", "import torch", "wsiscale.io is not allowed to import torch"),
    ("wsiscale/config.py", "from wsiscale.io.uri import join_uri",
     "wsiscale.config is not allowed to import wsiscale.io"),
], ids=["lower-imports-cli", "method-imports-method", "io-imports-torch", "config-imports-io"])
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, line, broken):
    """A copy of the package with one forbidden import added (inside a function, where lazy imports hide):
    lint-imports fails and names it."""
    shutil.copytree(ROOT / "wsiscale", tmp_path / "wsiscale", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _added_by_the_test():\n    {line}\n")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout[-4000:]
    assert "1 broken" in done.stdout and broken in done.stdout.replace("\n", ""), done.stdout[-4000:]


def test_no_module_is_in_an_import_cycle():
    """Strongly connected components of the module import graph (grimp, import-linter's graph): none."""
    import grimp

    graph = grimp.build_graph("wsiscale", cache_dir=None)
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in graph.modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for m in modules:
        if m not in index:
            visit(m)
    assert not cycles, cycles
