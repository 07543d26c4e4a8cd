"""Choosing and sharing rate limiters: :func:`get_limiter` (local or Redis, by settings) and
:func:`shared_limiter` (one limiter per key per process).

Why sharing matters: a budget belongs to a *key* (``key_template``, default
``ccxt:{exchange}:{account?}``), not to a fetcher. Two fetchers of one exchange in one process
that each built their own local bucket would together spend twice the budget; with
:func:`shared_limiter` every fetcher of the process that renders the same key gets the same
limiter (the Redis limiter is shared across processes by Redis itself, and within the process
its fallback bucket, request slots and penalties are shared the same way). The limiter lives
as long as one of its holders: each holder's ``aclose()`` releases it, the last one closes it.
Sharing is per event loop (the limiter's semaphores and Redis connections belong to a loop),
which in a process is the one loop that runs it. Two holders of one key must agree on its
settings: different settings for one key are refused (one key is one budget).

The implementations: :mod:`~qmtl.runtime.io.local_rate_limiter` (process-local bucket),
:mod:`~qmtl.runtime.io.redis_rate_limiter` (cluster-wide), their common part
:mod:`~qmtl.runtime.io.limiter_base`, the arithmetic :mod:`~qmtl.runtime.io.token_bucket`;
the port is :class:`qmtl.runtime.sdk.rate_limiter.RateLimiter`. The documented import path
``qmtl.runtime.io.ccxt_rate_limiter`` keeps ``LocalRateLimiter``, ``RateLimiter`` and
``get_limiter`` importable from here.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace

# DEFAULT_BAN_MS, penalty_ms_for, LocalRateLimiter and RateLimiter stay importable from the
# The documented path (explicit re-exports; each is defined in its own module).
from qmtl.runtime.io.limiter_base import DEFAULT_BAN_MS as DEFAULT_BAN_MS
from qmtl.runtime.io.limiter_base import penalty_ms_for as penalty_ms_for
from qmtl.runtime.io.local_rate_limiter import LocalRateLimiter
from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.config import redis_dsn_from_env
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.rate_limiter import USAGE_WINDOW_MS
from qmtl.runtime.sdk.rate_limiter import RateLimiter as RateLimiter
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig, render_key

__all__ = ["SharedLimiter", "get_limiter", "shared_limiter"]


def get_limiter(
    config: RateLimiterConfig,
    exchange_id: str,
    account: str | None = None,
    *,
    clock: Clock | None = None,
    metrics: SeamlessMetrics | None = None,
    env: Mapping[str, str] | None = None,
) -> RateLimiter:
    """A *new* limiter for ``exchange_id`` (and ``account``), keyed by
    ``config.key_template``: the Redis limiter when ``config.redis_dsn`` or
    ``QMTL_CCXT_RATE_LIMITER_REDIS`` (read from ``env``, default the process environment)
    names a server, else a process-local one. Fetchers use :func:`shared_limiter`."""
    key = render_key(config.key_template, exchange_id, account)
    config = _with_env_dsn(config, env)
    metrics = metrics or default_metrics()
    # The key's counters exist at 0 from the start: an alert's increase() then sees the
    # first 429/418 or drop (a series born at 1 has no earlier sample to differ from).
    metrics.rl_dropped.labels(key=key)
    for status in ("429", "418"):
        metrics.rl_penalty.labels(key=key, status=status)
    if config.redis_dsn is None:
        return LocalRateLimiter(config, key, clock=clock, metrics=metrics)
    from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter

    return RedisRateLimiter(config, key, clock=clock, metrics=metrics)


def _with_env_dsn(config: RateLimiterConfig, env: Mapping[str, str] | None) -> RateLimiterConfig:
    """``config`` with ``QMTL_CCXT_RATE_LIMITER_REDIS`` filling a null ``redis_dsn`` (through
    ``replace``, which re-validates the scheme of a DSN from the environment)."""
    dsn = config.redis_dsn or redis_dsn_from_env(env)
    return config if dsn == config.redis_dsn else replace(config, redis_dsn=dsn)


#: A registry slot: the rendered key and the clock's identity (see ``_clock_token``).
_Slot = tuple[str, object]


@dataclass(slots=True)
class _Entry:
    limiter: RateLimiter
    config: RateLimiterConfig
    holders: int = 0


#: event loop -> (key, clock token) -> the shared limiter of that key.
_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Slot, _Entry]]
_REGISTRY = weakref.WeakKeyDictionary()


def _clock_token(clock: Clock) -> object:
    # Every SystemClock tells the same time: one budget. A fake clock is its own world.
    return "system" if type(clock) is SystemClock else clock


class SharedLimiter:
    """One holder's handle on the process's limiter for a key (see the module docstring).
    Everything is delegated; :meth:`aclose` releases this holder only."""

    def __init__(self, entry: _Entry, table: dict[_Slot, _Entry], slot: _Slot) -> None:
        self._entry = entry
        self._table = table
        self._slot = slot
        self._released = False
        self.key = entry.limiter.key

    @property
    def limiter(self) -> RateLimiter:
        """The shared limiter itself."""
        return self._entry.limiter

    def acquire(self, cost: float = 1) -> AbstractAsyncContextManager[None]:
        return self._entry.limiter.acquire(cost)

    async def penalize(self, status: int, retry_after_s: float | None) -> float:
        return await self._entry.limiter.penalize(status, retry_after_s)

    async def observe_usage(
        self, used_weight: int, *, window_ms: int = USAGE_WINDOW_MS, age_ms: float = 0.0
    ) -> None:
        await self._entry.limiter.observe_usage(used_weight, window_ms=window_ms, age_ms=age_ms)

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        self._entry.holders -= 1
        if self._entry.holders > 0:
            return
        if self._table.get(self._slot) is self._entry:
            del self._table[self._slot]
        await self._entry.limiter.aclose()


def shared_limiter(
    config: RateLimiterConfig,
    exchange_id: str,
    account: str | None = None,
    *,
    clock: Clock | None = None,
    metrics: SeamlessMetrics | None = None,
    env: Mapping[str, str] | None = None,
) -> SharedLimiter:
    """A handle on this process's one limiter for the key ``config`` renders for
    ``exchange_id``/``account`` (built by :func:`get_limiter` for the first holder). Call it
    inside the event loop that will use it. ``ValueError`` when the key is already held
    with other settings."""
    clock = clock or SystemClock()
    key = render_key(config.key_template, exchange_id, account)
    effective = _with_env_dsn(config, env)
    table = _REGISTRY.setdefault(asyncio.get_running_loop(), {})
    slot = (key, _clock_token(clock))
    entry = table.get(slot)
    if entry is not None and entry.config != effective:
        raise ValueError(
            f"rate limiter key {key!r} is already in use in this process with other settings "
            f"({entry.config}); one key is one budget: give every fetcher of {exchange_id!r} "
            "the same rate_limit, or separate them with key_template/account"
        )
    if entry is None:
        limiter = get_limiter(effective, exchange_id, account, clock=clock, metrics=metrics)
        entry = table[slot] = _Entry(limiter, effective)
    entry.holders += 1
    return SharedLimiter(entry, table, slot)
