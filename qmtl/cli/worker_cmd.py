"""``qmtl-seamless worker --config FILE``: one of many processes filling the configured nodes
under the coordinator's leases.

Every configured node (exchange × symbol × timeframe) is filled over the range with
``ensure_data_available``, whose batches claim their lease first
(:mod:`~qmtl.runtime.io.batch_leases`): a window another worker holds is not fetched. The
worker then waits ``--poll-s`` and asks again — the holder may finish it (the store then
covers it), fail it or die (its lease expires and the window is granted here) — until the
store covers the node's range, or a pass makes no progress with nothing held elsewhere.

Workers share one store (PostgreSQL): a lease granted for a window the store already covers
(another worker completed it between this worker's ledger read and its claim) is completed
at once instead of fetched, so a window is fetched once however the workers interleave.

Progress goes to stderr, one line per change (``worker <id>: <node> <done>/<total> bars``);
the summary goes to stdout (``--json``: ``{worker, store, window, nodes: [{node_id, stored,
known_empty, missing}]}``). ``--follow`` keeps going after the range is covered: every
``--poll-s`` the end moves to now and new closed bars are filled, until Ctrl-C (exit 0).

Exit codes as ``backfill``: 0 nothing missing; 1 something still missing; 2 a user mistake
(no coordinator configured, an unknown symbol); 3 the exchange or the store failed every
batch.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from qmtl.cli._common import (
    BatchLog,
    add_exchange_options,
    add_store_options,
    add_window_options,
    check_window_size,
    console,
    coverage_table,
    print_json,
    resolve_config,
    show_store,
    window_from_args,
)
from qmtl.cli.main import missing_data_exit
from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.history_coverage import Range, compute_missing_ranges
from qmtl.runtime.sdk.node_id import parse_node_id

if TYPE_CHECKING:
    from qmtl.runtime.sdk.backfill_config import BackfillConfig
    from qmtl.runtime.sdk.backfill_types import BatchOutcome
    from qmtl.runtime.sdk.config import QMTLConfig
    from qmtl.runtime.sdk.coverage_report import CoverageReport

__all__ = ["NO_COORDINATOR", "register"]

NO_COORDINATOR: Final = (
    "worker needs a coordinator: set environment.coordinator_url or QMTL_SEAMLESS_COORDINATOR_URL"
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="fill every configured node under coordinator leases (run several)",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(parser, config_required=True)
    add_exchange_options(parser)
    add_window_options(parser)
    parser.add_argument(
        "--follow",
        action="store_true",
        help="after the range is covered, keep filling new closed bars until Ctrl-C",
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=1.0,
        metavar="N",
        help="seconds between asks for windows other workers hold, and between --follow "
        "rounds (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_run)


@dataclass(slots=True)
class _Run:
    """What one worker run shares between its node tasks and the summary."""

    worker: str
    poll_s: float
    log: BatchLog = field(default_factory=BatchLog)
    held: set[str] = field(default_factory=set)  #: nodes with a held batch this pass
    done: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    shown: dict[str, tuple[int, int]] = field(default_factory=dict)
    store: str = ""
    window: Range | None = None
    reports: list[CoverageReport] = field(default_factory=list)

    def on_batch(self, node_id: str, outcome: BatchOutcome) -> None:
        if outcome.held:
            self.held.add(node_id)
            return
        self.log.record(node_id, outcome)
        interval = parse_node_id(node_id).interval
        established = [outcome.batch] if outcome.ok else [*outcome.data, *outcome.empty]
        bars = sum(r.bars(interval) for r in established)
        total = self.total.get(node_id, 0)
        self.done[node_id] = min(total, self.done.get(node_id, 0) + bars)
        self.show(node_id)

    def show(self, node_id: str) -> None:
        state = (self.done.get(node_id, 0), self.total.get(node_id, 0))
        if self.shown.get(node_id) == state:
            return
        self.shown[node_id] = state
        print(f"worker {self.worker}: {node_id} {state[0]}/{state[1]} bars", file=sys.stderr,
              flush=True)  # fmt: skip


def _target(window: Range, interval: int, now: int) -> Range:
    """The node's part of ``window``: whole bars, closed ones only (a forming bar is never
    covered)."""
    end = min(window.end, now - now % interval)
    start = min(window.start, end)
    return Range.aligned(start, max(start, end), interval)


async def _missing(provider: EnhancedQuestDBProvider, node: str, target: Range) -> list[Range]:
    interval = parse_node_id(node).interval
    ledger = await provider.storage.read_ledger(node, interval)
    return compute_missing_ranges(ledger, target.start, target.end, interval)


async def _fill_node(
    provider: EnhancedQuestDBProvider, run: _Run, node: str, window: Range
) -> None:
    """Fill ``node`` over ``window`` until covered, or until a pass changes nothing while no
    other worker holds a window of it."""
    interval = parse_node_id(node).interval
    target = _target(window, interval, int(time.time()))
    run.total[node] = target.bars(interval)
    previous: list[Range] | None = None
    while True:
        missing = await _missing(provider, node, target)
        run.done[node] = run.total[node] - sum(r.bars(interval) for r in missing)
        run.show(node)
        if not missing:
            return
        held = node in run.held
        if previous is not None and missing == previous and not held:
            return  # no progress possible: the summary says what is missing and why
        if previous is not None and held:
            await asyncio.sleep(run.poll_s)  # the holder may finish, fail or expire
        previous = missing
        run.held.discard(node)
        await provider.ensure_data_available(target.start, target.end, node_id=node)


async def _round(
    provider: EnhancedQuestDBProvider, run: _Run, nodes: tuple[str, ...], window: Range
) -> None:
    try:
        async with asyncio.TaskGroup() as group:  # one failure stops the others
            for node in nodes:
                group.create_task(_fill_node(provider, run, node, window))
    except BaseExceptionGroup as failed:  # report the error, not the group
        raise failed.exceptions[0] from None
    run.window = window
    run.reports = [
        await provider.coverage_report(node_id=n, start=window.start, end=window.end) for n in nodes
    ]


async def _work(
    config: QMTLConfig,
    run: _Run,
    nodes: tuple[str, ...],
    window: Range,
    *,
    follow: bool,
    quiet: bool,
) -> None:
    provider = build_provider(config, strategy="AUTO_BACKFILL")
    provider.auto_backfiller.on_batch = run.on_batch
    async with provider:
        run.store = await provider.storage.resolved_location()
        if not quiet:
            show_store(run.store)
        await _round(provider, run, nodes, window)
        while follow:
            await asyncio.sleep(run.poll_s)
            now = int(time.time())
            window = Range(window.start, max(window.end, now - now % 60))
            await _round(provider, run, nodes, window)


def _summary(run: _Run, *, as_json: bool) -> None:
    if as_json:
        window = run.window
        print_json(
            {
                "worker": run.worker,
                "store": run.store,
                "window": None if window is None else [window.start, window.end],
                "nodes": [
                    {
                        "node_id": r.node_id,
                        "stored": r.data_bars,
                        "known_empty": r.empty_bars,
                        "missing": r.missing_bars,
                    }
                    for r in run.reports
                ],
            }
        )
        return
    if run.reports:
        console.print(coverage_table(run.reports, title=f"worker {run.worker}"))


def _check(window: Range, nodes: tuple[str, ...], backfill: BackfillConfig, poll_s: float) -> None:
    if not math.isfinite(poll_s) or poll_s <= 0:
        raise ValueError(f"--poll-s must be a finite number > 0, got {poll_s}")
    if not nodes:
        raise ValueError("no exchanges/symbols configured, nothing to fill")
    check_window_size(window, nodes, backfill)


def _run(args: argparse.Namespace) -> int:
    window = window_from_args(args, default_days=1)
    config = resolve_config(args, ())
    if not config.environment.coordinator_url:
        raise ValueError(NO_COORDINATOR)
    nodes = config.node_ids()
    _check(window, nodes, config.seamless.backfill, args.poll_s)
    run = _Run(worker=config.environment.worker_id or socket.gethostname(), poll_s=args.poll_s)
    try:
        asyncio.run(_work(config, run, nodes, window, follow=args.follow, quiet=args.json))
    except KeyboardInterrupt:
        if not args.follow:
            raise
        print(f"worker {run.worker}: stopped", file=sys.stderr, flush=True)
    _summary(run, as_json=args.json)
    if all(r.missing_bars == 0 for r in run.reports) and run.reports:
        return 0
    return missing_data_exit("worker", run.log.errors, progressed=run.log.succeeded > 0)
