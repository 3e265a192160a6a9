"""What a stage's front door is: :class:`Command`, written once per stage and called by every entry point.

``wsiscale <words>`` (:mod:`wsiscale.cli`), ``jobs/<stage>.py`` (``ray job submit``) and the pipeline
(:mod:`wsiscale.pipeline`) all call a command's ``run(cfg, **inputs)``; only how the config is
loaded (a job joins the cluster it was submitted to) and how the inputs are named differ.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from rich.console import Console


def _as_is(result: Any) -> Any:
    return result


def _always_ok(result: Any, strict: bool) -> int:
    return 0


@dataclass(frozen=True)
class Command:
    """One stage's front door.

    Attributes:
        words: the CLI words (``("tile",)``, ``("gigassl", "train")``).
        help: one line for ``--help``.
        arguments: adds the stage's options to a parser (``--config``/``--set``/``--json`` are common).
        run: ``run(cfg, **inputs) -> result``; ``inputs`` are its keyword parameters, taken from the
            parsed options of the same names.
        show: prints the result for a person on the results console (stdout).
        to_json: the result as ``--json`` prints it (default: the result itself).
        exit_code: ``exit_code(result, strict)``: 0 done, 1 incomplete (slides pending, interrupted,
            or with ``--strict`` failed slides); bad input raises instead (exit 2).
    """

    words: tuple[str, ...]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[..., Any]
    show: Callable[[Any, Console], None]
    to_json: Callable[[Any], Any] = _as_is
    exit_code: Callable[[Any, bool], int] = _always_ok

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def inputs(self, args: argparse.Namespace) -> dict[str, Any]:
        """The keyword inputs of :attr:`run` found in parsed options ``args``."""
        params = list(inspect.signature(self.run).parameters)[1:]
        return {k: getattr(args, k) for k in params if hasattr(args, k)}


def slides_exit_code(summary: dict[str, Any], strict: bool) -> int:
    """A batch run over slides: 1 when slides are pending or the run was interrupted (or, with ``strict``,
    when any slide failed), else 0. Failed slides are listed in the run's ``failures.parquet``."""
    s = summary["slides"]
    incomplete = s["pending"] > 0 or bool(summary.get("interrupted"))
    return 1 if incomplete or (strict and s["failed"] > 0) else 0


def chained(*parts: tuple[str, Command]) -> tuple[Callable[[Any, Console], None], Callable[[Any], Any]]:
    """``(show, to_json)`` of a job that runs several commands in turn and keeps each result under its key
    (``jobs/gigassl.py``: ``train`` then ``embed``); keys a run skipped are left out."""

    def show(doc: dict[str, Any], out: Console) -> None:
        for key, command in parts:
            if key in doc:
                command.show(doc[key], out)

    def to_json(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k not in dict(parts)} | {
            key: command.to_json(doc[key]) for key, command in parts if key in doc}

    return show, to_json
