"""End-to-end demo on the embedded default: local Ray, file:// storage, generated slides.

Stages so far: generate a synthetic cohort; summarise every slide on Ray
workers (dimensions, levels, mpp, tissue fraction, planned tiles and SLPD
regions); tile the cohort with the Ray Data ingest pipeline into JPEG tile
shards (``<out>/tiles``); embed the tiles with ``embed.encoder`` on an
encoder actor pool (``<out>/embeddings``; no checkpoints are downloaded, so
unless ``embed.weights`` points at one the demo uses a seeded random
initialisation and says so); k-means of every tile embedding on the FAISS
actor pool (``<out>/clusters``) and per-slide prototypes with every slide's
nearest slide (``<out>/slide-index``); DINO pretraining of a small patch
ViT on the tiles with Ray Train, a held-out linear probe and kNN on the
cohort's labels, and the exported encoder (``<out>/pretrain``; demo-sized:
one epoch of timm's test ViT on 64 px views - ``pretrain.*`` overrides it).
The slide-level methods will extend this same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from wsiscale.commands.command import Command
from wsiscale.commands.ingest import show_embed, show_tile
from wsiscale.commands.training import (
    show_five_eval,
    show_five_train,
    show_gigassl_embed,
    show_gigassl_train,
    show_mil,
    show_pretrain,
)
from wsiscale.config import CONFIG_FILENAME, WsiscaleConfig
from wsiscale.progress import console, progress_bar
from wsiscale.runs.config_file import save_config
from wsiscale.runtime import start_ray

log = logging.getLogger(__name__)


def run_demo(cfg: WsiscaleConfig, out: Path, n_slides: int | None = None) -> dict:
    import ray

    from wsiscale.summary import summarize_slide

    out = out.resolve()
    if n_slides is not None:
        cfg.synth.n_slides = n_slides
    t0 = time.perf_counter()
    console.rule("[bold]wsiscale demo")
    console.print(f"1/9 generating {cfg.synth.n_slides} synthetic slides ({cfg.synth.width}x{cfg.synth.height}) in {out / 'slides'}")
    from wsiscale.synth.cohort import build_cohort  # here, not at import: `wsiscale --help` needs none of it

    manifest = build_cohort(cfg.synth, out / "slides")
    table = pq.read_table(manifest).to_pylist()
    t_synth = time.perf_counter() - t0

    console.print("2/9 summarising slides on Ray (open, tissue detection, tile planning)")
    started = start_ray(cfg)
    try:
        task = ray.remote(num_cpus=1)(summarize_slide)
        refs = [task.remote(r["uri"], cfg, None, r["slide_id"]) for r in table]
        rows = []
        with progress_bar() as bar:
            job = bar.add_task("slides", total=len(refs))
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                rows.extend(ray.get(done))
                bar.advance(job)
        console.print(f"3/9 tiling on a Ray Data CPU actor pool -> {out / 'tiles'}")
        from wsiscale.data.embedding import run_embedding
        from wsiscale.data.tiling import run_tiling

        tiling = run_tiling(cfg, manifest=str(manifest), out=str(out / "tiles"))
        if cfg.embed.weights is None:
            cfg.embed.weights = "random"
            console.print(f"   (no embed.weights given: {cfg.embed.encoder} with a seeded random initialisation; "
                          "point embed.weights at a local checkpoint for real features)")
        if "augmentations" not in cfg.embed.model_fields_set:
            cfg.embed.augmentations = DEMO_AUGMENTATIONS  # Giga-SSL (stage 8) trains on augmented embeddings
        console.print(f"4/9 embedding tiles with {cfg.embed.encoder} on an encoder actor pool (and under "
                      f"{cfg.embed.augmentations} slide-shared augmentations) -> {out / 'embeddings'}")
        embedding = run_embedding(cfg, source=str(out / "tiles"), out=str(out / "embeddings"))
        console.print(f"5/9 k-means and slide retrieval on the FAISS actor pool -> {out / 'clusters'}, "
                      f"{out / 'slide-index'}")
        index = _index_stage(cfg, out)
        console.print(f"6/9 DINO pretraining of a small ViT on the tiles with Ray Train -> {out / 'pretrain'}")
        pretrain = _pretrain_stage(cfg, out, manifest)
        console.print(f"7/9 WENO (MIL) tumour-vs-normal classification with heatmaps on Ray Train -> {out / 'mil-weno'}")
        mil = _mil_stage(cfg, out, manifest)
        console.print(f"8/9 Giga-SSL slide representations (SparseConvMIL + SimCLR) on Ray Train -> {out / 'gigassl'}")
        gigassl = _gigassl_stage(cfg, out)
        console.print(f"9/9 FiVE: slide features matched with the slides' reports on Ray Train, zero-/few-shot "
                      f"evaluation -> {out / 'five'}")
        five = _five_stage(cfg, out, manifest)
    finally:
        if started:
            ray.shutdown()
    labels = {r["slide_id"]: r["label_name"] for r in table}
    rows.sort(key=lambda r: r["slide_id"])
    bad_summaries = sum(1 for r in rows if r["error"])
    bad_tiling = tiling["slides"]["failed"] + tiling["slides"]["pending"]
    bad_tiling += embedding["slides"]["failed"] + embedding["slides"]["pending"]
    doc = {"slides": rows, "tiling": tiling, "embedding": embedding, "index": index, "pretrain": pretrain,
           "mil": None if mil is None else {k: mil.get(k) for k in ("method", "summary", "slides", "heatmaps")},
           "gigassl": None if gigassl is None else {
               "final_loss": gigassl["train"]["final_loss"], "steps": gigassl["train"]["steps"],
               **{k: gigassl["embed"][k] for k in ("vectors", "bytes_per_slide", "compression_ratio")}},
           "five": None if five is None else {"final_loss": five["train"]["history"][-1]["loss"],
                                              "zero_shot_accuracy": five["eval"]["zero_shot"]["accuracy"]},
           "failed": bad_summaries + bad_tiling, "labels": labels,
           "seconds": {"synth": t_synth, "total": time.perf_counter() - t0}}
    summary = out / "summary.json"
    summary.write_text(json.dumps(doc, indent=1))
    doc["results"] = {"mil": mil, "gigassl": gigassl, "five": five, "tiling_config": cfg.tiling.model_dump(),
                      "region_size": cfg.embed.region_size}  # for show_demo, not in summary.json
    save_config(cfg, str(out))
    console.print(
        f"done in {time.perf_counter() - t0:.1f}s: {len(rows) - bad_summaries} slides summarised, "
        f"{tiling['slides']['done']} tiled ({tiling['tiles']['total']:,} tiles), {embedding['slides']['done']} "
        f"embedded, {bad_summaries + bad_tiling} failed; summary in {summary}, config in {out / CONFIG_FILENAME}",
        highlight=False)
    return doc


def _index_stage(cfg: WsiscaleConfig, out: Path) -> dict:
    """k-means of every tile embedding on the FAISS pool, per-slide prototypes, every slide's nearest slide."""
    import ray

    from wsiscale.index.stages import run_cluster, run_slide_index
    from wsiscale.runs.shards import read_parquet

    emb = str(out / "embeddings")
    free = ray.available_resources().get("CPU", 1.0)
    shards = max(1, min(cfg.index.shards, int(free) or 1))
    clusters = run_cluster(cfg, emb, str(out / "clusters"), shards=shards,
                           num_cpus=min(cfg.index.cpus_per_actor, free / shards))
    meta = run_slide_index(cfg, emb, str(out / "slide-index"), neighbours=1)
    nb = read_parquet(meta["neighbours"], cfg.storage).to_pylist()
    return {"k": clusters["k"], "vectors": clusters["vectors"], "inertia": clusters["inertia"],
            "shards": clusters["shards"], "slides_indexed": meta["slides"], "m": meta["m"],
            "skipped": meta["skipped"],
            "nearest": {r["slide_id"]: [r["neighbours"][0], r["scores"][0]] for r in nb if r["neighbours"]}}


#: Demo-sized DINO on tiles (CPU minutes): any ``pretrain.*`` the user sets wins over these.
DEMO_PRETRAIN = {"level": "patch", "method": "dino", "patch_encoder": "timm:test_vit", "global_image_size": 64,
                 "local_image_size": 32, "local_crops": 4, "out_dim": 4096, "head_hidden_dim": 512,
                 "batch_size": 64, "epochs": 1, "lr_warmup_epochs": 0, "eval_every": 1, "eval_holdout": 0.5,
                 "num_workers": (1, 1), "cpus_per_worker": 1.0, "cluster_cpus": 0.5, "log_every": 5}


def _pretrain_stage(cfg: WsiscaleConfig, out: Path, manifest: Path) -> dict:
    """DINO on the demo's tiles (1 worker), with the held-out probe on the cohort's labels; exports the encoder."""
    from wsiscale.pretrain.evaluate import labels_allow_holdout
    from wsiscale.pretrain.run import run_pretraining

    user = cfg.pretrain.model_fields_set
    for key, value in DEMO_PRETRAIN.items():
        if key not in user:
            setattr(cfg.pretrain, key, value)
    if cfg.pretrain.eval_labels is None and labels_allow_holdout(str(manifest)):
        cfg.pretrain.eval_labels = str(manifest)  # a held-out probe needs 2 slides of every class
    summary = run_pretraining(cfg, str(out / "tiles"), str(out / "pretrain"))
    return {k: summary[k] for k in ("items", "unit", "slides", "level", "metrics", "encoder")}


#: Demo-sized WENO (CPU seconds): any ``mil.*`` the user sets wins over these.
DEMO_MIL = {"method": "weno", "projection_dim": 64, "hidden_dim": 64, "attention_dim": 32, "student_hidden_dim": 128,
            "optimizer": "adam", "lr": 1e-3, "epochs": 12, "hard_mining_warmup_epochs": 4, "patience": 12, "folds": 2,
            "heatmaps": 1, "num_workers": (1, 1), "cpus_per_worker": 1.0}


def _mil_stage(cfg: WsiscaleConfig, out: Path, manifest: Path) -> dict | None:
    """WENO on the demo's tile embeddings: tumour (labels 1, 2) vs normal (0), 2-fold, with heatmaps."""
    from wsiscale.mil.run import run_mil

    user = cfg.mil.model_fields_set
    for key, value in DEMO_MIL.items():
        if key not in user:
            setattr(cfg.mil, key, value)
    if "positive_labels" not in user:
        cfg.mil.positive_labels = ["1", "2"]
    labels = pq.read_table(manifest, columns=["label"]).column("label").to_pylist()
    positive = sum(str(v) in cfg.mil.positive_labels for v in labels)
    if min(positive, len(labels) - positive) < cfg.mil.folds:
        console.print(f"   (skipped: {cfg.mil.folds}-fold MIL needs {cfg.mil.folds} normal and {cfg.mil.folds} tumour "
                      "slides; generate more with --slides)")
        return None
    return run_mil(cfg, str(out / "embeddings"), str(manifest), str(out / "mil-weno"))


#: Demo-sized Giga-SSL: augmentations per tile in stage 4, and ``gigassl.*`` defaults (user settings win).
DEMO_AUGMENTATIONS = 2
DEMO_GIGASSL = {"embed_dim": 64, "projection_dim": 32, "tiles_per_view": 8, "epochs": 10, "warmup_epochs": 1,
                "checkpoint_every": 5, "embed_views": 8, "num_workers": (1, 1), "cpus_per_worker": 1.0}


def _gigassl_stage(cfg: WsiscaleConfig, out: Path) -> dict | None:
    """Giga-SSL on the demo's augmented tile embeddings (every slide one batch), then one vector per slide."""
    from wsiscale.config import ConfigError
    from wsiscale.gigassl.data import embedding_entries
    from wsiscale.gigassl.run import embed_gigassl, train_gigassl

    user = cfg.gigassl.model_fields_set
    for key, value in DEMO_GIGASSL.items():
        if key not in user:
            setattr(cfg.gigassl, key, value)
    try:
        n = len(embedding_entries(str(out / "embeddings"), cfg.storage))
    except ConfigError:  # no slide with tiles
        n = 0
    if "batch_size" not in user:
        cfg.gigassl.batch_size = n
    if n < 2 or not cfg.embed.augmentations:
        console.print("   (skipped: Giga-SSL needs 2 slides with tiles and embed.augmentations > 0)")
        return None
    train = train_gigassl(cfg, str(out / "embeddings"), str(out / "gigassl"))
    embed = embed_gigassl(cfg, str(out / "embeddings"), str(out / "gigassl"), str(out / "gigassl" / "vectors"))
    return {"train": train, "embed": embed}


#: Demo-sized FiVE (CPU seconds): any ``five.*`` the user sets wins over these.
DEMO_FIVE = {"dim": 64, "prompt_tokens": 4, "segments": 32, "eval_tiles": 256, "epochs": 8, "warmup_epochs": 1,
             "checkpoint_every": 4, "lr": 1e-3, "num_workers": (1, 1), "cpus_per_worker": 1.0, "shots": [1],
             "draws": 2, "finetune_epochs": 10}


def _five_stage(cfg: WsiscaleConfig, out: Path, manifest: Path) -> dict | None:
    """FiVE on the demo's tile embeddings and generated reports; zero-shot and 1-shot on the same slides.

    With a handful of slides this shows the stage working, not generalisation (tests/test_five_train.py
    evaluates on held-out cohorts).
    """
    from wsiscale.five.run import eval_five, train_five

    user = set(cfg.five.model_fields_set)  # a copy: the defaults below add to the live set
    for key, value in DEMO_FIVE.items():
        if key not in user:
            setattr(cfg.five, key, value)
    labels = pq.read_table(manifest, columns=[cfg.five.label_column]).column(0).to_pylist()
    if len(set(labels)) < 2:
        console.print("   (skipped: FiVE evaluation needs slides of two classes)")
        return None
    if "batch_size" not in user:
        cfg.five.batch_size = len(labels)
    smallest = min(labels.count(v) for v in set(labels))
    if "shots" not in user and smallest < 2:
        cfg.five.shots = []
        console.print("   (few-shot skipped: 1-shot needs 2 slides of every class; zero-shot only)")
    train = train_five(cfg, str(out / "embeddings"), str(manifest), str(out / "five"))
    return {"train": train, "eval": eval_five(cfg, str(out / "five"), str(out / "embeddings"), str(manifest))}


def _print_index_stage(index: dict, labels: dict[str, str], out: Console) -> None:
    actors = f"{index['shards']} FAISS pool actor" + ("s" if index["shards"] != 1 else "")
    out.print(f"k-means: {index['vectors']:,} tile embeddings -> {index['k']} clusters on {actors} "
                  f"(inertia {index['inertia']:.4g}); {index['slides_indexed']} slides x "
                  f"{index['m']} prototypes", highlight=False)
    t = Table(title="nearest slide of each slide (optimal prototype matching)")
    for col in ("slide", "label", "nearest slide", "its label", "score"):
        t.add_column(col, justify="right" if col == "score" else "left")
    for sid, (other, score) in sorted(index["nearest"].items()):
        t.add_row(sid, labels.get(sid, ""), other, labels.get(other, ""), f"{score:.3f}")
    out.print(t)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="wsiscale-demo", help="output directory (default: ./wsiscale-demo)")
    p.add_argument("--n-slides", type=int, default=None)


def run_demo_command(cfg: WsiscaleConfig, out: str = "wsiscale-demo", n_slides: int | None = None) -> dict:
    """The end-to-end demo on a generated cohort with a local Ray (:func:`wsiscale.demo.run_demo`)."""
    return run_demo(cfg, Path(out), n_slides=n_slides)


def show_demo(doc: dict[str, Any], out: Console) -> None:
    """The demo's results: the slide table, then each stage's summary (the stage commands' own printers)."""
    rows, labels, res = doc["slides"], doc["labels"], doc["results"]
    tiling = res["tiling_config"]
    t = Table(title=f"{len(rows)} slides - tiles {tiling['tile_size']}px and regions {res['region_size']}px at "
                    f"{tiling['mpp']} um/px")
    for col in ("slide", "label", "size", "levels", "mpp", "tissue", "tiles", "regions", "reader"):
        t.add_column(col, justify="right" if col in {"mpp", "tissue", "tiles", "regions"} else "left")
    for r in rows:
        if r["error"]:
            t.add_row(r["slide_id"], labels.get(r["slide_id"], ""), "[red]" + r["error"] + "[/red]", *[""] * 6)
            continue
        t.add_row(r["slide_id"], labels.get(r["slide_id"], ""), f"{r['width']}x{r['height']}",
                  " / ".join(f"{w}" for w, _ in r["levels"]), f"{r['mpp']:.3f}", f"{r['tissue_fraction']:.2f}",
                  str(r["tiles"]), str(r["regions"]), r["backend"])
    out.print(t)
    show_tile(doc["tiling"], out)
    show_embed(doc["embedding"], out)
    _print_index_stage(doc["index"], labels, out)
    show_pretrain(doc["pretrain"], out)
    if res["mil"] is not None:
        show_mil(res["mil"], out)
    if res["gigassl"] is not None:
        show_gigassl_train(res["gigassl"]["train"], out)
        show_gigassl_embed(res["gigassl"]["embed"], out)
    if res["five"] is not None:
        show_five_train(res["five"]["train"], out)
        show_five_eval(res["five"]["eval"], out)


def _demo_json(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "results"}


def _demo_exit(doc: dict[str, Any], strict: bool) -> int:
    return 0 if doc.get("failed", 0) == 0 else 1


DEMO = Command(("demo",), "end-to-end demo on a generated cohort with a local Ray", _demo_arguments, run_demo_command,
               show_demo, to_json=_demo_json, exit_code=_demo_exit)
