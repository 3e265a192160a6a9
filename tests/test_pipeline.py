"""The whole chain from one config (jobs/pipeline.py), and `ray job submit` against a real token-auth Ray head.

The end-to-end test is what a user does on a cluster: generate a token, start a Ray head with
``RAY_AUTH_MODE=token``, ``ray job submit --working-dir . -- python jobs/pipeline.py``, wait for
SUCCEEDED, read the outputs; then submit the same job again, which resumes (nothing recomputed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ports import LONG_TEST_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parents[1]

#: A test-sized pipeline: 4 slides of 2048^2, timm's test ViT, 512 px regions of 2 x 2 patches.
TINY = """
synth: {width: 2048, height: 2048, seed: 3, pen_mark_probability: 0.0}
embed: {encoder: "timm:test_vit", weights: random, region_size: 512, region_grid: 2}
pretrain:
  method: slpd
  embed_dim: 16
  depth: 1
  heads: 2
  out_dim: 64
  head_hidden_dim: 32
  head_bottleneck_dim: 16
  global_crop_tokens: 2
  local_crop_tokens: 1
  local_crops: 2
  batch_size: 8
  epochs: 2
  warmup_epochs: 1
  lr_warmup_epochs: 1
  prototypes: 2
  min_regions: 2
  cluster_cpus: 0.5
  cpus_per_worker: 1.0
  eval_every: 0
  checkpoint_every: 50
index: {kmeans_k: 4, shards: 1, cpus_per_actor: 0.5, prototypes_per_slide: 2, min_regions_per_slide: 2}
pipeline: {neighbours: 2}
eval: {probe_train_sizes: [], probe_repeats: 1, probe_folds: 2}
"""


def test_retrieval_metrics_against_hand_values():
    from wsiscale.eval.retrieval import average_precision_at_k, majority_vote, retrieval_metrics

    # AP@3 of [1, 0, 1]: (1/1 + 2/3) / 2
    assert average_precision_at_k([True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k([False, False]) == 0.0
    assert majority_vote(["b", "a", "a", "b"]) == "b"  # tie: the class ranked first
    labels = {"q1": "A", "q2": "B", "a1": "A", "a2": "A", "b1": "B", "x": "A"}
    neighbours = {"q1": ["b1", "a1", "a2"],       # rel 0 1 1: AP (1/2 + 2/3) / 2, vote A, top-1 miss
                  "q2": ["b1", "a1", "unlabelled"],  # unlabelled dropped: rel 1 0, AP 1, vote tie -> B
                  "nolabel": ["a1"]}                # not a labelled query: not scored
    m = retrieval_metrics(neighbours, labels, k=3)
    assert m["queries"] == 2
    assert m["map_at_k"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1.0) / 2)
    assert m["majority_vote_accuracy"] == 1.0 and m["top1_accuracy"] == 0.5
    assert m["precision_at_k"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["per_class"]["A"]["queries"] == 1 and m["per_class"]["B"]["map_at_k"] == 1.0
    assert retrieval_metrics({"q1": ["a1", "b1"]}, labels, k=1)["precision_at_k"] == 1.0  # only the first k count
    with pytest.raises(ValueError, match="shares the index's slide ids"):
        retrieval_metrics({"zz": ["yy"]}, labels, k=2)


def test_pipeline_stages_must_be_known_distinct_and_in_order():
    from wsiscale.commands.runner import load_job_config
    from wsiscale.config import ConfigError

    assert load_job_config(None, ["pipeline.stages=[index,evaluate]"]).pipeline.stages == ["index", "evaluate"]
    default = load_job_config(None, []).pipeline.stages  # the method stages run only when named
    assert "mil" not in default and "five" not in default and default[-1] == "report"
    assert load_job_config(None, ["pipeline.stages=[embed,mil,gigassl,five]"]).pipeline.stages[-1] == "five"
    for bad in ("[evaluate,index]", "[tile,tile]", "[]", "[cluster]"):
        with pytest.raises(ConfigError, match="pipeline.stages"):
            load_job_config(None, [f"pipeline.stages={bad}"])


def test_runtime_env_recipe_is_a_valid_ray_runtime_env():
    import yaml
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text()))
    assert env["working_dir"] == "." and ".venv/" not in env.get("excludes", [])  # .gitignore covers it
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_pipeline_job_refuses_bad_input_with_exit_2(tmp_path, capsys):
    import jobs.pipeline as job

    rc = job.main(["--set", f"output={tmp_path.as_uri()}", "--manifest", str(tmp_path / "missing.parquet"),
                   "--set", "pipeline.stages=[tile]", "--set", "ray.address=null", "--set", "ray.num_cpus=1"])
    said = capsys.readouterr()
    assert rc == 2 and "missing.parquet" in (said.out + said.err).replace("\n", "")  # rich folds long lines
    assert job.main(["--set", "pipeline.stages=[evaluate,tile]"]) == 2
    assert job.main(["--synth", "2", "--set", "output=s3://bucket/run", "--set", "ray.address=null"]) == 2
    said = capsys.readouterr()
    assert re.search(r"run\s+it\s+with\s+a\s+file://\s+output", said.out + said.err)


def _get(url: str, token: str | None = None, body: list | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            if body is not None:
                body.append(json.loads(r.read()))
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0  # not listening (yet)


@pytest.fixture()
def token_auth_head(tmp_path):
    """A real Ray head (2 CPUs) with token auth on free 127.0.0.1 ports, in its own process group.

    Yields ``(dashboard address, env, token)``. HOME is a temporary directory, so the token never
    touches the user's ``~/.ray``; the head is stopped by signalling its process group (``ray stop``
    would stop every Ray on the machine, including the test session's).
    """
    bin_dir = Path(sys.executable).parent
    ray = str(bin_dir / "ray")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "WSISCALE_NO_PROGRESS": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert token
    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    # Every listening port is a free one: the test session's own Ray (ray_local) holds the defaults, and a
    # second agent on its port leaves the head without a job agent ("No available agent to submit job").
    ports = [f"--{name}={free_port()}" for name in (
        "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    head = subprocess.Popen([ray, "start", "--head", "--block", *ports, "--num-cpus=2",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={port}", "--disable-usage-stats",
                             f"--temp-dir={temp}", "--include-dashboard=true"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while _get(f"{address}/api/jobs/", token) != 200:
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray dashboard did not come up in 120 s"
            time.sleep(1)
        yield address, env, token
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _submit(address: str, env: dict, token: str, args: list[str], runtime_env: list[str],
            timeout: float = 600) -> dict:
    """``ray job submit`` (waits for the end); returns the job's record from the job API."""
    ray = str(Path(sys.executable).parent / "ray")
    for attempt in range(10):  # the job agent registers a little after the dashboard answers
        done = subprocess.run([ray, "job", "submit", "--address", address, *runtime_env, "--",
                               "python", "jobs/pipeline.py", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        log = done.stdout + done.stderr
        if "No available agent" not in log:
            break
        time.sleep(3)
    assert done.returncode == 0, log[-6000:]
    job_id = re.search(r"raysubmit_\w+", log).group(0)
    body: list = []
    assert _get(f"{address}/api/jobs/{job_id}", token, body) == 200
    return body[0]


@pytest.mark.timeout(LONG_TEST_TIMEOUT_S)
@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_behind_token_auth_and_resumes(tmp_path, token_auth_head):
    address, env, token = token_auth_head
    # The job API refuses requests without the token (401) and with a wrong one (403).
    assert _get(f"{address}/api/jobs/") == 401
    assert _get(f"{address}/api/jobs/", "not-the-token") == 403

    config = tmp_path / "pipeline.yaml"
    out = tmp_path / "run"
    config.write_text(f"output: {out.as_uri()}\n" + TINY)
    # the shipped runtime_env recipe (working_dir + excludes + env_vars)
    job = _submit(address, env, token, ["--config", str(config), "--synth", "4"],
                  ["--runtime-env", "jobs/runtime_env.yaml"])
    assert job["status"] == "SUCCEEDED" and job["entrypoint"].startswith("python jobs/pipeline.py"), job
    assert job["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"

    doc = json.loads((out / "pipeline.json").read_text())
    stages = doc["stages"]
    assert list(stages) == ["tile", "embed", "regions", "pretrain", "features", "index", "evaluate", "report"]
    assert all(s["status"] == "done" for s in stages.values()), stages
    for name in ("tile", "embed", "regions"):
        assert stages[name]["slides"]["done"] == 4 and stages[name]["slides"]["failed"] == 0, (name, stages[name])
    assert stages["pretrain"]["method"] == "slpd" and stages["pretrain"]["slides"] == 4
    assert (out / "pretrain" / "encoder" / "encoder.json").exists()
    # the index is on the SLPD encoder's region features (16-d region ViT), one row per region
    assert stages["features"]["slides"]["done"] == 4 and stages["features"]["dim"] == 16
    assert stages["features"]["regions"]["total"] == stages["pretrain"]["regions"]  # every region the encoder saw
    index_meta = json.loads((out / "slide-index" / "index.json").read_text())
    assert index_meta["embeddings"].endswith("/region-features") and index_meta["dim"] == 16
    assert stages["index"]["slides_indexed"] == 4
    neighbours = out / "slide-index" / "neighbours.parquet"
    assert neighbours.exists()
    ret = json.loads((out / "eval" / "retrieval.json").read_text())
    assert ret["queries"] == 4 and ret["k"] == 2 and 0 <= ret["map_at_k"] <= 1
    # 4 slides of 3 classes cannot support a probe: recorded with the reason, not a failed job
    assert "fewer than 2" in stages["evaluate"]["linear_probe"]["skipped"]
    assert "slpd" in (out / "wsiscale.config.yaml").read_text()
    # the run report: 4 slides x (thumbnail, tissue mask, tiles coloured by their slide prototype), 4 queries x
    # (query + 2 neighbours), SLPD's loss terms over every step
    from test_report import Page

    page = Page((out / "report.html").read_text())
    assert stages["report"]["images"] == len(page.images) == 4 * 3 + 4 * 3, stages["report"]
    maps = [i for i, (a, _) in enumerate(page.images) if a.get("alt", "").startswith("prototype map of")]
    assert maps == [2, 5, 8, 11]  # each slide's row: thumbnail, tissue, prototype map
    for i in maps:  # the tissue tiles are painted over the thumbnail
        assert 0.05 < (page.images[i][1] != page.images[i - 2][1]).any(axis=-1).mean() < 1.0
    curves = {p["data-series"]: p["points"].count(",") for p in page.polylines}
    steps = stages["pretrain"]["metrics"]["step"]
    assert curves["loss"] == curves["dino_loss"] == curves["intra_loss"] == steps, (curves, steps)

    # Submitting the same job again resumes: every slide is skipped, training starts from its last checkpoint.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "embeddings" / "embeddings").glob("*/*.parquet")}
    assert _submit(address, env, token, ["--config", str(config), "--synth", "4"],
                   ["--working-dir", "."])["status"] == "SUCCEEDED"
    again = json.loads((out / "pipeline.json").read_text())["stages"]
    for name in ("tile", "embed", "regions", "features"):
        assert again[name]["slides"]["skipped_already_done"] == 4, (name, again[name])
    assert again["pretrain"]["metrics"]["step"] == stages["pretrain"]["metrics"]["step"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


@pytest.mark.usefixtures("ray_local")
def test_pipeline_mil_stage_trains_the_command_s_model(tmp_path):
    """The pipeline's mil stage runs `wsiscale train-mil`'s code on <output>/embeddings with the manifest's labels:
    its pipeline.json figures are the results.json of that run, and the chance level is stated beside them."""
    from mil_cohort import MilCohortSpec, write_mil_cohort

    import jobs.pipeline as job

    spec = MilCohortSpec(slides_per_label=6, cells=10, salient_share=0.5)
    spec.layout.tumour_fraction = (0.2, 0.3)
    run, manifest, _ = write_mil_cohort(tmp_path / "cohort", spec, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "embeddings").symlink_to(run.removeprefix("file://"))  # the embed stage's output, where the pipeline looks
    sets = ["mil.method=abmil", "mil.folds=2", "mil.epochs=3", "mil.heatmaps=0", "mil.projection_dim=16",
            "mil.hidden_dim=16", "mil.attention_dim=8", "mil.cpus_per_worker=0.5", "pipeline.stages=[mil]",
            f"output={out}", "ray.address=null"]
    assert job.main(["--manifest", str(manifest), *[a for s in sets for a in ("--set", s)]]) == 0
    stage = json.loads((out / "pipeline.json").read_text())["stages"]["mil"]
    results = json.loads((out / "mil-abmil" / "results.json").read_text())
    assert stage["status"] == "done" and stage["slides"] == results["slides"] == 12 and stage["folds"] == 2
    assert stage["metrics"] == {k: v["mean"] for k, v in results["summary"].items()} and stage["chance_auc"] == 0.5
