"""Building ccxt exchange instances the project can trust: no own throttle, spot-only market
loading, URL overrides (the simulator, offline runs) and HTTP status on every error.

ccxt is an optional extra: this module imports it only when an exchange is built.

Why a subclass hook: ccxt keeps ``last_response_headers`` per *instance*, so reading
``Retry-After`` after an exception races under concurrent requests. Instead, the class made by
:func:`create_exchange` overrides ``handle_errors`` — called synchronously with that response's
own status and headers — and attaches ``http_status`` and ``retry_after_s`` to the exception
it raises. It also runs ccxt's status-code mapping inside the hook, so errors for bodies that
are not JSON (a gateway's HTML 502) carry the status too. Errors not raised from an HTTP
response (timeouts, connection refused, parse errors of a 200 body) have neither attribute;
:func:`http_status_of` / :func:`retry_after_of` then return ``None``.

Strict JSON: stock ccxt swallows a body that starts like JSON but does not parse and hands
the raw text on, which ``fetch_ohlcv`` turns into ``[]`` — a truncated page looks exactly like
an empty one. The ``parse_json`` hook raises ``ccxt.BadResponse`` instead.

Strict OHLCV rows: stock ccxt (4.5) gives a kline row that is an object timestamp ``None``,
and ``fetch_ohlcv``'s ``since`` filter then drops it silently (it also drops a bar whose
timestamp is ``0``); a price that is a list parses as ``None`` and a ``"NaN"`` string as
``float('nan')``. A fetcher above us would take the dropped bar for one the exchange does not
have. The ``parse_ohlcvs`` hook parses every raw row once (with the exchange's own
``parse_ohlcv``) and raises ``ccxt.BadResponse`` naming the row unless it is ``[int
timestamp, five finite numbers]`` (:func:`qmtl.runtime.sdk.bars.rows_to_block`), then sorts
and filters by ``since``/``limit`` as ccxt does — keeping the epoch's bar.
This is stricter than some exchanges need (one that sends no volume now fails loudly).
ccxt's ``BadResponse`` is an ``ExchangeError``, not a
``NetworkError``: callers decide whether a malformed page is worth a retry.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from qmtl.runtime.sdk.bars import rows_to_block

__all__ = [
    "CCXT_INSTALL_HINT",
    "check_exchange_id",
    "create_exchange",
    "http_status_of",
    "parse_retry_after",
    "retry_after_of",
    "rewrite_urls",
    "unlisted",
]

CCXT_INSTALL_HINT = "ccxt is not installed: pip install 'qmtl-seamless[ccxt]'"
_URL_KEYS = frozenset({"rest", "ws"})
_EXCHANGE_ID = re.compile(r"[a-z][a-z0-9_]*")


def _import_ccxt(pro: bool) -> Any:
    try:
        if pro:
            import ccxt.pro as module
        else:
            import ccxt.async_support as module
    except ImportError as exc:
        raise ImportError(CCXT_INSTALL_HINT) from exc
    return module


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP date); ``None`` if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    lowered = name.lower()
    for key, value in (headers or {}).items():
        if isinstance(key, str) and key.lower() == lowered:
            return str(value)
    return None


@functools.cache
def _with_http_status(cls: type[Any]) -> type[Any]:
    """``cls`` plus the ``handle_errors``, ``parse_json`` and ``parse_ohlcvs`` hooks (module
    docstring)."""
    import ccxt

    def handle_errors(
        self: Any,
        code: int,
        reason: str,
        url: str,
        method: str,
        headers: Any,
        body: Any,
        response: Any,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        # Every response, success or error, with its own headers (no shared last_* state):
        # the fetcher reads the exchange's usage header here to resync its limiter.
        observer = getattr(self, "qmtl_on_response", None)
        if observer is not None:
            observer(code, headers or {})
        try:
            result = cls.handle_errors(
                self,
                code,
                reason,
                url,
                method,
                headers,
                body,
                response,
                request_headers,
                request_body,
            )
            # ccxt would do this right after us; doing it here lets non-JSON errors carry status
            self.handle_http_status_code(
                code, reason, url, method, body if body is not None else ""
            )
        except ccxt.BaseError as exc:
            exc.http_status = code
            exc.retry_after_s = parse_retry_after(_header(headers, "Retry-After"))
            raise
        return result

    def parse_json(self: Any, http_response: Any) -> Any:
        if isinstance(http_response, str) and http_response[:1] in ("{", "["):
            try:
                return self.on_json_response(http_response)
            except ValueError as exc:
                raise ccxt.BadResponse(
                    f"{self.id} malformed JSON in response: {http_response[:120]!r}"
                ) from exc
        return cls.parse_json(self, http_response)

    def parse_ohlcvs(
        self: Any,
        ohlcvs: Any,
        market: Any = None,
        timeframe: str = "1m",
        since: int | None = None,
        limit: int | None = None,
        tail: bool = False,
    ) -> Any:
        if ohlcvs is None:
            return []
        if not isinstance(ohlcvs, list):
            raise ccxt.BadResponse(
                f"{self.id} OHLCV: expected a list of rows, got {type(ohlcvs).__name__}"
            )
        parsed = []
        for i, raw in enumerate(ohlcvs):
            try:
                parsed.append(self.parse_ohlcv(raw, market))
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise ccxt.BadResponse(f"{self.id} OHLCV row {i}: unparseable ({exc})") from exc
        try:
            rows_to_block(parsed)
        except ValueError as exc:
            raise ccxt.BadResponse(f"{self.id} OHLCV {exc}") from None
        # ccxt's own parse_ohlcvs would parse every row again; then it sorts and filters by
        # since/limit — but its filter also drops a bar whose timestamp is 0 (the epoch's
        # first bar), silently. Same filter here, without that exception.
        rows = self.sort_by(parsed, 0)
        if since is not None:
            rows = [row for row in rows if row[0] >= since]
        if limit is not None:  # ccxt keeps the first `limit` after a since, else the last
            rows = rows[:limit] if since is not None and not tail else rows[-limit:]
        return rows

    namespace = {
        "handle_errors": handle_errors,
        "parse_json": parse_json,
        "parse_ohlcvs": parse_ohlcvs,
        "__module__": __name__,
    }
    return type(cls.__name__, (cls,), namespace)


def http_status_of(exc: BaseException) -> int | None:
    """The HTTP status behind ``exc`` (or an exception it was raised from), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(current, "http_status", None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status
        current = current.__cause__ or current.__context__
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the exchange asked to wait (``Retry-After``) behind ``exc``, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        value = getattr(current, "retry_after_s", None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        current = current.__cause__ or current.__context__
    return None


def _rebase(url: str, base: str, *, websocket: bool) -> str:
    old, new = urlsplit(url), urlsplit(base)
    path = old.path
    # ccxt's binance tells spot sockets by '/stream' in the URL, which the original host
    # supplied (wss://stream.binance.com/ws): keep the marker when the host goes away
    if websocket and "/stream" in url and "/stream" not in path:
        path = "/stream" + path
    return urlunsplit(
        (new.scheme, new.netloc, new.path.rstrip("/") + path, old.query, old.fragment)
    )


def rewrite_urls(api: Any, rest: str, ws: str) -> Any:
    """A copy of ccxt's ``urls['api']`` (string or nested dicts) with every ``http(s)://`` URL
    moved to ``rest`` and every ``ws(s)://`` URL to ``ws``, paths kept."""
    if isinstance(api, Mapping):
        return {k: rewrite_urls(v, rest, ws) for k, v in api.items()}
    if isinstance(api, str):
        scheme = api.split("://", 1)[0].lower() if "://" in api else ""
        if scheme in ("http", "https"):
            return _rebase(api, rest, websocket=False)
        if scheme in ("ws", "wss"):
            return _rebase(api, ws, websocket=True)
    return api


def _check_base(value: object, key: str, schemes: tuple[str, ...]) -> str:
    if (
        not isinstance(value, str)
        or urlsplit(value).scheme not in schemes
        or not urlsplit(value).netloc
    ):
        raise ValueError(
            f"urls.{key}: expected a {'/'.join(schemes)}://host:port URL, got {value!r}"
        )
    return value.rstrip("/")


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def unlisted(exchange: Any, symbols: Sequence[str], timeframe: str) -> list[str]:
    """What a fetcher's configuration names that ``exchange`` (markets loaded) does not
    list: ``"symbol 'X'"`` per unknown symbol, ``"timeframe 'T'"`` when the exchange
    publishes its timeframes and ``timeframe`` is not one of them."""
    markets = getattr(exchange, "markets", None) or {}
    names = [f"symbol {symbol!r}" for symbol in symbols if symbol not in markets]
    timeframes = getattr(exchange, "timeframes", None)
    if isinstance(timeframes, Mapping) and timeframes and timeframe not in timeframes:
        names.append(f"timeframe {timeframe!r}")
    return names


def check_exchange_id(exchange_id: object) -> str:
    """The one check of a ccxt exchange id: lower-case ``[a-z][a-z0-9_]*`` and, when ccxt is
    installed, one of ``ccxt.exchanges`` — else ``ValueError`` naming the nearest valid ids."""
    if not isinstance(exchange_id, str) or not _EXCHANGE_ID.fullmatch(exchange_id):
        raise ValueError(f"exchange_id: not a ccxt exchange id: {exchange_id!r}")
    try:
        import ccxt
    except ImportError:  # the fetcher will say how to install it
        return exchange_id
    known: list[str] = list(ccxt.exchanges)
    if exchange_id not in known:
        near = difflib.get_close_matches(exchange_id, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ValueError(f"exchange_id: {exchange_id!r} is not a ccxt exchange{hint}")
    return exchange_id


def create_exchange(
    exchange_id: str,
    *,
    urls: Mapping[str, str] | None = None,
    market_type: str = "spot",
    sandbox: bool = False,
    options: Mapping[str, Any] | None = None,
    pro: bool = False,
) -> Any:
    """A ``ccxt.async_support`` (``ccxt.pro`` with ``pro=True``) exchange, ready for the project.

    - ``enableRateLimit=False``: the project's limiter is in charge.
    - ``market_type="spot"`` loads spot markets only (one ``exchangeInfo`` call on Binance):
      ``fetchMarkets.types=['spot']``, ``fetchCurrencies=False``, ``fetchMargins=False``.
      Other types only set ``defaultType``. ``options`` are deep-merged over these.
    - ``urls={"rest": "http://host:port", "ws": "ws://host:port"}`` moves every API URL there
      (``ws`` defaults to ``rest`` with a ws scheme, so nothing leaks to the real exchange).
    - Every error raised from an HTTP response carries ``http_status`` and ``retry_after_s``.

    The caller owns the instance: ``await exchange.close()``.
    """
    if urls is not None:
        unknown = set(urls) - _URL_KEYS
        if unknown or "rest" not in urls:
            raise ValueError(f"urls: expected keys 'rest' and optionally 'ws', got {sorted(urls)}")
        rest = _check_base(urls["rest"], "rest", ("http", "https"))
        default_ws = ("wss" if rest.startswith("https") else "ws") + rest[rest.index("://") :]
        ws = _check_base(urls.get("ws", default_ws), "ws", ("ws", "wss"))
    check_exchange_id(exchange_id)
    module = _import_ccxt(pro)
    base_cls = getattr(module, exchange_id, None)
    if not isinstance(base_cls, type):
        raise ValueError(f"exchange_id: {exchange_id!r} is not a ccxt exchange")
    defaults: dict[str, Any] = {"defaultType": market_type}
    if market_type == "spot":
        defaults.update(fetchMarkets={"types": ["spot"]}, fetchCurrencies=False, fetchMargins=False)
    merged = _deep_merge(defaults, options or {})
    exchange = _with_http_status(base_cls)({"enableRateLimit": False, "options": merged})
    if sandbox:
        exchange.set_sandbox_mode(True)
    if urls is not None:
        exchange.urls = dict(exchange.urls)
        exchange.urls["api"] = rewrite_urls(exchange.urls["api"], rest, ws)
    return exchange
