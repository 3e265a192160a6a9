"""``wsiscale`` command line: ``info``, ``synth``, ``manifest``, ``tile``, ``embed``, ``encoders``, ``index build``,
``retrieve``, ``cluster``, ``pretrain``, ``train-mil``, ``train-five``, ``eval linear-probe``, ``eval five``, ``demo``, ``config``.

Every command takes ``--config FILE.yaml`` and any number of ``--set
section.key=value`` overrides; the resolved config is saved next to outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.table import Table

from wsiscale.config import ConfigError, WsiscaleConfig, config_to_yaml, load_config
from wsiscale.progress import console, setup_logging

log = logging.getLogger("wsiscale")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (defaults are the embedded local setup)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tiling.mpp=0.5 (repeatable)")


def _load(args: argparse.Namespace) -> WsiscaleConfig:
    cfg = load_config(args.config, args.overrides)
    setup_logging(cfg.log_level)
    return cfg


def _fmt_mpp(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "[red]unknown[/red]"


def _info(args: argparse.Namespace) -> int:
    from wsiscale.summary import summarize_slide

    cfg = _load(args)
    if args.backend:
        cfg.reader.backend = args.backend
    row = summarize_slide(args.uri, cfg, mpp=args.mpp)
    if args.json:
        print(json.dumps(row, indent=1, default=str))
        return 0 if row["error"] is None else 2
    if row["error"] and "width" not in row:
        console.print(f"[bold red]error:[/bold red] {row['error']}")
        return 2
    t = Table(title=row["uri"], show_header=False)
    t.add_row("backend", row["backend"])
    t.add_row("vendor", row["vendor"])
    t.add_row("dimensions", f"{row['width']} x {row['height']}")
    t.add_row("mpp (level 0)", _fmt_mpp(row["mpp"]) + (f"  ({row['mpp_source']})" if row["mpp_source"] else ""))
    for i, ((w, h), ds) in enumerate(zip(row["levels"], row["downsamples"])):
        lm = f", {row['mpp'] * ds:.3f} um/px" if row["mpp"] else ""
        t.add_row(f"level {i}", f"{w} x {h}  (downsample {ds:g}{lm})")
    if row.get("tissue_fraction") is not None:
        t.add_row("tissue fraction", f"{row['tissue_fraction']:.3f}")
        t.add_row(f"tiles {cfg.tiling.tile_size}px @ {cfg.tiling.mpp} um/px",
                  f"{row['tiles']} (level {row['tile_level']}, read {row['tile_read_size']} px)")
        t.add_row(f"regions 4096px @ {cfg.tiling.mpp} um/px", str(row["regions"]))
    console.print(t)
    if row["error"]:
        console.print(f"[bold red]error:[/bold red] {row['error']}")
        return 2
    return 0


def _synth(args: argparse.Namespace) -> int:
    from wsiscale.config import save_config
    from wsiscale.synth.cohort import build_cohort

    cfg = _load(args)
    for key, value in (("n_slides", args.n_slides), ("seed", args.seed)):
        if value is not None:
            setattr(cfg.synth, key, value)
    if args.size:
        w, _, h = args.size.lower().partition("x")
        cfg.synth.width, cfg.synth.height = int(w), int(h or w)
    manifest = build_cohort(cfg.synth, args.out, workers=args.workers)
    save_config(cfg, str(Path(args.out).resolve()))
    console.print(f"wrote {cfg.synth.n_slides} slides and [bold]{manifest}[/bold]")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from wsiscale.io.manifest import ManifestError, build_manifest
    from wsiscale.io.uri import join_uri, normalize_uri

    cfg = _load(args)
    out = args.out or join_uri(cfg.output, "manifest.parquet")
    try:
        table, stats = build_manifest(args.prefix, out=out, storage=cfg.storage, pattern=args.pattern,
                                      labels=args.labels, label_key=args.label_key)
    except ManifestError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    total = sum(table.column("size_bytes").to_pylist())
    console.print(f"{stats['slides']} slides ({total / 2**30:.2f} GiB) listed under {args.prefix} -> [bold]{normalize_uri(out)}[/bold]",
                  highlight=False)
    if args.labels:
        console.print(f"{stats['labelled']} slides labelled from {args.labels}; "
                      f"{stats['n_unmatched_labels']} label rows matched no slide"
                      + (f" (e.g. {', '.join(map(str, stats['unmatched_labels'][:5]))})" if stats["unmatched_labels"] else ""),
                      highlight=False)
    return 0


def _slides_row(s: dict) -> str:
    """The ``slides`` line shared by the tiling and embedding summaries."""
    return (f"{s['done']} / {s['total']} done ({s['done_this_run']} this run, "
            f"{s['skipped_already_done']} already done), {s['failed']} failed, {s['pending']} pending")


def load_job_config(config: str | None, overrides: list[str]) -> WsiscaleConfig:
    """Config for a ``jobs/`` entrypoint: load, set up logging, and join the cluster when run as a Ray job.

    Raises:
        ConfigError: unreadable or invalid configuration.
    """
    import os

    cfg = load_config(config, overrides)
    setup_logging(cfg.log_level)
    if cfg.ray.address is None and os.environ.get("RAY_ADDRESS"):
        cfg.ray.address = "auto"  # submitted as a Ray job: join that cluster, never start a local Ray
    return cfg


def job_parser(prog: str, description: str, config_example: str, set_example: str) -> argparse.ArgumentParser:
    """The options every ``jobs/`` entrypoint shares: ``--config`` and repeatable ``--set``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", "-c", help=f"YAML config file (e.g. {config_example})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {set_example} (repeatable)")
    return p


def job_config(args: argparse.Namespace) -> WsiscaleConfig | None:
    """:func:`load_job_config` for a parsed job command line; prints the error and returns None if invalid."""
    try:
        return load_job_config(args.config, args.overrides)
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/bold red] {exc}", highlight=False)
        return None


def run_job(args: argparse.Namespace, work, printer, errors: tuple[type[BaseException], ...] = (FileNotFoundError,),
            to_json=None) -> int:
    """The body of a ``jobs/`` entrypoint: config, ``work(cfg)``, a printed result; exit 0, or 2 on ``errors``.

    With ``--json`` the result (or ``to_json(result)``) is also printed as one JSON line.
    """
    cfg = job_config(args)
    if cfg is None:
        return 2
    try:
        result = work(cfg)
    except errors as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    printer(result)
    if getattr(args, "json", False):
        print(json.dumps(to_json(result) if to_json else result, default=str))
    return 0


def print_tiling_summary(summary: dict) -> None:
    """Rich table of a tiling run summary (see :func:`wsiscale.data.tiling.run_tiling`)."""
    s, t = summary["slides"], summary["tiles"]
    table = Table(title=f"tiling run {summary['run']}", show_header=False)
    table.add_row("slides", _slides_row(s))
    table.add_row("tiles", f"{t['total']:,} ({t['this_run']:,} this run, pixels: {summary['pixels']})")
    table.add_row("throughput", f"{summary['tiles_per_s']:,.0f} tiles/s, {summary['slides_per_s']:.2f} slides/s "
                  f"over {summary['seconds']:.1f} s")
    console.print(table)
    if summary["failures"]:
        ft = Table(title=f"{s['failed']} failed slides (all in failures.parquet)")
        for col in ("slide", "error", "message"):
            ft.add_column(col, overflow="fold")
        for f in summary["failures"][:20]:
            ft.add_row(f["slide_id"], f["error_type"], f["message"])
        console.print(ft)


def _tile(args: argparse.Namespace) -> int:
    from wsiscale.data.tiling import run_tiling

    cfg = _load(args)
    if args.pixels:
        cfg.ingest.pixels = args.pixels
    summary = run_tiling(cfg, manifest=args.manifest, out=args.out)
    print_tiling_summary(summary)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0 if summary["slides"]["pending"] == 0 and not summary["interrupted"] else 1


def print_embedding_summary(summary: dict) -> None:
    """Rich table of an embedding run summary (see :func:`wsiscale.data.embedding.run_embedding`)."""
    s, t = summary["slides"], summary["tiles"]
    table = Table(title=f"embedding run {summary['run']} ({summary['encoder']}, {summary['mode']})", show_header=False)
    table.add_row("slides", _slides_row(s))
    table.add_row("tiles", f"{t['total']:,} ({t['this_run']:,} this run)")
    table.add_row("throughput", f"{summary['tiles_per_s']:,.1f} tiles/s over {summary['seconds']:.1f} s")
    console.print(table)
    for f in summary["failures"][:20]:
        console.print(f"[red]{f['slide_id']}[/red] {f['error_type']}: {f['message']}", highlight=False)


def _embed(args: argparse.Namespace) -> int:
    from wsiscale.data.embedding import run_embedding

    cfg = _load(args)
    summary = run_embedding(cfg, source=args.source, manifest=args.manifest, out=args.out)
    print_embedding_summary(summary)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0 if summary["slides"]["pending"] == 0 and not summary["interrupted"] else 1


def _encoders(args: argparse.Namespace) -> int:
    from wsiscale.models.encoders import list_encoders

    t = Table(title="registered encoders (also: timm:<architecture>)")
    for col in ("name", "dim", "input", "mpp", "weights", "reference"):
        t.add_column(col)
    for spec in list_encoders():
        t.add_row(spec.name, str(spec.dim), str(spec.input_size), f"{spec.mpp:g}",
                  "required" if spec.needs_weights else "optional", spec.reference)
    console.print(t)
    return 0


def print_cluster_result(meta: dict) -> None:
    """One line for a finished k-means (``wsiscale cluster``, ``jobs/cluster.py``)."""
    console.print(f"k-means: {meta['vectors']:,} vectors ({meta['dim']}-d) on {meta['shards']} FAISS pool actors -> "
                  f"{meta['k']} clusters, inertia {meta['inertia']:.6g}, {meta['empty_repaired']} empty clusters "
                  f"repaired -> [bold]{meta['out']}[/bold]", highlight=False)


def print_index_result(meta: dict) -> None:
    """One line for a built slide index (``wsiscale index build``, ``jobs/index.py``)."""
    console.print(f"{meta['slides']} slides x {meta['m']} prototypes ({meta['dim']}-d) -> [bold]{meta['out']}[/bold]"
                  + (f"; {len(meta['skipped'])} slides with too few embeddings left out" if meta["skipped"] else "")
                  + (f"; neighbours -> {meta['neighbours']}" if meta.get("neighbours") else ""), highlight=False)


def print_pretrain_result(summary: dict) -> None:
    """One line for a finished pretraining run (``wsiscale pretrain``, ``jobs/pretrain.py``)."""
    m = summary["metrics"] or {}
    loss = f", last loss {m['loss']:.4f}" if "loss" in m else ""
    probe = (f"; probe on {m.get('eval_slides', '?')} held-out slides: AUC {m['probe_auc']:.3f}, "
             f"kNN accuracy {m['knn_accuracy']:.3f}" if "probe_auc" in m else "")
    console.print(f"pretrained on {summary['items']:,} {summary['unit']} of {summary['slides']} slides: step "
                  f"{m.get('step', '?')} / {m.get('total_steps', '?')} on {m.get('world', '?')} workers{loss}{probe}; "
                  f"encoder -> [bold]{summary.get('encoder')}[/bold]", highlight=False)


def _pretrain(args: argparse.Namespace) -> int:
    from wsiscale.demo import ray_session
    from wsiscale.io.uri import join_uri
    from wsiscale.pretrain.run import pretrain_source, run_pretraining

    cfg = _load(args)
    with ray_session(cfg):
        summary = run_pretraining(cfg, pretrain_source(cfg, args.tiles, args.embeddings),
                                  args.out or join_uri(cfg.output, "pretrain"))
    print_pretrain_result(summary)
    return 0


def print_mil_result(doc: dict) -> None:
    """The cross-validated metrics of a finished MIL run (``wsiscale train-mil``, ``jobs/train_mil.py``)."""
    parts = [f"{k} {v['mean']:.3f} +- {v['std']:.3f}" for k, v in doc["summary"].items()]
    console.print(f"{doc['method']} on {doc['slides']} slides ({doc['positive_slides']} positive), "
                  f"{len(doc['folds'])}-fold: " + ", ".join(parts), highlight=False)
    if doc.get("heatmaps"):
        console.print(f"{len(doc['heatmaps'])} heatmaps, e.g. [bold]{doc['heatmaps'][0]}[/bold]", highlight=False)


def mil_inputs(cfg: WsiscaleConfig, embeddings: str | None, labels: str | None, out: str | None,
               method: str | None) -> tuple[str, str, str]:
    """``(embeddings, labels, out)`` of ``train-mil``, defaulting to the runs under ``cfg.output``."""
    from wsiscale.io.uri import join_uri

    if method:
        cfg.mil.method = method
    return (embeddings or join_uri(cfg.output, "embeddings"), labels or join_uri(cfg.output, "manifest.parquet"),
            out or join_uri(cfg.output, f"mil-{cfg.mil.method}"))


def _train_mil(args: argparse.Namespace) -> int:
    from wsiscale.demo import ray_session
    from wsiscale.mil.run import run_mil

    cfg = _load(args)
    embeddings, labels, out = mil_inputs(cfg, args.embeddings, args.labels, args.out, args.method)
    with ray_session(cfg):
        doc = run_mil(cfg, embeddings, labels, out)
    print_mil_result(doc)
    if args.json:
        sys.stdout.write(json.dumps({k: doc[k] for k in ("method", "summary", "slides")}) + "\n")
    return 0


def print_five_train(doc: dict) -> None:
    """A finished ``wsiscale train-five`` run: slides, steps and the loss curve's ends."""
    h = doc["history"]
    console.print(f"FiVE on {doc['slides']} reported slides: {h[-1]['step']} steps, loss {h[0]['loss']:.3f} -> "
                  f"{h[-1]['loss']:.3f}, text accuracy {h[-1]['text_accuracy']:.3f}", highlight=False)


def print_five_eval(doc: dict) -> None:
    """Zero-shot and few-shot results of ``wsiscale eval five``."""
    if "zero_shot" in doc:
        z = doc["zero_shot"]
        console.print(f"zero-shot on {z['slides']} slides: accuracy {z['accuracy']:.3f} (chance {z['chance']:.3f}), "
                      f"AUC {z['auc']:.3f}", highlight=False)
    for k, r in doc.get("few_shot", {}).items():
        f, b = r["five_accuracy"], r["linear_probe_accuracy"]
        console.print(f"{k}-shot ({len(r['draws'])} draws): FiVE {f['mean']:.3f} +- {f['std']:.3f}, linear probe on "
                      f"mean-pooled tiles {b['mean']:.3f} +- {b['std']:.3f}", highlight=False)


def print_pipeline_summary(doc: dict) -> None:
    """One row per stage of a ``jobs/pipeline.py`` run: status, seconds and the stage's key figure."""
    table = Table(title=f"pipeline -> {doc['output']}")
    for col in ("stage", "status", "seconds", "result"):
        table.add_column(col)
    for name, st in doc["stages"].items():
        table.add_row(name, st.get("status", ""), f"{st['seconds']:.1f}" if "seconds" in st else "",
                      _pipeline_result(name, st))
    console.print(table)


def _pipeline_result(name: str, st: dict) -> str:
    if st.get("status") != "done":
        return st.get("error", "")
    if name in ("tile", "embed", "regions"):
        s = st["slides"]
        return f"{s.get('done', 0)} slides done, {s.get('failed', 0)} failed -> {st['out']}"
    if name == "pretrain":
        m = st.get("metrics", {})
        figs = ", ".join(f"{k} {m[k]:.3f}" for k in ("loss", "probe_auc", "knn_accuracy") if k in m)
        return f"{st['method']} on {st['regions']} regions of {st['slides']} slides: {figs}"
    if name == "index":
        return (f"k-means k={st['k']} over {st['vectors']} vectors; {st['prototypes_per_slide']} prototypes for "
                f"{st['slides_indexed']} slides")
    if name == "evaluate":
        r, p = st.get("retrieval", {}), st.get("linear_probe", {})
        parts = []
        if "map_at_k" in r:
            parts.append(f"retrieval@{r['k']}: majority vote {r['majority_vote_accuracy']:.3f}, mAP {r['map_at_k']:.3f}")
        if p.get("kfold_auc") is not None:
            parts.append(f"linear probe AUC {p['kfold_auc']:.3f}")
        return "; ".join(parts) or "skipped (see pipeline.json)"
    return ""


def five_inputs(cfg: WsiscaleConfig, embeddings: str | None, manifest: str | None,
                out: str | None) -> tuple[str, str, str]:
    """``(embeddings, manifest, model directory)`` of the FiVE commands, defaulting to runs under ``cfg.output``."""
    from wsiscale.io.uri import join_uri

    return (embeddings or join_uri(cfg.output, "embeddings"), manifest or join_uri(cfg.output, "manifest.parquet"),
            out or join_uri(cfg.output, "five"))


def _train_five(args: argparse.Namespace) -> int:
    from wsiscale.demo import ray_session
    from wsiscale.five.run import train_five

    cfg = _load(args)
    embeddings, manifest, out = five_inputs(cfg, args.embeddings, args.manifest, args.out)
    with ray_session(cfg):
        doc = train_five(cfg, embeddings, manifest, out)
    print_five_train(doc)
    return 0


def _eval_five(args: argparse.Namespace) -> int:
    from wsiscale.five.run import eval_five

    cfg = _load(args)
    embeddings, manifest, model = five_inputs(cfg, args.embeddings, args.manifest, args.model)
    shots = [int(k) for k in args.shots.split(",")] if args.shots else None
    doc = eval_five(cfg, model, embeddings, manifest, args.out, shots)
    print_five_eval(doc)
    if args.json:
        sys.stdout.write(json.dumps({k: doc[k] for k in ("zero_shot", "few_shot") if k in doc}) + "\n")
    return 0


def print_gigassl_train(doc: dict) -> None:
    """A finished ``wsiscale gigassl train`` run: slides, steps and the loss curve's ends."""
    h = doc["history"]
    console.print(f"Giga-SSL on {doc['slides']} slides: {doc['steps']} steps, NT-Xent {h[0]['loss']:.3f} -> "
                  f"{h[-1]['loss']:.3f} (collapse {h[-1]['collapse']:.3f})" if h else "Giga-SSL: nothing trained",
                  highlight=False)


def print_gigassl_embed(summary: dict) -> None:
    """Slide vectors written by ``wsiscale gigassl embed``: size per slide and compression ratio."""
    ratio = f", {summary['compression_ratio']:,.0f}x smaller than the slides" if summary["compression_ratio"] else ""
    console.print(f"{summary['slides']} slide vectors ({summary['dim']}-d) -> [bold]{summary['vectors']}[/bold]: "
                  f"{summary['bytes_per_slide']:,.0f} bytes per slide{ratio}"
                  + (f"; {len(summary['failures'])} slides left out" if summary["failures"] else ""), highlight=False)


def gigassl_paths(cfg: WsiscaleConfig, embeddings: str | None, out: str | None) -> tuple[str, str]:
    """``(embeddings, model directory)`` of the ``gigassl`` commands, defaulting to runs under ``cfg.output``."""
    from wsiscale.io.uri import join_uri

    return embeddings or join_uri(cfg.output, "embeddings"), out or join_uri(cfg.output, "gigassl")


def _gigassl_train(args: argparse.Namespace) -> int:
    from wsiscale.demo import ray_session
    from wsiscale.gigassl.run import train_gigassl

    cfg = _load(args)
    embeddings, out = gigassl_paths(cfg, args.embeddings, args.out)
    with ray_session(cfg):
        doc = train_gigassl(cfg, embeddings, out)
    print_gigassl_train(doc)
    return 0


def _gigassl_embed(args: argparse.Namespace) -> int:
    from wsiscale.demo import ray_session
    from wsiscale.gigassl.run import embed_gigassl
    from wsiscale.io.uri import join_uri

    cfg = _load(args)
    embeddings, model = gigassl_paths(cfg, args.embeddings, args.model)
    with ray_session(cfg):
        summary = embed_gigassl(cfg, embeddings, model, args.out or join_uri(model, "vectors"))
    print_gigassl_embed(summary)
    if args.json:
        sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "failures"}) + "\n")
    return 0


def print_linear_probe(doc: dict) -> None:
    """The AUC table of ``wsiscale eval linear-probe`` / ``jobs/eval_linear_probe.py``."""
    from wsiscale.eval.linear_probe import summary_rows

    t = Table(title=f"linear probe: {doc['slides']} slides {doc['class_counts']}, {doc['dim']}-d ({doc['source']})")
    for col in ("protocol", "train", "test", "runs", "AUC"):
        t.add_column(col, justify="left" if col == "protocol" else "right")
    for r in summary_rows(doc):
        auc = "skipped" if r["auc_mean"] is None else f"{r['auc_mean']:.3f} +- {r['auc_std']:.3f}"
        t.add_row(r["protocol"], r["train"], r["test"], str(r["runs"]), auc)
    console.print(t)
    if doc.get("out"):
        console.print(f"results -> [bold]{doc['out']}[/bold]/linear_probe.json, linear_probe.md", highlight=False)


def linear_probe_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``eval linear-probe`` (shared with ``jobs/eval_linear_probe.py``); each overrides ``eval.*``."""
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
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


def linear_probe_inputs(cfg: WsiscaleConfig, args: argparse.Namespace) -> tuple[str, str, str]:
    """Apply the ``eval linear-probe`` options to ``cfg.eval``; ``(vectors, labels, out)``."""
    from wsiscale.eval.linear_probe import probe_paths

    from pydantic import ValidationError

    for key, value in (("vector_column", args.column), ("label_column", args.label_column),
                       ("positive_labels", args.positive_labels), ("probe_c", args.c), ("probe_folds", args.folds),
                       ("probe_repeats", args.repeats), ("probe_train_sizes", args.train_sizes),
                       ("probe_draws", args.draws), ("seed", args.seed)):
        if value is not None:
            try:
                setattr(cfg.eval, key, value)
            except ValidationError as exc:
                raise ConfigError(f"eval.{key}={value!r}: {exc.errors()[0]['msg']}") from exc
    return probe_paths(cfg, args.vectors, args.labels, args.out)


def _eval_linear_probe(args: argparse.Namespace) -> int:
    from wsiscale.eval.linear_probe import run_linear_probe

    cfg = _load(args)
    doc = run_linear_probe(cfg, *linear_probe_inputs(cfg, args))  # ConfigError, FileNotFoundError: exit 2 (main)
    if args.json:
        sys.stdout.write(json.dumps(doc, default=str) + "\n")
    else:
        print_linear_probe(doc)
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from wsiscale.index.stages import run_cluster

    meta = run_cluster(_load(args), args.embeddings, args.out, k=args.k, spherical=True if args.spherical else None)
    print_cluster_result(meta)
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from wsiscale.index.stages import run_slide_index

    meta = run_slide_index(_load(args), args.embeddings, args.out, m=args.m, min_vectors=args.min_vectors,
                           neighbours=args.neighbours)
    print_index_result(meta)
    return 0


def _report(args: argparse.Namespace) -> int:
    from wsiscale.report import write_report

    cfg = _load(args)
    got = write_report(args.run, args.out, cfg.storage, slides=args.slides, queries=args.queries, k=args.k,
                       label_column=cfg.eval.label_column)
    console.print(f"report: [bold]{got['out']}[/bold] ({got['images']} images, {got['charts']} charts, "
                  f"{got['failures']} failed slides listed)", highlight=False)
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from wsiscale.index.slides import SlideIndex
    from wsiscale.io.uri import join_uri

    cfg = _load(args)
    index = SlideIndex.load(args.index or join_uri(cfg.output, "slide-index"), cfg.storage,
                            candidates=cfg.index.candidates, index=cfg.index.index_type,
                            params=cfg.index.search_params)
    try:
        hits = index.retrieve(args.slide, k=args.k)
    except KeyError as exc:
        console.print(f"[bold red]error:[/bold red] {exc.args[0]}", highlight=False)
        return 2
    t = Table(title=f"slides most similar to {args.slide} (matched prototypes, cosine)")
    t.add_column("rank", justify="right")
    t.add_column("slide")
    t.add_column("score", justify="right")
    for rank, (sid, score) in enumerate(hits, 1):
        t.add_row(str(rank), sid, f"{score:.4f}")
    console.print(t)
    if args.json:
        print(json.dumps([{"slide_id": s, "score": sc} for s, sc in hits]))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from wsiscale.demo import run_demo

    cfg = _load(args)
    return run_demo(cfg, Path(args.out), n_slides=args.n_slides)


def _config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    sys.stdout.write(config_to_yaml(cfg))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsiscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print a slide's metadata, tissue fraction and planned tiles")
    p.add_argument("uri", help="slide path or URI (file://, s3://, gs://)")
    p.add_argument("--backend", choices=["auto", "cucim", "openslide", "tiffslide"])
    p.add_argument("--mpp", type=float, help="override the slide's level-0 microns per pixel")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(func=_info)

    p = sub.add_parser("synth", help="write a synthetic cohort (SVS slides + ground truth + manifest)")
    p.add_argument("out", help="output directory")
    p.add_argument("--n-slides", type=int)
    p.add_argument("--size", help="WIDTHxHEIGHT of level 0, e.g. 8192x8192")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    _common(p)
    p.set_defaults(func=_synth)

    p = sub.add_parser("manifest", help="list the slides under a prefix (s3://, gs://, file://, globs) into a manifest Parquet")
    p.add_argument("prefix", help="e.g. s3://bucket/cohort/ or 's3://bucket/**/*.svs' or a local directory")
    p.add_argument("--out", help="manifest URI (default: <output>/manifest.parquet)")
    p.add_argument("--pattern", help="extra glob relative to the prefix, e.g. 'TCGA-*/*.svs'")
    p.add_argument("--labels", help="CSV/Parquet of labels to join (by slide_id, uri or filename)")
    p.add_argument("--label-key", help="key column of the labels file")
    _common(p)
    p.set_defaults(func=_manifest)

    p = sub.add_parser("tile", help="tile every slide of a manifest on a Ray CPU actor pool (resumable)")
    p.add_argument("--manifest", help="manifest URI (default: ingest.manifest or <output>/manifest.parquet)")
    p.add_argument("--out", help="run directory (default: <output>/tiles)")
    p.add_argument("--pixels", choices=["none", "jpeg", "raw"], help="override ingest.pixels")
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    _common(p)
    p.set_defaults(func=_tile)

    p = sub.add_parser("embed", help="embed tiles (from a tiling run, or tiling on the fly) on an encoder actor pool")
    p.add_argument("--source", help="tiling run directory (default: embed.source); omit to tile the manifest on the fly")
    p.add_argument("--manifest", help="manifest URI when there is no source")
    p.add_argument("--out", help="run directory (default: <output>/embeddings)")
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    _common(p)
    p.set_defaults(func=_embed)

    p = sub.add_parser("encoders", help="list the registered tile encoders")
    _common(p)
    p.set_defaults(func=_encoders)

    p = sub.add_parser("pretrain", help="DINO/SLPD pretraining on Ray Train: region encoder (regions-mode "
                                        "embedding run) or patch encoder (tiling run with pixels)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="regions-mode embedding run: pretrain the region encoder (level=region)")
    src.add_argument("--tiles", help="tiling run with pixels: pretrain the patch encoder (sets pretrain.level=patch)")
    p.add_argument("--out", help="output directory: checkpoints in <out>/pretrain, encoder in <out>/encoder "
                                 "(default: <output>/pretrain); rerun to resume")
    _common(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("train-mil", help="MIL slide classification (mean/max pooling, ABMIL, WENO) on tile "
                                         "embeddings: k-fold by slide on Ray Train, metrics and heatmaps")
    p.add_argument("--method", choices=["meanpool", "maxpool", "abmil", "weno"], help="default: mil.method (weno)")
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--labels", help="slide labels: manifest, CSV or Parquet with slide_id and mil.label_column "
                                    "(default: <output>/manifest.parquet)")
    p.add_argument("--out", help="results directory (default: <output>/mil-<method>); rerun to resume")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    _common(p)
    p.set_defaults(func=_train_mil)

    p = sub.add_parser("gigassl", help="Giga-SSL slide-level self-supervised learning (SparseConvMIL + SimCLR)")
    gsub = p.add_subparsers(dest="gigassl_command", required=True)
    t = gsub.add_parser("train", help="train the slide encoder on augmented tile embeddings "
                                      "(`wsiscale embed --set embed.augmentations=25`) on Ray Train")
    t.add_argument("--embeddings", help="augmented tiles-mode embedding run (default: <output>/embeddings)")
    t.add_argument("--out", help="model directory (default: <output>/gigassl); rerun to resume")
    _common(t)
    t.set_defaults(func=_gigassl_train)
    e = gsub.add_parser("embed", help="one vector per slide (Parquet) from a trained Giga-SSL model")
    e.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    e.add_argument("--model", help="`gigassl train` output directory (default: <output>/gigassl)")
    e.add_argument("--out", help="output directory (default: <model>/vectors)")
    e.add_argument("--json", action="store_true", help="also print the summary as JSON")
    _common(e)
    e.set_defaults(func=_gigassl_embed)

    p = sub.add_parser("train-five", help="FiVE: train slide features against report texts (TFS module, "
                                          "offline text encoder) on Ray Train")
    p.add_argument("--embeddings", help="tiles-mode embedding run (default: <output>/embeddings)")
    p.add_argument("--manifest", help="manifest with slide_id, five.report_column and five.label_column "
                                      "(default: <output>/manifest.parquet)")
    p.add_argument("--out", help="model directory (default: <output>/five); rerun to resume")
    _common(p)
    p.set_defaults(func=_train_five)

    p = sub.add_parser("eval", help="evaluate slide-level representations")
    esub = p.add_subparsers(dest="eval_command", required=True)
    lp = esub.add_parser("linear-probe", help="logistic-regression probe of slide vectors (or mean-pooled tile "
                                              "embeddings): repeated k-fold and few-label draws (Giga-SSL)")
    linear_probe_arguments(lp)
    _common(lp)
    lp.set_defaults(func=_eval_linear_probe)

    fv = esub.add_parser("five", help="FiVE zero-shot (class descriptions) and few-shot (k labelled slides per "
                                      "class, against a linear probe on mean-pooled tiles)")
    fv.add_argument("--model", help="`train-five` output directory (default: <output>/five)")
    fv.add_argument("--embeddings", help="tiles-mode embedding run of the evaluation slides "
                                         "(default: <output>/embeddings)")
    fv.add_argument("--manifest", help="manifest with slide_id and five.label_column (default: "
                                       "<output>/manifest.parquet)")
    fv.add_argument("--shots", help="comma-separated k values (default: five.shots)")
    fv.add_argument("--out", help="where five_eval.json goes (default: the model directory)")
    fv.add_argument("--json", action="store_true", help="also print the results as JSON")
    _common(fv)
    fv.set_defaults(func=_eval_five)

    p = sub.add_parser("cluster", help="k-means over an embedding run on the FAISS actor pool")
    p.add_argument("--embeddings", required=True, help="embedding run directory (tiles mode)")
    p.add_argument("--out", help="output directory (default: <output>/clusters)")
    p.add_argument("--k", type=int, help="clusters (default: index.kmeans_k)")
    p.add_argument("--spherical", action="store_true", help="cosine k-means on normalised vectors")
    _common(p)
    p.set_defaults(func=_cluster)

    p = sub.add_parser("index", help="slide-level index: per-slide prototypes of an embedding run")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="compute M prototypes per slide (SLPD) from an embedding run")
    b.add_argument("--embeddings", required=True, help="embedding run directory")
    b.add_argument("--out", help="index directory (default: <output>/slide-index)")
    b.add_argument("--m", type=int, help="prototypes per slide (default: index.prototypes_per_slide)")
    b.add_argument("--min-vectors", type=int, help="leave out slides with fewer embeddings (default: index.min_regions_per_slide)")
    _common(b)
    b.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="also write neighbours.parquet: every slide's K nearest slides")
    b.set_defaults(func=_index_build)

    p = sub.add_parser("report", help="an HTML page of a pipeline run: throughput, failures, loss curves, slide "
                                      "thumbnails with tissue masks and prototype maps, retrieval examples, heatmaps")
    p.add_argument("run", help="the run directory (jobs/pipeline.py's output; any URI)")
    p.add_argument("--out", help="where the page goes (default: <run>/report.html)")
    p.add_argument("--slides", type=int, default=6, help="slides in the gallery (default 6)")
    p.add_argument("--queries", type=int, default=4, help="retrieval examples (default 4)")
    p.add_argument("--k", type=int, default=4, help="neighbours shown per retrieval example (default 4)")
    _common(p)
    p.set_defaults(func=_report)

    p = sub.add_parser("retrieve", help="the slides most similar to a slide (optimal prototype matching)")
    p.add_argument("--slide", required=True, help="query slide id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index", help="index directory (default: <output>/slide-index)")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=_retrieve)

    p = sub.add_parser("demo", help="end-to-end demo on a generated cohort with a local Ray")
    p.add_argument("--out", default="wsiscale-demo", help="output directory (default: ./wsiscale-demo)")
    p.add_argument("--n-slides", type=int, default=None)
    _common(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("config", help="print the resolved configuration as YAML")
    _common(p)
    p.set_defaults(func=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from wsiscale.models.errors import EncoderError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        console.print(f"[bold red]config error:[/bold red] {exc}", markup=True, highlight=False)
        return 2
    except (EncoderError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
