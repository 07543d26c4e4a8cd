"""``qmtl-seamless demo``: the whole job, offline, in a few seconds.

Starts the exchange simulator in-process with a scenario that has a listing date, a trading
halt, an outage and a malformed page; backfills a few symbols × a few days of 1m bars through
the real ccxt client into the embedded DuckDB store, publishing what it served as Parquet
artifacts; prints the coverage report (stored, known-empty, missing) and each node's dataset
fingerprint; then fetches everything again to show that the second pass is served from the
store with zero exchange requests, the same fingerprints and no new artifact. Ends with the
artifacts and a DuckDB one-liner that reads them without qmtl, and with --plot FILE.png, a
timeline of each node's coverage (stored, known-empty, missing).

The window ends stabilization_bars bars before now, so every bar the demo serves is final
and gets published.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qmtl.cli._common import (
    add_metrics_option,
    console,
    coverage_table,
    err_console,
    print_json,
    segment_lines,
)
from qmtl.cli.artifacts_cmd import store_uri
from qmtl.cli.artifacts_report import artifact_table, duckdb_command, entry_dict
from qmtl.cli.coverage_plot import check_plot_path, write_coverage_plot
from qmtl.runtime.io.artifact import ArtifactRegistrar
from qmtl.runtime.io.composition import build_provider, config_for_nodes
from qmtl.runtime.io.metrics_endpoint import serve_metrics
from qmtl.runtime.sdk.config import QMTLConfig, StorageConfig
from qmtl.runtime.sdk.events import ARTIFACT_PUBLISHED
from qmtl.runtime.sdk.history_coverage import DEFAULT_STABILIZATION_BARS, Range
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.node_id import format_node_id
from qmtl.runtime.sdk.timestamps import format_iso
from qmtl.services.exchange_sim import Scenario, run_simulator

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from qmtl.runtime.sdk.artifact_catalog import ArtifactEntry

__all__ = ["demo_scenario", "register", "run_demo"]

_T = TypeVar("_T")

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
INTERVAL = 60


def demo_scenario(window: Range) -> Scenario:
    """Faults placed inside ``window`` (epoch s, 1m-aligned): SOL lists half-way through,
    BTC halts for 3 hours, ETH's first two klines requests hit a 502 and one of BTC's pages
    arrives truncated once."""
    day = 86_400
    mid = window.start + (window.end - window.start) // 2
    halt = window.start + day // 2 - (window.start + day // 2) % 3600
    return Scenario.from_dict(
        {
            "seed": 7,
            "symbols": {
                "BTC/USDT": {
                    "halts": [[halt, halt + 3 * 3600]],
                    "malformed": [
                        {
                            "start": window.start + 2 * day,
                            "end": window.start + 2 * day + 600,
                            "kind": "truncated_json",
                            "requests": 1,
                        }
                    ],
                },
                "ETH/USDT": {"outages": [{"next_requests": 2, "status": 502}]},
                "SOL/USDT": {"listing": mid - mid % 3600},
            },
        }
    )


class _EventCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        name = record.getMessage()
        self.events[name] += 1
        if name == "seamless.backfill.retry":
            self.errors[str(getattr(record, "error", "")).split(":", 1)[0]] += 1


def _publishing(config: QMTLConfig, artifacts: str) -> QMTLConfig:
    """``config`` publishing every fetch's bars into the artifact store ``artifacts``."""
    artifact = replace(config.seamless.artifact, object_store_uri=artifacts, publish_optional=True)
    return replace(config, seamless=replace(config.seamless, artifact=artifact))


async def run_demo(
    days: int,
    directory: Path,
    *,
    dsn: str | None = None,
    artifacts: str | None = None,
    quiet: bool = False,
    plot: Path | None = None,
    metrics: SeamlessMetrics | None = None,
) -> dict[str, Any]:
    """Run the demo into the store ``dsn`` (default: ``directory/seamless.duckdb``),
    publishing into the artifact store ``artifacts`` (default: ``directory/artifacts``);
    returns the report printed by the command. ``plot``: also draw the nodes' coverage
    reports (those the report prints) into this PNG file, rendered off the event loop; it
    is announced on stdout, or on stderr when ``quiet`` (stdout then holds only JSON).
    ``metrics``: the catalog the demo's components record into (default: the process's)."""
    now = int(time.time())
    end = now - now % INTERVAL - DEFAULT_STABILIZATION_BARS * INTERVAL  # final bars only
    window = Range(end - days * 86_400, end)
    if dsn is None:
        dsn = f"duckdb:///{(directory / 'seamless.duckdb').absolute()}"  # the store makes the dir
    if artifacts is None:
        artifacts = f"file://{directory / 'artifacts'}"  # resolved by the store, in a thread
    nodes = [format_node_id("binance", s, "1m") for s in SYMBOLS]
    counter = _EventCounter()
    qmtl_logger = logging.getLogger("qmtl")
    qmtl_logger.addHandler(counter)
    previous_level = qmtl_logger.level
    qmtl_logger.setLevel(logging.INFO)
    try:
        async with run_simulator(demo_scenario(window)) as sim:
            # Built like every other command's provider: through the composition root.
            config = config_for_nodes(nodes, dsn=dsn, exchange_url=sim.base_url)
            config = _publishing(config, artifacts)
            async with build_provider(
                config, strategy="AUTO_BACKFILL", metrics=metrics
            ) as provider:
                store = await provider.storage.resolved_location()
                if not quiet:
                    console.print(
                        f"[bold]qmtl-seamless demo[/]: simulator {sim.base_url}, store {store}\n"
                        f"backfilling {len(nodes)} nodes x {days} days of 1m bars "
                        f"[{format_iso(window.start)}, {format_iso(window.end)}) ...",
                        soft_wrap=True,  # paths and URLs stay whole, whatever the width
                    )
                started = time.perf_counter()
                first = await asyncio.gather(
                    *(
                        provider.fetch(window.start, window.end, node_id=n, interval=INTERVAL)
                        for n in nodes
                    )
                )
                elapsed = time.perf_counter() - started
                requests_first = sim.request_log.count("/api/v3/klines")
                published_first = counter.events[ARTIFACT_PUBLISHED]
                second = [
                    await provider.fetch(window.start, window.end, node_id=n, interval=INTERVAL)
                    for n in nodes
                ]
                requests_second = sim.request_log.count("/api/v3/klines") - requests_first
                published_second = counter.events[ARTIFACT_PUBLISHED] - published_first
                reports = [
                    await provider.coverage_report(node_id=n, start=window.start, end=window.end)
                    for n in nodes
                ]
                registrar = provider.registrar
                assert isinstance(registrar, ArtifactRegistrar)  # the composition root's
                views = [await registrar.view(n, INTERVAL, window) for n in nodes]
                served_by = [entry_dict(registrar, e) for view in views for e in view.entries]
                artifact_store = registrar.store.root_uri
    finally:
        qmtl_logger.removeHandler(counter)
        qmtl_logger.setLevel(previous_level)
    result = {
        "store": store,
        "window": [window.start, window.end],
        "seconds": round(elapsed, 3),
        "klines_requests": requests_first,
        "klines_requests_second_pass": requests_second,
        "artifact_store": artifact_store,
        "artifacts": served_by,
        "artifacts_published_second_pass": published_second,
        "duckdb_command": duckdb_command(artifact_store),
        "retries": dict(counter.errors),
        "events": dict(counter.events),
        "nodes": [
            {
                **rep.to_dict(),
                "rows_served": a.metadata.rows,
                "dataset_fingerprint": a.metadata.dataset_fingerprint,
                "same_fingerprint_second_pass": (
                    a.metadata.dataset_fingerprint == b.metadata.dataset_fingerprint
                ),
            }
            for rep, a, b in zip(reports, first, second, strict=True)
        ],
    }
    if not quiet:
        _print(result, reports, [e for view in views for e in view.entries])
    if plot is not None:
        await write_coverage_plot(reports, plot)
        (err_console if quiet else console).print(
            f"plot written to {plot}", markup=False, soft_wrap=True
        )
    return result


def _print(result: dict[str, Any], reports: list[Any], entries: list[ArtifactEntry]) -> None:
    console.print(coverage_table(reports, title="coverage after backfill"))
    for rep, node in zip(reports, result["nodes"], strict=True):
        console.print(f"[bold]{rep.node_id}[/]  {node['dataset_fingerprint']}", soft_wrap=True)
        for line in segment_lines(rep):
            console.print(f"  {line}")
    retries = ", ".join(f"{k} x{v}" for k, v in result["retries"].items()) or "none"
    console.print(
        f"{result['klines_requests']} klines requests in {result['seconds']} s; retried: {retries}",
        soft_wrap=True,
    )
    same = all(n["same_fingerprint_second_pass"] for n in result["nodes"])
    console.print(
        f"second pass: {result['klines_requests_second_pass']} exchange requests, "
        f"{result['artifacts_published_second_pass']} new artifacts, fingerprints "
        f"{'identical' if same else 'DIFFERENT'}"
    )
    if entries:
        console.print(artifact_table(entries, width=console.width), crop=False)
    root = result["artifact_store"]
    console.print(f"artifacts: {root}", markup=False, soft_wrap=True)
    for command in (f"qmtl-seamless artifacts list --store {root}", result["duckdb_command"]):
        console.print(f"  {command}", markup=False, soft_wrap=True)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: simulator + embedded store, backfill with faults, coverage report",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--days", type=int, help="days of bars per symbol (default 3; 1 with --cluster)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a local cluster instead: throwaway PostgreSQL, Redis and S3-compatible servers, "
        "the coordinator and 4 workers filling and publishing 20 nodes",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(".qmtl/demo"),
        help="where the DuckDB store (DIR/seamless.duckdb) and the artifacts (DIR/artifacts) live",
    )
    parser.add_argument(
        "--dsn", help="another store instead (duckdb:///path.duckdb or postgresql://...)"
    )
    parser.add_argument(
        "--artifacts",
        metavar="URI",
        help="another artifact store instead of DIR/artifacts (file://DIR, a path, s3://...)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        help="also draw each node's coverage as a timeline PNG "
        "(needs pip install 'qmtl-seamless[plot]')",
    )
    add_metrics_option(parser)
    parser.set_defaults(handler=_run)


async def _served(port: int | None, work: Awaitable[_T]) -> _T:
    """``work`` with this process's metrics served on ``port`` (``--metrics-port``) meanwhile."""
    async with serve_metrics(port, default_metrics().registry):
        return await work


def _run(args: argparse.Namespace) -> int:
    if args.cluster:
        return _run_cluster(args)
    if args.days is None:
        args.days = 3
    if not 1 <= args.days <= 365:
        raise ValueError(f"--days must be within 1..365, got {args.days}")
    dsn = None if args.dsn is None else StorageConfig(dsn=args.dsn).dsn  # checked up front
    artifacts = None if args.artifacts is None else store_uri(args.artifacts, option="--artifacts")
    plot = None if args.plot is None else check_plot_path(args.plot)  # before the backfill
    result = asyncio.run(
        _served(
            args.metrics_port,
            run_demo(args.days, args.dir, dsn=dsn, artifacts=artifacts, quiet=args.json, plot=plot),
        )
    )
    if args.json:
        print_json(result)
    complete = all(not n["missing"] for n in result["nodes"])
    return 0 if complete else 1


def _run_cluster(args: argparse.Namespace) -> int:
    from qmtl.cli.demo_cluster import print_cluster, run_cluster
    from qmtl.runtime.sdk.errors import SeamlessError
    from qmtl.testing.servers import ServerUnavailable

    if args.dsn is not None or args.artifacts is not None:
        raise ValueError("--cluster runs its own PostgreSQL: drop --dsn and --artifacts")
    if args.plot is not None:
        raise ValueError("--plot does not apply with --cluster (plot a node with coverage --plot)")
    days = 1 if args.days is None else args.days
    if not 1 <= days <= 30:
        raise ValueError(f"--days must be within 1..30 with --cluster, got {days}")
    try:
        result = asyncio.run(_served(args.metrics_port, run_cluster(days, quiet=args.json)))
    except ServerUnavailable as exc:  # exit 3: this machine lacks a server the cluster needs
        raise SeamlessError(
            f"demo --cluster could not start its servers: {exc} (it needs PostgreSQL and "
            "Redis binaries and pip install 'qmtl-seamless[cluster]')"
        ) from exc
    if args.json:
        print_json(result)
    else:
        print_cluster(result)
    ok = all(w["exit"] == 0 for w in result["workers"])
    return 0 if ok and all(n["complete"] for n in result["nodes"]) else 1
