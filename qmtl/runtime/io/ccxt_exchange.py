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
an empty one. The hook raises ``ccxt.BadResponse`` instead. What stock ccxt (4.5) does with
the simulator's other malformed kinds, so callers validate rows themselves:

- ``wrong_types``: a row that is an object gets timestamp ``None`` and is silently dropped by
  ``fetch_ohlcv``'s ``since`` filter; a price that is a list parses as ``None``.
- ``nan_strings``: ``"NaN"`` prices parse as ``float('nan')``, silently.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "CCXT_INSTALL_HINT",
    "create_exchange",
    "http_status_of",
    "parse_retry_after",
    "retry_after_of",
    "rewrite_urls",
]

CCXT_INSTALL_HINT = "ccxt is not installed: pip install 'qmtl-seamless[ccxt]'"
_URL_KEYS = frozenset({"rest", "ws"})


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
    """``cls`` plus the ``handle_errors`` and ``parse_json`` hooks (module docstring)."""
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

    namespace = {"handle_errors": handle_errors, "parse_json": parse_json, "__module__": __name__}
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
    module = _import_ccxt(pro)
    base_cls = getattr(module, exchange_id, None) if exchange_id.isidentifier() else None
    if not isinstance(base_cls, type):
        raise ValueError(f"unknown ccxt exchange id {exchange_id!r}")
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
