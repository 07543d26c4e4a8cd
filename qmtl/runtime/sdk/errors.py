"""The one error tree of qmtl-seamless.

Every error the library raises on purpose derives from :class:`SeamlessError`; adapters
translate foreign errors (ccxt, redis, asyncpg, aiohttp) at the edge with ``raise ... from exc``
and attach the node id and window they were working on::

    SeamlessError
    ├── ArchiveError                         a bulk-archive file is missing / corrupt / unreachable
    ├── ConfigError (also ValueError)        bad configuration; names the key path
    ├── ConformanceError                     strict conformance refused a frame
    ├── ExchangeError                        the exchange could not serve a window
    │   ├── ExchangeDataError                malformed / unusable payload (retryable)
    │   ├── ExchangeUnavailableError         network failure, timeout, 5xx (retryable)
    │   ├── ExchangeRateLimitError           429 / 418 with Retry-After (retryable, later)
    │   └── ExchangeRequestError             bad symbol / parameters / auth (not retryable)
    ├── SeamlessCoverageError                FAIL_FAST found missing ranges
    ├── SeamlessSLAExceeded                  a fetch phase blew its budget (FAIL_FAST)
    ├── SeamlessDomainPolicyError            an execution-domain rule refused the fetch
    └── StorageError                         a hot-store backend failed (driver error chained)

Plain ``ValueError`` is kept for bad arguments to pure functions (node ids, ranges,
timestamps), as Python users expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from qmtl.runtime.sdk.timestamps import format_span

if TYPE_CHECKING:
    from qmtl.runtime.sdk.history_coverage import Range

__all__ = [
    "ArchiveError",
    "ConfigError",
    "ConformanceError",
    "ExchangeDataError",
    "ExchangeError",
    "ExchangeRateLimitError",
    "ExchangeRequestError",
    "ExchangeUnavailableError",
    "SeamlessCoverageError",
    "SeamlessDomainPolicyError",
    "SeamlessError",
    "SeamlessSLAExceeded",
    "StorageError",
]


class SeamlessError(Exception):
    """Root of every error qmtl-seamless raises on purpose."""


class ArchiveError(SeamlessError):
    """A bulk-archive file could not be used, and nothing from it was returned: ``kind`` is
    ``missing``, ``checksum``, ``corrupt`` or ``unavailable``, ``name`` the file and
    ``reason`` why, in one line. The backfill then asks the REST API for the file's window
    (an archive is never the only evidence of anything)."""

    def __init__(self, message: str, *, kind: str, name: str, reason: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.reason = reason


class ConfigError(SeamlessError, ValueError):
    """Invalid configuration. ``errors`` lists every ``"key.path: problem"`` found."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors) if self.errors else "invalid configuration")


class ConformanceError(SeamlessError):
    """A frame violated the strict dtype policy (missing column or dtype mismatch)."""


class ExchangeError(SeamlessError):
    """The exchange could not serve ``window`` (half-open epoch seconds) of ``node_id``.

    ``retryable`` tells the backfiller whether another attempt can help; ``retry_after_s``
    is the exchange's ``Retry-After`` and ``http_status`` its status code, when known.
    """

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        window: tuple[int, int] | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.reason = message
        self.node_id = node_id
        self.window = window
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        where = []
        if node_id is not None:
            where.append(f"node_id={node_id!r}")
        if window is not None:
            where.append(f"window={format_span(window[0], window[1])}")
        if http_status is not None:
            where.append(f"http_status={http_status}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class ExchangeDataError(ExchangeError):
    """The exchange answered with data we cannot trust; nothing from it is stored."""


class ExchangeUnavailableError(ExchangeError):
    """Network failure, timeout or 5xx: the exchange may answer a later attempt."""


class ExchangeRateLimitError(ExchangeError):
    """429 (rate limit) or 418 (IP ban): retry no sooner than ``retry_after_s``."""


class ExchangeRequestError(ExchangeError):
    """The request itself is wrong (unknown symbol, bad parameter, auth): retrying cannot
    help."""

    retryable = False


class SeamlessCoverageError(SeamlessError):
    """Storage cannot cover the request and the strategy forbids backfilling it."""

    def __init__(self, node_id: str, missing_ranges: Sequence[Range]) -> None:
        self.node_id = node_id
        self.missing_ranges = list(missing_ranges)
        shown = ", ".join(str(r) for r in self.missing_ranges[:5])
        more = f" (+{len(self.missing_ranges) - 5} more)" if len(self.missing_ranges) > 5 else ""
        super().__init__(f"{node_id}: missing ranges {shown}{more}")


class SeamlessSLAExceeded(SeamlessError):
    """A fetch phase exceeded its budget under ``SLAViolationMode.FAIL_FAST``."""

    def __init__(self, phase: str, *, node_id: str, elapsed_ms: float, budget_ms: float) -> None:
        self.phase = phase
        self.node_id = node_id
        self.elapsed_ms = elapsed_ms
        self.budget_ms = budget_ms
        super().__init__(
            f"{node_id}: SLA phase {phase!r} took {elapsed_ms:.1f} ms (budget {budget_ms:.1f} ms)"
        )


class SeamlessDomainPolicyError(SeamlessError):
    """The execution domain's policy refuses this fetch (e.g. backtest without ``as_of``)."""


class StorageError(SeamlessError):
    """A storage backend failed (connection, SQL, I/O); the driver's error is ``__cause__``.

    Bad arguments (a malformed frame, a NUL in a node id) stay ``ValueError``.
    """
