"""Entry point of ``qmtl-seamless``: one sub-command module per command group.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``handler`` to a function ``(argparse.Namespace) -> int`` (the exit code). User mistakes
(bad config, bad node id, bad range) are reported as one line on stderr with exit code 2 (1 for
failed checks); tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qmtl import __version__
from qmtl.runtime.sdk.errors import SeamlessError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from qmtl.cli import (
        backfill_cmd,
        config_cmd,
        coverage_cmd,
        demo_cmd,
        fetch_cmd,
        simulator_cmd,
    )

    parser = argparse.ArgumentParser(
        prog="qmtl-seamless",
        description="Always-ready, reproducible, rate-limit-safe crypto OHLCV history.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (demo_cmd, fetch_cmd, coverage_cmd, backfill_cmd, config_cmd, simulator_cmd):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        code: int = handler(args)
    except (SeamlessError, ValueError, OSError) as exc:
        print(f"qmtl-seamless {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
