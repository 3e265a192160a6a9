"""FiVE benchmarks: learning over several cohort seeds, and training throughput.

``learning`` - the slow test's protocol (tests/test_five_train.py) over several seeds through the
Ray pipeline: ``train_five`` (2 workers) on a generated cohort's reports (150 slides, three classes),
then ``eval_five`` on another generated cohort (90 slides, other seed, same stand-in patch encoder):
zero-shot accuracy against chance, and few-shot FiVE (k = 4, 8, 16 labelled slides per class,
``--draws`` draws) against a logistic-regression probe on mean-pooled tile embeddings of the same
slides. Prints one row per seed and k, then the mean +- std over seeds.

    python benchmarks/five.py learning [--seeds 0,1,2] [--draws 3]

``throughput`` - training slides/s on the same cohort and settings: 1 vs 2 Ray Train workers with the
frozen text encoder (features cached per distinct text), and 1 worker with LoRA adapters (rank 8)
on the packaged MiniLM, whose forward and backward then run every step. Ratios are against the
1-worker frozen run of the same process.

    python benchmarks/five.py throughput [--epochs 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wsiscale  # noqa: F401  (cuCIM before torch)

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

SHOTS = (4, 8, 16)


def _config(root: Path, **five):
    """The slow test's settings (tests/test_five_train.py: ``_cfg`` with ``LEARNING``), then ``five``."""
    from test_five_train import LEARNING, _cfg

    return _cfg(root, **(LEARNING | five))


def learning(args: argparse.Namespace) -> None:
    import ray
    from five_cohort import FiveCohortSpec, write_five_cohort

    from wsiscale.five.run import eval_five, train_five

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    print("| seed | zero-shot acc (chance) | k | FiVE acc | linear probe acc | margin | train s |")
    print("|---|---|---|---|---|---|---|")
    zero, margins = [], {k: [] for k in SHOTS}
    fives, probes = {k: [] for k in SHOTS}, {k: [] for k in SHOTS}
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            train_run, train_manifest = write_five_cohort(root / "train", FiveCohortSpec(slides_per_label=50),
                                                          seed=100 + 2 * seed)
            test_run, test_manifest = write_five_cohort(root / "test", FiveCohortSpec(slides_per_label=30),
                                                        seed=101 + 2 * seed, prefix="heldout")
            cfg = _config(root, draws=args.draws, seed=seed)
            t0 = time.perf_counter()
            train_five(cfg, train_run, train_manifest, str(root / "five"))
            seconds = time.perf_counter() - t0
            ev = eval_five(cfg, str(root / "five"), test_run, test_manifest, shots=list(SHOTS))
        z = ev["zero_shot"]
        zero.append(z["accuracy"])
        for k in SHOTS:
            a, b = ev["few_shot"][str(k)]["five_accuracy"], ev["few_shot"][str(k)]["linear_probe_accuracy"]
            fives[k].append(a["mean"])
            probes[k].append(b["mean"])
            margins[k].append(a["mean"] - b["mean"])
            first = k == SHOTS[0]
            lead = f"{seed} | {z['accuracy']:.3f} ({z['chance']:.3f})" if first else " | "
            print(f"| {lead} | {k} | {a['mean']:.3f} +- {a['std']:.3f} | {b['mean']:.3f} +- {b['std']:.3f} | "
                  f"{margins[k][-1]:+.3f} | {f'{seconds:.0f}' if first else ''} |", flush=True)

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} +- {statistics.pstdev(v):.3f}"

    print(f"\nover {len(zero)} seeds: zero-shot accuracy {ms(zero)} (chance 0.333)")
    for k in SHOTS:
        print(f"  {k:>2}-shot: FiVE {ms(fives[k])}, linear probe {ms(probes[k])}, margin {ms(margins[k])}, "
              f"smallest {min(margins[k]):+.3f}")


def throughput(args: argparse.Namespace) -> None:
    import ray
    from five_cohort import FiveCohortSpec, write_five_cohort

    from wsiscale.five.run import train_five

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    settings = [("frozen text, 1 worker", {"num_workers": (1, 1), "cpus_per_worker": 1.0}),
                ("frozen text, 2 workers", {"num_workers": (2, 2), "cpus_per_worker": 0.5}),
                ("LoRA rank 8, 1 worker", {"num_workers": (1, 1), "cpus_per_worker": 1.0})]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run, manifest = write_five_cohort(root / "cohort", FiveCohortSpec(slides_per_label=50), seed=7)
        print("| setting | slides/s (last epochs) | ratio | wall s |")
        print("|---|---|---|---|")
        base = None
        for n, (name, five) in enumerate(settings):
            cfg = _config(root, epochs=args.epochs, checkpoint_every=args.epochs, **five)
            if name.startswith("LoRA"):
                cfg.five.text.lora_rank = 8
            t0 = time.perf_counter()
            doc = train_five(cfg, run, manifest, str(root / f"five-{n}"))
            wall = time.perf_counter() - t0
            rates = [r["slides_per_s"] for r in doc["history"][1:]]  # the first epoch includes start-up
            rate = statistics.median(rates)
            base = base or rate
            print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {wall:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("learning", help="zero-shot vs chance, few-shot vs a linear probe, several seeds")
    lp.add_argument("--seeds", default="0,1,2")
    lp.add_argument("--draws", type=int, default=3)
    tp = sub.add_parser("throughput", help="training slides/s: 1 vs 2 workers, frozen text vs LoRA")
    tp.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    learning(args) if args.what == "learning" else throughput(args)


if __name__ == "__main__":
    main()
