"""cuCIM + torch in one process: the import-order trap is handled, never a hang.

Every check runs in a fresh subprocess with a hard timeout, so a regression
fails fast instead of hanging CI.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 180


def run_py(code: str, cwd, tmpdir) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmpdir), "HOME": str(tmpdir), "WSISCALE_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.mark.parametrize("order", ["torch-first", "wsiscale-first"])
def test_cucim_and_torch_in_one_process(slide_path, tmp_path, order):
    first = "import torch\nimport wsiscale" if order == "torch-first" else "import wsiscale\nimport torch"
    code = f"""
    {first.splitlines()[0]}
    {first.splitlines()[1]}
    from wsiscale.io import open_slide
    with open_slide({str(slide_path)!r}, backend="auto") as s:
        tile = s.read_region((1000, 1000), 0, (64, 64))
    x = torch.from_numpy(tile).float().mean()
    print("backend", s.backend, "mean", float(x))
    """
    res = run_py(code, cwd=tmp_path, tmpdir=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "backend " in res.stdout
    if order == "wsiscale-first":
        assert "backend cucim" in res.stdout  # preloaded cuCIM is always usable
    else:
        assert "backend cucim" in res.stdout or "backend openslide" in res.stdout
    assert not (tmp_path / "cufile.log").exists()  # cuFile's log is redirected away from the cwd


def test_explicit_cucim_after_torch_is_safe(slide_path, tmp_path):
    code = f"""
    import torch
    from wsiscale.io import open_slide, BackendUnavailableError
    try:
        with open_slide({str(slide_path)!r}, backend="cucim") as s:
            print("ok", s.read_region((0, 0), 0, (8, 8)).shape)
    except BackendUnavailableError as exc:
        print("refused", exc)
    """
    res = run_py(code, cwd=tmp_path, tmpdir=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok (8, 8, 3)" in res.stdout or ("refused" in res.stdout and "import wsiscale before torch" in res.stdout)


def test_hanging_probe_disables_cucim_and_auto_falls_back(slide_path, tmp_path):
    """A probe that hangs (simulated by a sleeping script) times out; auto picks the next backend."""
    code = f"""
    import torch, time
    import wsiscale.io.cucim_guard as guard
    guard._PROBE = "import time; time.sleep(60)"
    t = time.time()
    from wsiscale.io import open_slide
    with open_slide({str(slide_path)!r}, backend="auto", cucim_timeout_s=3) as s:
        print("backend", s.backend, "elapsed", round(time.time() - t))
    from wsiscale.io import BackendUnavailableError
    try:
        open_slide({str(slide_path)!r}, backend="cucim", cucim_timeout_s=3)
    except BackendUnavailableError as exc:
        print("refused:", exc)
    """
    res = run_py(code, cwd=tmp_path, tmpdir=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "backend openslide" in res.stdout
    assert "refused: importing cuCIM after torch hangs" in res.stdout


def test_io_and_synth_never_import_torch(tmp_path, slide_path):
    code = f"""
    import sys
    import wsiscale.io, wsiscale.synth.cohort, wsiscale.summary, wsiscale.config, wsiscale.cli
    from wsiscale.io import open_slide, detect_slide_tissue, plan_tiles
    from wsiscale.config import TilingConfig
    with open_slide({str(slide_path)!r}) as s:
        plan_tiles(s, TilingConfig(), detect_slide_tissue(s))
    print("torch imported:", "torch" in sys.modules)
    """
    res = run_py(code, cwd=tmp_path, tmpdir=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torch imported: False" in res.stdout
