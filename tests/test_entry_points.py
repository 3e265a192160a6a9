"""One front door per stage: ``wsiscale <stage>``, ``jobs/<stage>.py`` and the pipeline run the same code path,
so the same inputs and settings give identical outputs whichever entry point is used (tiling, and region
pretraining as the training stage)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest


def _tiles(run) -> list[tuple]:
    t = pq.read_table(run / "tiles").sort_by([("slide_id", "ascending"), ("y", "ascending"), ("x", "ascending")])
    return list(zip(t.column("slide_id").to_pylist(), t.column("x").to_pylist(), t.column("y").to_pylist(),
                    t.column("image").to_pylist()))


@pytest.mark.usefixtures("ray_local")
def test_tiling_from_the_cli_a_job_and_the_pipeline_is_identical(cohort, tmp_path, capsys):
    import jobs.pipeline
    import jobs.tile

    from wsiscale.cli import main

    _, manifest = cohort
    sets = ["--set", "ingest.actors=[2,2]", "--set", "ingest.ray_progress=false", "--set", "ingest.pixels=jpeg",
            "--set", "ingest.memory_gb_per_actor=0.5", "--set", f"storage.staging_dir={tmp_path / 'staging'}"]
    assert main(["tile", "--manifest", str(manifest), "--out", str(tmp_path / "cli"), *sets]) == 0
    assert jobs.tile.main(["--manifest", str(manifest), "--out", str(tmp_path / "job"), *sets]) == 0
    assert jobs.pipeline.main(["--manifest", str(manifest), "--set", f"output={tmp_path / 'pipe'}",
                               "--set", "pipeline.stages=[tile]", "--set", "ray.address=null", *sets]) == 0
    cli, job, pipe = (_tiles(tmp_path / d) for d in ("cli", "job", "pipe/tiles"))
    assert len(cli) > 100 and cli == job == pipe
    printed = capsys.readouterr().out  # the tables are results: on stdout
    assert printed.count("tiling run") == 2 and "pipeline ->" in printed


@pytest.mark.usefixtures("ray_local")
def test_pretraining_from_the_cli_a_job_and_the_pipeline_is_identical(tmp_path):
    from safetensors.numpy import load_file
    from test_pretrain import _region_run

    import jobs.pipeline
    import jobs.pretrain

    from wsiscale.cli import main

    regions = tmp_path / "pipe" / "regions"  # the pipeline's pretrain stage reads <output>/regions
    _region_run(str(regions))
    sets = ["--set", "pretrain.method=dino", "--set", "pretrain.embed_dim=32", "--set", "pretrain.depth=2",
            "--set", "pretrain.heads=4", "--set", "pretrain.out_dim=128", "--set", "pretrain.head_hidden_dim=64",
            "--set", "pretrain.head_bottleneck_dim=32", "--set", "pretrain.batch_size=8", "--set", "pretrain.epochs=1",
            "--set", "pretrain.local_crops=2", "--set", "pretrain.num_workers=[1,1]",
            "--set", "pretrain.cpus_per_worker=0.5", "--set", "pretrain.eval_every=0"]
    assert main(["pretrain", "--embeddings", str(regions), "--out", str(tmp_path / "cli"), *sets]) == 0
    assert jobs.pretrain.main(["--embeddings", str(regions), "--out", str(tmp_path / "job"), *sets]) == 0
    assert jobs.pipeline.main(["--set", f"output={tmp_path / 'pipe'}", "--set", "pipeline.stages=[pretrain]",
                               "--set", "ray.address=null", *sets]) == 0
    weights = [load_file(tmp_path / d / "encoder" / "region_vit.safetensors") for d in ("cli", "job", "pipe/pretrain")]
    assert weights[0].keys() == weights[1].keys() == weights[2].keys()
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k], err_msg=k)
        np.testing.assert_array_equal(weights[0][k], weights[2][k], err_msg=k)
    specs = [json.loads((tmp_path / d / "encoder" / "encoder.json").read_text()) for d in ("cli", "job", "pipe/pretrain")]
    assert specs[0] == specs[1] == specs[2] and specs[0]["step"] == 64 // 8
