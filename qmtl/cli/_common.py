"""Shared pieces of the data commands: store/exchange options, settings, time windows,
batch bookkeeping and reports.

Settings follow one order everywhere: the ``--config`` file (or the defaults), then the
environment (both read by :func:`~qmtl.runtime.sdk.config.load_config` only), then explicit
arguments (``--dsn``, ``--exchange-url``), applied by the composition root
(:func:`~qmtl.runtime.io.composition.with_overrides`). Every provider a command uses is built
there too (:func:`~qmtl.runtime.io.composition.build_provider`), so a command runs exactly
what the library would with the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rich import box
from rich.console import Console
from rich.table import Table

from qmtl.cli.batch_log import BatchLog
from qmtl.runtime.sdk.coverage_report import CoverageReport
from qmtl.runtime.sdk.errors import ConfigError, StorageError
from qmtl.runtime.sdk.history_coverage import Range
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import LAST_INSTANT, format_iso, parse_instant

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

    from qmtl.runtime.sdk.backfill_config import BackfillConfig
    from qmtl.runtime.sdk.config import QMTLConfig
    from qmtl.runtime.sdk.history_storage import HistoryStorage

__all__ = [
    "add_exchange_options",
    "add_metrics_option",
    "add_store_options",
    "add_window_options",
    "check_window_size",
    "console",
    "coverage_table",
    "err_console",
    "gap_lines",
    "load_settings",
    "number_table",
    "open_read_only",
    "print_json",
    "resolve_config",
    "segment_lines",
    "serve_until_stopped",
    "settings",
    "show_store",
    "stop_signals",
    "store_dsn",
    "until_stopped",
    "usage_handler",
    "window_bounds",
    "window_from_args",
]

#: Reports (stdout) and what accompanies them for people (stderr: the store, progress), so
#: that ``> file`` keeps only the report and ``--json`` stdout stays machine-readable.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_DAY = 86_400


def add_store_options(parser: argparse.ArgumentParser, *, config_required: bool = False) -> None:
    """``--config`` and ``--dsn``: every command that touches a store takes both."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        required=config_required,
        help="YAML configuration (docs/configuration.md)",
    )
    parser.add_argument(
        "--dsn",
        help="hot store: duckdb:///path.duckdb or postgresql://... (overrides --config and the "
        "default duckdb:///.qmtl/seamless.duckdb)",
    )


def add_exchange_options(parser: argparse.ArgumentParser) -> None:
    """``--exchange-url``: every command that talks to an exchange takes it."""
    parser.add_argument(
        "--exchange-url",
        metavar="URL",
        help="REST root replacing the exchange's hosts (overrides exchanges.<id>.urls.rest), "
        "e.g. the simulator http://127.0.0.1:8080",
    )


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port``: every long-running command takes it
    (:func:`~qmtl.runtime.io.metrics_endpoint.serve_metrics`: all interfaces, only when given)."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on this port while running (0 picks a free one); "
        "binds all interfaces, so a scraper on another host can reach it",
    )


# -- settings ---------------------------------------------------------------------------------


def load_settings(args: argparse.Namespace) -> QMTLConfig:
    """The ``--config`` file, or the defaults, with the environment applied (the loader is
    the one reader of both). Blocking file I/O: call it before ``asyncio.run``."""
    from qmtl.runtime.sdk.config import load_config

    path = getattr(args, "config", None)
    return load_config(path if path else {})


def settings(args: argparse.Namespace) -> QMTLConfig:
    """The settings ``main`` loaded for this run (loads them when a handler runs alone)."""
    loaded: QMTLConfig | None = getattr(args, "settings", None)
    return loaded if loaded is not None else load_settings(args)


def resolve_config(args: argparse.Namespace, node_ids: Iterable[str]) -> QMTLConfig:
    """The configuration a command runs with: ``--config`` (else one made for ``node_ids``)
    with ``--dsn``, ``--exchange-url`` and ``--ws-url`` over it; ``ConfigError`` listing
    every problem building its runtime would hit (what ``config check`` reports)."""
    from qmtl.runtime.io.composition import check_runtime, config_for_nodes, with_overrides

    overrides = {
        "dsn": getattr(args, "dsn", None),
        "exchange_url": getattr(args, "exchange_url", None),
        "ws_url": getattr(args, "ws_url", None),
    }
    if getattr(args, "config", None):
        config = with_overrides(settings(args), **overrides)
    else:
        config = config_for_nodes(node_ids, **overrides)
    problems = check_runtime(config)
    if problems:
        raise ConfigError(problems)
    return config


def store_dsn(args: argparse.Namespace) -> str:
    """The store a command touches: ``--dsn``, else the ``--config`` file's, else the
    default."""
    from qmtl.runtime.io.composition import with_overrides

    return with_overrides(settings(args), dsn=getattr(args, "dsn", None)).seamless.storage.dsn


@asynccontextmanager
async def open_read_only(dsn: str) -> AsyncIterator[tuple[HistoryStorage, str]]:
    """The store at ``dsn`` opened read-only (read commands never create a store)
    and where it is. A DuckDB file that does not exist is the user's mistake (a mistyped
    path: ``ValueError``, exit 2), not a failing store."""
    from qmtl.runtime.io.storage import open_storage

    store = open_storage(dsn, read_only=True)
    location = await store.resolved_location()
    try:
        try:
            await store.__aenter__()
        except StorageError as exc:
            if dsn.startswith("duckdb:") and not await asyncio.to_thread(os.path.exists, location):
                raise ValueError(str(exc)) from exc
            raise
        yield store, location
    finally:
        await store.close()


@contextmanager
def stop_signals(stop: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
    """An event set by ``stop`` (when given), SIGINT or SIGTERM, while the block runs: how a
    serving command waits (a service manager stops it with SIGTERM; the caller then shuts
    down gracefully). Enter it *before* announcing the service, so no signal finds the
    default handler. The handlers are installed explicitly, and removed on exit: a process
    started with SIGINT ignored (as under some supervisors and test runners) would otherwise
    never stop on Ctrl-C. Call it in the event loop's thread."""
    event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, event.set)  # only in the main thread
            installed.append(sig)
    try:
        yield event
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


_T = TypeVar("_T")


class _Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve_until_stopped(
    service: _Service,
    banner: Callable[[], Sequence[str]],
    *,
    metrics_port: int | None,
    started: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """How a serving command runs: start ``service``, serve this process's metrics on
    ``metrics_port`` (``None``: no port), print the ``banner`` lines on stdout (clients read
    them to find the service), set ``started``; then wait for ``stop``, SIGINT or SIGTERM
    (:func:`stop_signals`, entered first so no signal finds the default handler) and stop the
    service gracefully. A bad or busy metrics port fails before the banner."""
    from qmtl.runtime.io.metrics_endpoint import serve_metrics
    from qmtl.runtime.sdk.metrics import default_metrics

    with stop_signals(stop) as stopping:
        await service.start()
        try:
            async with serve_metrics(metrics_port, default_metrics().registry):
                for line in banner():
                    print(line, flush=True)
                if started is not None:
                    started.set()
                await stopping.wait()
        finally:
            await service.stop()


async def until_stopped(
    work: Awaitable[_T], *, timeout_s: float | None = None
) -> tuple[str, _T | None]:
    """Run ``work`` until it ends (``("done", result)``; its error, if it failed), SIGINT or
    SIGTERM arrives (``("stopped", None)``) or ``timeout_s`` passes (``("timeout", None)``);
    in the last two cases ``work`` is cancelled and awaited (what it holds is released — a
    worker's batches fail their leases so others take them at once). How a long-running
    command stops gracefully. Call it in the event loop's thread."""
    task = asyncio.ensure_future(work)
    with stop_signals() as stopping:
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({task, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return "done", task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return ("stopped" if stopping.is_set() else "timeout"), None


def show_store(location: str) -> None:
    """Say which store a command resolved (stderr: the report on stdout stays clean)."""
    err_console.print(f"store: {location}", markup=False, soft_wrap=True)


# -- time windows -----------------------------------------------------------------------------

#: freqtrade's ``--timerange``: ``START-END`` with ``YYYYMMDD`` or epoch-second sides, either
#: side may be left open.
_TIMERANGE = re.compile(r"(\d*)-(\d*)")


def add_window_options(parser: argparse.ArgumentParser, *, open_start: str | None = None) -> None:
    """``--start/--end``, ``--timerange`` and ``--days``: the forms traders write (see
    :mod:`qmtl.runtime.sdk.timestamps`). ``open_start`` says what an open start
    (``--timerange -END``) means for the command; ``None`` refuses it."""
    forms = "ISO-8601 (2024-01-01, 2024-01-01T00:00:00Z), YYYYMMDD, epoch s or ms"
    parser.add_argument("--start", help=f"range start: {forms}")
    parser.add_argument("--end", help="range end, exclusive (same forms); default: now")
    parser.add_argument(
        "--timerange",
        metavar="START-END",
        help="freqtrade's form: 20240101-20240201, 20240101- (to now)"
        + (f", -20240201 ({open_start})" if open_start else ""),
    )
    parser.add_argument("--days", type=float, help="instead of --start: the last N days")
    parser.set_defaults(open_start=open_start)


def _check_bound(name: str, value: int) -> None:
    if not 0 <= value <= LAST_INSTANT:
        raise ValueError(
            f"{name} {value} is outside the supported time span "
            f"[{format_iso(0)}, {format_iso(LAST_INSTANT)}]"
        )


def _timerange(text: str) -> tuple[str | None, str | None]:
    match = _TIMERANGE.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        raise ValueError(
            f"--timerange: expected START-END with YYYYMMDD or epoch-second sides "
            f"(20240101-20240201, 20240101-, -20240201), got {text[:40]!r}"
        )
    return match.group(1) or None, match.group(2) or None


def window_bounds(
    args: argparse.Namespace, *, default_days: float | None = None, interval: int = 60
) -> tuple[int | None, int]:
    """``(start, end)`` epoch seconds from ``--start/--end``, ``--timerange`` or ``--days``;
    ``start`` is ``None`` for an open start the command allows (``add_window_options``).
    ``--end`` defaults to the open of the still-forming bar of ``interval`` (closed bars
    only). Checked here, before anything is built or contacted: one way of giving each
    bound, both within the epoch to year 9999, ``--days`` finite and > 0, start < end."""
    start_text, end_text = getattr(args, "start", None), getattr(args, "end", None)
    timerange = getattr(args, "timerange", None)
    days = getattr(args, "days", None)
    if timerange is not None:
        if start_text or end_text:
            raise ValueError("give --timerange or --start/--end, not both")
        start_text, end_text = _timerange(timerange)
        if start_text is None and days is None and not getattr(args, "open_start", None):
            raise ValueError("--timerange: give a start (20240101-...): this command needs one")
    if start_text and days is not None:
        raise ValueError("give --start or --days, not both")
    now = int(time.time())
    end = parse_instant(end_text, name="--end") if end_text else now - now % interval
    _check_bound("--end", end)
    start: int | None
    if start_text:
        start = parse_instant(start_text, name="--start")
    elif days is not None or default_days is not None:
        span = days if days is not None else default_days
        assert span is not None
        if not math.isfinite(span) or span <= 0:
            raise ValueError(f"--days must be a finite number > 0, got {span}")
        if span * _DAY > end:
            raise ValueError(
                f"--days {span:g} reaches back before 1970-01-01 (the epoch): at most "
                f"{end / _DAY:,.0f} days before --end {format_iso(end)}"
            )
        start = end - int(span * _DAY)
    elif timerange is not None:
        return None, end  # an open start the command allows
    else:
        raise ValueError("give --start, --timerange or --days")
    _check_bound("--start", start)
    if start >= end:
        raise ValueError(
            f"--start {format_iso(start)} ({start}) is not before --end {format_iso(end)} ({end})"
        )
    return start, end


def check_window_size(window: Range, nodes: Sequence[str], backfill: BackfillConfig) -> None:
    """Refuse a window over ``backfill.max_range_bars`` for any of ``nodes`` before anything
    is opened: the provider refuses it too, but only once the store is open and the other
    nodes' backfills are running."""
    for node in nodes:
        backfill.check_range_bars(window, parse_node_id(node).interval, of=node)


def window_from_args(
    args: argparse.Namespace, *, default_days: float | None = None, interval: int = 60
) -> Range:
    """The half-open request window (:func:`window_bounds`; an open start is refused)."""
    start, end = window_bounds(args, default_days=default_days, interval=interval)
    if start is None:
        raise ValueError("--timerange: give a start (20240101-...): this command needs one")
    return Range(start, end)


# -- batches ----------------------------------------------------------------------------------


def number_table(
    title: str,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    optional: Sequence[str] = (),
    width: int | None = None,
) -> Table:
    """A report table that never cuts a number: each column after the key is as wide as its
    widest cell (header included) and does not wrap; the key column (node ids, exchange ids)
    folds onto more lines instead. When the terminal (``width``, default the console's) is
    too narrow, the ``optional`` columns are dropped, last first — never digits in the
    middle of a number."""
    shown = list(range(len(columns)))

    key_width = min(20, max([len(key), *(len(row[0]) for row in rows)]))

    def needed() -> int:  # cells plus one space of padding each side, and the two edges
        return (
            4
            + key_width
            + sum(2 + max([len(columns[i]), *(len(row[i + 1]) for row in rows)]) for i in shown)
        )

    for name in reversed(optional):
        if needed() <= (width or console.width):
            break
        shown.remove(columns.index(name))
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column(key, overflow="fold", min_width=key_width)
    for i in shown:
        cells = max((len(row[i + 1]) for row in rows), default=0)
        table.add_column(
            columns[i], justify="right", no_wrap=True, min_width=max(cells, len(columns[i]))
        )
    for row in rows:
        table.add_row(row[0], *(row[i + 1] for i in shown))
    return table


def coverage_table(reports: Sequence[CoverageReport], *, title: str = "coverage") -> Table:
    rows = [
        (
            rep.node_id,
            f"{rep.data_bars:,}",
            f"{rep.empty_bars:,}",
            f"{rep.missing_bars:,}",
            f"{len(rep.missing)}",
            f"{rep.ratio:.2%}",
        )
        for rep in reports
    ]
    columns = ("stored", "known-empty", "missing", "gaps", "coverage")
    return number_table(title, "node", columns, rows)


def segment_lines(rep: CoverageReport) -> list[str]:
    """One human line per segment and per missing range, in time order."""
    interval = parse_node_id(rep.node_id).interval
    items: list[tuple[int, str]] = [
        (s.start, f"{s.kind.value.upper():7} {_span(s.range, interval)}") for s in rep.segments
    ]
    items += [(r.start, f"MISSING {_span(r, interval)}") for r in rep.missing]
    return [line for _, line in sorted(items)]


def _span(r: Range, interval: int) -> str:
    return f"[{format_iso(r.start)}, {format_iso(r.end)})  {r.bars(interval):,} bars"


def gap_lines(rep: CoverageReport, log: BatchLog | None = None) -> list[str]:
    """One line per missing range, ISO times, and why it is missing (the errors of the
    batches that failed there; a range no batch failed in was not attempted or is too
    recent for the exchange to vouch for)."""
    interval = parse_node_id(rep.node_id).interval
    lines = []
    for r in rep.missing:
        reasons = log.reasons(rep.node_id, r) if log is not None else []
        shown = "; ".join(reasons[:3]) + (
            f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
        )
        why = shown or "no batch failed there (not attempted, or too recent to be vouched for)"
        lines.append(f"MISSING {rep.node_id} {_span(r, interval)}: {why}")
    return lines


def usage_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The handler of a command group called without a sub-command: its help, exit 2."""

    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
