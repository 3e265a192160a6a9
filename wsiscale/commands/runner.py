"""Running a :class:`~wsiscale.commands.command.Command` from a command line: the CLI's and the jobs' one path.

:func:`execute` loads the config (``--config``, ``--set``; a ``jobs/`` driver under ``ray job submit``
joins the cluster it was submitted to), calls ``command.run(cfg, **inputs)``, prints the result
(a table on stdout, or one JSON document with ``--json``) and maps failures to exit codes:

* 0: done; 1: incomplete (slides pending, an interrupted run, or failed slides with ``--strict``);
* 2: bad input, one line on stderr naming what and the fix: an invalid config, a missing run or
  file, an unknown encoder or unusable weights (also when raised inside an encoder actor), a bad
  manifest or index input.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from wsiscale.commands.command import Command
from wsiscale.commands.output import EXIT_BAD_INPUT, print_error, print_json, results_console
from wsiscale.config import ConfigError, WsiscaleConfig, load_config
from wsiscale.progress import setup_logging


def add_common(p: argparse.ArgumentParser, command: Command, config_example: str | None = None) -> None:
    """``--config``, repeatable ``--set``, ``--json`` and ``--strict`` (every command has them)."""
    example = f" (e.g. {config_example})" if config_example else " (defaults are the embedded local setup)"
    p.add_argument("--config", "-c", help="YAML config file" + example)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tiling.mpp=0.5 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")
    p.add_argument("--strict", action="store_true", help="exit 1 when any slide failed (failures.parquet)")


def load_job_config(config: str | None, overrides: list[str]) -> WsiscaleConfig:
    """Config for a ``jobs/`` driver: under ``ray job submit`` (``RAY_ADDRESS`` set) it joins that cluster.

    Raises:
        ConfigError: unreadable or invalid configuration.
    """
    cfg = load_config(config, overrides)
    if cfg.ray.address is None and os.environ.get("RAY_ADDRESS"):
        cfg.ray.address = "auto"  # submitted as a Ray job: join that cluster, never start a local Ray
    return cfg


def execute(command: Command, args: argparse.Namespace, job: bool = False) -> int:
    """Config, ``run``, printed result, exit code (module docstring)."""
    try:
        cfg = load_job_config(args.config, args.overrides) if job else load_config(args.config, args.overrides)
    except ConfigError as exc:
        print_error(str(exc), "config error")
        return EXIT_BAD_INPUT
    setup_logging(cfg.log_level)
    try:
        result = command.run(cfg, **command.inputs(args))
    except Exception as exc:  # noqa: BLE001 - only input errors become exit 2; anything else propagates
        said = input_error(exc)
        if said is None:
            raise
        print_error(*said)
        return EXIT_BAD_INPUT
    if getattr(args, "json", False):
        print_json(command.to_json(result))
    else:
        command.show(result, results_console())
    return command.exit_code(result, getattr(args, "strict", False))


def input_error(exc: BaseException) -> tuple[str, str] | None:
    """``(message, kind)`` when ``exc`` is bad input (exit 2), None for a real failure."""
    from wsiscale.index.kmeans import IndexInputError
    from wsiscale.io.manifest import ManifestError

    encoder = encoder_error(exc)
    if encoder is not None:
        return f"{type(encoder).__name__}: {encoder}", "encoder error"
    if isinstance(exc, ConfigError):
        return str(exc), "config error"
    if isinstance(exc, (FileNotFoundError, ManifestError, IndexInputError)):
        return str(exc), "error"
    return None


def encoder_error(exc: BaseException) -> Any:
    """The EncoderError behind ``exc``, if any: raised here, or in an encoder actor's constructor.

    An actor whose constructor raised reaches the driver as a Ray ``ActorDiedError`` that keeps only
    the text of the original exception, so that text is parsed back.
    """
    import re

    from ray.exceptions import RayActorError

    from wsiscale.models import errors

    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, errors.EncoderError):  # a RayTaskError subclassing it: report the original exception
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, errors.EncoderError) else e
        if isinstance(e, RayActorError) and e.actor_init_failed:
            found = list(re.finditer(r"wsiscale\.models\.(?:encoders|errors)\.(EncoderWeightsError|EncoderError): ",
                                     str(e)))
            if found:
                return getattr(errors, found[-1].group(1))(str(e)[found[-1].end():].strip())
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None


def job_main(command: Command, argv: list[str] | None, prog: str, config_example: str, description: str) -> int:
    """The body of ``jobs/<stage>.py``: the command's options, run as a job (joins ``RAY_ADDRESS``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    command.arguments(p)
    add_common(p, command, config_example)
    return execute(command, p.parse_args(argv), job=True)
