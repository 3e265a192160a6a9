"""Nodes joining and dying mid-run on a local multi-node Ray (``ray.cluster_utils.Cluster``), in a
subprocess (``tests/multinode.py``) so the session's own Ray is untouched. Slow tier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ports import LONG_TEST_TIMEOUT_S

HERE = Path(__file__).resolve().parent


def _run(*args: str, timeout: float = 900) -> dict:
    # a worker group that cannot start (a dead node's resources still counted) is retried after 20 s, not 60
    env = {**os.environ, "WSISCALE_NO_PROGRESS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
    done = subprocess.run([sys.executable, str(HERE / "multinode.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=HERE.parent)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(LONG_TEST_TIMEOUT_S)
@pytest.mark.slow
def test_tiling_while_a_node_joins_and_then_dies(tmp_path, tmp_path_factory):
    """The tiling pool starts when a worker node joins, a second node joins mid-run, the first is SIGKILLed
    mid-run: the pool moves to the second node and the run itself (no rerun) writes every planned tile exactly
    once."""
    from wsiscale.config import SynthConfig
    from wsiscale.synth.cohort import build_cohort

    slides = tmp_path_factory.mktemp("mn-slides")
    manifest = build_cohort(SynthConfig(n_slides=8, width=6144, height=6144, seed=9, pen_mark_probability=0.0),
                            slides, workers=2)
    got = _run("tiling", str(slides), str(manifest), str(tmp_path))
    assert got["actors_on_first_node"] >= 1 and got["actors_on_second_node"] >= 1, got  # started there, moved
    assert 1 <= got["done_at_kill"] < got["slides"], got  # the node died mid-run
    assert got["first_error"] is None, got  # the faulted run itself finished: no rerun
    final = got["first_run"]
    assert final["done"] == got["slides"] and final["failed"] == 0 and final["pending"] == 0, got
    assert final["done_this_run"] == got["slides"] and got.get("exact"), got


@pytest.mark.timeout(LONG_TEST_TIMEOUT_S)
@pytest.mark.slow
def test_elastic_training_grows_onto_a_joining_node_and_survives_its_loss(tmp_path):
    """(1, 2) workers: 1 on the head, 2 once a node joins (resize from the last checkpoint), 1 again after the
    node dies; the history's item counter advances by batch x world per record, nothing repeated or lost."""
    got = _run("training", str(tmp_path))
    worlds, items, batch = got["worlds"], got["items"], got["batch"]
    assert worlds[0] == 1 and 2 in worlds and worlds[-1] == 1, worlds
    first2, last2 = worlds.index(2), len(worlds) - 1 - worlds[::-1].index(2)
    assert set(worlds[first2 : last2 + 1]) == {2} and set(worlds[last2 + 1 :]) == {1}, worlds  # 1 -> 2 -> 1
    steps = [b - a for a, b in zip([0, *items], items)]
    assert steps == [batch * w for w in worlds], list(zip(worlds, steps))
    m = got["metrics"]
    assert m["world"] == 1 and m["step"] == m["total_steps"] == got["epochs"] * (got["n_items"] // batch), m
    assert items[-1] == got["epochs"] * got["n_items"], items[-1]
    # the run's own record of its attempts: started fresh on 1 worker, restarted on 2 (the resize) and on 1 again
    # (the node's loss), each time from a checkpoint's position
    starts = got["starts"]
    assert starts[0]["from"] is None and starts[0]["world"] == 1, starts
    world_seq = [s["world"] for s in starts]
    assert 2 in world_seq and world_seq[-1] == 1 and len(starts) >= 3, starts
    for s in starts[1:]:
        assert s["from"]["items"] in items and s["from"]["items"] % (8 * batch) == 0, (s, items)
