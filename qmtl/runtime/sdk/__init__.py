"""The core of qmtl-seamless: pure logic (node ids, coverage math, conformance, fingerprints,
SLA) and the provider engine. No exchange or database code lives here."""

from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.backfill_types import (
    Backfiller,
    BackfillReport,
    BatchOutcome,
    DataFetcher,
    FetchWindowResult,
)
from qmtl.runtime.sdk.clock import Clock, FakeClock, SystemClock
from qmtl.runtime.sdk.compute_context import ComputeContext
from qmtl.runtime.sdk.config import QMTLConfig, load_config
from qmtl.runtime.sdk.conformance import ConformancePipeline, ConformanceReport
from qmtl.runtime.sdk.coverage_report import CoverageReport
from qmtl.runtime.sdk.errors import (
    ConfigError,
    ConformanceError,
    ExchangeDataError,
    ExchangeError,
    ExchangeRateLimitError,
    ExchangeRequestError,
    ExchangeUnavailableError,
    SeamlessCoverageError,
    SeamlessDomainPolicyError,
    SeamlessError,
    SeamlessSLAExceeded,
    StorageError,
)
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata, SeamlessFetchResult
from qmtl.runtime.sdk.fingerprint import compute_fingerprint, verify_fingerprint
from qmtl.runtime.sdk.history_coverage import (
    CoverageSegment,
    Range,
    SegmentKind,
    compute_missing_ranges,
    coverage_ratio,
    merge_ranges,
)
from qmtl.runtime.sdk.history_storage import HistoryStorage, LedgerUpdate, NodeSummary
from qmtl.runtime.sdk.live_feed import LiveDataFeed
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from qmtl.runtime.sdk.node_id import NodeId, format_node_id, parse_node_id
from qmtl.runtime.sdk.rate_limiter import RateLimiter
from qmtl.runtime.sdk.seamless_data_provider import DataAvailabilityStrategy, SeamlessDataProvider
from qmtl.runtime.sdk.sla import SLAPolicy, SLAViolationMode

__all__ = [
    "BackfillConfig",
    "BackfillReport",
    "Backfiller",
    "BatchOutcome",
    "Clock",
    "ComputeContext",
    "ConfigError",
    "ConformanceError",
    "ConformancePipeline",
    "ConformanceReport",
    "CoverageReport",
    "CoverageSegment",
    "DataAvailabilityStrategy",
    "DataFetcher",
    "ExchangeDataError",
    "ExchangeError",
    "ExchangeRateLimitError",
    "ExchangeRequestError",
    "ExchangeUnavailableError",
    "FakeClock",
    "FetchWindowResult",
    "HistoryStorage",
    "LedgerUpdate",
    "LiveDataFeed",
    "NodeId",
    "NodeSummary",
    "QMTLConfig",
    "Range",
    "RateLimiter",
    "SLAPolicy",
    "SLAViolationMode",
    "SeamlessCoverageError",
    "SeamlessDataProvider",
    "SeamlessDomainPolicyError",
    "SeamlessError",
    "SeamlessFetchMetadata",
    "SeamlessFetchResult",
    "SeamlessMetrics",
    "SeamlessSLAExceeded",
    "SegmentKind",
    "StorageError",
    "SystemClock",
    "compute_fingerprint",
    "compute_missing_ranges",
    "coverage_ratio",
    "format_node_id",
    "load_config",
    "merge_ranges",
    "parse_node_id",
    "verify_fingerprint",
]
