"""``qmtl-seamless config``: ``check FILE`` validates a configuration file, ``reference``
prints the reference of every setting.

``check`` runs every check the runtime would: the loader's (:func:`load_config`: keys,
types, ranges, cross-checks, the environment) and then the composition root's
(:func:`~qmtl.runtime.io.composition.check_runtime`: ccxt exchange ids with the nearest valid
names, page sizes the exchange serves, usable URLs) — so that a file it accepts is a file
``backfill`` accepts. Prints ``ok: ...`` with a one-line summary, then what the file resolves
to (``store:``, one ``exchange <id>:`` line each, ``rate limiter:``, ``artifacts:``; passwords
masked, relative paths made absolute against the working directory, nothing connected) and
exits 0 — or prints every problem on its own line (``<key.path>: <problem>``) to stderr and
exits 2 (a user mistake, as for every command). ``--json`` prints the same facts as one object.

``reference`` prints :func:`~qmtl.runtime.sdk.config_reference.render_reference` (the
Markdown of ``docs/configuration.md``), or writes it to ``--out FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from qmtl.cli._common import print_json, usage_handler
from qmtl.cli.main import EXIT_USAGE
from qmtl.runtime.io.composition import check_runtime
from qmtl.runtime.io.storage import open_storage
from qmtl.runtime.io.storage.base import masked_dsn
from qmtl.runtime.sdk.config import ArtifactConfig, QMTLConfig, load_config
from qmtl.runtime.sdk.config_reference import render_reference
from qmtl.runtime.sdk.errors import ConfigError
from qmtl.runtime.sdk.pending_settings import pending_settings_in_use
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = ["register"]

#: ``rate_limiter_for`` of an id no entry has: ``seamless.rate_limit`` with the environment.
_NO_EXCHANGE = ""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``config`` command group (``config check FILE``, ``config reference``)."""
    parser = subparsers.add_parser("config", help="work with configuration files")
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="validate a YAML configuration file",
        description="Validate FILE exactly as the library loads it (environment included) "
        "and print what it resolves to.",
    )
    check.add_argument("file", metavar="FILE", help="path to the YAML configuration")
    check.add_argument(
        "--no-env",
        action="store_true",
        help="ignore the process environment (interpolation and QMTL_* overrides)",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    # checks_config: main must not fail on a bad file or environment before this reports it.
    check.set_defaults(handler=_check, checks_config=True)
    reference = commands.add_parser(
        "reference",
        help="print the reference of every setting (Markdown)",
        description="Print the configuration reference generated from the settings model.",
    )
    reference.add_argument("--out", metavar="FILE", help="write it to FILE instead of stdout")
    # The reference reads no configuration: a bad environment must not keep it from printing.
    reference.set_defaults(handler=_reference, checks_config=True)

    parser.set_defaults(handler=usage_handler(parser))


def _reference(args: argparse.Namespace) -> int:
    text = render_reference()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, env={} if args.no_env else None)
    except ConfigError as exc:
        return _fail(exc.errors, as_json=args.json)
    problems = check_runtime(config)
    try:
        store = _store(config.seamless.storage.dsn)
    except ValueError as exc:
        problems.append(f"seamless.storage.dsn: {exc}")
    if problems:
        return _fail(problems, as_json=args.json)
    exchanges = {
        exchange_id: {
            "symbols": list(entry.symbols),
            "timeframes": list(entry.timeframes),
            "rest": masked_dsn(entry.urls.rest) if entry.urls and entry.urls.rest else None,
            "ws": masked_dsn(entry.urls.ws) if entry.urls and entry.urls.ws else None,
            "rate_limiter": _limiter(config.rate_limiter_for(exchange_id)),
        }
        for exchange_id, entry in config.exchanges.items()
    }
    facts: dict[str, Any] = {
        "store": store,
        "exchanges": exchanges,
        "rate_limiter": _limiters(config, exchanges),
        "artifacts": _artifacts(config.seamless.artifact),
        "notes": pending_settings_in_use(config),  # valid, but nothing reads them yet
    }
    if args.json:
        print_json({"ok": True, **facts})
        return 0
    print(_summary(config))
    print(f"store: {store}")
    for exchange_id, entry in exchanges.items():
        archive = config.exchanges[exchange_id].archive
        where = f"; archive: {masked_dsn(archive.base_url)}" if archive.enabled else ""
        print(f"exchange {exchange_id}: {_exchange_line(entry)}{where}")
    print(f"rate limiter: {facts['rate_limiter']}")
    print(f"artifacts: {facts['artifacts']}")
    for note in facts["notes"]:
        print(f"note: {note}")
    return 0


def _fail(problems: list[str], *, as_json: bool) -> int:
    for line in problems:
        print(line, file=sys.stderr)
    if as_json:
        print_json({"ok": False, "errors": problems})
    return EXIT_USAGE


def _summary(config: QMTLConfig) -> str:
    return (
        f"ok: {len(config.exchanges)} exchange(s), {len(config.node_ids())} node id(s), "
        f"domains: {', '.join(config.domains) or 'none'}, "
        f"storage: {config.seamless.storage.dsn.partition('://')[0]}, "
        f"artifacts: {config.seamless.artifact.object_store_uri.partition('://')[0]}"
    )


def _store(dsn: str) -> str:
    """Where the store is, as the store itself resolves it (absolute DuckDB path, or the
    PostgreSQL DSN with its password masked); nothing is opened. ``ValueError`` for a DSN
    the store refuses."""
    return asyncio.run(open_storage(dsn).resolved_location())


def _limiter(limiter: RateLimiterConfig) -> str:
    return masked_dsn(limiter.redis_dsn) if limiter.redis_dsn else "local"


def _limiters(config: QMTLConfig, exchanges: dict[str, dict[str, Any]]) -> str:
    """The limiter backend: one value, or ``<id>: <backend>`` each when exchanges differ."""
    backends = {exchange_id: str(entry["rate_limiter"]) for exchange_id, entry in exchanges.items()}
    if len(set(backends.values())) > 1:
        return ", ".join(f"{exchange_id}: {backend}" for exchange_id, backend in backends.items())
    if backends:
        return next(iter(backends.values()))
    return _limiter(config.rate_limiter_for(_NO_EXCHANGE))


def _artifacts(artifact: ArtifactConfig) -> str:
    """The artifact destination: an absolute directory for ``file://`` (``file://rel`` is
    relative to the working directory), else the URI (and its S3 endpoint)."""
    scheme, _, rest = artifact.object_store_uri.partition("://")
    if scheme == "file":
        return os.path.abspath(rest)
    endpoint = artifact.s3_endpoint_url
    suffix = f" (endpoint: {masked_dsn(endpoint)})" if endpoint else ""
    return f"{artifact.object_store_uri}{suffix}"


def _exchange_line(entry: dict[str, Any]) -> str:
    symbols = ", ".join(entry["symbols"]) or "no symbols"
    urls = ", ".join(f"{kind}: {entry[kind]}" for kind in ("rest", "ws") if entry[kind])
    return f"{symbols} × {', '.join(entry['timeframes'])}" + (f" ({urls})" if urls else "")
