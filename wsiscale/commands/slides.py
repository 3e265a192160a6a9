"""Commands on slides and manifests: ``info``, ``synth``, ``manifest``.

``info`` and ``manifest`` read slides where they are (``file://``, ``s3://``, ``gs://``); ``synth``
writes a generated cohort (pyramidal SVS slides, ground truth and a manifest).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wsiscale.commands.command import Command
from wsiscale.config import ConfigError, WsiscaleConfig


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="slide path or URI (file://, s3://, gs://)")
    p.add_argument("--backend", choices=["auto", "cucim", "openslide", "tiffslide"])
    p.add_argument("--mpp", type=float, help="override the slide's level-0 microns per pixel")


def run_info(cfg: WsiscaleConfig, uri: str, backend: str | None = None, mpp: float | None = None) -> dict[str, Any]:
    """One slide's metadata, tissue fraction and planned tiles and regions (:func:`wsiscale.summary.summarize_slide`)."""
    from wsiscale.summary import summarize_slide

    if backend:
        cfg.reader.backend = backend
    row = summarize_slide(uri, cfg, mpp=mpp)
    row["tiling"] = {"tile_size": cfg.tiling.tile_size, "mpp": cfg.tiling.mpp}
    return row


def _fmt_mpp(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "unknown"


def show_info(row: dict[str, Any], out: Console) -> None:
    if row["error"] and "width" not in row:
        return  # nothing was read: the error line (stderr) is the whole answer
    t = Table(title=row["uri"], show_header=False)
    t.add_row("backend", row["backend"])
    t.add_row("vendor", row["vendor"])
    t.add_row("dimensions", f"{row['width']} x {row['height']}")
    t.add_row("mpp (level 0)", _fmt_mpp(row["mpp"]) + (f"  ({row['mpp_source']})" if row["mpp_source"] else ""))
    for i, ((w, h), ds) in enumerate(zip(row["levels"], row["downsamples"])):
        lm = f", {row['mpp'] * ds:.3f} um/px" if row["mpp"] else ""
        t.add_row(f"level {i}", f"{w} x {h}  (downsample {ds:g}{lm})")
    if row.get("tissue_fraction") is not None:
        tiling = row["tiling"]
        t.add_row("tissue fraction", f"{row['tissue_fraction']:.3f}")
        t.add_row(f"tiles {tiling['tile_size']}px @ {tiling['mpp']} um/px",
                  f"{row['tiles']} (level {row['tile_level']}, read {row['tile_read_size']} px)")
        t.add_row(f"regions {row['region_size']}px @ {tiling['mpp']} um/px", str(row["regions"]))
    out.print(t)


def _info_exit(row: dict[str, Any], strict: bool) -> int:
    if row["error"]:
        from wsiscale.commands.output import EXIT_BAD_INPUT, print_error

        print_error(row["error"])
        return EXIT_BAD_INPUT
    return 0


INFO = Command(("info",), "print a slide's metadata, tissue fraction and planned tiles", _info_arguments, run_info,
               show_info, exit_code=_info_exit)


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory")
    p.add_argument("--n-slides", type=int)
    p.add_argument("--size", help="WIDTHxHEIGHT of level 0, e.g. 8192x8192")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="processes (default: all cores)")


def run_synth(cfg: WsiscaleConfig, out: str, n_slides: int | None = None, size: str | None = None,
              seed: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """A generated cohort in ``out``: SVS slides, ground truth and ``manifest.parquet``."""
    from wsiscale.runs.config_file import save_config
    from wsiscale.synth.cohort import build_cohort

    for key, value in (("n_slides", n_slides), ("seed", seed)):
        if value is not None:
            setattr(cfg.synth, key, value)
    if size:
        w, _, h = size.lower().partition("x")
        try:
            cfg.synth.width, cfg.synth.height = int(w), int(h or w)
        except ValueError:
            raise ConfigError(f"--size {size!r}: give WIDTHxHEIGHT in pixels, e.g. 8192x8192") from None
    manifest = build_cohort(cfg.synth, out, workers=workers)
    save_config(cfg, str(Path(out).resolve()))
    return {"slides": cfg.synth.n_slides, "manifest": str(manifest), "out": str(out)}


def show_synth(doc: dict[str, Any], out: Console) -> None:
    out.print(f"wrote {doc['slides']} slides and [bold]{doc['manifest']}[/bold]", highlight=False)


SYNTH = Command(("synth",), "write a synthetic cohort (SVS slides + ground truth + manifest)", _synth_arguments,
                run_synth, show_synth)


def manifest_arguments(p: argparse.ArgumentParser, prefix_required: bool = True) -> None:
    """The options of a slide listing (``wsiscale manifest``; ``jobs/tile.py --prefix``)."""
    if prefix_required:
        p.add_argument("prefix", help="e.g. s3://bucket/cohort/ or 's3://bucket/**/*.svs' or a local directory")
    else:
        p.add_argument("--prefix", help="list the slides under this prefix or glob first (s3://, gs://, file://, local)")
    p.add_argument("--pattern", help="extra glob relative to the prefix, e.g. 'TCGA-*/*.svs'")
    p.add_argument("--labels", help="CSV/Parquet of labels to join (by slide_id, uri or filename)")
    p.add_argument("--label-key", help="key column of the labels file")


def run_manifest(cfg: WsiscaleConfig, prefix: str, out: str | None = None, pattern: str | None = None,
                 labels: str | None = None, label_key: str | None = None) -> dict[str, Any]:
    """List the slides under ``prefix`` into a manifest Parquet (default ``<output>/manifest.parquet``)."""
    from wsiscale.io.manifest import build_manifest
    from wsiscale.io.uri import normalize_uri
    from wsiscale.runs.layout import RunLayout

    out = normalize_uri(out or RunLayout(cfg.output).manifest)
    table, stats = build_manifest(prefix, out=out, storage=cfg.storage, pattern=pattern, labels=labels,
                                  label_key=label_key)
    return {"prefix": prefix, "out": out, "labels": labels,
            "gib": sum(table.column("size_bytes").to_pylist()) / 2**30} | stats


def show_manifest(doc: dict[str, Any], out: Console) -> None:
    out.print(f"{doc['slides']} slides ({doc['gib']:.2f} GiB) listed under {doc['prefix']} -> "
              f"[bold]{doc['out']}[/bold]", highlight=False)
    if doc["labels"]:
        unmatched = doc["unmatched_labels"]
        out.print(f"{doc['labelled']} slides labelled from {doc['labels']}; {doc['n_unmatched_labels']} label rows "
                  "matched no slide" + (f" (e.g. {', '.join(map(str, unmatched[:5]))})" if unmatched else ""),
                  highlight=False)


def _manifest_arguments(p: argparse.ArgumentParser) -> None:
    manifest_arguments(p)
    p.add_argument("--out", help="manifest URI (default: <output>/manifest.parquet)")


MANIFEST = Command(("manifest",), "list the slides under a prefix (s3://, gs://, file://, globs) into a manifest "
                   "Parquet", _manifest_arguments, run_manifest, show_manifest)
