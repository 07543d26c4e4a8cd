"""Injectable clocks: wall time and sleeping, so tests advance time instead of sleeping.

``now()`` is epoch seconds (UTC, float) and is what stabilization, staleness and lease expiry
compare against; ``monotonic()`` is for measuring elapsed durations (SLA phases).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "wait_within"]


class Clock(Protocol):
    """What time-aware components need from time."""

    def now(self) -> float:
        """Epoch seconds, UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A virtual clock for tests.

    With ``auto_advance=True`` every ``sleep`` jumps time forward by its duration at once
    (retry backoffs run instantly and are still measured). Otherwise sleepers wait until a
    test calls :meth:`advance` past their deadline. Not thread-safe: use from one event loop.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, auto_advance: bool = False) -> None:
        self._t = float(start)
        self.auto_advance = auto_advance
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.slept: list[float] = []

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._t += seconds
        while self._sleepers and self._sleepers[0][0] <= self._t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def next_wakeup(self) -> float | None:
        """The earliest deadline among sleepers, or ``None`` when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def run_until(
        self, done: Callable[[], bool], *, max_steps: int = 100_000, settle_s: float = 0.01
    ) -> None:
        """Drive sleepers: let tasks run (and worker threads finish, ``settle_s`` of real
        time), then jump to the next wakeup, until ``done()``; for tests of code that sleeps
        on this clock."""
        for _ in range(max_steps):
            for _ in range(5):
                await asyncio.sleep(0)
            if done():
                return
            await asyncio.sleep(settle_s)
            if done():
                return
            wakeup = self.next_wakeup()
            if wakeup is not None:
                self.advance(max(0.0, wakeup - self._t))
        raise RuntimeError("FakeClock.run_until: condition not reached")

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        if self.auto_advance:
            self.advance(seconds)
            await asyncio.sleep(0)
            return
        if seconds == 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await fut


async def wait_within(task: asyncio.Task[Any], budget_ms: float | None, clock: Clock) -> bool:
    """Wait for ``task`` at most ``budget_ms`` on ``clock`` (``None``: until done, shielded
    so the caller's cancellation does not cancel the task); ``True`` if it finished."""
    if budget_ms is None:
        await asyncio.shield(task)
        return True
    timer = asyncio.create_task(clock.sleep(budget_ms / 1000.0))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    return task.done()
