"""Rich progress bars and logging set-up shared by the CLI and jobs."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def watch_progress(uri: str, storage=None, description: str = "training", every_s: float = 2.0,
                   bar: Progress | None = None):
    """Show a JSON progress record (``step``, ``total_steps``, ``loss``...) that another process rewrites at ``uri``.

    A thread polls the file while the body runs (a Ray Train fit, whose rank 0 writes it),
    and draws a rich progress bar with the loss, lr and the latest probe metrics. A missing
    or half-written file is skipped; nothing is shown when progress bars are disabled.
    Yields the ``Progress`` (None when disabled).
    """
    import json
    import threading

    from wsiscale.io.uri import filesystem

    bar = bar if bar is not None else progress_bar()
    if bar.disable:
        yield None
        return
    stop = threading.Event()
    fs, path = filesystem(uri, storage)

    def poll() -> None:
        task = None
        while not stop.wait(every_s):
            try:
                with fs.open(path, "rb") as fh:
                    rec = json.loads(fh.read())
            except (OSError, ValueError):
                continue
            extra = [f"loss {rec.get('loss', float('nan')):.3f}", f"lr {rec.get('lr', 0):.2e}"]
            extra += [f"{k} {rec[k]:.3f}" for k in ("probe_auc", "knn_accuracy") if k in rec]
            desc = f"{description} epoch {rec.get('epoch', 0) + 1} " + " ".join(extra)
            if task is None:
                task = bar.add_task(desc, total=rec.get("total_steps"))
            bar.update(task, completed=rec.get("step", 0), description=desc)
            if hasattr(fs, "invalidate_cache"):
                fs.invalidate_cache(path)

    thread = threading.Thread(target=poll, daemon=True)
    with bar:
        thread.start()
        try:
            yield bar
        finally:
            stop.set()
            thread.join(every_s + 5)


def write_progress(uri: str | None, record: dict, storage=None) -> None:
    """Rewrite the JSON progress record at ``uri`` (what :func:`watch_progress` shows); never raises."""
    if not uri:
        return
    import json

    from wsiscale.io.uri import write_bytes_atomic

    try:
        write_bytes_atomic(uri, json.dumps(record).encode(), storage)
    except OSError as exc:  # progress is cosmetic: never fail training for it
        logging.getLogger(__name__).warning("cannot write %s: %s", uri, exc)
