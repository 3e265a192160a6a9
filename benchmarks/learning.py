"""Learning statistics over several seeds: the protocols of the CI learning checks, run seed by seed.

CI trains each method once (seed 0: ``tests/test_pretrain_learning.py``, ``tests/test_mil_learning.py``);
the figures in docs/benchmarks.md come from here, over several seeds, with per-seed paired differences
against the baseline each test uses.

``pretrain`` - DINO and SLPD region encoders through ``run_pretraining`` (Ray Train) on the learning
cohort (tests/learning_cohort.py), against the same network untrained: slide-label AUC of a linear probe
on held-out slides, tissue-type ARI of per-slide k-means, and SLPD's prototype ARI.

    python benchmarks/learning.py pretrain [--seeds 0,1,2] [--no-slpd]

``mil`` - WENO against ABMIL (5-fold by slide) on the CAMELYON-like cohort (tests/mil_cohort.py): bag
AUC and instance AUC, with the per-seed WENO - ABMIL differences.

    python benchmarks/learning.py mil [--seeds 0,1,2,3]

Giga-SSL and FiVE have their own: ``benchmarks/gigassl.py learning``, ``benchmarks/five.py learning``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import wsiscale  # noqa: F401  (cuCIM before torch)

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def _ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


def pretrain(seeds: list[int], slpd: bool) -> None:
    import numpy as np
    import test_pretrain_learning as t
    import torch
    from learning_cohort import make_cohort, write_region_run

    from wsiscale.pretrain.model import build_model

    results: dict[str, dict[int, dict[str, float]]] = {"random": {}, "dino": {}, "slpd": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cohorts = {}
        for seed in seeds:
            train, test = make_cohort(t.SPEC, seed), make_cohort(t.TEST_SPEC, seed, prefix="test")
            write_region_run(str(root / f"emb-{seed}"), train)
            cohorts[seed] = (str(root / f"emb-{seed}"), train, test)
            torch.manual_seed(seed)
            model = build_model(t._config("dino", seed).pretrain, list(train[0].grids.shape[1:]), drop_path=0.0)
            results["random"][seed] = t._measures(model.backbone.eval(), train, test)
            for method in ("dino", "slpd") if slpd else ("dino",):
                results[method][seed] = t._train_and_measure(method, seed, root, cohorts)
                print(f"seed {seed} {method}: {results[method][seed]}", file=sys.stderr, flush=True)
    if not slpd:
        results.pop("slpd")
    print(t._table(results, tuple(seeds)))
    for method in [m for m in ("dino", "slpd") if m in results]:
        for key in ("auc", "ari"):
            diff = [results[method][s][key] - results["random"][s][key] for s in seeds]
            print(f"{method} - random {key}: " + ", ".join(f"{d:+.3f}" for d in diff)
                  + f" (mean {np.mean(diff):+.3f})")


def mil(seeds: list[int]) -> None:
    import numpy as np
    import test_mil_learning as t
    from mil_cohort import MilCohortSpec, write_mil_cohort

    from wsiscale.mil.run import run_mil

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            root = Path(tmp) / f"seed-{seed}"
            run, manifest, _ = write_mil_cohort(root, MilCohortSpec(slides_per_label=30, salient_share=0.5),
                                                seed=seed)
            got = {m: run_mil(t._cfg(m), run, manifest, str(root / m))["summary"] for m in ("abmil", "weno")}
            rows.append((seed, got))
            print(f"seed {seed}: {got}", file=sys.stderr, flush=True)
    print("seed  ABMIL bag  WENO bag  ABMIL inst  WENO inst  d(bag)  d(inst)")
    for seed, got in rows:
        a, w = got["abmil"], got["weno"]
        print(f"{seed:4d}  {a['bag_auc']['mean']:9.3f} {w['bag_auc']['mean']:9.3f} {a['instance_auc']['mean']:10.3f} "
              f"{w['instance_auc']['mean']:10.3f} {w['bag_auc']['mean'] - a['bag_auc']['mean']:+7.3f} "
              f"{w['instance_auc']['mean'] - a['instance_auc']['mean']:+8.3f}")
    d = np.array([[g["weno"][k]["mean"] - g["abmil"][k]["mean"] for k in ("bag_auc", "instance_auc")]
                  for _, g in rows])
    print(f"mean  d(bag) {d[:, 0].mean():+.3f} +- {d[:, 0].std():.3f}, d(inst) {d[:, 1].mean():+.3f} +- "
          f"{d[:, 1].std():.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("pretrain")
    a.add_argument("--seeds", default="0,1,2")
    a.add_argument("--no-slpd", action="store_true")
    b = sub.add_parser("mil")
    b.add_argument("--seeds", default="0,1,2,3")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    _ray()
    if args.what == "pretrain":
        pretrain(seeds, not args.no_slpd)
    else:
        mil(seeds)


if __name__ == "__main__":
    main()
