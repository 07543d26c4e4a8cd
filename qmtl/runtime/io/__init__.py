"""The edges: ccxt access and rate limiting, hot-store backends, the provider facade.

ccxt, redis and asyncpg are optional extras, imported only when a component that needs them
is built.
"""

from qmtl.runtime.io.auto_backfiller import DataFetcherAutoBackfiller
from qmtl.runtime.io.ccxt_fetcher import CcxtBackfillConfig, CcxtOHLCVFetcher
from qmtl.runtime.io.ccxt_rate_limiter import get_limiter
from qmtl.runtime.io.coordinator_client import (
    CoordinatorUnavailable,
    DistributedBackfillCoordinator,
    InMemoryBackfillCoordinator,
)
from qmtl.runtime.io.local_rate_limiter import LocalRateLimiter
from qmtl.runtime.io.redis_rate_limiter import RedisRateLimiter
from qmtl.runtime.io.seamless_provider import EnhancedQuestDBProvider, ExchangeRouter
from qmtl.runtime.io.storage import HistoryStorage, LedgerUpdate, StorageError, open_storage
from qmtl.runtime.sdk.rate_limiter import RateLimiter
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = [
    "CcxtBackfillConfig",
    "CcxtOHLCVFetcher",
    "CoordinatorUnavailable",
    "DataFetcherAutoBackfiller",
    "DistributedBackfillCoordinator",
    "EnhancedQuestDBProvider",
    "ExchangeRouter",
    "HistoryStorage",
    "InMemoryBackfillCoordinator",
    "LedgerUpdate",
    "LocalRateLimiter",
    "RateLimiter",
    "RateLimiterConfig",
    "RedisRateLimiter",
    "StorageError",
    "get_limiter",
    "open_storage",
]
