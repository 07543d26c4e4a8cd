"""Checks that span several keys or sections of the configuration (pure).

- ``publish_fingerprint: false`` is refused while a backtest or dryrun domain is configured
  (they serve only published, fingerprinted artifacts); ``early_fingerprint`` needs
  ``publish_fingerprint`` (a preview is compared with the sealed fingerprint).
- backtest must read ``artifact_only`` and dryrun an ``artifact_*`` source; both require
  ``as_of``.
- every effective rate-limit block: ``min_interval_ms`` below ``interval_ms``.
  ``burst_tokens > tokens_per_interval`` is allowed: the bucket's documented bound is
  ``tokens_per_interval + burst_tokens`` per interval.
- every exchange: a ccxt-like id, valid unified symbols and timeframes, no duplicates, and
  every exchange × symbol × timeframe a valid node id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qmtl.runtime.sdk._config_exchange import ExchangeConfig
from qmtl.runtime.sdk._config_models import DOMAIN_NAMES, DomainPolicy
from qmtl.runtime.sdk.archive_plan import archive_prefix
from qmtl.runtime.sdk.node_id import (
    NodeId,
    format_node_id,
    parse_node_id,
    timeframe_to_seconds,
)
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

if TYPE_CHECKING:
    from qmtl.runtime.sdk.config import QMTLConfig

__all__ = ["check_domain", "check_exchange", "check_rate_limit", "cross_check"]

_ARTIFACT_SOURCES = ("artifact_only", "artifact_prefers")


def cross_check(config: QMTLConfig) -> list[str]:
    """Every cross-key problem of ``config`` as ``"<key.path>: <problem>"``."""
    errors: list[str] = []
    artifact = config.seamless.artifact
    gated = [name for name in ("backtest", "dryrun") if name in config.domains]
    if not artifact.publish_fingerprint and gated:
        errors.append(
            "seamless.artifact.publish_fingerprint: false is not allowed while the "
            f"{' and '.join(gated)} domain{'s are' if len(gated) > 1 else ' is'} configured "
            "(they serve only published, fingerprinted artifacts); set it to true or remove "
            + " and ".join(f"domains.{name}" for name in gated)
        )
    if artifact.early_fingerprint and not artifact.publish_fingerprint:
        errors.append(
            "seamless.artifact.early_fingerprint: requires publish_fingerprint: true "
            "(a preview fingerprint is checked against the sealed one)"
        )
    for name, policy in config.domains.items():
        errors.extend(check_domain(name, policy))
    errors.extend(check_rate_limit("seamless.rate_limit", config.seamless.rate_limit))
    for exchange_id, entry in config.exchanges.items():
        errors.extend(check_exchange(exchange_id, entry))
        if entry.rate_limit is not None or entry.rate_limit_rps is not None:
            errors.extend(
                check_rate_limit(
                    f"exchanges.{exchange_id}.rate_limit",
                    config.rate_limiter_for(exchange_id),
                    from_rps=entry.rate_limit_rps is not None,
                )
            )
    return errors


def check_domain(name: str, policy: DomainPolicy) -> list[str]:
    """The domain matrix rules a domain's policy may not loosen."""
    path = f"domains.{name}"
    if name not in DOMAIN_NAMES:
        return [f"{path}: unknown domain; valid domains: {', '.join(DOMAIN_NAMES)}"]
    errors: list[str] = []
    if name == "backtest" and policy.source != "artifact_only":
        errors.append(
            f"{path}.source: must be 'artifact_only' (a backtest serves only published "
            f"artifacts), got {policy.source!r}"
        )
    if name == "dryrun" and policy.source not in _ARTIFACT_SOURCES:
        errors.append(
            f"{path}.source: must be 'artifact_only' or 'artifact_prefers' (dryrun serves "
            f"published artifacts), got {policy.source!r}"
        )
    if name in ("backtest", "dryrun") and not policy.require_as_of:
        errors.append(f"{path}.require_as_of: must be true ({name} requires an as_of)")
    return errors


def check_rate_limit(path: str, limiter: RateLimiterConfig, *, from_rps: bool = False) -> list[str]:
    """Values that are each valid but contradict each other."""
    if limiter.min_interval_ms > 0 and limiter.min_interval_ms >= limiter.interval_ms:
        origin = " from rate_limit_rps" if from_rps else ""
        return [
            f"{path}.min_interval_ms: must be < interval_ms ({limiter.interval_ms} ms{origin}), "
            f"got {limiter.min_interval_ms}"
        ]
    return []


def _problem(exc: ValueError) -> str:
    return str(exc).removeprefix("node id: ")


def check_exchange(exchange_id: str, entry: ExchangeConfig) -> list[str]:
    """The id, symbols and timeframes of one exchange entry form valid node ids."""
    path = f"exchanges.{exchange_id}"
    errors: list[str] = []
    try:
        NodeId(exchange=exchange_id, symbol="BTC/USDT", timeframe="1m")
    except ValueError as exc:
        errors.append(f"{path}: {_problem(exc).replace('invalid exchange', 'invalid ccxt id')}")
    seen: set[str] = set()
    for index, symbol in enumerate(entry.symbols):
        try:
            NodeId(exchange="binance", symbol=symbol, timeframe="1m")
        except ValueError as exc:
            errors.append(f"{path}.symbols[{index}]: {_problem(exc)}")
        if symbol in seen:
            errors.append(f"{path}.symbols[{index}]: duplicate symbol {symbol!r}")
        seen.add(symbol)
    seen.clear()
    for index, timeframe in enumerate(entry.timeframes):
        try:
            timeframe_to_seconds(timeframe)
        except ValueError as exc:
            errors.append(f"{path}.timeframes[{index}]: {exc}")
        if timeframe in seen:
            errors.append(f"{path}.timeframes[{index}]: duplicate timeframe {timeframe!r}")
        seen.add(timeframe)
    if entry.archive.enabled and archive_prefix(exchange_id, entry.market_type) is None:
        errors.append(
            f"{path}.archive.enabled: {exchange_id} ({entry.market_type}) publishes no bulk "
            "archives (Binance spot and USDⓈ-M futures do)"
        )
    if errors:
        return errors
    for index, symbol in enumerate(entry.symbols):
        for timeframe in entry.timeframes:
            try:
                parse_node_id(format_node_id(exchange_id, symbol, timeframe))
            except ValueError as exc:
                errors.append(f"{path}.symbols[{index}]: {_problem(exc)}")
                break
    return errors
