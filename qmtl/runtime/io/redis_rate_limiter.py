"""``RedisRateLimiter``: one token bucket per key, shared by every process and host.

The check-and-take is ``token_bucket.lua`` (the mirror of :mod:`~qmtl.runtime.io.token_bucket`)
run atomically by Redis on Redis server time: a caller reserves its cost and is told how long
until it is due, then sleeps exactly that long on its own clock — FIFO across the cluster, no
polling, no clock of ours in the script. ``local_semaphore`` and ``min_interval_ms`` stay per
process. A waiter that slept re-reads the key (``check``, no write): if a penalty started
meanwhile, its reservation is void and it queues again behind the pause (if Redis is gone by
then, the grant stands unless this process knows of a penalty).

Penalties (429/418) go to Redis — every process pauses — and to the local fallback bucket.

Redis unreachable (connection refused, timeout, read-only replica...): the limiter logs
``seamless.rate_limit.redis_unavailable`` once, sets ``seamless_rl_redis_available`` to 0 and
serves requests from a local bucket at ``1 / expected_workers`` of the budget, starting empty
(the cluster may have spent its burst through Redis already). A background
task retries the script every ``reconnect_interval_s`` (never per request); on success it
carries the fallback's state over — the rest of an active pause, and what the fallback spent
and has not yet refilled (charged to the shared bucket) — then logs ``redis_restored`` and
sets the gauge back to 1.

``redis`` is an optional extra (``pip install 'qmtl-seamless[redis]'``), imported when a
limiter is built. Use an instance from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

from qmtl.runtime.io.limiter_base import (
    SlottedLimiter,
    penalty_ms_for,
    record_penalty,
    split_cost,
    window_budget,
)
from qmtl.runtime.io.local_rate_limiter import LocalRateLimiter
from qmtl.runtime.io.token_bucket import USAGE_GRACE_MS
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.events import (
    RATE_LIMIT_REDIS_RESTORED,
    RATE_LIMIT_REDIS_UNAVAILABLE,
    log_event,
)
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.rate_limiter import USAGE_WINDOW_MS
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = ["REDIS_INSTALL_HINT", "TOKEN_BUCKET_LUA", "RedisRateLimiter", "ScriptReply"]

logger = logging.getLogger(__name__)

REDIS_INSTALL_HINT = "redis is not installed: pip install 'qmtl-seamless[redis]'"

#: The bucket script, read once at import (never on the event loop).
TOKEN_BUCKET_LUA = (
    resources.files("qmtl.runtime.io").joinpath("token_bucket.lua").read_text(encoding="utf-8")
)


@dataclass(frozen=True, slots=True)
class ScriptReply:
    """One answer of the script; instants in Redis server milliseconds. ``tokens`` is the
    level as of ``updated_ms``; ``applied`` says whether the key was written."""

    now_ms: float
    due_ms: float
    tokens: float
    updated_ms: float
    not_before_ms: float
    applied: bool

    @classmethod
    def parse(cls, raw: Any) -> ScriptReply:
        now, due, tokens, updated, not_before, applied = (float(v) for v in raw)
        return cls(now, due, tokens, updated, not_before, applied == 1.0)

    @property
    def wait_ms(self) -> float:
        return max(0.0, self.due_ms - self.now_ms)

    @property
    def paused(self) -> bool:
        """Whether a penalty is in force at ``now_ms``."""
        return self.now_ms < self.not_before_ms


def _import_redis() -> tuple[Any, dict[str, Any], type[BaseException]]:
    """``redis.asyncio``, client options, the base error class."""
    try:
        import redis
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError
    except ImportError as exc:
        raise ImportError(REDIS_INSTALL_HINT) from exc
    # One immediate retry (a pooled connection may predate a server restart), then fail fast
    # to the fallback: redis-py's default retries back off for seconds.
    options: dict[str, Any] = {"retry": Retry(NoBackoff(), 1)}
    try:  # redis >= 7: name the version ourselves, else every new connection reads package
        from redis.driver_info import DriverInfo  # metadata from disk (on the event loop)
    except ImportError:
        pass
    else:
        options["driver_info"] = DriverInfo(lib_version=redis.__version__)
    return aioredis, options, RedisError


class RedisRateLimiter(SlottedLimiter):
    """The cluster-wide limiter for ``key`` on ``config.redis_dsn`` (or an injected
    ``redis.asyncio`` ``client``, which the limiter then does not close)."""

    def __init__(
        self,
        config: RateLimiterConfig,
        key: str,
        *,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        client: Any = None,
        reconnect_interval_s: float = 1.0,
        timeout_s: float = 1.0,
    ) -> None:
        if reconnect_interval_s <= 0 or timeout_s <= 0:
            raise ValueError("reconnect_interval_s and timeout_s must be > 0")
        aioredis, options, redis_error = _import_redis()
        if client is None:
            if not config.redis_dsn:
                raise ValueError("RedisRateLimiter needs config.redis_dsn or a client")
            client = aioredis.Redis.from_url(
                config.redis_dsn,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                **options,
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self.config = config
        self.key = key
        self.clock = clock or SystemClock()
        self.metrics = metrics or default_metrics()
        self.reconnect_interval_s = reconnect_interval_s
        self.rate_per_ms = config.tokens_per_interval / config.interval_ms
        self.capacity = float(config.burst_tokens)
        self.fallback = LocalRateLimiter(
            config, key, clock=self.clock, metrics=self.metrics, share=1 / config.expected_workers
        )
        self._client = client
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._outage_errors: tuple[type[BaseException], ...] = (redis_error, OSError)
        self._slots = asyncio.Semaphore(config.local_semaphore)
        self._next_start_ms = 0.0
        self._available = True
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self.metrics.rl_redis_available.labels(key=key).set(1)

    @property
    def available(self) -> bool:
        """Whether requests are served from Redis (``False``: local fallback)."""
        return self._available

    def _now_ms(self) -> float:
        return self.clock.monotonic() * 1000.0

    async def run_script(self, op: str, *args: float) -> ScriptReply:
        """One call of the bucket script on this key (raises on Redis errors)."""
        argv = [op, repr(self.rate_per_ms), repr(self.capacity), *(repr(a) for a in args)]
        raw = await self._script(keys=[self.key], args=argv)
        return ScriptReply.parse(raw)

    async def _queue(self, cost: float) -> None:
        while True:
            if not self._available:
                await self.fallback.wait_turn(cost)
                return
            try:
                due = await self._reserve(cost)
            except self._outage_errors as exc:
                self._mark_down(exc)
                continue
            now = self._now_ms()
            due = max(due, self._next_start_ms)
            self._next_start_ms = due + self.config.min_interval_ms
            if due <= now:
                return
            await self.clock.sleep((due - now) / 1000.0)
            try:
                check = await self.run_script("check")
            except self._outage_errors as exc:
                self._mark_down(exc)
                # Redis granted these tokens; only a penalty we know of can void them.
                if self.fallback.pause_left_ms() <= 0:
                    return
                continue
            if not check.paused:
                return
            # A penalty started while we slept: our reservation is void, queue behind it.

    async def _reserve(self, cost: float) -> float:
        """Reserve ``cost`` (in pieces if it exceeds the burst); the local instant it is due."""
        wait_ms = 0.0
        tokens = self.capacity
        for piece in split_cost(cost, self.capacity):
            reply = await self.run_script("reserve", piece)
            wait_ms, tokens = max(wait_ms, reply.wait_ms), reply.tokens
        self.metrics.rl_tokens_available.labels(key=self.key).set(max(0.0, tokens))
        return self._now_ms() + wait_ms

    async def penalize(self, status: int, retry_after_s: float | None) -> float:
        pause_ms = penalty_ms_for(status, retry_after_s, self.config)
        self.fallback.pause(pause_ms)
        if self._available:
            try:
                await self.run_script("penalize", pause_ms)
            except self._outage_errors as exc:
                self._mark_down(exc)  # the fallback holds the pause; pushed on restore
        record_penalty(self.metrics, self.key, status, retry_after_s, pause_ms)
        return pause_ms

    async def observe_usage(
        self, used_weight: int, *, window_ms: int = USAGE_WINDOW_MS, age_ms: float = 0.0
    ) -> None:
        """Clamp the shared bucket (Redis time places the window) and the fallback."""
        self.fallback.sync_usage(used_weight, window_ms=window_ms, age_ms=age_ms)
        if not self._available:
            return
        allowance = window_budget(self.config, window_ms) - used_weight
        try:
            await self.run_script("sync", allowance, window_ms, age_ms, USAGE_GRACE_MS)
        except self._outage_errors as exc:
            self._mark_down(exc)

    def _mark_down(self, exc: BaseException) -> None:
        if not self._available or self._closed:
            return
        self._available = False
        # The fallback starts empty and refills at its share: no extra burst on top of what
        # the cluster already spent through Redis.
        self.fallback.pause(0.0)
        self.metrics.rl_redis_available.labels(key=self.key).set(0)
        log_event(
            logger,
            RATE_LIMIT_REDIS_UNAVAILABLE,
            level=logging.WARNING,
            key=self.key,
            error=f"{type(exc).__name__}: {exc}"[:300],
            fallback_share=self.fallback.share,
        )
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Retry Redis every ``reconnect_interval_s`` until it answers; hand the fallback's
        state over, then switch back."""
        while True:
            await self.clock.sleep(self.reconnect_interval_s)
            try:
                await self.run_script("check")
                pause_ms = self.fallback.pause_left_ms()
                if pause_ms > 0:
                    await self.run_script("penalize", pause_ms)
                for piece in split_cost(self.fallback.deficit(), self.capacity):
                    if piece > 0:
                        await self.run_script("reserve", piece)
            except self._outage_errors:
                continue
            break
        self._available = True
        self._reconnect_task = None
        self.metrics.rl_redis_available.labels(key=self.key).set(1)
        log_event(logger, RATE_LIMIT_REDIS_RESTORED, key=self.key)

    async def aclose(self) -> None:
        self._closed = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_client:
            await self._client.aclose()
