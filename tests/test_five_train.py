"""FiVE end to end on generated cohorts: 2-worker Ray Train run, export, resume, CLI evaluation, and learning.

The learning test trains on one cohort's reports and evaluates on another cohort (other slides, same
"patch encoder"): zero-shot from class descriptions must beat chance clearly, and few-shot FiVE (k = 4,
8, 16 labelled slides per class, several draws) must beat a linear probe on mean-pooled tile embeddings
of the same k slides.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ports import LONG_TEST_TIMEOUT_S
from five_cohort import FiveCohortSpec, write_five_cohort


def _cfg(tmp_path, **five):
    from wsiscale.config import WsiscaleConfig

    cfg = WsiscaleConfig()
    cfg.output = str(tmp_path)
    f = cfg.five
    f.dim, f.heads, f.prompt_tokens, f.segments, f.eval_tiles = 64, 4, 4, 48, 256
    f.batch_size, f.epochs, f.warmup_epochs, f.lr, f.checkpoint_every = 12, 6, 1, 1e-3, 3
    f.num_workers, f.cpus_per_worker = (2, 2), 0.5
    f.finetune_epochs, f.draws = 15, 2
    for k, v in five.items():
        setattr(f, k, v)
    return cfg


@pytest.mark.usefixtures("ray_local")
def test_train_five_on_two_workers_learns_exports_resumes_and_evaluates(tmp_path):
    from wsiscale.cli import main
    from wsiscale.five.run import train_five

    run, manifest = write_five_cohort(tmp_path / "cohort", FiveCohortSpec(slides_per_label=8, cells=14), seed=0)
    cfg = _cfg(tmp_path)
    out = str(tmp_path / "five")
    doc = train_five(cfg, run, manifest, out)
    h = doc["history"]
    assert doc["slides"] == 24 and len(h) == 6 and h[-1]["step"] == 6 * 2 and h[-1]["world"] == 2
    assert h[-1]["loss"] < h[0]["loss"] - 0.3, [r["loss"] for r in h]
    assert doc["fields_stated"]["tissue type"] == 24  # every report states the diagnosis
    assert (tmp_path / "five" / "five.safetensors").exists() and (tmp_path / "five" / "wsiscale.config.yaml").exists()
    fields = json.loads((tmp_path / "five" / "fields.json").read_text())
    assert set(fields) == {f"five-{i:03d}" for i in range(24)}

    # rerun with more epochs: resumes from the last checkpoint (epoch 6) instead of starting over
    cfg.five.epochs = 9
    again = train_five(cfg, run, manifest, out)
    assert again["history"][-1]["resumed_from"] == 12 and again["history"][-1]["step"] == 18
    assert [r["step"] for r in again["history"]][:6] == [r["step"] for r in h]

    # the user's path: `wsiscale eval five`
    rc = main(["eval", "five", "--model", out, "--embeddings", run, "--manifest", manifest, "--shots", "2",
               "--set", "five.draws=1", "--set", "five.finetune_epochs=2", "--json"])
    assert rc == 0
    ev = json.loads((tmp_path / "five" / "five_eval.json").read_text())
    assert ev["classes"] == ["normal", "tumour_glandular", "tumour_solid"] and ev["slides"] == 24
    assert 0 <= ev["zero_shot"]["accuracy"] <= 1 and set(ev["few_shot"]) == {"2"}


def test_eval_five_errors_name_the_fix(tmp_path):
    from wsiscale.config import ConfigError
    from wsiscale.five.data import class_descriptions
    from wsiscale.five.run import load_five

    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="five.class_descriptions"):
        class_descriptions(cfg.five, ["LUAD", "LUSC"])
    with pytest.raises(FileNotFoundError, match="train-five"):
        load_five(str(tmp_path / "nothing"))


#: The learning protocol's settings over _cfg's (benchmarks/five.py runs the same protocol over seeds).
LEARNING = {"batch_size": 30, "epochs": 30, "lr": 3e-3, "checkpoint_every": 30, "draws": 3, "finetune_epochs": 20}


@pytest.mark.timeout(LONG_TEST_TIMEOUT_S)
@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_five_zero_shot_beats_chance_and_few_shot_beats_a_linear_probe(tmp_path):
    """Train on 150 reported slides; evaluate on 90 other slides (30 per class)."""
    from wsiscale.five.run import eval_five, train_five

    train_run, train_manifest = write_five_cohort(tmp_path / "train", FiveCohortSpec(slides_per_label=50), seed=1)
    test_run, test_manifest = write_five_cohort(tmp_path / "test", FiveCohortSpec(slides_per_label=30), seed=2,
                                                prefix="heldout")
    cfg = _cfg(tmp_path, **LEARNING)
    doc = train_five(cfg, train_run, train_manifest, str(tmp_path / "five"))
    losses = [r["loss"] for r in doc["history"]]
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses
    ev = eval_five(cfg, str(tmp_path / "five"), test_run, test_manifest, shots=[4, 8, 16])
    z = ev["zero_shot"]
    assert z["slides"] == 90 and z["accuracy"] > z["chance"] + 0.25, z
    for k in ("4", "8", "16"):
        five, probe = ev["few_shot"][k]["five_accuracy"], ev["few_shot"][k]["linear_probe_accuracy"]
        assert five["mean"] > probe["mean"] + 0.05, (k, five, probe)
    print(json.dumps({"zero_shot": z, "few_shot": {k: {m: v[m] for m in ("five_accuracy", "linear_probe_accuracy")}
                                                    for k, v in ev["few_shot"].items()}}, indent=1))
    assert np.isfinite(z["auc"])


@pytest.mark.usefixtures("ray_local")
def test_five_job_trains_evaluates_and_reports_bad_input(tmp_path):
    """jobs/five.py (what `ray job submit` runs): train + evaluate with the resolved config saved; exit 2 with
    the fix for a missing run or a manifest without reports."""
    import pyarrow.parquet as pq

    import jobs.five as job

    run, manifest = write_five_cohort(tmp_path / "cohort", FiveCohortSpec(slides_per_label=4, cells=10), seed=3)
    out = tmp_path / "job"
    sets = ["--set", "five.epochs=2", "--set", "five.batch_size=6", "--set", "five.warmup_epochs=1",
            "--set", "five.dim=32", "--set", "five.prompt_tokens=2", "--set", "five.segments=16",
            "--set", "five.cpus_per_worker=0.5", "--set", "five.shots=[1]", "--set", "five.draws=1",
            "--set", "five.finetune_epochs=1", "--set", "ray.address=auto"]
    assert job.main(["--embeddings", run, "--manifest", manifest, "--out", str(out), *sets]) == 0
    assert (out / "five.safetensors").exists() and "epochs: 2" in (out / "wsiscale.config.yaml").read_text()
    ev = json.loads((out / "five_eval.json").read_text())
    assert ev["slides"] == 12 and set(ev["few_shot"]) == {"1"}
    assert len(json.loads((out / "five.json").read_text())["history"]) == 2

    assert job.main(["--embeddings", str(tmp_path / "missing"), "--manifest", manifest, "--out",
                     str(tmp_path / "x"), *sets]) == 2
    bare = tmp_path / "bare.parquet"  # the manifest without its report column
    pq.write_table(pq.read_table(manifest).drop(["report"]), bare)
    assert job.main(["--embeddings", run, "--manifest", str(bare), "--out", str(tmp_path / "y"), *sets]) == 2
