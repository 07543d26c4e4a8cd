"""``qmtl-seamless config check FILE``: validate a configuration file (SPEC §13).

Runs every check the runtime would: the loader's (:func:`load_config`: keys, types, ranges,
cross-checks, the environment) and then the composition root's
(:func:`~qmtl.runtime.io.composition.check_runtime`: ccxt exchange ids with the nearest valid
names, page sizes the exchange serves, usable URLs) — so that a file it accepts is a file
``backfill`` accepts. Prints ``ok: ...`` with a one-line summary and exits 0, or prints every
problem on its own line (``<key.path>: <problem>``) to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qmtl.cli._common import usage_handler
from qmtl.runtime.io.composition import check_runtime
from qmtl.runtime.sdk.config import load_config
from qmtl.runtime.sdk.errors import ConfigError
from qmtl.runtime.sdk.pending_settings import pending_settings_in_use

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``config`` command group (``config check FILE``)."""
    parser = subparsers.add_parser("config", help="work with configuration files")
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="validate a YAML configuration file",
        description="Validate FILE exactly as the library loads it (environment included).",
    )
    check.add_argument("file", metavar="FILE", help="path to the YAML configuration")
    check.add_argument(
        "--no-env",
        action="store_true",
        help="ignore the process environment (interpolation and QMTL_* overrides)",
    )
    # checks_config: main must not fail on a bad file or environment before this reports it.
    check.set_defaults(handler=_check, checks_config=True)

    parser.set_defaults(handler=usage_handler(parser))


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, env={} if args.no_env else None)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    problems = check_runtime(config)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    nodes = config.node_ids()
    print(
        f"ok: {len(config.exchanges)} exchange(s), {len(nodes)} node id(s), "
        f"domains: {', '.join(config.domains) or 'none'}, "
        f"storage: {config.seamless.storage.dsn.partition('://')[0]}, "
        f"artifacts: {config.seamless.artifact.object_store_uri.partition('://')[0]}"
    )
    for note in pending_settings_in_use(config):  # valid, but nothing reads them yet
        print(f"note: {note}")
    return 0
