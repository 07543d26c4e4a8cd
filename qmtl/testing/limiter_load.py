"""Load on one shared rate-limit key from several OS processes, for tests and ``bench/``.

:func:`run_cluster` spawns (``multiprocessing`` *spawn*) one process per :class:`LoadSpec`;
each builds a :class:`~qmtl.runtime.io.ccxt_fetcher.CcxtOHLCVFetcher` with the limiter that
``get_limiter`` picks for its config (Redis when ``redis_dsn`` is set) and, once every process
is ready, backfills 1m windows of one page each with ``tasks`` concurrent loops for ``seconds``
— then stops by itself. Each writes a :class:`WorkerReport` (when its requests were let
through, the rate-limit errors it got, the limiter events it logged) to a JSON file that the
parent reads back. The exchange (usually the simulator, served by the caller) sees the rest.

:func:`reserve_in_process` is the bare version for the limiter's own tests: ``count``
reservations straight through the Lua script, reporting the due instants Redis granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "LoadSpec",
    "RecordingLimiter",
    "WorkerReport",
    "reserve_in_process",
    "run_cluster",
    "run_reservers",
]

_NODE = "ohlcv:binance:{symbol}:1m"
_PAGE_S = 1000 * 60  # one klines page of 1000 1m bars
_SLOT_PAGES = 200  # pages per (worker, task): 64 slots x 200 pages end before 2025


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """One worker process (``worker`` < 8, ``tasks`` <= 8). Each task pages through its own
    run of ``_SLOT_PAGES`` one-page windows from ``first_bar`` (epoch s, minute-aligned; all
    in the past), so no two requests ask the same window. ``rate_limiter`` is a
    ``RateLimiterConfig``."""

    base_url: str
    rate_limiter: Any
    seconds: float
    worker: int = 0
    tasks: int = 3
    symbol: str = "BTC/USDT"
    first_bar: int = 946_684_800  # 2000-01-01
    #: Load markets before reporting ready, past the limiter (benchmarks measure klines only;
    #: the caller resets the exchange's weight afterwards).
    warm_markets: bool = False


@dataclass
class WorkerReport:
    """What one worker saw; times are epoch seconds (``time.time()``). ``penalties`` are
    ``(called, returned, status)``: the pause was written to the limiter in between."""

    worker: int
    started_at: float = 0.0
    issued_at: list[float] = field(default_factory=list)
    errors: list[tuple[float, int]] = field(default_factory=list)
    penalties: list[tuple[float, float, int]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    on_redis_at_end: bool | None = None

    def issued_between(self, start: float, end: float) -> list[float]:
        return [t for t in self.issued_at if start <= t < end]


class RecordingLimiter:
    """Wraps a limiter and records the instant each request is let through. While
    ``bypass`` is set, requests pass uncharged and unrecorded (warm-up)."""

    def __init__(self, inner: Any, report: WorkerReport) -> None:
        self.inner = inner
        self.key: str = inner.key
        self.report = report
        self.bypass = False

    @contextlib.asynccontextmanager
    async def _acquire(self, cost: float) -> AsyncIterator[None]:
        if self.bypass:
            yield
            return
        async with self.inner.acquire(cost):
            self.report.issued_at.append(time.time())
            yield

    def acquire(self, cost: float = 1) -> AbstractAsyncContextManager[None]:
        return self._acquire(cost)

    async def penalize(self, status: int, retry_after_s: float | None) -> float:
        called = time.time()
        pause: float = await self.inner.penalize(status, retry_after_s)
        self.report.penalties.append((called, time.time(), status))
        return pause

    async def observe_usage(
        self, used_weight: int, *, window_ms: int = 60_000, age_ms: float = 0.0
    ) -> None:
        if not self.bypass:
            await self.inner.observe_usage(used_weight, window_ms=window_ms, age_ms=age_ms)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _EventLog(logging.Handler):
    def __init__(self, report: WorkerReport) -> None:
        super().__init__(logging.INFO)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if isinstance(event, str) and event.startswith("seamless.rate_limit."):
            self.report.events.append((record.created, event))


async def _backfill(spec: LoadSpec, ready: Any, go: Any, out_path: str) -> None:
    if not (0 <= spec.worker < 8 and 1 <= spec.tasks <= 8):
        raise ValueError("LoadSpec: worker must be within [0, 8) and tasks within [1, 8]")
    from prometheus_client import CollectorRegistry

    from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
    from qmtl.runtime.io.ccxt_rate_limiter import get_limiter
    from qmtl.runtime.sdk.errors import ExchangeError
    from qmtl.runtime.sdk.metrics import SeamlessMetrics

    report = WorkerReport(spec.worker)
    qmtl_logger = logging.getLogger("qmtl")
    qmtl_logger.addHandler(_EventLog(report))
    qmtl_logger.setLevel(logging.INFO)
    metrics = SeamlessMetrics(CollectorRegistry())
    inner = get_limiter(spec.rate_limiter, "binance", metrics=metrics)
    config = CcxtBackfillConfig(
        exchange_id="binance",
        symbols=(spec.symbol,),
        urls={"rest": spec.base_url},
        rate_limiter=spec.rate_limiter,
    )
    recording = RecordingLimiter(inner, report)
    fetcher = CcxtOHLCVFetcher(config, limiter=recording, metrics=metrics)
    fetcher.exchange  # noqa: B018 -- build the ccxt instance before the start signal
    if spec.warm_markets:
        recording.bypass = True
        await fetcher.load_markets()
        recording.bypass = False
    node = _NODE.format(symbol=spec.symbol)
    ready.set()
    await asyncio.to_thread(go.wait, 120)
    report.started_at = time.time()

    async def loop(task: int) -> None:
        for page in range(_SLOT_PAGES):
            start = spec.first_bar + ((spec.worker * 8 + task) * _SLOT_PAGES + page) * _PAGE_S
            try:
                result = await fetcher.fetch_window(
                    start, start + _PAGE_S, node_id=node, interval=60
                )
            except ExchangeError as exc:
                report.errors.append((time.time(), exc.http_status or 0))
            else:
                if result.requests != 1:
                    raise RuntimeError(f"window {start} took {result.requests} requests")
        raise RuntimeError("a load task ran out of windows: raise _SLOT_PAGES")

    try:
        async with asyncio.timeout(spec.seconds):
            await asyncio.gather(*(loop(i) for i in range(spec.tasks)))
    except TimeoutError:
        pass
    finally:
        report.on_redis_at_end = getattr(inner, "available", None)
        await fetcher.aclose()
        await asyncio.to_thread(_write, out_path, json.dumps(asdict(report)))


def _backfill_process(spec: LoadSpec, ready: Any, go: Any, out_path: str) -> None:
    asyncio.run(_backfill(spec, ready, go, out_path))


async def _spawn_and_wait(
    target: Callable[..., None],
    args: Sequence[tuple[Any, ...]],
    *,
    timeout_s: float,
    during: Callable[[float], Awaitable[None]] | None,
    before_start: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, list[str]]:
    """Start one process per args tuple (each gets ``ready, go, out_path`` appended), run
    ``before_start()`` once all are ready, release them together, run ``during(t0)``
    meanwhile, join; the start instant and result paths."""
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    folder = tempfile.mkdtemp(prefix="qmtl-load-")
    paths = [os.path.join(folder, f"worker-{i}.json") for i in range(len(args))]
    readies = [ctx.Event() for _ in args]
    procs = [
        ctx.Process(target=target, args=(*a, r, go, p), daemon=True)
        for a, r, p in zip(args, readies, paths, strict=True)
    ]
    try:
        for proc in procs:
            await asyncio.to_thread(proc.start)
        for ready in readies:
            if not await asyncio.to_thread(ready.wait, timeout_s):
                raise RuntimeError("a load worker did not start")
        await asyncio.sleep(0.2)  # every worker is built: let them reach go.wait()
        if before_start is not None:
            await before_start()
        t0 = time.time()
        go.set()
        if during is not None:
            await during(t0)
        for proc in procs:
            await asyncio.to_thread(proc.join, timeout_s)
            if proc.exitcode != 0:
                raise RuntimeError(f"load worker exited with {proc.exitcode}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 5)
    return t0, paths


async def run_cluster(
    specs: Sequence[LoadSpec],
    *,
    timeout_s: float = 120.0,
    during: Callable[[float], Awaitable[None]] | None = None,
    before_start: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, list[WorkerReport]]:
    """Run one backfilling process per spec; ``(t0, reports)`` where ``t0`` (epoch s) is
    when they were released. ``before_start()`` runs once every process is ready;
    ``during(t0)`` runs in the caller's loop while they work."""
    t0, paths = await _spawn_and_wait(
        _backfill_process,
        [(s,) for s in specs],
        timeout_s=timeout_s,
        during=during,
        before_start=before_start,
    )
    reports = []
    for path in paths:
        text = await asyncio.to_thread(_read, path)
        data = json.loads(text)
        data["errors"] = [tuple(e) for e in data["errors"]]
        data["penalties"] = [tuple(e) for e in data["penalties"]]
        data["events"] = [tuple(e) for e in data["events"]]
        reports.append(WorkerReport(**data))
    return t0, reports


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as src:
        return src.read()


async def _reserve(
    config: Any, key: str, count: int, seed: int, ready: Any, go: Any, out_path: str
) -> None:
    from prometheus_client import CollectorRegistry

    from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter
    from qmtl.runtime.sdk.metrics import SeamlessMetrics

    limiter = RedisRateLimiter(config, key, metrics=SeamlessMetrics(CollectorRegistry()))
    rng = random.Random(seed)
    costs = [rng.randint(1, 3) for _ in range(count)]
    await limiter.run_script("check")  # connected
    ready.set()
    await asyncio.to_thread(go.wait, 120)
    try:
        replies = [await limiter.run_script("reserve", c) for c in costs]
    finally:
        await limiter.aclose()
    grants = [(r.due_ms, c) for r, c in zip(replies, costs, strict=True)]
    await asyncio.to_thread(_write, out_path, json.dumps(grants))


def _reserve_process(
    config: Any, key: str, count: int, seed: int, ready: Any, go: Any, out_path: str
) -> None:
    asyncio.run(_reserve(config, key, count, seed, ready, go, out_path))


async def reserve_in_process(limiter: Any, costs: Sequence[float]) -> list[tuple[float, float]]:
    """``(due_ms, cost)`` of each reservation, taken one after the other."""
    return [((await limiter.run_script("reserve", c)).due_ms, c) for c in costs]


async def run_reservers(
    config: Any, key: str, *, processes: int, count: int, timeout_s: float = 60.0
) -> list[tuple[float, float]]:
    """``processes`` spawned processes each take ``count`` reservations (costs 1–3) on
    ``key`` through the Lua script at once; every ``(due_ms, cost)`` granted."""
    args = [(config, key, count, seed) for seed in range(processes)]
    _, paths = await _spawn_and_wait(_reserve_process, args, timeout_s=timeout_s, during=None)
    grants: list[tuple[float, float]] = []
    for path in paths:
        grants += [(due, cost) for due, cost in json.loads(await asyncio.to_thread(_read, path))]
    return grants
