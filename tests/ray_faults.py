"""Fault injection for Ray Train tests: SIGKILL a training worker once the run has a checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def kill_a_train_worker_after_the_first_checkpoint(snapshot: Path, killed: list[int],
                                                   timeout_s: float = 240) -> threading.Thread:
    """A thread that SIGKILLs the newest Ray Train worker once ``snapshot`` (the run's
    ``checkpoint_manager_snapshot.json``) lists a checkpoint; the killed pid goes into ``killed``."""

    def run() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not killed:
            if snapshot.exists() and "checkpoint_" in snapshot.read_text():
                workers = []
                for proc in Path("/proc").iterdir():  # Ray titles worker processes "ray::RayTrainWorker..."
                    try:
                        if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                            workers.append(int(proc.name))
                    except OSError:
                        continue
                if workers:
                    os.kill(max(workers), signal.SIGKILL)
                    killed.append(max(workers))
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
