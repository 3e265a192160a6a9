"""The ``wsiscale`` command line and the end-to-end demo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from ports import LONG_TEST_TIMEOUT_S
import yaml

from wsiscale.cli import main


def test_info_json(slide_path, capsys):
    assert main(["info", str(slide_path), "--json", "--set", "tiling.min_tissue=0.5"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["width"] == 6144 and row["height"] == 5120 and row["mpp"] == 0.5
    assert row["levels"] == [[6144, 5120], [1536, 1280]]
    assert 0.1 < row["tissue_fraction"] < 0.9
    assert row["tiles"] > 0 and row["regions"] >= 0 and row["error"] is None


def test_info_table_and_bad_slide(slide_path, tmp_path):
    exe = [sys.executable, "-m", "wsiscale.cli"]
    res = subprocess.run([*exe, "info", str(slide_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    # the table is the result: on stdout (`wsiscale info slide.svs | grep mpp` finds it), none of it on stderr
    assert "6144 x 5120" in res.stdout and "aperio" in res.stdout and "tissue fraction" in res.stdout
    assert "6144 x 5120" not in res.stderr
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    res = subprocess.run([*exe, "info", str(bad)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "not a TIFF" in errors[0] and str(bad) in errors[0], res.stderr  # one line


def test_version_help_and_json_everywhere(capsys):
    """``--version``, a readable top-level help naming every command, and ``--json`` on every command."""
    from importlib.metadata import version

    from wsiscale.cli import CLI_COMMANDS, build_parser

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"wsiscale {version('wsiscale')}"
    text = build_parser().format_help()
    assert "exit codes: 0 done, 1 incomplete, 2 bad input" in text
    for command in CLI_COMMANDS:
        assert command.words[0] in text, command.name
        with pytest.raises(SystemExit):
            main([*command.words, "--help"])
        assert "--json" in capsys.readouterr().out, command.name


@pytest.mark.usefixtures("ray_local")
def test_failed_slides_exit_0_or_1_with_strict_and_show_in_json(cohort, tmp_path, capsys):
    """A batch with a corrupt slide finishes (exit 0) and says so in its JSON; with --strict it exits 1."""
    _, manifest = cohort
    rows = pq.read_table(manifest).slice(0, 2).to_pylist()
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    rows.append({**rows[0], "slide_id": "broken", "uri": bad.as_uri()})
    import pyarrow as pa

    mixed = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows), mixed)
    sets = ["--pixels", "none", "--set", "ingest.actors=[1,1]", "--set", "ingest.ray_progress=false",
            "--set", "ingest.memory_gb_per_actor=0.5"]
    assert main(["tile", "--manifest", str(mixed), "--out", str(tmp_path / "run"), "--json", *sets]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["slides"]["done"] == 2 and doc["slides"]["failed"] == 1
    assert [f["slide_id"] for f in doc["failures"]] == ["broken"]
    assert main(["tile", "--manifest", str(mixed), "--out", str(tmp_path / "run"), "--strict", *sets]) == 1
    assert "1 failed" in capsys.readouterr().out  # the table, on stdout


def test_config_errors_exit_cleanly(capsys):
    assert main(["config", "--set", "tiling.mppp=1"]) == 2
    assert "did you mean 'tiling.mpp'" in capsys.readouterr().err


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "--set", "tiling.mpp=1.0"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["tiling"]["mpp"] == 1.0


def test_synth_command(tmp_path):
    out = tmp_path / "cohort"
    assert main(["synth", str(out), "--n-slides", "2", "--size", "2048x1536", "--seed", "4", "--workers", "1"]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 2 and rows[0]["width"] == 2048 and rows[0]["height"] == 1536
    saved = yaml.safe_load((out / "wsiscale.config.yaml").read_text())
    assert saved["synth"]["n_slides"] == 2 and saved["synth"]["seed"] == 4


@pytest.mark.timeout(LONG_TEST_TIMEOUT_S)
@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README demo command on a small cohort: local Ray, file:// storage, generated slides."""
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "wsiscale.cli", "demo", "--out", str(out), "--n-slides", "3",
         "--set", "synth.width=4096", "--set", "synth.height=4096", "--set", "ray.num_cpus=2"],
        capture_output=True, text=True, timeout=LONG_TEST_TIMEOUT_S - 60,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["slides"]
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    assert all(r["tiles"] > 0 and r["width"] == 4096 for r in rows)
    assert (out / "wsiscale.config.yaml").exists() and (out / "slides" / "manifest.parquet").exists()
    assert "slides summarised" in res.stderr + res.stdout
    # stage 3: the cohort tiled into JPEG shards, one row per planned tile
    tiling = summary["tiling"]
    assert tiling["slides"]["done"] == 3 and tiling["slides"]["failed"] == 0
    assert tiling["tiles"]["total"] == sum(r["tiles"] for r in rows)
    tiles = pq.read_table(out / "tiles" / "tiles")
    assert tiles.num_rows == tiling["tiles"]["total"] and "image" in tiles.column_names
    assert pq.read_table(out / "tiles" / "failures.parquet").num_rows == 0
    # stage 4: one embedding per tile
    emb = summary["embedding"]
    assert emb["slides"]["done"] == 3 and emb["tiles"]["total"] == tiling["tiles"]["total"]
    table = pq.read_table(out / "embeddings" / "embeddings")
    assert table.num_rows == tiling["tiles"]["total"] and table.schema.field("embedding").type.list_size == 256
    # stage 5: k-means on the FAISS pool and the slide index with every slide's nearest slide
    index = summary["index"]
    assert index["vectors"] == tiling["tiles"]["total"] and index["k"] == 64
    assert pq.read_table(out / "clusters" / "assignments").num_rows == tiling["tiles"]["total"]
    assert index["slides_indexed"] == 3 and set(index["nearest"]) == {r["slide_id"] for r in rows}
    assert all(other != sid for sid, (other, _) in index["nearest"].items())
    # stage 6: DINO on the tiles (one slide per class: too few for the held-out probe, which is skipped)
    pre = summary["pretrain"]
    assert pre["items"] == tiling["tiles"]["total"] and pre["metrics"]["step"] == pre["metrics"]["total_steps"] > 0
    assert "probe_auc" not in pre["metrics"]
    assert json.loads((out / "pretrain" / "encoder" / "encoder.json").read_text())["encoder"] == "timm:test_vit"
    # stage 7: 2-fold WENO needs 2 normal and 2 tumour slides; 3 slides have one normal: skipped with a message
    assert summary["mil"] is None and "2-fold MIL needs 2 normal and 2 tumour slides" in res.stdout + res.stderr
    # stage 9: FiVE trained on the three generated reports, zero-shot only (1-shot needs 2 slides per class)
    five = summary["five"]
    assert five is not None and np.isfinite(five["final_loss"]) and 0 <= five["zero_shot_accuracy"] <= 1
    assert (out / "five" / "five.safetensors").exists() and (out / "five" / "five_eval.json").exists()
    assert "few-shot skipped" in res.stdout + res.stderr
