"""Ingest commands: ``tile`` (manifest -> tile shards on CPU actors) and ``embed`` (tiles -> embeddings).

Both are resumable batch runs over slides: their summaries count slides done, already done, failed
and pending, and their exit code is :func:`~wsiscale.commands.command.slides_exit_code`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wsiscale.commands.command import Command, slides_exit_code
from wsiscale.commands.slides import manifest_arguments, run_manifest, show_manifest
from wsiscale.config import WsiscaleConfig


def _slides_row(s: dict[str, Any]) -> str:
    """The ``slides`` line shared by the tiling and embedding summaries."""
    return (f"{s['done']} / {s['total']} done ({s['done_this_run']} this run, "
            f"{s['skipped_already_done']} already done), {s['failed']} failed, {s['pending']} pending")


def _tile_arguments(p: argparse.ArgumentParser) -> None:
    manifest_arguments(p, prefix_required=False)
    p.add_argument("--manifest", help="manifest URI (written with --prefix; default: ingest.manifest or "
                                      "<output>/manifest.parquet)")
    p.add_argument("--out", help="run directory (default: <output>/tiles)")
    p.add_argument("--pixels", choices=["none", "jpeg", "raw"], help="override ingest.pixels")


def run_tile(cfg: WsiscaleConfig, manifest: str | None = None, out: str | None = None, pixels: str | None = None,
             prefix: str | None = None, pattern: str | None = None, labels: str | None = None,
             label_key: str | None = None) -> dict[str, Any]:
    """Tile every slide of ``manifest`` (after listing ``prefix`` into it, if given) into ``out``."""
    from wsiscale.data.tiling import run_tiling
    from wsiscale.runs.layout import RunLayout

    if pixels:
        cfg.ingest.pixels = pixels
    listed = None
    if prefix:
        manifest = manifest or RunLayout(cfg.output).manifest
        listed = run_manifest(cfg, prefix, manifest, pattern, labels, label_key)
    summary = run_tiling(cfg, manifest=manifest, out=out)
    return summary | ({"listed": listed} if listed else {})


def show_tile(summary: dict[str, Any], out: Console) -> None:
    """A tiling run's summary (:func:`wsiscale.data.tiling.run_tiling`): slides, tiles, throughput, failures."""
    if summary.get("listed"):
        show_manifest(summary["listed"], out)
    s, t = summary["slides"], summary["tiles"]
    table = Table(title=f"tiling run {summary['run']}", show_header=False)
    table.add_row("slides", _slides_row(s))
    table.add_row("tiles", f"{t['total']:,} ({t['this_run']:,} this run, pixels: {summary['pixels']})")
    table.add_row("throughput", f"{summary['tiles_per_s']:,.0f} tiles/s, {summary['slides_per_s']:.2f} slides/s "
                  f"over {summary['seconds']:.1f} s")
    out.print(table)
    _show_failures(summary, out)


def _show_failures(summary: dict[str, Any], out: Console) -> None:
    if summary["failures"]:
        ft = Table(title=f"{summary['slides']['failed']} failed slides (all in failures.parquet)")
        for col in ("slide", "error", "message"):
            ft.add_column(col, overflow="fold")
        for f in summary["failures"][:20]:
            ft.add_row(f["slide_id"], f["error_type"], f["message"])
        out.print(ft)


TILE = Command(("tile",), "tile every slide of a manifest on a Ray CPU actor pool (resumable)", _tile_arguments,
               run_tile, show_tile, exit_code=slides_exit_code)


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="tiling run directory (default: embed.source); omit to tile the manifest on the fly")
    p.add_argument("--manifest", help="manifest URI when there is no source (default: embed.manifest, "
                                      "ingest.manifest or <output>/manifest.parquet)")
    p.add_argument("--out", help="run directory (default: <output>/embeddings, or <output>/regions with "
                                 "embed.mode=regions)")


def check_encoder(cfg: WsiscaleConfig) -> None:
    """Fail in seconds, before Ray starts: unknown encoder, foundation model without weights, missing local file."""
    from wsiscale.models.encoders import EncoderWeightsError, exported_encoder, get_spec

    spec = get_spec(cfg.embed.encoder)  # EncoderError with the closest registered name
    weights = cfg.embed.weights
    exported = exported_encoder(cfg.embed.encoder) is not None  # a pretrain run's encoder/: its own weights
    if weights is None and spec.needs_weights and not exported:
        raise EncoderWeightsError(
            f"encoder {spec.name!r} needs its pretrained weights: set embed.weights to the local checkpoint "
            f"({spec.reference or 'see the model card'}); nothing is downloaded at run time")
    # With a local Ray the encoder actors run on this machine, so the file must be here too. On a
    # cluster the weights live on the GPU nodes, not necessarily on the driver's: the actors check.
    if cfg.ray.address is None and weights not in (None, "random") and not Path(weights).exists():
        raise EncoderWeightsError(f"weights file {weights} does not exist (weights are never downloaded; "
                                  "copy the checkpoint here)")


def run_embed(cfg: WsiscaleConfig, source: str | None = None, manifest: str | None = None,
              out: str | None = None) -> dict[str, Any]:
    """Embed the tiles of ``source`` (a tiling run), or of ``manifest`` tiled on the fly, into ``out``."""
    from wsiscale.data.embedding import run_embedding

    check_encoder(cfg)
    return run_embedding(cfg, source=source, manifest=manifest, out=out)


def show_embed(summary: dict[str, Any], out: Console) -> None:
    """An embedding run's summary (:func:`wsiscale.data.embedding.run_embedding`)."""
    s, t = summary["slides"], summary["tiles"]
    table = Table(title=f"embedding run {summary['run']} ({summary['encoder']}, {summary['mode']})", show_header=False)
    table.add_row("slides", _slides_row(s))
    table.add_row("tiles", f"{t['total']:,} ({t['this_run']:,} this run)")
    table.add_row("throughput", f"{summary['tiles_per_s']:,.1f} tiles/s over {summary['seconds']:.1f} s")
    out.print(table)
    _show_failures(summary, out)


EMBED = Command(("embed",), "embed tiles (from a tiling run, or tiling on the fly) on an encoder actor pool",
                _embed_arguments, run_embed, show_embed, exit_code=slides_exit_code)


def run_encoders(cfg: WsiscaleConfig) -> list[dict[str, Any]]:
    """The registered tile encoders (``timm:<architecture>`` works besides them)."""
    from wsiscale.models.encoders import list_encoders

    return [{"name": s.name, "dim": s.dim, "input_size": s.input_size, "mpp": s.mpp,
             "weights": "required" if s.needs_weights else "optional", "reference": s.reference}
            for s in list_encoders()]


def show_encoders(rows: list[dict[str, Any]], out: Console) -> None:
    t = Table(title="registered encoders (also: timm:<architecture>)")
    for col in ("name", "dim", "input", "mpp", "weights", "reference"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], str(r["dim"]), str(r["input_size"]), f"{r['mpp']:g}", r["weights"], r["reference"])
    out.print(t)


ENCODERS = Command(("encoders",), "list the registered tile encoders", lambda p: None, run_encoders, show_encoders)
