"""``ExchangeProfile``: what paging and budgeting need to know about one exchange and market
type — derived from ccxt's own metadata, corrected by a documented table of the exchanges'
published limits where ccxt lacks them.

Why a profile: a fetcher that assumes Binance spot everywhere (1000 bars for weight 2, 1200
weight a minute) runs too fast on OKX or Kraken and too slow on Binance futures, and takes
an exchange that only serves recent history for one that has none. The profile says:

- **page tiers** — bars per request and the weight each costs, in the exchange's own units
  (Binance: request weight; OKX, Bybit, Coinbase, Kraken and ccxt-derived profiles: one unit
  per request) — and the page size with the most bars per unit of weight (ties: more bars);
- **the published limit** (weight per ``limit_interval_ms``) and the **default budget** the
  README rule gives under it: ``tokens_per_interval + burst_tokens`` at or below the limit,
  the burst about 2 % of it (never less than one page);
- the **usage header** the exchange reports spent weight in (Binance ``X-MBX-USED-WEIGHT-1m``);
- **paging**: ``forward`` (asked from a start, the exchange answers its first bars at or after
  it — a page starting later proves the skipped bars absent) or ``window`` (the exchange
  answers one bounded window, e.g. OKX's ``before``/``after``: an empty window is no proof of
  anything); the fetcher pages forward either way through ccxt;
- **history depth**: an exchange that serves only its newest N bars (Kraken: 720) — older
  windows are never recorded as known-empty (they stay missing: "beyond the exchange's
  history depth");
- the **listing field** of the exchange's market metadata (OKX ``listTime``, Binance futures
  ``onboardDate``): bars before it are known-empty on the exchange's own word — the only
  proof of "before listing" on an exchange whose empty windows prove nothing;
- how a rate limit is signalled: the HTTP statuses (429, and 418 for Binance's IP ban).

Any field can be overridden per exchange (``exchanges.<id>.profile`` in the configuration).
Deriving reads ccxt's class attributes only: no exchange is contacted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from qmtl.runtime.io.ccxt_exchange import check_exchange_id
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = [
    "PUBLISHED",
    "ExchangeProfile",
    "best_page",
    "profile_for",
    "rate_limit_statuses",
]

Paging = Literal["forward", "window"]
_BINANCE_FUTURES_TIERS = ((99, 1), (499, 2), (1000, 5), (1500, 10))


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeProfile:
    """One exchange and market type, as paging and budgeting see it (module docstring).
    Weights are in ``weight_unit``; ``limit`` is the exchange's own limit per
    ``limit_interval_ms``; ``source`` says where the numbers come from."""

    exchange_id: str
    market_type: str
    page_tiers: tuple[tuple[int, int], ...]
    page_limit: int | None = None
    markets_weight: int = 1
    limit: int
    limit_interval_ms: int
    weight_unit: str = "request"
    usage_header: str | None = None
    paging: Paging = "forward"
    history_depth_bars: int | None = None
    listing_field: str | None = None
    rate_limit_statuses: tuple[int, ...] = (429,)
    ban_statuses: tuple[int, ...] = ()
    source: str = "ccxt metadata"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        tiers = tuple((int(b), int(w)) for b, w in self.page_tiers)
        if not tiers or any(b < 1 or w < 1 for b, w in tiers):
            raise ValueError(f"page_tiers: need (bars >= 1, weight >= 1) tiers, got {tiers}")
        object.__setattr__(self, "page_tiers", tuple(sorted(tiers)))
        if self.page_limit is None:
            object.__setattr__(self, "page_limit", best_page(tiers)[0])
        elif self.page_limit > self.max_page:
            raise ValueError(
                f"page_limit: {self.page_limit} is more than {self.exchange_id} "
                f"{self.market_type} serves per request ({self.max_page})"
            )
        elif self.page_limit < 1:
            raise ValueError(f"page_limit: must be >= 1, got {self.page_limit}")
        for name in ("markets_weight", "limit", "limit_interval_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.history_depth_bars is not None and self.history_depth_bars < 1:
            raise ValueError(f"history_depth_bars: must be >= 1, got {self.history_depth_bars}")
        if self.paging not in ("forward", "window"):
            raise ValueError(f"paging: must be 'forward' or 'window', got {self.paging!r}")

    @property
    def max_page(self) -> int:
        return self.page_tiers[-1][0]

    @property
    def bars_per_page(self) -> int:
        assert self.page_limit is not None
        return self.page_limit

    @property
    def page_weight(self) -> int:
        """The weight of one request of ``page_limit`` bars (its tier)."""
        return next(w for b, w in self.page_tiers if self.bars_per_page <= b)

    def default_budget(self) -> RateLimiterConfig:
        """The README rule under the published limit: refill plus burst at or below it, the
        burst ~2 % of the limit and at least one page (or the market load, if heavier)."""
        burst = max(self.page_weight, self.markets_weight, self.limit // 50)
        burst = max(1, min(burst, self.limit // 2))
        return RateLimiterConfig(
            tokens_per_interval=max(1, self.limit - burst),
            interval_ms=self.limit_interval_ms,
            burst_tokens=burst,
        )

    def ceiling_bars_per_s(self, budget: RateLimiterConfig | None = None) -> float:
        """Sustained bars per second ``budget`` (default: :meth:`default_budget`) allows
        with ``page_limit``-bar pages."""
        budget = budget or self.default_budget()
        pages_per_s = budget.tokens_per_interval / self.page_weight / (budget.interval_ms / 1000)
        return pages_per_s * self.bars_per_page

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExchangeProfile:
        """This profile with some fields replaced (``exchanges.<id>.profile``); unknown names
        are a ``ValueError`` listing the valid ones."""
        valid = {f.name for f in fields(self)} - {"exchange_id", "market_type", "source"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"profile: unknown field(s) {unknown}; valid: {sorted(valid)}")
        values = dict(overrides)
        if "page_tiers" in values:
            values["page_tiers"] = tuple(tuple(t) for t in values["page_tiers"])
        if "page_tiers" in values and "page_limit" not in values:
            values["page_limit"] = None  # re-choose the best page of the new tiers
        return replace(self, source=f"{self.source} + configuration", **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived page weight, default budget and ceiling."""
        budget = self.default_budget()
        return {
            "exchange_id": self.exchange_id,
            "market_type": self.market_type,
            "page_limit": self.bars_per_page,
            "page_weight": self.page_weight,
            "page_tiers": [list(t) for t in self.page_tiers],
            "markets_weight": self.markets_weight,
            "limit": self.limit,
            "limit_interval_ms": self.limit_interval_ms,
            "weight_unit": self.weight_unit,
            "default_budget": {
                "tokens_per_interval": budget.tokens_per_interval,
                "interval_ms": budget.interval_ms,
                "burst_tokens": budget.burst_tokens,
            },
            "ceiling_bars_per_s": self.ceiling_bars_per_s(),
            "usage_header": self.usage_header,
            "paging": self.paging,
            "history_depth_bars": self.history_depth_bars,
            "listing_field": self.listing_field,
            "rate_limit_statuses": list(self.rate_limit_statuses),
            "ban_statuses": list(self.ban_statuses),
            "source": self.source,
            "notes": list(self.notes),
        }


def best_page(tiers: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The ``(bars, weight)`` tier with the most bars per unit of weight; ties: more bars."""
    return max(tiers, key=lambda tier: (tier[0] / tier[1], tier[0]))


_BINANCE = {
    "usage_header": "X-MBX-USED-WEIGHT-1m",
    "rate_limit_statuses": (429, 418),
    "ban_statuses": (418,),
    "weight_unit": "Binance request weight",
    "source": "published (Binance API docs)",
}

#: (exchange id, market type) -> the exchanges' published numbers where ccxt lacks them.
#: Binance: weights and per-minute limits of the REST API docs; OKX: per-endpoint request
#: limits (history-candles: 100 bars, 20 requests / 2 s); Bybit: 600 requests / 5 s per IP;
#: Coinbase Advanced: 10 requests / s (public); Kraken: ~1 request / s and only the newest
#: 720 OHLC bars.
PUBLISHED: Mapping[tuple[str, str], Mapping[str, Any]] = {
    ("binance", "spot"): {
        **_BINANCE,
        "page_tiers": ((1000, 2),),
        "markets_weight": 20,
        "limit": 6000,
        "limit_interval_ms": 60_000,
    },
    **{
        key: {
            **_BINANCE,
            "page_tiers": _BINANCE_FUTURES_TIERS,
            "markets_weight": 1,
            "limit": 2400,
            "limit_interval_ms": 60_000,
            "listing_field": "onboardDate",
            "notes": ("klines weight by limit: <100: 1, <500: 2, <=1000: 5, more: 10",),
        }
        for key in (
            ("binanceusdm", "swap"),
            ("binanceusdm", "future"),
            ("binance", "swap"),
            ("binance", "future"),
            ("binancecoinm", "swap"),
            ("binancecoinm", "future"),
        )
    },
    **{
        ("okx", market_type): {
            "page_tiers": ((100, 1),),
            "limit": 20,
            "limit_interval_ms": 2_000,
            "paging": "window",
            "listing_field": "listTime",
            "source": "published (OKX docs: history-candles)",
            "notes": ("429 body code 50011; ccxt raises ExchangeNotAvailable for it",),
        }
        for market_type in ("spot", "swap", "future")
    },
    ("bybit", "spot"): {
        "page_tiers": ((1000, 1),),
        "limit": 600,
        "limit_interval_ms": 5_000,
        "source": "published (Bybit docs)",
    },
    ("coinbase", "spot"): {
        "page_tiers": ((300, 1),),
        "limit": 10,
        "limit_interval_ms": 1_000,
        "source": "published (Coinbase docs)",
    },
    ("kraken", "spot"): {
        "page_tiers": ((720, 1),),
        "limit": 10,
        "limit_interval_ms": 10_000,
        "history_depth_bars": 720,
        "paging": "window",
        "source": "published (Kraken docs)",
        "notes": ("OHLC serves only the newest 720 bars",),
    },
}


def _from_ccxt(exchange_id: str, market_type: str) -> dict[str, Any]:
    """What ccxt itself says: the OHLCV page limit of ``features`` and its request pacing
    (``rateLimit`` ms per unit of cost, one unit per request)."""
    import ccxt

    instance = getattr(ccxt, exchange_id)()
    features = instance.features or {}
    section: Any = features.get(market_type) or {}
    if market_type in ("swap", "future") and isinstance(section, Mapping):
        section = section.get("linear") or section
    ohlcv = section.get("fetchOHLCV") if isinstance(section, Mapping) else None
    page = ohlcv.get("limit") if isinstance(ohlcv, Mapping) else None
    rate_limit_ms = float(instance.rateLimit or 1000)
    per_minute = max(1, math.floor(60_000 / rate_limit_ms))
    return {
        "page_tiers": ((int(page) if page else 500, 1),),
        "limit": per_minute,
        "limit_interval_ms": 60_000,
        "rate_limit_statuses": rate_limit_statuses(instance.httpExceptions),
        "source": "ccxt metadata",
    }


def rate_limit_statuses(http_exceptions: Mapping[str, Any]) -> tuple[int, ...]:
    """The HTTP statuses ccxt's ``httpExceptions`` maps to its rate-limit family
    (``DDoSProtection``, ``RateLimitExceeded``), with 429 always among them — whatever
    class ccxt raises, the fetcher penalizes by status."""
    import ccxt

    statuses = {429}
    for code, kind in http_exceptions.items():
        if isinstance(kind, type) and issubclass(kind, ccxt.DDoSProtection) and code.isdigit():
            statuses.add(int(code))
    return tuple(sorted(statuses))


def profile_for(
    exchange_id: str, market_type: str = "spot", overrides: Mapping[str, Any] | None = None
) -> ExchangeProfile:
    """The profile of ``exchange_id``/``market_type``: the published table where it has the
    exchange, else ccxt's metadata; then ``overrides``. ``ValueError`` for an unknown id."""
    check_exchange_id(exchange_id)
    profile = _base_profile(exchange_id, market_type)
    return profile.with_overrides(overrides) if overrides else profile


@functools.cache
def _base_profile(exchange_id: str, market_type: str) -> ExchangeProfile:
    """The profile before overrides, built once per process: deriving it instantiates a
    ccxt exchange class, and every fetcher config asks (validation, pages, budget)."""
    known = PUBLISHED.get((exchange_id, market_type))
    values = dict(known) if known is not None else _from_ccxt(exchange_id, market_type)
    return ExchangeProfile(exchange_id=exchange_id, market_type=market_type, **values)
