"""Training commands on Ray Train: ``pretrain`` (DINO / SLPD), ``train-mil`` (MIL), ``gigassl train`` and
``gigassl embed`` (Giga-SSL), ``train-five`` and ``eval five`` (FiVE).

Each joins ``ray.address`` or starts a local Ray for the run (:func:`wsiscale.runtime.ray_session`);
its inputs default to the runs under ``output`` (:class:`wsiscale.runs.layout.RunLayout`).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from wsiscale.commands.command import Command, chained
from wsiscale.config import WsiscaleConfig
from wsiscale.runs.layout import RunLayout
from wsiscale.runtime import ray_session


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--embeddings", help="regions-mode embedding run: pretrain the region encoder "
                                          "(default: <output>/regions)")
    src.add_argument("--tiles", help="tiling run with pixels: pretrain the patch encoder (sets pretrain.level=patch)")
    p.add_argument("--out", help="output directory: checkpoints in <out>/pretrain, encoder in <out>/encoder "
                                 "(default: <output>/pretrain); rerun to resume")


def run_pretrain(cfg: WsiscaleConfig, embeddings: str | None = None, tiles: str | None = None,
                 out: str | None = None) -> dict[str, Any]:
    """DINO/SLPD pretraining (:func:`wsiscale.pretrain.run.run_pretraining`) on ``tiles`` (patch level) or
    ``embeddings`` (region level), defaulting to the level's run under ``output``."""
    from wsiscale.pretrain.run import run_pretraining

    layout = RunLayout(cfg.output)
    if tiles:
        cfg.pretrain.level = "patch"
    source = tiles or embeddings or (layout.tiles if cfg.pretrain.level == "patch" else layout.regions)
    with ray_session(cfg):
        return run_pretraining(cfg, source, out or layout.pretrain)


def show_pretrain(summary: dict[str, Any], out: Console) -> None:
    m = summary["metrics"] or {}
    loss = f", last loss {m['loss']:.4f}" if "loss" in m else ""
    probe = (f"; probe on {m.get('eval_slides', '?')} held-out slides: AUC {m['probe_auc']:.3f} (chance 0.5), "
             f"kNN accuracy {m['knn_accuracy']:.3f}" if "probe_auc" in m else "")
    restarts = len(summary.get("starts", [])) - 1
    out.print(f"pretrained on {summary['items']:,} {summary['unit']} of {summary['slides']} slides: step "
              f"{m.get('step', '?')} / {m.get('total_steps', '?')} on {m.get('world', '?')} workers{loss}{probe}"
              + (f"; {restarts} restart(s)" if restarts > 0 else "")
              + f"; encoder -> [bold]{summary.get('encoder')}[/bold]", highlight=False)


PRETRAIN = Command(("pretrain",), "DINO/SLPD pretraining on Ray Train: region encoder (regions-mode embedding run) "
                   "or patch encoder (tiling run with pixels)", _pretrain_arguments, run_pretrain, show_pretrain)


def _mil_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["meanpool", "maxpool", "abmil", "weno"], help="default: mil.method (weno)")
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--labels", help="slide labels: manifest, CSV or Parquet with slide_id and mil.label_column "
                                    "(default: <output>/manifest.parquet)")
    p.add_argument("--out", help="results directory (default: <output>/mil-<method>); rerun to resume")


def run_mil(cfg: WsiscaleConfig, method: str | None = None, embeddings: str | None = None, labels: str | None = None,
            out: str | None = None) -> dict[str, Any]:
    """k-fold MIL (:func:`wsiscale.mil.run.run_mil`) on a tiles-mode embedding run with slide labels."""
    from wsiscale.mil.run import run_mil as train

    layout = RunLayout(cfg.output)
    if method:
        cfg.mil.method = method
    with ray_session(cfg):
        return train(cfg, embeddings or layout.embeddings, labels or layout.manifest, out or layout.mil(cfg.mil.method))


def show_mil(doc: dict[str, Any], out: Console) -> None:
    parts = [f"{k} {v['mean']:.3f} +- {v['std']:.3f}" for k, v in doc["summary"].items()]
    out.print(f"{doc['method']} on {doc['slides']} slides ({doc['positive_slides']} positive), "
              f"{len(doc['folds'])}-fold: " + ", ".join(parts) + " (AUC chance 0.5)", highlight=False)
    if doc.get("heatmaps"):
        out.print(f"{len(doc['heatmaps'])} heatmaps, e.g. [bold]{doc['heatmaps'][0]}[/bold]", highlight=False)


MIL = Command(("train-mil",), "MIL slide classification (mean/max pooling, ABMIL, WENO) on tile embeddings: k-fold "
              "by slide on Ray Train, metrics and heatmaps", _mil_arguments, run_mil, show_mil,
              to_json=lambda doc: {k: doc[k] for k in ("method", "summary", "slides", "starts")})


def _gigassl_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", help="augmented tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--out", help="model directory (default: <output>/gigassl); rerun to resume")


def run_gigassl_train(cfg: WsiscaleConfig, embeddings: str | None = None, out: str | None = None) -> dict[str, Any]:
    """Giga-SSL's slide encoder (SparseConvMIL + SimCLR) on augmented tile embeddings."""
    from wsiscale.gigassl.run import train_gigassl

    layout = RunLayout(cfg.output)
    with ray_session(cfg):
        return train_gigassl(cfg, embeddings or layout.embeddings, out or layout.gigassl)


def show_gigassl_train(doc: dict[str, Any], out: Console) -> None:
    h = doc["history"]
    out.print(f"Giga-SSL on {doc['slides']} slides: {doc['steps']} steps, NT-Xent {h[0]['loss']:.3f} -> "
              f"{h[-1]['loss']:.3f} (collapse {h[-1]['collapse']:.3f})" if h else "Giga-SSL: nothing trained",
              highlight=False)


GIGASSL_TRAIN = Command(("gigassl", "train"), "train the slide encoder on augmented tile embeddings "
                        "(`wsiscale embed --set embed.augmentations=25`) on Ray Train", _gigassl_train_arguments,
                        run_gigassl_train, show_gigassl_train,
                        to_json=lambda doc: {k: v for k, v in doc.items() if k != "history"})


def _gigassl_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--model", help="`gigassl train` output directory (default: <output>/gigassl)")
    p.add_argument("--out", help="output directory (default: <model>/vectors)")


def run_gigassl_embed(cfg: WsiscaleConfig, embeddings: str | None = None, model: str | None = None,
                      out: str | None = None) -> dict[str, Any]:
    """One vector per slide (Parquet) from a trained Giga-SSL model."""
    from wsiscale.gigassl.run import embed_gigassl
    from wsiscale.io.uri import join_uri

    layout = RunLayout(cfg.output)
    model = model or layout.gigassl
    with ray_session(cfg):
        return embed_gigassl(cfg, embeddings or layout.embeddings, model, out or join_uri(model, "vectors"))


def show_gigassl_embed(summary: dict[str, Any], out: Console) -> None:
    ratio = f", {summary['compression_ratio']:,.0f}x smaller than the slides" if summary["compression_ratio"] else ""
    out.print(f"{summary['slides']} slide vectors ({summary['dim']}-d) -> [bold]{summary['vectors']}[/bold]: "
              f"{summary['bytes_per_slide']:,.0f} bytes per slide{ratio}"
              + (f"; {len(summary['failures'])} slides left out" if summary["failures"] else ""), highlight=False)


GIGASSL_EMBED = Command(("gigassl", "embed"), "one vector per slide (Parquet) from a trained Giga-SSL model",
                        _gigassl_embed_arguments, run_gigassl_embed, show_gigassl_embed,
                        to_json=lambda s: {k: v for k, v in s.items() if k != "failures"})


def _gigassl_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", help="augmented tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--out", help="model directory (default: <output>/gigassl)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip-train", action="store_true", help="embed with the model already in --out")
    g.add_argument("--skip-embed", action="store_true", help="train only")


def run_gigassl(cfg: WsiscaleConfig, embeddings: str | None = None, out: str | None = None, skip_train: bool = False,
                skip_embed: bool = False) -> dict[str, Any]:
    """``gigassl train`` then ``gigassl embed`` (vectors in ``<out>/vectors``): ``jobs/gigassl.py``."""
    out = out or RunLayout(cfg.output).gigassl
    doc: dict[str, Any] = {"model": out}
    with ray_session(cfg):  # one Ray for both steps
        if not skip_train:
            doc["train"] = run_gigassl_train(cfg, embeddings, out)
        if not skip_embed:
            doc["embed"] = run_gigassl_embed(cfg, embeddings, out)
    return doc


GIGASSL = Command(("gigassl",), "Giga-SSL: train the slide encoder on Ray Train and embed every slide",
                  _gigassl_job_arguments, run_gigassl, *chained(("train", GIGASSL_TRAIN), ("embed", GIGASSL_EMBED)))


def _five_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--manifest", help="manifest with slide_id, five.report_column and five.label_column "
                                      "(default: <output>/manifest.parquet)")
    p.add_argument("--out", help="model directory (default: <output>/five); rerun to resume")


def run_five_train(cfg: WsiscaleConfig, embeddings: str | None = None, manifest: str | None = None,
                   out: str | None = None) -> dict[str, Any]:
    """FiVE: slide features trained against the slides' report texts (:func:`wsiscale.five.run.train_five`)."""
    from wsiscale.five.run import train_five

    layout = RunLayout(cfg.output)
    with ray_session(cfg):
        return train_five(cfg, embeddings or layout.embeddings, manifest or layout.manifest, out or layout.five)


def show_five_train(doc: dict[str, Any], out: Console) -> None:
    h = doc["history"]
    out.print(f"FiVE on {doc['slides']} reported slides: {h[-1]['step']} steps, loss {h[0]['loss']:.3f} -> "
              f"{h[-1]['loss']:.3f}, text accuracy {h[-1]['text_accuracy']:.3f}", highlight=False)


FIVE_TRAIN = Command(("train-five",), "FiVE: train slide features against report texts (TFS module, offline text "
                     "encoder) on Ray Train", _five_train_arguments, run_five_train, show_five_train,
                     to_json=lambda doc: {k: v for k, v in doc.items() if k != "history"})


def _five_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="`train-five` output directory (default: <output>/five)")
    p.add_argument("--embeddings", help="tiles-mode embedding run of the evaluation slides "
                                        "(default: <output>/embeddings)")
    p.add_argument("--manifest", help="manifest with slide_id and five.label_column (default: "
                                      "<output>/manifest.parquet)")
    p.add_argument("--shots", help="comma-separated k values (default: five.shots)")
    p.add_argument("--out", help="where five_eval.json goes (default: the model directory)")


def run_five_eval(cfg: WsiscaleConfig, model: str | None = None, embeddings: str | None = None,
                  manifest: str | None = None, shots: str | list[int] | None = None,
                  out: str | None = None) -> dict[str, Any]:
    """FiVE zero-shot (class descriptions) and few-shot (k labelled slides per class vs a linear probe)."""
    from wsiscale.config import ConfigError
    from wsiscale.five.run import eval_five

    layout = RunLayout(cfg.output)
    if isinstance(shots, str):
        try:
            shots = [int(k) for k in shots.split(",")]
        except ValueError:
            raise ConfigError(f"--shots {shots!r}: give comma-separated integers, e.g. 4,8,16") from None
    return eval_five(cfg, model or layout.five, embeddings or layout.embeddings, manifest or layout.manifest, out, shots)


def show_five_eval(doc: dict[str, Any], out: Console) -> None:
    if "zero_shot" in doc:
        z = doc["zero_shot"]
        out.print(f"zero-shot on {z['slides']} slides: accuracy {z['accuracy']:.3f} (chance {z['chance']:.3f}), "
                  f"AUC {z['auc']:.3f} (chance 0.5)", highlight=False)
    for k, r in doc.get("few_shot", {}).items():
        f, b = r["five_accuracy"], r["linear_probe_accuracy"]
        out.print(f"{k}-shot ({len(r['draws'])} draws): FiVE {f['mean']:.3f} +- {f['std']:.3f}, linear probe on "
                  f"mean-pooled tiles {b['mean']:.3f} +- {b['std']:.3f}", highlight=False)


FIVE_EVAL = Command(("eval", "five"), "FiVE zero-shot (class descriptions) and few-shot (k labelled slides per class, "
                    "against a linear probe on mean-pooled tiles)", _five_eval_arguments, run_five_eval,
                    show_five_eval, to_json=lambda doc: {k: doc[k] for k in ("zero_shot", "few_shot") if k in doc})


def _five_job_arguments(p: argparse.ArgumentParser) -> None:
    _five_train_arguments(p)
    p.add_argument("--eval-embeddings", help="embedding run of the evaluation slides (default: --embeddings)")
    p.add_argument("--eval-manifest", help="manifest of the evaluation slides (default: --manifest)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--skip-train", action="store_true", help="evaluate the model already in --out")
    g.add_argument("--skip-eval", action="store_true", help="train only")


def run_five(cfg: WsiscaleConfig, embeddings: str | None = None, manifest: str | None = None, out: str | None = None,
             eval_embeddings: str | None = None, eval_manifest: str | None = None, skip_train: bool = False,
             skip_eval: bool = False) -> dict[str, Any]:
    """``train-five`` then ``eval five`` (``jobs/five.py``)."""
    out = out or RunLayout(cfg.output).five
    doc: dict[str, Any] = {"model": out}
    with ray_session(cfg):  # one Ray for both steps
        if not skip_train:
            doc["train"] = run_five_train(cfg, embeddings, manifest, out)
        if not skip_eval:
            doc["eval"] = run_five_eval(cfg, out, eval_embeddings or embeddings, eval_manifest or manifest)
    return doc


FIVE = Command(("five",), "FiVE: train slide features against report texts on Ray Train, then zero-/few-shot",
               _five_job_arguments, run_five, *chained(("train", FIVE_TRAIN), ("eval", FIVE_EVAL)))
