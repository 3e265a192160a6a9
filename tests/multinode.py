"""A local multi-node Ray cluster (``ray.cluster_utils.Cluster``: one raylet per node on 127.0.0.1) on
which nodes join and die mid-run, as on an autoscaling cluster with spot nodes.

Run as a script by ``tests/test_multinode.py`` (its own process: the test session's Ray stays up):

    python tests/multinode.py tiling SLIDES_DIR MANIFEST WORK   -> JSON on the last line of stdout
    python tests/multinode.py training WORK

* ``tiling``: the head has no CPU for work (as ``cluster.yaml``'s head), so the job waits until a
  2-CPU worker node joins (the autoscaler's first node) and its tiling pool starts there; once a
  slide is done a second node joins and the first is killed (SIGKILL of its raylet and workers, a
  lost spot node). The pool comes back on the second node and the run itself (no rerun) ends with
  every planned tile exactly once.
* ``training``: elastic SLPD-free DINO on region grids, ``num_workers=(1, 2)`` of 1.5 CPUs: one worker
  fits on the 2-CPU head; a 2-CPU node joins, Ray Train's elastic policy restarts the group with 2
  workers from the last checkpoint; the node is killed, the group restarts with 1 worker from the
  last checkpoint. The loss history must join up in items: each record ``batch x world`` items after
  the previous, nothing repeated or skipped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: The GCS declares a silent node dead after 4 x 0.5 s (the default is about 15 s).
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


def _wait(cond, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(poll)


def _actor_nodes(class_part: str) -> list[str]:
    import ray

    return [a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and class_part in a.get("ActorClassName", "")]


def tiling(slides_dir: str, manifest: str, work: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from test_ingest import _check_exact, _expected  # the exactness check of the single-node fault tests

    from wsiscale.config import WsiscaleConfig
    from wsiscale.data.tiling import run_tiling

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "_system_config": FAST_NODE_DEATH})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    cfg = WsiscaleConfig()
    cfg.ray.address = cluster.address
    cfg.storage.staging_dir = str(Path(work) / "staging")
    cfg.ingest.actors, cfg.ingest.cpus_per_actor, cfg.ingest.memory_gb_per_actor = (1, 3), 1.0, 0.5
    cfg.ingest.ray_progress, cfg.ingest.pixels, cfg.ingest.batch_tiles = False, "raw", 256
    cfg.tiling.tile_size = 64  # ~5,000 tiles per slide: a few seconds each, long enough to join and lose a node
    run = Path(work) / "run"
    done_dir = run / "_state" / "done"
    result: dict = {}

    def go() -> None:
        try:
            result["summary"] = run_tiling(cfg, manifest=manifest, out=str(run), show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = repr(exc)

    n_slides = len(list(Path(slides_dir).glob("*.svs")))
    done = lambda: len(list(done_dir.iterdir())) if done_dir.exists() else 0  # noqa: E731
    tilers = lambda: _actor_nodes("SlideTilerUDF")  # noqa: E731
    th = threading.Thread(target=go)
    th.start()
    time.sleep(2)  # the job waits: the head has no CPU for tiling actors
    assert done() == 0 and not tilers()
    first = cluster.add_node(num_cpus=2)  # the autoscaler's first worker node
    _wait(lambda: done() >= 1, 300, "the first slide (on the first node)")
    on_first = sum(n == first.node_id for n in tilers())
    second = cluster.add_node(num_cpus=2)  # a second node joins mid-run
    cluster.wait_for_nodes()
    at_kill = done()
    cluster.remove_node(first, allow_graceful=False)  # the first node is lost: raylet and workers SIGKILLed
    _wait(lambda: any(n == second.node_id for n in tilers()) or not th.is_alive(), 300,
          "tiling actors on the second node")
    moved = sum(n == second.node_id for n in tilers())
    th.join(600)
    out = {"slides": n_slides, "actors_on_first_node": on_first, "actors_on_second_node": moved,
           "done_at_kill": at_kill, "first_run": result.get("summary", {}).get("slides"),
           "first_error": result.get("error")}
    if "error" not in result and result["summary"]["slides"]["done"] == n_slides:  # the faulted run finished
        _check_exact(run, _expected(Path(slides_dir), cfg))
        out["exact"] = True
    ray.shutdown()
    cluster.shutdown()
    return out


def training(work: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from test_pretrain import _region_run, _tiny

    from wsiscale.config import WsiscaleConfig
    from wsiscale.pretrain.run import run_pretraining

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                            "_system_config": FAST_NODE_DEATH})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    emb = str(Path(work) / "emb")
    _region_run(emb, slides=16, regions=16)  # 256 regions: 32 steps per epoch on 1 worker, 16 on 2
    cfg = _tiny(WsiscaleConfig(), epochs=4)
    cfg.ray.address = cluster.address
    p = cfg.pretrain
    p.num_workers, p.cpus_per_worker, p.checkpoint_every, p.log_every = (1, 2), 1.5, 8, 4
    p.resize_check_s, p.max_failures = 2.0, 3
    out = Path(work) / "pre"
    progress = out / "pretrain" / "progress.json"
    result: dict = {}

    def go() -> None:
        try:
            result["summary"] = run_pretraining(cfg, emb, str(out))
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = repr(exc)

    def progress_of(key: str) -> int:
        """One counter of the training's progress file (0 until it is written)."""
        try:
            return int(json.loads(progress.read_text()).get(key, 0))
        except (FileNotFoundError, ValueError):
            return 0

    def world() -> int:
        return progress_of("world")

    def items() -> int:
        return progress_of("items")

    th = threading.Thread(target=go)
    th.start()
    _wait(lambda: world() == 1, 300, "training on 1 worker")
    joined = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    _wait(lambda: world() == 2 or not th.is_alive(), 300, "the resize to 2 workers")
    at_resize = items()
    # a checkpoint on 2 workers (every 8 steps of 2 x batch items) and a few steps more, then the node dies
    _wait(lambda: items() >= at_resize + 12 * 2 * p.batch_size or not th.is_alive(), 120, "steps on 2 workers")
    cluster.remove_node(joined, allow_graceful=False)
    th.join(900)
    if "error" in result:
        raise RuntimeError(result["error"])
    s = result["summary"]
    ckpt = Path(s["checkpoint"].replace("file://", ""))
    history = json.loads((ckpt / "meta.json").read_text())["history"]
    ray.shutdown()
    cluster.shutdown()
    return {"metrics": {k: s["metrics"].get(k) for k in ("step", "total_steps", "world", "resumed_from")},
            "starts": s["starts"],
            "worlds": [h["world"] for h in history], "items": [h["items"] for h in history],
            "batch": p.batch_size, "epochs": p.epochs, "n_items": 256}


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    kind, *args = sys.argv[1:]
    print(json.dumps({"tiling": tiling, "training": training}[kind](*args)), flush=True)
