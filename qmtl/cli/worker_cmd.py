"""``qmtl-seamless worker --config FILE``: one of many processes filling the configured nodes
under the coordinator's leases.

Every configured node (exchange × symbol × timeframe) is filled over the range with
``ensure_data_available``, whose batches claim their lease first
(:mod:`~qmtl.runtime.io.batch_leases`): a window another worker holds is not fetched. The
worker then waits ``--poll-s`` and asks again — the holder may finish it (the store then
covers it), fail it or die (its lease expires and the window is granted here) — until the
store covers the node's range, or a pass makes no progress with nothing held elsewhere.

A worker never fetches a window without its lease: while the coordinator is unreachable
(``seamless.coordinator.claim_failed``, once per outage) its windows wait like held ones, and
the worker gives up (exit 3) once the outage outlasts one lease TTL
(``seamless.backfill.distributed_lease_ttl_ms``) — longer than any lease it could still hold.
(The library, by contrast, falls back to in-process single flight: a strategy must not stop
because the coordinator blinked.)

Workers share one store (PostgreSQL): a lease granted for a window the store already covers
(another worker completed it between this worker's ledger read and its claim) is completed
at once instead of fetched, so a window is fetched once however the workers interleave.

When publication is switched on (``seamless.artifact.publish_optional``, an
``object_store_uri`` such as ``s3://bucket/prefix``), each covered node's range is published
as artifacts by one worker of the cluster: the one granted the lease on that range in the
world ``artifacts`` (the others skip it). A publication is content-addressed, so a worker
that publishes without a lease (coordinator unreachable) at worst repeats a manifest of the
same bars.

Progress goes to stderr, one line per change (``worker <id>: <node> <done>/<total> bars``);
the summary goes to stdout (``--json``: ``{worker, store, window, nodes: [{node_id, stored,
known_empty, missing, published}]}``; ``published``: ``{artifacts, as_of}`` from the worker
that published the node, else ``null``). ``--follow`` keeps going after the range is covered: every
``--poll-s`` the end moves to now and new closed bars are filled, until Ctrl-C or SIGTERM
(exit 0). Either signal stops a worker gracefully: the batches in flight are cancelled and
their leases failed (another worker may take them at once), and the summary covers each
node's closed bars up to the end of the last round that completed.

Exit codes as ``backfill``: 0 nothing missing; 1 something still missing; 2 a user mistake
(no coordinator configured, an unknown symbol); 3 the exchange or the store failed every
batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from qmtl.cli._common import (
    add_exchange_options,
    add_metrics_option,
    add_store_options,
    add_window_options,
    check_window_size,
    console,
    coverage_table,
    print_json,
    resolve_config,
    show_store,
    until_stopped,
    window_from_args,
)
from qmtl.cli.batch_log import BatchLog
from qmtl.cli.main import missing_data_exit
from qmtl.runtime.io.composition import build_provider
from qmtl.runtime.io.coordinator_client import CoordinatorUnavailable
from qmtl.runtime.io.metrics_endpoint import serve_metrics
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider
from qmtl.runtime.sdk.history_coverage import Range, compute_missing_ranges, subtract_ranges
from qmtl.runtime.sdk.lease_rules import LeaseKey
from qmtl.runtime.sdk.metrics import default_metrics
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.served_artifacts import publishes

if TYPE_CHECKING:
    from qmtl.runtime.io.batch_leases import BatchLeases
    from qmtl.runtime.sdk.backfill_config import BackfillConfig
    from qmtl.runtime.sdk.backfill_types import BatchOutcome
    from qmtl.runtime.sdk.config import QMTLConfig
    from qmtl.runtime.sdk.coverage_report import CoverageReport

__all__ = ["NO_COORDINATOR", "register"]

#: The lease world of a node's publication (one publishing worker per node and range).
PUBLISH_WORLD: Final = "artifacts"
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
    add_metrics_option(parser)
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
    leases: BatchLeases | None = None
    published: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    stopped: bool = False  #: SIGINT or SIGTERM ended the run

    def check_outage(self) -> None:
        """Give up once the coordinator has been unreachable for longer than a lease lives."""
        leases = self.leases
        if leases is None or leases.outage_since is None or leases.outage_error is None:
            return
        down_s = leases.clock.monotonic() - leases.outage_since
        if down_s * 1000 > leases.lease_ms:
            url = leases.outage_error.url
            raise CoordinatorUnavailable(
                f"coordinator {url} unreachable for {down_s:.1f} s, longer than a lease lives "
                f"({leases.lease_ms} ms): {leases.outage_error}",
                url=url,
            )

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
            run.check_outage()
            await asyncio.sleep(run.poll_s)  # the holder may finish, fail or expire
        previous = missing
        run.held.discard(node)
        await provider.ensure_data_available(target.start, target.end, node_id=node)


def _publication_on(provider: EnhancedQuestDBProvider) -> bool:
    return provider.registrar is not None and publishes(
        None,
        publish_fingerprint=provider.publish_fingerprint,
        publish_optional=provider.publish_optional,
    )


async def _publish(provider: EnhancedQuestDBProvider, run: _Run, node: str, window: Range) -> None:
    """Publish ``node``'s covered range if this worker is granted its publication lease
    (module docstring) and some of it is not published yet: a fetch publishes what it serves
    that is not yet published. ``run.published`` records what this worker published."""
    interval = parse_node_id(node).interval
    target = _target(window, interval, int(time.time()))
    coordinator, leases, registrar = provider.coordinator, run.leases, provider.registrar
    if coordinator is None or leases is None or registrar is None or target.start >= target.end:
        return
    key = str(LeaseKey(node, interval, target.start, target.end, world_id=PUBLISH_WORLD))
    lease = None
    try:
        lease = await coordinator.claim(key, leases.lease_ms)
        if lease is None:
            return  # another worker is publishing it
    except CoordinatorUnavailable:
        pass  # content-addressed: publishing without the lease at worst repeats a manifest
    error: str | None = "publication failed"
    try:
        before = await registrar.catalog(node)
        if subtract_ranges([target], before.published(interval)):  # a completed lease is
            result = await provider.fetch(target.start, target.end, node_id=node)  # granted again
            after = await registrar.catalog(node)
            if after.last_as_of_ms != before.last_as_of_ms:  # else: nothing stable was new
                meta = result.metadata
                run.published[node] = (len(meta.artifacts), meta.as_of)
        error = None
    finally:
        if lease is not None:
            with contextlib.suppress(CoordinatorUnavailable, ValueError):
                if error is None:
                    await coordinator.complete(lease)
                else:
                    await coordinator.fail(lease, error)


async def _round(
    provider: EnhancedQuestDBProvider, run: _Run, nodes: tuple[str, ...], window: Range
) -> None:
    try:
        async with asyncio.TaskGroup() as group:  # one failure stops the others
            for node in nodes:
                group.create_task(_fill_node(provider, run, node, window))
    except BaseExceptionGroup as failed:  # report the error, not the group
        raise failed.exceptions[0] from None
    if _publication_on(provider):
        for node in nodes:
            await _publish(provider, run, node, window)


async def _rounds(
    provider: EnhancedQuestDBProvider,
    run: _Run,
    nodes: tuple[str, ...],
    window: Range,
    *,
    follow: bool,
) -> None:
    """One round over ``window``; with ``follow``, then one every ``poll_s`` with the end
    moved to now (each node's target keeps to its closed bars). ``run.window`` is the window
    of the last round that completed (the first one's until then): a worker stopped in the
    middle of a round reports what it finished, not bars that closed a moment ago."""
    run.window = window
    await _round(provider, run, nodes, window)
    while follow:
        await asyncio.sleep(run.poll_s)
        following = Range(window.start, max(window.end, int(time.time())))
        await _round(provider, run, nodes, following)
        run.window = window = following


async def _work(
    config: QMTLConfig,
    run: _Run,
    nodes: tuple[str, ...],
    window: Range,
    *,
    follow: bool,
    quiet: bool,
    metrics_port: int | None = None,
) -> None:
    provider = build_provider(config, strategy="AUTO_BACKFILL")  # records in default_metrics()
    provider.auto_backfiller.on_batch = run.on_batch
    run.leases = provider.auto_backfiller.leases  # a coordinator is configured (_run checks)
    if run.leases is not None:
        run.leases.require_lease = True
    async with serve_metrics(metrics_port, default_metrics().registry), provider:
        run.store = await provider.storage.resolved_location()
        if not quiet:
            show_store(run.store)
        how, _ = await until_stopped(_rounds(provider, run, nodes, window, follow=follow))
        run.stopped = how == "stopped"
        now = int(time.time())
        last = run.window or window
        run.reports = []
        for node in nodes:
            target = _target(last, parse_node_id(node).interval, now)
            report = await provider.coverage_report(
                node_id=node, start=target.start, end=target.end
            )
            run.reports.append(report)


def _published(run: _Run, node: str) -> dict[str, Any] | None:
    if node not in run.published:
        return None
    artifacts, as_of = run.published[node]
    return {"artifacts": artifacts, "as_of": as_of}


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
                        "published": _published(run, r.node_id),
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
    asyncio.run(
        _work(
            config,
            run,
            nodes,
            window,
            follow=args.follow,
            quiet=args.json,
            metrics_port=args.metrics_port,
        )
    )
    if run.stopped:
        print(f"worker {run.worker}: stopped", file=sys.stderr, flush=True)
    _summary(run, as_json=args.json)
    if run.stopped and args.follow:
        return 0  # following ends only when told to: that is its success
    if all(r.missing_bars == 0 for r in run.reports) and run.reports:
        return 0
    return missing_data_exit("worker", run.log.errors, progressed=run.log.succeeded > 0)
