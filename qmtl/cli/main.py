"""Entry point of ``qmtl-seamless``: one sub-command module per command group.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``handler`` to a function ``(argparse.Namespace) -> int`` (the exit code). This module owns
what every command shares, so that it is the same everywhere:

- **Exit codes**: 0 complete, 1 served with missing data, 2 user mistake (bad argument,
  config, node id or range, unknown store path, unknown symbol), 3 environment failure (the
  exchange, the store, Redis or the coordinator unreachable). Exceptions map to codes in
  :func:`exit_code` only; a command that ends with data missing asks
  :func:`missing_data_exit` which of 1, 2 or 3 its batch failures mean.
- **Errors** are one line on stderr, ``qmtl-seamless <command>: error: <message>``
  (:func:`print_error`); argparse's own errors too. A traceback means a bug.
- **Logging** is configured once, before the command runs: JSON lines when
  ``seamless.observability.log_format`` is ``json`` (``QMTL_LOG_FORMAT`` or the ``--config``
  file, both read by the configuration loader), else one human line per warning or error.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Final, NoReturn

from qmtl import __version__
from qmtl.runtime.sdk.errors import (
    ConfigError,
    ConformanceError,
    ExchangeDataError,
    ExchangeError,
    ExchangeRateLimitError,
    ExchangeRequestError,
    ExchangeUnavailableError,
    SeamlessCoverageError,
    SeamlessDomainPolicyError,
    SeamlessError,
    SeamlessSLAExceeded,
    StorageError,
)
from qmtl.runtime.sdk.events import configure_logging

__all__ = [
    "EXIT_ENVIRONMENT",
    "EXIT_MISSING",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "exit_code",
    "main",
    "missing_data_exit",
    "print_error",
]

EXIT_OK: Final = 0
EXIT_MISSING: Final = 1
EXIT_USAGE: Final = 2
EXIT_ENVIRONMENT: Final = 3
EXIT_INTERRUPTED: Final = 130

#: OS errors that come from a path or port the user named (their mistake), as opposed to
#: the machine failing (disk full, I/O error), which is the environment's.
_USER_ERRNOS: Final = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.EEXIST,
        errno.EADDRINUSE,
        errno.EADDRNOTAVAIL,
    }
)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error format (argparse prints the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from qmtl.cli import (
        artifacts_cmd,
        backfill_cmd,
        config_cmd,
        coordinator_cmd,
        coverage_cmd,
        demo_cmd,
        exchanges_cmd,
        fetch_cmd,
        list_cmd,
        live_cmd,
        simulator_cmd,
        worker_cmd,
    )

    parser = _Parser(
        prog="qmtl-seamless",
        description="Always-ready, reproducible, rate-limit-safe crypto OHLCV history.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (
        demo_cmd,
        fetch_cmd,
        coverage_cmd,
        list_cmd,
        backfill_cmd,
        artifacts_cmd,
        config_cmd,
        exchanges_cmd,
        coordinator_cmd,
        worker_cmd,
        live_cmd,
    )
    for module in (*commands, simulator_cmd):
        module.register(subparsers)
    return parser


def exit_code(exc: BaseException) -> int | None:
    """The exit code for an exception a command raised; ``None`` for a bug (traceback).

    Order matters: :class:`ConfigError` is a ``ValueError`` and several errors are
    ``OSError``s; the most specific meaning wins."""
    if isinstance(exc, SeamlessCoverageError | SeamlessSLAExceeded):
        return EXIT_MISSING  # the strategy refused to serve with data missing
    if isinstance(exc, ConfigError | ExchangeRequestError | SeamlessDomainPolicyError):
        return EXIT_USAGE
    if isinstance(exc, ExchangeError | StorageError | ConformanceError | SeamlessError):
        return EXIT_ENVIRONMENT  # unreachable or unusable exchange, store or data source
    if isinstance(exc, ConnectionError | TimeoutError) or _is_redis_outage(exc):
        return EXIT_ENVIRONMENT
    if isinstance(exc, OSError):
        return EXIT_USAGE if exc.errno in _USER_ERRNOS else EXIT_ENVIRONMENT
    if isinstance(exc, ValueError):
        return EXIT_USAGE  # bad node id, range, DSN, argument: the library's ValueErrors
    return None


def _is_redis_outage(exc: BaseException) -> bool:
    redis = sys.modules.get("redis.exceptions")  # only loaded when Redis is configured
    if redis is None:
        return False
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


#: Batch errors read ``"<ExceptionType>: <message>"`` (the backfiller describes the exception
#: that ended the batch that way); these are the types whose exit code is not 1.
_BATCH_ERROR_TYPES: Final[dict[str, type[Exception]]] = {
    cls.__name__: cls
    for cls in (
        ExchangeRequestError,
        ExchangeUnavailableError,
        ExchangeRateLimitError,
        ExchangeDataError,
        StorageError,
        ValueError,
        ConnectionError,
        TimeoutError,
        OSError,
    )
}


def missing_data_exit(command: str, errors: Iterable[str], *, progressed: bool) -> int:
    """The exit code of ``command`` when it ends with data still missing, from the errors
    of the batches that failed: 2 when one of them is the user's mistake (an unknown symbol
    is an ``ExchangeRequestError``); 3 when the environment failed every batch and the
    command got nothing done (``progressed`` is False: nothing served, no batch stored) —
    the exchange or the store was unreachable; otherwise 1 (served with missing data). For
    2 and 3 the reason is also printed as the command's error line."""
    failures = list(dict.fromkeys(errors))  # distinct, in order
    codes = [_batch_error_code(error) for error in failures]
    usage = [error for error, code in zip(failures, codes, strict=True) if code == EXIT_USAGE]
    if usage:
        _print_reasons(command, usage)
        return EXIT_USAGE
    if failures and not progressed and all(code == EXIT_ENVIRONMENT for code in codes):
        _print_reasons(command, failures)
        return EXIT_ENVIRONMENT
    return EXIT_MISSING


def _batch_error_code(error: str) -> int:
    kind = _BATCH_ERROR_TYPES.get(error.partition(":")[0].strip())
    code = exit_code(kind(error)) if kind is not None else None
    return EXIT_MISSING if code is None else code


def _print_reasons(command: str, reasons: Sequence[str]) -> None:
    more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    print_error(command, f"{reasons[0]}{more}")


def print_error(command: str | None, message: str) -> None:
    """The one error line: ``qmtl-seamless <command>: error: <message>``."""
    prog = f"qmtl-seamless {command}" if command else "qmtl-seamless"
    text = " ".join(message.split("\n")) or "failed"
    print(f"{prog}: error: {text}", file=sys.stderr)


def _configure_logging(args: argparse.Namespace) -> None:
    """Configure logging from the settings as the loader resolves them (``--config`` file,
    then ``QMTL_LOG_FORMAT``); the loaded settings are kept on ``args.settings`` so commands
    do not read the file twice. ``config check`` reports a bad file or environment itself,
    so for it a problem here falls back to human logs instead of failing first."""
    from qmtl.cli._common import load_settings

    try:
        args.settings = load_settings(args)
    except ConfigError:
        if not getattr(args, "checks_config", False):
            raise
        args.settings = None
        configure_logging("text")
        return
    configure_logging(args.settings.seamless.observability.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    qmtl_logger = logging.getLogger("qmtl")
    saved = (list(qmtl_logger.handlers), qmtl_logger.level, qmtl_logger.propagate)
    try:
        _configure_logging(args)
        code: int = handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail
        return EXIT_OK
    except Exception as exc:
        code_for = exit_code(exc)
        if code_for is None:
            raise  # a bug: the traceback is the report
        print_error(args.command, str(exc) or type(exc).__name__)
        return code_for
    finally:  # main() may run again in the same process (tests, embedding): leave no trace
        qmtl_logger.handlers[:] = saved[0]
        qmtl_logger.setLevel(saved[1])  # setLevel, not .level: it clears the level cache
        qmtl_logger.propagate = saved[2]
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
