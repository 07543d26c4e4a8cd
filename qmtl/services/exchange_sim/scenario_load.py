"""Loading a :class:`~qmtl.services.exchange_sim.scenario.Scenario` from plain data or YAML.

Every mapping is read through a :class:`~qmtl.services.exchange_sim.scenario_parse.Reader`,
so unknown keys are refused with the nearest valid key suggested and every error names its
key path (``venues.okx.rate_limits.candels: unknown key (did you mean 'candles'?)``).

Binance spot's weight knobs may be given at the top level (their historical place) or under
``venues.binance``, not both: two places for one value would leave a reader guessing which
one wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from qmtl.runtime.sdk.errors import ConfigError
from qmtl.runtime.sdk.timestamps import to_epoch_seconds
from qmtl.services.exchange_sim._scenario_markets import (
    MalformedWindow,
    MarketScenario,
    Outage,
    PageFault,
    TimeSpan,
    check_count,
)
from qmtl.services.exchange_sim.scenario import Scenario
from qmtl.services.exchange_sim.scenario_archive import (
    ArchiveSettings,
    PublishDelay,
    check_file_name,
)
from qmtl.services.exchange_sim.scenario_parse import Reader
from qmtl.services.exchange_sim.scenario_venues import (
    BinanceUsdmSettings,
    OkxRateLimits,
    OkxSettings,
    SpotSettings,
    Venues,
    check_int,
)

__all__ = ["scenario_from_dict", "scenario_from_yaml"]

#: Binance spot knobs that live at the top level or under ``venues.binance``.
_SPOT_WEIGHT_KEYS = (
    "weight_limit_per_minute",
    "ban_after_violations",
    "retry_after_s",
    "ban_seconds",
)


def scenario_from_dict(data: Mapping[str, Any]) -> Scenario:
    """Build from plain data (as YAML gives); errors name the key path."""
    return _parse_scenario(Reader(data, ""))


def scenario_from_yaml(source: str | Path) -> Scenario:
    """From a YAML file (a ``Path``, or a string naming an existing file) or YAML text."""
    if isinstance(source, Path) or _names_a_file(source):
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = source
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"scenario: invalid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if isinstance(data, str) and isinstance(source, str) and "\n" not in source:
        raise ConfigError([f"scenario: {source!r} is neither a file nor a YAML mapping"])
    if not isinstance(data, Mapping):
        raise ConfigError(["scenario: the top level must be a mapping"])
    return scenario_from_dict(data)


def _names_a_file(text: str) -> bool:
    if "\n" in text or "\x00" in text or len(text) > 4096:
        return False
    try:
        return Path(text).is_file()
    except OSError:
        return False


def _seconds(value: object, path: str) -> int:
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # YAML timestamps without an offset are UTC
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, int | str | datetime):
        raise ConfigError([f"{path}: expected epoch seconds or an ISO-8601 time, got {value!r}"])
    try:
        return to_epoch_seconds(value, name=path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


def _span(r: Reader) -> TimeSpan:
    start, end = (
        _seconds(r.required("start"), r.at("start")),
        _seconds(r.required("end"), r.at("end")),
    )
    return r.build(TimeSpan, start=start, end=end)


def _span_item(item: object, path: str) -> TimeSpan:
    """``[start, end]`` or ``{start, end}``."""
    if isinstance(item, list | tuple):
        if len(item) != 2:
            raise ConfigError([f"{path}: expected [start, end]"])
        return Reader.build_at(
            path,
            TimeSpan,
            start=_seconds(item[0], f"{path}[0]"),
            end=_seconds(item[1], f"{path}[1]"),
        )
    r = Reader.of(item, path)
    span = _span(r)
    r.done()
    return span


def _outage(r: Reader) -> Outage:
    if r.has("start") or r.has("end"):
        span: TimeSpan | None = _span(r)
    else:
        span = None
        r.get("start"), r.get("end")  # known keys, for typo suggestions
    outage = r.build(
        Outage,
        status=r.integer("status", 503),
        span=span,
        next_requests=r.optional_int("next_requests"),
        body=r.string("body", "html"),
    )
    r.done()
    return outage


def _page_fault(r: Reader) -> PageFault:
    fault = r.build(PageFault, span=_span(r), requests=r.optional_int("requests"))
    r.done()
    return fault


def _malformed(r: Reader) -> MalformedWindow:
    fault = r.build(
        MalformedWindow,
        span=_span(r),
        requests=r.optional_int("requests"),
        kind=r.string("kind", None),
    )
    r.done()
    return fault


def _market(symbol: str, r: Reader) -> MarketScenario:
    listing = r.get("listing")
    market = r.build(
        MarketScenario,
        symbol=symbol,
        listing=None if listing is None else _seconds(listing, r.at("listing")),
        halts=tuple(_span_item(x, p) for x, p in r.items("halts")),
        outages=tuple(_outage(Reader.of(x, p)) for x, p in r.items("outages")),
        malformed=tuple(_malformed(Reader.of(x, p)) for x, p in r.items("malformed")),
        short_pages=tuple(_page_fault(Reader.of(x, p)) for x, p in r.items("short_pages")),
        empty_pages=tuple(_page_fault(Reader.of(x, p)) for x, p in r.items("empty_pages")),
        duplicates=tuple(_page_fault(Reader.of(x, p)) for x, p in r.items("duplicates")),
        latency_ms=r.number("latency_ms", 0.0),
        history_depth_bars=r.optional_int("history_depth_bars"),
    )
    r.done()
    return market


def _markets(raw: object, path: str) -> tuple[MarketScenario, ...] | None:
    """``symbols`` as a list of names or a mapping name → settings; ``None`` when absent."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return tuple(
            _market(s, Reader.of({}, f"{path}[{i}]"))
            if isinstance(s, str)
            else _bad_symbol(s, f"{path}[{i}]")
            for i, s in enumerate(raw)
        )
    if isinstance(raw, Mapping):
        return tuple(
            _market(str(s), Reader.of(v if v is not None else {}, f"{path}.{s}"))
            for s, v in raw.items()
        )
    raise ConfigError([f"{path}: expected a list of symbols or a mapping symbol -> settings"])


def _bad_symbol(value: object, path: str) -> MarketScenario:
    raise ConfigError([f"{path}: expected a symbol string like 'BTC/USDT', got {value!r}"])


def _common(r: Reader) -> dict[str, Any]:
    """The keys every venue takes (:class:`~.scenario_venues.VenueSettings`)."""
    latency = r.get("latency_ms")
    if latency is not None:
        latency = r.number("latency_ms", 0.0)
    return {
        "markets": _markets(r.get("symbols"), r.at("symbols")),
        "latency_ms": latency,
        "history_depth_bars": r.optional_int("history_depth_bars"),
    }


def _check_spot_weights(**weights: Any) -> dict[str, Any]:
    """Range checks of the weight knobs (the scenario repeats them, at the top-level path)."""
    for key, minimum in (
        ("weight_limit_per_minute", 1),
        ("ban_after_violations", 0),
        ("ban_seconds", 1),
    ):
        if key in weights:
            check_int(key, weights[key], minimum)
    check_count("retry_after_s", weights.get("retry_after_s"))
    return weights


def _spot(r: Reader) -> tuple[SpotSettings, dict[str, Any]]:
    """``venues.binance``: its settings and the weight knobs given there (checked here, so
    that errors name this path)."""
    given: dict[str, Any] = {}
    for key in _SPOT_WEIGHT_KEYS:
        if r.get(key) is not None:  # an explicit null means "not given here"
            given[key] = r.integer(key, 0)
    weights = r.build(_check_spot_weights, **given)
    settings = r.build(SpotSettings, **_common(r))
    return settings, weights


def _usdm(r: Reader) -> BinanceUsdmSettings:
    return r.build(
        BinanceUsdmSettings,
        **_common(r),
        weight_limit_per_minute=r.integer("weight_limit_per_minute", 2400),
        ban_after_violations=r.integer("ban_after_violations", 3),
        retry_after_s=r.optional_int("retry_after_s"),
        ban_seconds=r.integer("ban_seconds", 120),
    )


def _okx(r: Reader) -> OkxSettings:
    raw = r.get("rate_limits")
    limits = OkxRateLimits()
    if raw is not None:
        lr = Reader.of(raw, r.at("rate_limits"))
        limits = lr.build(
            OkxRateLimits,
            candles=lr.integer("candles", 40),
            history_candles=lr.integer("history_candles", 20),
            instruments=lr.integer("instruments", 20),
            time=lr.integer("time", 10),
        )
        lr.done()
    return r.build(
        OkxSettings,
        **_common(r),
        rate_limits=limits,
        recent_candles=r.integer("recent_candles", 1440),
        candles_max_limit=r.integer("candles_max_limit", 300),
        history_candles_max_limit=r.integer("history_candles_max_limit", 100),
    )


def _venues(raw: object) -> tuple[Venues, dict[str, Any]]:
    """``venues``: the settings, and Binance spot's weight knobs given under it."""
    if raw is None:
        return Venues(), {}
    r = Reader.of(raw, "venues")
    kwargs: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    parsers = {"binanceusdm": _usdm, "okx": _okx}
    for venue in ("binance", "binanceusdm", "okx"):
        value = r.get(venue)
        if value is None:
            continue
        vr = Reader.of(value, r.at(venue))
        if venue == "binance":
            kwargs[venue], weights = _spot(vr)
        else:
            kwargs[venue] = parsers[venue](vr)
        vr.done()
    r.done()
    return r.build(Venues, **kwargs), weights


def _file_name(name: object, path: str) -> str:
    try:
        return check_file_name(name, path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None


def _incomplete(raw: object, path: str) -> dict[str, tuple[TimeSpan, ...]]:
    """``{file name: [[start, end], ...]}`` (bar time)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{path}: expected a mapping file name -> list of [start, end]"])
    found: dict[str, tuple[TimeSpan, ...]] = {}
    for name, spans in raw.items():
        at = f"{path}.{name}"
        _file_name(name, at)
        if not isinstance(spans, list) or not spans:
            raise ConfigError([f"{at}: expected a non-empty list of [start, end] spans"])
        found[name] = tuple(_span_item(x, f"{at}[{i}]") for i, x in enumerate(spans))
    return found


def _archive(raw: object) -> ArchiveSettings:
    """``archive``: what the public-data archive serves."""
    r = Reader.of(raw if raw is not None else {}, "archive")
    enabled = r.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError([f"{r.at('enabled')}: must be true or false, got {enabled!r}"])
    delay = PublishDelay()
    if r.get("publish_delay") is not None:
        dr = Reader.of(r.get("publish_delay"), r.at("publish_delay"))
        delay = dr.build(
            PublishDelay, daily=dr.integer("daily", 3600), monthly=dr.integer("monthly", 86_400)
        )
        dr.done()
    bandwidth = r.get("bandwidth_bytes_per_s")
    settings = r.build(
        ArchiveSettings,
        enabled=True if enabled is None else enabled,
        publish_delay=delay,
        missing=tuple(_file_name(x, p) for x, p in r.items("missing")),
        corrupt=tuple(_file_name(x, p) for x, p in r.items("corrupt")),
        checksum_mismatch=tuple(_file_name(x, p) for x, p in r.items("checksum_mismatch")),
        incomplete=_incomplete(r.get("incomplete"), r.at("incomplete")),
        bandwidth_bytes_per_s=None if bandwidth is None else r.number("bandwidth_bytes_per_s", 0.0),
    )
    r.done()
    return settings


def _parse_scenario(r: Reader) -> Scenario:
    venues, spot_weights = _venues(r.get("venues"))
    for key in spot_weights:
        if r.get(key) is not None:
            raise ConfigError(
                [f"venues.binance.{key}: also given at the top level ({key}); give it once"]
            )
    weights = {
        "weight_limit_per_minute": r.integer("weight_limit_per_minute", 6000),
        "ban_after_violations": r.integer("ban_after_violations", 3),
        "retry_after_s": r.optional_int("retry_after_s"),
        "ban_seconds": r.integer("ban_seconds", 120),
    }
    weights.update(spot_weights)
    markets = _markets(r.get("symbols"), "symbols")
    now = r.get("now")
    if now is None or (isinstance(now, int) and not isinstance(now, bool)):
        now_ms = now
    else:
        now_ms = _seconds(now, r.at("now")) * 1000
    kwargs: dict[str, Any] = {} if markets is None else {"markets": markets}
    scenario = r.build(
        Scenario,
        seed=r.integer("seed", 0),
        **weights,
        latency_ms=r.number("latency_ms", 0.0),
        now_ms=now_ms,
        ws_push_interval_ms=r.integer("ws_push_interval_ms", 200),
        venues=venues,
        archive=_archive(r.get("archive")),
        **kwargs,
    )
    r.done()
    return scenario
