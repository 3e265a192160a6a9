"""WENO against ABMIL on a CAMELYON-like cohort (slow tier, about 6 minutes on 2 cores).

60 slides built from the generator's layouts (:mod:`mil_cohort`): 30 negative, 30 positive with tumour
in 1-10 % of their tissue, the same tissue mix for both labels, instance labels from the tumour
masks. 5-fold cross-validation by slide through ``run_mil`` on a real local Ray, mean +- std over
folds. The issue's two criteria are asserted: WENO's student ranks tumour tiles better than ABMIL's
attention ranks them, by at least 0.03 AUC, and WENO's bag AUC is not lower than ABMIL's by more than
0.01. This test runs seed 0 (instance AUC +0.14, bag AUC +0.05); seeds 1-3 give +0.12/+0.11,
+0.08/0.00 and +0.14/+0.07 (docs/benchmarks.md). The 1- vs 2-worker agreement is tested in
``test_mil_train.py``.

The cohort's settings (narrow model, Adam, 40 epochs) keep it at CI size; the student loss uses a
negative weight of 0.5 (``mil.student_negative_weight``) instead of WENO's 0.1, because on this
cohort, with 0.1, the student calls most tiles of positive slides positive (a pseudo label q above
~0.1 already gives p > 0.5) and hard positive mining then strips positive bags of their tumour tiles
(measured figures in docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from ports import LONG_TEST_TIMEOUT_S
from mil_cohort import MilCohortSpec, write_mil_cohort


def _cfg(method: str, workers: int = 1):
    from wsiscale.config import WsiscaleConfig

    cfg = WsiscaleConfig()
    m = cfg.mil
    m.method, m.folds, m.heatmaps = method, 5, 0
    m.projection_dim, m.hidden_dim, m.attention_dim, m.student_hidden_dim = 128, 256, 128, 256
    m.optimizer, m.lr, m.epochs, m.min_epochs, m.patience = "adam", 1e-3, 40, 25, 10
    m.hard_mining_warmup_epochs, m.student_negative_weight = 15, 0.5
    m.num_workers, m.cpus_per_worker, m.checkpoint_every = (workers, workers), 1.0 / workers, 10
    return cfg


@pytest.mark.timeout(LONG_TEST_TIMEOUT_S)
@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_weno_student_beats_abmil_attention_on_tumour_tiles(tmp_path):
    from wsiscale.mil.run import run_mil

    run, manifest, stats = write_mil_cohort(tmp_path, MilCohortSpec(slides_per_label=30, salient_share=0.5), seed=0)
    assert 0.01 <= stats["tumour_share"][0] and stats["tumour_share"][1] <= 0.11  # CAMELYON-like: 1-10 % tumour
    abmil = run_mil(_cfg("abmil"), run, manifest, str(tmp_path / "abmil"))["summary"]
    weno = run_mil(_cfg("weno"), run, manifest, str(tmp_path / "weno"))["summary"]
    fmt = {k: f"{v['mean']:.3f} +- {v['std']:.3f}" for k, v in weno.items()}
    msg = f"ABMIL {abmil}, WENO {fmt}"
    assert abmil["bag_auc"]["n"] == weno["bag_auc"]["n"] == 5
    assert abmil["bag_auc"]["mean"] >= 0.8 and weno["bag_auc"]["mean"] >= 0.8, msg  # both learn the slide label
    assert weno["student_bag_auc"]["mean"] >= 0.8, msg
    # the headline: WENO's instance AUC (its student) vs ABMIL's attention as score, pooled over test tiles
    assert weno["instance_auc"]["mean"] >= abmil["instance_auc"]["mean"] + 0.03, msg
    # ... without losing bag AUC: the teacher's bag prediction (its own attention) against ABMIL's
    assert weno["bag_auc"]["mean"] >= abmil["bag_auc"]["mean"] - 0.01, msg
    assert np.isfinite(weno["attention_instance_auc"]["mean"])
