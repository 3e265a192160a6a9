"""Fault injection for the tests: kill a worker or actor of the run under test, found in Ray's actor table.

The victims are looked up in the GCS actor table (``ray._private.state.actors``: Ray's state for one
job) by this driver's job id and actor class, never by pid order over the machine: another Ray on the
machine (a second test session, a multi-node simulation) is never touched. Each kill is a SIGKILL of
the actor's process, as a crash or an OOM kill would do.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path


def job_actors(class_part: str, state: str = "ALIVE") -> list[dict]:
    """Actors of this driver's Ray job whose class name contains ``class_part`` (oldest first)."""
    import ray

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    found = ray._private.state.actors(job_id=job, actor_state_name=state).values()
    return sorted((a for a in found if class_part in a.get("ActorClassName", "")), key=lambda a: a["StartTime"])


def actor_restarts(actor_id: str) -> int:
    """How often Ray restarted actor ``actor_id`` (GCS actor table)."""
    import ray

    return int(ray._private.state.actors(actor_id=actor_id)["NumRestarts"])


def checkpoints_listed(snapshot: Path) -> list[str]:
    """Checkpoint directory names in a Ray Train run's ``checkpoint_manager_snapshot.json`` (oldest first)."""
    try:
        text = snapshot.read_text()
    except FileNotFoundError:
        return []
    names: list[str] = []
    for part in text.split('"')[1:]:
        name = part.rsplit("/", 1)[-1]
        if name.startswith("checkpoint_") and name not in names and (snapshot.parent / name).is_dir():
            names.append(name)
    return sorted(names)


def kill_a_train_worker_after_the_first_checkpoint(snapshot: Path, killed: list[dict],
                                                   timeout_s: float = 240) -> threading.Thread:
    """A thread that SIGKILLs one Ray Train worker of this job's run once ``snapshot`` (the run's
    ``checkpoint_manager_snapshot.json``) lists a checkpoint.

    ``killed`` gets one record: the worker's actor id and pid, and ``checkpoints``, the run's checkpoint
    directories at the kill with each one's ``meta.json`` position fields (the restart resumes from
    the newest, or from one written between this read and the kill).
    """

    def run() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not killed:
            listed = checkpoints_listed(snapshot)
            workers = [a for a in job_actors("RayTrainWorker") if a.get("Pid")] if listed else []
            if workers:
                victim = workers[-1]
                os.kill(int(victim["Pid"]), signal.SIGKILL)
                killed.append({"actor_id": victim["ActorID"], "pid": int(victim["Pid"]), "checkpoints": listed,
                               "metas": [_meta(snapshot.parent / c) for c in listed]})
                return
            time.sleep(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _meta(checkpoint_dir: Path) -> dict:
    try:
        return json.loads((checkpoint_dir / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
