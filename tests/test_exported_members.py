"""The public surface of the two packages is exactly what we say it is."""

from __future__ import annotations

import importlib
import pkgutil

import qmtl.runtime.io as io_pkg
import qmtl.runtime.sdk as sdk_pkg

SDK = {
    "BackfillConfig", "BackfillReport", "Backfiller", "BatchOutcome", "Clock", "ComputeContext",
    "ConfigError", "ConformanceError", "ConformancePipeline", "ConformanceReport",
    "CoverageSegment", "DataAvailabilityStrategy", "DataFetcher", "ExchangeDataError",
    "ExchangeError", "ExchangeRateLimitError", "ExchangeRequestError",
    "ExchangeUnavailableError", "FakeClock", "FetchWindowResult", "LiveDataFeed", "NodeId",
    "QMTLConfig", "Range", "SLAPolicy", "SLAViolationMode", "SeamlessCoverageError",
    "SeamlessDataProvider", "SeamlessDomainPolicyError", "SeamlessError",
    "SeamlessFetchMetadata", "SeamlessFetchResult", "SeamlessMetrics", "SeamlessSLAExceeded",
    "SegmentKind", "StorageError", "SystemClock", "compute_fingerprint", "compute_missing_ranges",
    "coverage_ratio", "format_node_id", "load_config", "merge_ranges", "parse_node_id",
    "verify_fingerprint",
}  # fmt: skip

IO = {
    "CcxtBackfillConfig", "CcxtOHLCVFetcher", "DataFetcherAutoBackfiller",
    "EnhancedQuestDBProvider", "ExchangeRouter", "HistoryStorage", "LedgerUpdate",
    "LocalRateLimiter", "RateLimiter", "RateLimiterConfig", "RedisRateLimiter", "StorageError",
    "get_limiter", "open_storage",
}  # fmt: skip


def test_sdk_exports() -> None:
    assert set(sdk_pkg.__all__) == SDK
    for name in SDK:
        assert getattr(sdk_pkg, name) is not None


def test_io_exports() -> None:
    assert set(io_pkg.__all__) == IO
    for name in IO:
        assert getattr(io_pkg, name) is not None


def test_every_module_declares_all_and_its_names_exist() -> None:
    import qmtl

    for info in pkgutil.walk_packages(qmtl.__path__, "qmtl."):
        module = importlib.import_module(info.name)
        if info.ispkg and not hasattr(module, "__all__"):
            continue  # a package whose __init__ holds only its docstring
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name!r}"
