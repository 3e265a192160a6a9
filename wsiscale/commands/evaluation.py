"""Evaluation and run commands: ``eval linear-probe``, ``report`` and ``config``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from wsiscale.commands.command import Command
from wsiscale.config import ConfigError, WsiscaleConfig


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vectors", help="slide-vector Parquet (slide_id + a vector column), or a tiles-mode embedding "
                                     "run to mean-pool (default: <output>/gigassl/vectors/slide_vectors.parquet)")
    p.add_argument("--labels", help="labels: manifest, CSV or Parquet with slide_id and the label column "
                                    "(default: <output>/manifest.parquet)")
    p.add_argument("--out", help="results directory (default: <output>/linear-probe)")
    p.add_argument("--column", help="vector column (default: eval.vector_column, 'embedding')")
    p.add_argument("--label-column", help="label column (default: eval.label_column, 'label')")
    p.add_argument("--positive-labels", nargs="+", metavar="LABEL", help="labels counted positive (binarises)")
    p.add_argument("--c", type=float, help="logistic regression C (default: eval.probe_c, 10)")
    p.add_argument("--folds", type=int, help="k of the k-fold (default: eval.probe_folds, 5)")
    p.add_argument("--repeats", type=int, help="k-fold repetitions, 0 skips k-fold (default: eval.probe_repeats)")
    p.add_argument("--train-sizes", type=int, nargs="*", metavar="N",
                   help="small-data train sizes; none given skips it (default: eval.probe_train_sizes, 50)")
    p.add_argument("--draws", type=int, help="small-data draws per train size (default: eval.probe_draws, 100)")
    p.add_argument("--seed", type=int, help="default: eval.seed")


def run_probe(cfg: WsiscaleConfig, vectors: str | None = None, labels: str | None = None, out: str | None = None,
              column: str | None = None, label_column: str | None = None, positive_labels: list[str] | None = None,
              c: float | None = None, folds: int | None = None, repeats: int | None = None,
              train_sizes: list[int] | None = None, draws: int | None = None, seed: int | None = None) -> dict:
    """The slide-level linear probe (:func:`wsiscale.eval.linear_probe.run_linear_probe`); the options
    override ``eval.*``."""
    from pydantic import ValidationError

    from wsiscale.eval.linear_probe import probe_paths, run_linear_probe

    for key, value in (("vector_column", column), ("label_column", label_column),
                       ("positive_labels", positive_labels), ("probe_c", c), ("probe_folds", folds),
                       ("probe_repeats", repeats), ("probe_train_sizes", train_sizes), ("probe_draws", draws),
                       ("seed", seed)):
        if value is not None:
            try:
                setattr(cfg.eval, key, value)
            except ValidationError as exc:
                raise ConfigError(f"eval.{key}={value!r}: {exc.errors()[0]['msg']}") from exc
    return run_linear_probe(cfg, *probe_paths(cfg, vectors, labels, out))


def show_probe(doc: dict[str, Any], out: Console) -> None:
    from wsiscale.eval.linear_probe import summary_rows

    t = Table(title=f"linear probe: {doc['slides']} slides {doc['class_counts']}, {doc['dim']}-d ({doc['source']})")
    for col in ("protocol", "train", "test", "runs", "AUC"):
        t.add_column(col, justify="left" if col == "protocol" else "right")
    for r in summary_rows(doc):
        auc = "skipped" if r["auc_mean"] is None else f"{r['auc_mean']:.3f} +- {r['auc_std']:.3f}"
        t.add_row(r["protocol"], r["train"], r["test"], str(r["runs"]), auc)
    out.print(t)
    if doc.get("out"):
        out.print(f"results -> [bold]{doc['out']}[/bold]/linear_probe.json, linear_probe.md", highlight=False)


PROBE = Command(("eval", "linear-probe"), "logistic-regression probe of slide vectors (or mean-pooled tile "
                "embeddings): repeated k-fold and few-label draws (Giga-SSL)", _probe_arguments, run_probe, show_probe)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="the run directory (jobs/pipeline.py's output; any URI)")
    p.add_argument("--out", help="where the page goes (default: <run>/report.html)")
    p.add_argument("--slides", type=int, default=6, help="slides in the gallery (default 6)")
    p.add_argument("--queries", type=int, default=4, help="retrieval examples (default 4)")
    p.add_argument("--k", type=int, default=4, help="neighbours shown per retrieval example (default 4)")


def run_report(cfg: WsiscaleConfig, run: str, out: str | None = None, slides: int = 6, queries: int = 4,
               k: int = 4) -> dict[str, Any]:
    """The HTML run report of a pipeline run (:func:`wsiscale.report.write_report`)."""
    from wsiscale.report import write_report

    return write_report(run, out, cfg.storage, slides=slides, queries=queries, k=k, label_column=cfg.eval.label_column)


def show_report(got: dict[str, Any], out: Console) -> None:
    out.print(f"report: [bold]{got['out']}[/bold] ({got['images']} images, {got['charts']} charts, "
              f"{got['failures']} failed slides listed)", highlight=False)


REPORT = Command(("report",), "an HTML page of a pipeline run: throughput, failures, loss curves, slide thumbnails "
                 "with tissue masks and prototype maps, retrieval examples, heatmaps", _report_arguments, run_report,
                 show_report)


def run_config(cfg: WsiscaleConfig) -> WsiscaleConfig:
    """The resolved configuration (``--config`` and ``--set`` over the defaults)."""
    return cfg


def show_config(cfg: WsiscaleConfig, out: Console) -> None:
    import sys

    from wsiscale.config import config_to_yaml

    sys.stdout.write(config_to_yaml(cfg))


CONFIG = Command(("config",), "print the resolved configuration as YAML", lambda p: None, run_config, show_config,
                 to_json=lambda cfg: cfg.model_dump(mode="json"))
