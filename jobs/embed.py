"""`ray job submit` entrypoint for the embedding stage: embed every slide of a tiling run (or a manifest).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/embed.py --config jobs/configs/embed.yaml

Input: ``--source`` (default ``embed.source``), the run directory of
``wsiscale tile`` / ``jobs/tile.py``: its completed slides' stored tiles are
decoded (``pixels: jpeg``/``raw``) or its coordinates re-read from the slides
(``pixels: none``). Without a source, the manifest (``--manifest``,
``embed.manifest``, ``ingest.manifest`` or ``<output>/manifest.parquet``) is
tiled on the fly. Output: ``--out`` (default ``<output>/embeddings``). The run
is resumable: submitting the same job again skips completed slides.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) the driver joins the running
cluster (``ray.address=auto``); run directly, it starts a local Ray like
``wsiscale embed``. Exit status: 0 when no slide is left pending and the run
was not interrupted (failed slides are listed in ``failures.parquet`` and do
not fail the job), 1 otherwise, 2 for a bad config, an unknown encoder,
missing or unusable weights, or a missing source or manifest.
"""

from __future__ import annotations

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/embed.py", "Embed every slide of a tiling run (or a manifest) on encoder actors.", "jobs/configs/embed.yaml", "embed.actors=[1,8]")
    p.add_argument("--source", help="tiling run directory (default: embed.source); omit both to tile the manifest "
                                    "on the fly")
    p.add_argument("--manifest", help="manifest URI when there is no source (default: embed.manifest, ingest.manifest "
                                      "or <output>/manifest.parquet)")
    p.add_argument("--out", help="run directory (default: <output>/embeddings)")
    p.add_argument("--json", action="store_true", help="also print the run summary as JSON")
    return p


def _encoder_error(exc: BaseException):
    """The EncoderError behind ``exc``, if any: raised here, or in an encoder actor's constructor.

    An actor whose constructor raised reaches the driver as a Ray ``ActorDiedError`` that
    keeps only the text of the original exception, so that text is parsed back.
    """
    import re

    from ray.exceptions import RayActorError

    from wsiscale.models import encoders

    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, encoders.EncoderError):  # a RayTaskError subclassing it: report the original exception
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, encoders.EncoderError) else e
        if isinstance(e, RayActorError) and e.actor_init_failed:
            found = list(re.finditer(r"wsiscale\.models\.(?:encoders|errors)\.(EncoderWeightsError|EncoderError): ", str(e)))
            if found:
                return getattr(encoders, found[-1].group(1))(str(e)[found[-1].end():].strip())
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None


def _preflight(cfg) -> None:
    """Fail in seconds, before Ray starts: unknown encoder, foundation model without weights, missing local file."""
    from wsiscale.models.encoders import EncoderWeightsError, get_spec

    spec = get_spec(cfg.embed.encoder)  # EncoderError with the closest registered name
    weights = cfg.embed.weights
    if weights is None and spec.needs_weights:
        raise EncoderWeightsError(
            f"encoder {spec.name!r} needs its pretrained weights: set embed.weights to the local checkpoint "
            f"({spec.reference or 'see the model card'}); nothing is downloaded at run time")
    # With a local Ray the encoder actors run on this machine, so the file must be here too. On a
    # cluster the weights live on the GPU nodes, not necessarily on the driver's: the actors check.
    if cfg.ray.address is None and weights not in (None, "random") and not Path(weights).exists():
        raise EncoderWeightsError(f"weights file {weights} does not exist (weights are never downloaded; "
                                  "copy the checkpoint here)")


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import job_config, print_embedding_summary
    from wsiscale.data.embedding import run_embedding
    from wsiscale.io.manifest import ManifestError
    from wsiscale.progress import console

    args = build_parser().parse_args(argv)
    cfg = job_config(args)
    if cfg is None:
        return 2

    try:
        _preflight(cfg)
        summary = run_embedding(cfg, source=args.source, manifest=args.manifest, out=args.out)
    except (ManifestError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    except Exception as exc:  # noqa: BLE001 - only encoder errors (maybe raised in an actor) are input errors
        err = _encoder_error(exc)
        if err is None:
            raise
        console.print(f"[bold red]encoder error:[/bold red] {type(err).__name__}: {err}", highlight=False)
        return 2
    print_embedding_summary(summary)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0 if summary["slides"]["pending"] == 0 and not summary["interrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
