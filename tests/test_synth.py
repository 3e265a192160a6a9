"""The synthetic slide generator: real SVS layout, ground truth, cohorts, streaming memory."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from wsiscale.config import SynthConfig
from wsiscale.synth.cohort import build_cohort, slide_specs
from wsiscale.synth.layout import SLIDE_LABELS, LayoutParams
from wsiscale.synth.report import REPORT_FIELDS, report_fields
from wsiscale.synth.slide import SlideSpec, generate_slide, load_truth_masks, truth_paths
from wsiscale.synth.stain import Stain
from wsiscale.synth.svs_writer import PyramidSpec, _box_downsample
from wsiscale.synth.textures import TISSUE_CLASSES


def test_svs_layout(slide_path):
    with tifffile.TiffFile(slide_path) as tf:
        assert tf.is_svs
        pages = tf.pages
        assert pages[0].is_tiled and pages[0].tilewidth == 256 and pages[0].compression == 7  # JPEG
        assert pages[0].description.startswith("Aperio Image Library") and "MPP = 0.5000" in pages[0].description
        assert not pages[1].is_tiled  # thumbnail
        names = [s.name for s in tf.series]
        assert names[:2] == ["Baseline", "Thumbnail"] and "Label" in names and "Macro" in names
        assert [lvl.shape[-3:-1] for lvl in tf.series[0].levels] == [(5120, 6144), (1280, 1536)]


def test_pyramid_levels_are_box_downsampled(slide_path):
    level0 = tifffile.imread(slide_path, level=0).squeeze().astype(np.float64)
    level1 = tifffile.imread(slide_path, level=1).squeeze().astype(np.float64)
    ref = level0.reshape(1280, 4, 1536, 4, 3).mean(axis=(1, 3))
    # Same content up to JPEG re-encoding error.
    assert np.abs(level1 - ref).mean() < 3.0


def test_box_downsample_by_hand():
    tile = np.zeros((4, 4, 3), np.uint8)
    tile[:2, :2] = 10
    tile[:2, 2:] = [[[0, 0, 0], [1, 1, 1]], [[2, 2, 2], [3, 3, 3]]]
    out = _box_downsample(tile, 2)
    assert out[0, 0].tolist() == [10, 10, 10]
    assert out[0, 1].tolist() == [2, 2, 2]  # (0 + 1 + 2 + 3 + 2) // 4 = 2 (rounded mean 1.5 -> 2)
    assert out[1].tolist() == [[0, 0, 0], [0, 0, 0]]


def test_pyramid_spec():
    assert PyramidSpec(50000, 50000).level_shapes() == [(50000, 50000), (12500, 12500), (3125, 3125), (781, 781)]
    assert PyramidSpec(8192, 4096).level_shapes() == [(4096, 8192), (1024, 2048), (256, 512)]
    assert PyramidSpec(6144, 5120).level_shapes() == [(5120, 6144), (1280, 1536)]


def test_ground_truth(slide_path):
    truth = load_truth_masks(slide_path)
    cell = int(truth["cell_px"])
    assert truth["tissue"].shape == (5120 // cell, 6144 // cell)
    assert truth["tumour"].any() and (truth["tumour"] <= truth["tissue"]).all()
    assert (truth["classes"][~truth["tissue"]] == 0).all()
    meta = json.loads(truth_paths(slide_path)[1].read_text())
    assert meta["label"] == 1 and meta["label_name"] == "tumour_glandular"
    assert set(meta["class_fractions"]) == set(TISSUE_CLASSES.values()) - {"background"}
    assert meta["class_fractions"]["tumour_solid"] == 0 and meta["class_fractions"]["tumour_glandular"] > 0.05


def test_rendered_pixels_follow_the_class_map(slide_path):
    """Per ground-truth class, the painted pixels look like that class: glass is bright,
    tumour is nucleus-dense (purple, dark), fat nearly nucleus-free."""
    truth = load_truth_masks(slide_path)
    cell = int(truth["cell_px"])
    classes = truth["classes"]
    h, w = classes.shape
    px = tifffile.imread(slide_path, level=0).squeeze()[: h * cell, : w * cell].astype(int)
    nuclear = (px[..., 2] - px[..., 0] > 15) & (px.mean(axis=-1) < 170)  # haematoxylin: blue > red, dark
    nuclear_frac = nuclear.reshape(h, cell, w, cell).mean(axis=(1, 3))
    lum = px.mean(axis=-1).reshape(h, cell, w, cell).mean(axis=(1, 3))
    assert np.median(lum[classes == 0]) > 225  # pen marks cover a minority of the glass
    by_class = {c: nuclear_frac[classes == c].mean() for c in (1, 2, 6)}
    assert by_class[6] > 2 * by_class[1] > 0
    assert by_class[2] < by_class[1]


def test_same_seed_same_slide(tmp_path, bank):
    spec = SlideSpec("det", 2048, 2048, seed=99, label=2, layout=LayoutParams(pen_marks=True))
    a = generate_slide(spec, bank, tmp_path / "a" / "det.svs")
    b = generate_slide(spec, bank, tmp_path / "b" / "det.svs")
    assert (tmp_path / "a" / "det.svs").read_bytes() == (tmp_path / "b" / "det.svs").read_bytes()
    assert a.report == b.report and a.class_fractions == b.class_fractions


def test_cohort_manifest_and_idempotent_rerun(tmp_path):
    cfg = SynthConfig(n_slides=4, width=2048, height=2048, seed=3)
    manifest = build_cohort(cfg, tmp_path / "cohort", workers=2)
    table = pq.read_table(manifest).to_pylist()
    assert [r["slide_id"] for r in table] == [f"synth-{i:05d}" for i in range(4)]
    assert {r["label"] for r in table} == {0, 1, 2}  # balanced labels: every class present
    for r in table:
        assert r["uri"].startswith("file://") and os.path.exists(r["uri"][7:])
        assert r["label_name"] == SLIDE_LABELS[r["label"]][0] and r["mpp"] == 0.5
        assert r["report"]
    assert (tmp_path / "cohort" / "manifest.csv").read_text().startswith('"uri","slide_id","label"')
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cohort").glob("*.svs")}
    build_cohort(cfg, tmp_path / "cohort", workers=2)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cohort").glob("*.svs")} == mtimes
    assert not list((tmp_path / "cohort").glob(".*part*"))


def test_slide_specs_balance_and_validation():
    specs = slide_specs(SynthConfig(n_slides=10, label_weights=[2, 1, 1]))
    labels = [s.label for s in specs]
    assert labels.count(0) == 5 and labels.count(1) + labels.count(2) == 5
    with pytest.raises(ValueError, match="label_weights"):
        slide_specs(SynthConfig(label_weights=[1, 1]))


def test_stain_lookup_table_by_hand():
    lut = Stain.reference().lookup_table()
    assert lut[0].tolist() == [255, 255, 255]  # no stain = white
    # Eosin only, concentration 255 -> OD 2.0 * e: 255 * exp(-2 * [0.072, 0.990, 0.105])
    expected = np.rint(255 * np.exp(-2.0 * np.array([0.072, 0.990, 0.105])))
    assert lut[255].tolist() == expected.tolist()


def test_report_fields_follow_ground_truth():
    rng = np.random.default_rng(0)
    f = report_fields({"necrosis": 0.3, "lymphocytes": 0.0, "fat": 0.1, "stroma": 0.4}, 2, rng)
    assert set(f) == set(REPORT_FIELDS)
    assert f["necrosis"] == "extensive necrosis" and f["inflammation"] == "absent lymphocytic infiltrate"
    assert "adipose" in f["stroma"] and "carcinoma" in f["tissue type"]


def test_generation_streams_without_holding_the_slide(tmp_path, bank):
    """A 16k x 16k slide (768 MiB of RGB) is written with a small fraction of that in memory."""
    spec = SlideSpec("big", 16384, 16384, seed=1)
    tracemalloc.start()
    generate_slide(spec, bank, tmp_path / "big.svs")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raw = 16384 * 16384 * 3
    assert peak < raw / 5, f"peak {peak / 2**20:.0f} MiB"
    with tifffile.TiffFile(tmp_path / "big.svs") as tf:
        assert tf.pages[0].shape == (16384, 16384, 3)


def test_disk_backed_levels_give_the_same_file(tmp_path, bank, monkeypatch):
    """Huge slides buffer lower levels in a memmap (dropped from RSS as written): same bytes as RAM."""
    from wsiscale.synth import svs_writer

    spec = SlideSpec("mm", 4096, 3072, seed=8, label=2)
    generate_slide(spec, bank, tmp_path / "ram" / "mm.svs")
    monkeypatch.setattr(svs_writer, "_MEMMAP_BYTES", 1)
    generate_slide(spec, bank, tmp_path / "disk" / "mm.svs")
    assert (tmp_path / "ram" / "mm.svs").read_bytes() == (tmp_path / "disk" / "mm.svs").read_bytes()
    assert not [p for p in (tmp_path / "disk").iterdir() if p.name.startswith("wsiscale-level-")]


def test_shared_mix_only_tumour_tells_labels_apart():
    """``shared_mix``: every label draws the normal slides' tissue mix (CAMELYON-like); the default keeps
    the label-specific mix and the exact random draws of before."""
    from wsiscale.synth.layout import make_layout

    def layout(label: int, **kw):
        return make_layout(np.random.default_rng(7), 640, 512, 0.5, label, LayoutParams(**kw))

    normal, shared = layout(0, shared_mix=True), layout(1, shared_mix=True)
    assert shared.mix == normal.mix
    assert not normal.tumour.any() and shared.tumour.any() and (shared.tumour <= shared.tissue).all()
    assert set(np.unique(shared.classes[shared.tumour])) == {SLIDE_LABELS[1][1]}
    assert layout(1).mix != normal.mix  # default: the label changes the mix
    # Label 0 draws the same numbers either way (shared_mix only swaps the Dirichlet's parameters).
    default = layout(0)
    assert default.mix == normal.mix and np.array_equal(default.classes, normal.classes)


def test_shared_mix_reaches_the_specs_and_invalidates_old_slides(tmp_path, bank):
    from dataclasses import replace

    from wsiscale.synth.cohort import _load_truth

    specs = slide_specs(SynthConfig(n_slides=3, shared_mix=True))
    assert all(s.layout.shared_mix for s in specs)
    assert not any(s.layout.shared_mix for s in slide_specs(SynthConfig(n_slides=3)))
    spec = SlideSpec("mix", 2048, 2048, seed=4, label=1)
    generate_slide(spec, bank, tmp_path / "mix.svs")
    assert _load_truth(tmp_path / "mix.svs", spec) is not None  # same spec: reused
    changed = replace(spec, layout=LayoutParams(shared_mix=True))
    assert _load_truth(tmp_path / "mix.svs", changed) is None  # regenerated, never silently reused
