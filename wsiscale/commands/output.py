"""Where a command's words go: results (tables, JSON) on stdout, logs, progress and errors on stderr.

``wsiscale info slide.svs | grep mpp`` finds the table; ``--json`` puts one JSON document on
stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

#: Exit codes of every command and job (docs/operations.md).
EXIT_OK, EXIT_INCOMPLETE, EXIT_BAD_INPUT = 0, 1, 2


def results_console() -> Console:
    """A console on the current stdout (made per call: tests and pipes may swap ``sys.stdout``)."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160, soft_wrap=False)


def print_json(doc: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str, kind: str = "error") -> None:
    """One line on stderr: ``error: <message>`` (the message names the slide/URI and the fix)."""
    from rich.markup import escape

    from wsiscale.progress import console

    console.print(f"[bold red]{kind}:[/bold red] {escape(str(message))}", highlight=False, soft_wrap=True)
