"""Import cuCIM safely next to torch.

With some torch/cuCIM builds, importing cuCIM *after* CUDA torch hangs forever
inside libcufile initialisation on machines without a GPU driver (see
docs/io.md and shared ENVIRONMENT notes). Importing cuCIM first always works.
So:

* ``import wsiscale`` preloads cuCIM when it is installed and torch is not yet
  imported (:func:`preload`), which makes every later torch import safe;
* if torch was imported first, :func:`import_cucim` probes the combination in a
  subprocess with a timeout (result cached per version pair) and refuses with a
  clear error instead of hanging; callers then fall back to another reader.

cuFile's log (``cufile.log``, normally written to the working directory) is
redirected to the temp directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from wsiscale.io.errors import BackendUnavailableError

log = logging.getLogger(__name__)

_PROBE = "import torch\nfrom cucim import CuImage\nprint('ok')\n"


def _silence_cufile_log() -> None:
    os.environ.setdefault("CUFILE_LOGFILE_PATH", os.path.join(tempfile.gettempdir(), f"wsiscale-cufile-{os.getuid()}.log"))


def cucim_installed() -> bool:
    return importlib.util.find_spec("cucim") is not None


def _version(dist: str) -> str:
    for name in (dist, dist + "-cu12", dist + "-cu13"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def _verdict_file() -> Path:
    key = f"{sys.executable}|torch={_version('torch')}|cucim={_version('cucim')}".encode()
    import hashlib

    root = Path(tempfile.gettempdir()) / f"wsiscale-probe-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"cucim-after-torch-{hashlib.sha256(key).hexdigest()[:16]}.json"


def probe_cucim_after_torch(timeout_s: float = 60.0) -> bool:
    """Whether ``import torch`` then ``from cucim import CuImage`` completes here (cached)."""
    path = _verdict_file()
    if path.exists():
        try:
            return bool(json.loads(path.read_text())["ok"])
        except (ValueError, KeyError, OSError):
            pass
    env = dict(os.environ)
    _silence_cufile_log()
    env["CUFILE_LOGFILE_PATH"] = os.environ["CUFILE_LOGFILE_PATH"]
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            timeout=timeout_s,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        ok = res.returncode == 0 and b"ok" in res.stdout
    except subprocess.TimeoutExpired:
        ok = False
        log.warning("importing cuCIM after torch hung for %.0fs in a probe; cuCIM disabled in this process", timeout_s)
    try:
        path.write_text(json.dumps({"ok": ok}))
    except OSError:
        pass
    return ok


def preload() -> None:
    """Import cuCIM now if it is installed and torch is not imported yet (the safe order)."""
    if os.environ.get("WSISCALE_PRELOAD_CUCIM", "1") == "0" or "torch" in sys.modules or "cucim" in sys.modules:
        return
    if not cucim_installed():
        return
    _silence_cufile_log()
    try:
        from cucim import CuImage  # noqa: F401
    except Exception as exc:  # a broken cuCIM must not break wsiscale
        log.debug("cuCIM preload failed: %s", exc)


def import_cucim(timeout_s: float = 60.0) -> ModuleType:
    """The ``cucim`` module, imported without risking the torch-first hang.

    Raises:
        BackendUnavailableError: cuCIM is not installed, fails to import, or would hang.
    """
    if "cucim" in sys.modules and hasattr(sys.modules["cucim"], "CuImage"):
        return sys.modules["cucim"]
    if not cucim_installed():
        raise BackendUnavailableError("cuCIM is not installed (pip install cucim-cu12); use reader.backend=openslide or tiffslide")
    if "torch" in sys.modules and not probe_cucim_after_torch(timeout_s):
        raise BackendUnavailableError(
            f"importing cuCIM after torch hangs with torch {_version('torch')} and cuCIM {_version('cucim')} on this machine; "
            "import wsiscale before torch (it preloads cuCIM), or use reader.backend=openslide"
        )
    _silence_cufile_log()
    try:
        import cucim
        from cucim import CuImage  # noqa: F401
    except Exception as exc:
        raise BackendUnavailableError(f"cuCIM failed to import: {type(exc).__name__}: {exc}") from exc
    return cucim
