"""Rich progress bars and logging set-up shared by the CLI and jobs."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def progress_bar() -> Progress:
    """A rich progress bar on stderr; silent when stderr is not a terminal or WSISCALE_NO_PROGRESS is set."""
    disable = bool(os.environ.get("WSISCALE_NO_PROGRESS")) or not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def setup_logging(level: str | int = "INFO") -> None:
    """Route ``logging`` through rich on stderr (idempotent)."""
    root = logging.getLogger()
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every CPU-feature probe at INFO
    if any(isinstance(h, RichHandler) for h in root.handlers):
        root.setLevel(level)
        return
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
