"""The ``wsiscale`` command line: whole-slide image learning at archive scale, on Ray.

Every command takes ``--config FILE.yaml`` and any number of ``--set section.key=value``
overrides (the resolved config is saved next to every output), prints its result on stdout
(a table, or one JSON document with ``--json``) and logs and progress on stderr. Exit codes:
0 done, 1 incomplete (slides pending or an interrupted run; with ``--strict`` also failed
slides), 2 bad input (one line on stderr naming what and the fix).
"""

from __future__ import annotations

import argparse
import sys

from wsiscale.commands import Command
from wsiscale.commands.evaluation import CONFIG, PROBE, REPORT
from wsiscale.commands.index import CLUSTER, INDEX, RETRIEVE
from wsiscale.commands.ingest import EMBED, ENCODERS, TILE
from wsiscale.commands.runner import add_common, execute
from wsiscale.commands.slides import INFO, MANIFEST, SYNTH
from wsiscale.commands.training import FIVE_EVAL, FIVE_TRAIN, GIGASSL_EMBED, GIGASSL_TRAIN, MIL, PRETRAIN
from wsiscale.demo import DEMO
from wsiscale.pipeline import PIPELINE

#: The commands, in ``wsiscale --help`` order.
CLI_COMMANDS: tuple[Command, ...] = (INFO, SYNTH, MANIFEST, TILE, EMBED, ENCODERS, CLUSTER, INDEX, RETRIEVE, PRETRAIN,
                                     MIL, GIGASSL_TRAIN, GIGASSL_EMBED, FIVE_TRAIN, FIVE_EVAL, PROBE, REPORT, PIPELINE,
                                     DEMO, CONFIG)

EPILOG = """\
stages (each also a `ray job submit` entrypoint in jobs/, and a pipeline stage):
  wsiscale manifest s3://bucket/slides/ --labels labels.csv     list slides (+ labels)
  wsiscale tile / embed                                          tissue tiles -> embeddings (resumable)
  wsiscale pretrain / train-mil / gigassl / train-five           DINO+SLPD, WENO, Giga-SSL, FiVE on Ray Train
  wsiscale cluster / index build / retrieve                      FAISS k-means, slide prototypes, retrieval
  wsiscale pipeline, report, demo                                the chain, its HTML report, a local demo
docs: docs/quickstart.md; exit codes: 0 done, 1 incomplete, 2 bad input
"""


#: Help of the command groups (``wsiscale eval ...``).
GROUPS = {"eval": "evaluate slide-level representations (linear probe, FiVE zero-/few-shot)",
          "gigassl": "Giga-SSL slide-level self-supervised learning (SparseConvMIL + SimCLR)",
          "index": "slide-level index: per-slide prototypes of an embedding run"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsiscale")
    except PackageNotFoundError:  # a source tree without an install
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """``wsiscale <words> [options]`` for every command of :data:`CLI_COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="wsiscale", description="Self-supervised and weakly supervised learning on whole-slide images at "
                                     "archive scale, on Ray: tile, embed, pretrain, cluster, index and train.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wsiscale {_version()}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in CLI_COMMANDS:
        sub = top
        for depth, word in enumerate(command.words[:-1]):
            key = " ".join(command.words[: depth + 1])
            if key not in groups:
                group = sub.add_parser(word, help=GROUPS.get(key, f"{key} commands"))
                groups[key] = group.add_subparsers(dest=f"{key.replace(' ', '_')}_command", required=True,
                                                   metavar="COMMAND")
            sub = groups[key]
        p = sub.add_parser(command.words[-1], help=command.help, description=command.help)
        command.arguments(p)
        add_common(p, command)
        p.set_defaults(command_object=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return execute(args.command_object, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
