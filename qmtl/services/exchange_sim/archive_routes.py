"""Binance's public-data kline archives (``data.binance.vision``) on the simulator's port.

``GET /data/spot/{daily,monthly}/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<date>.zip``
(and ``/data/futures/um/...`` for USD-M perpetuals), each with ``<file>.zip.CHECKSUM``.
A file exists when, in this order: the path names an archive file
(:func:`~qmtl.services.exchange_sim.archive_names.parse_archive_path`), archives are
enabled, the venue lists the symbol, the scenario does not list it as ``missing``, its
period ended at least its publish delay ago on the exchange's clock, and the period holds a
bar. Anything else is S3's ``404 NoSuchKey`` XML, as the real bucket answers; a request
method other than GET/HEAD is S3's ``405``.

Archive requests are no venue's REST traffic: they bypass the weight and request budgets
(:func:`~qmtl.services.exchange_sim.venue_gates.venue_of` gives them no venue) and are
logged with venue :data:`~qmtl.services.exchange_sim.request_log.ARCHIVE_VENUE` and weight 0.
With ``bandwidth_bytes_per_s`` set, bodies are streamed in chunks paced on wall time so that
no response goes faster than the cap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from xml.sax.saxutils import escape

from aiohttp import web

from qmtl.services.exchange_sim.archive_files import ServedArchive, build_archive, has_bars
from qmtl.services.exchange_sim.archive_names import ARCHIVE_PREFIX, parse_archive_path
from qmtl.services.exchange_sim.request_log import ARCHIVE_VENUE, RequestRecord
from qmtl.services.exchange_sim.state import STATE_KEY, SimState

__all__ = ["add_archive_routes", "s3_error"]

logger = logging.getLogger(__name__)

_MAX_KEY_CHARS = 256  # a hostile 64 KiB path is echoed only this far
_LOGGED_CHARS = 1024
_CHUNK_BYTES = 64 * 1024
_CHUNKS_PER_SECOND = 20  # at a low cap, chunks shrink so pacing stays smooth
_MESSAGES = {
    "NoSuchKey": (404, "The specified key does not exist."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
}


def _xml_safe(text: str) -> str:
    """``text`` cut to :data:`_MAX_KEY_CHARS`, without characters XML 1.0 cannot carry."""
    cut = text[:_MAX_KEY_CHARS]
    cleaned = "".join(
        c if c in "\t\n\r" or ("\x20" <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd") else "\ufffd"
        for c in cut
    )
    return escape(cleaned)


def s3_error(code: str, key: str) -> web.Response:
    """S3's XML error for ``code`` (``NoSuchKey``, ``MethodNotAllowed``, ``InternalError``)
    about ``key`` (the path without its leading ``/``, truncated)."""
    status, message = _MESSAGES[code]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Key>{_xml_safe(key)}</Key></Error>"
    )
    return web.Response(
        body=body.encode("utf-8", "replace"), status=status, content_type="application/xml"
    )


async def _send(
    request: web.Request, body: bytes, content_type: str, cap: float | None
) -> web.StreamResponse:
    """``body`` as a 200, paced to at most ``cap`` bytes/s of wall time when set."""
    if cap is None or request.method == "HEAD" or not body:
        return web.Response(body=body, content_type=content_type)
    response = web.StreamResponse()
    response.content_type = content_type
    response.content_length = len(body)
    await response.prepare(request)
    chunk = max(1, min(_CHUNK_BYTES, int(cap / _CHUNKS_PER_SECOND)))
    started = time.monotonic()
    try:
        for sent in range(0, len(body), chunk):
            piece = body[sent : sent + chunk]
            await response.write(piece)
            due = started + (sent + len(piece)) / cap  # never ahead of the cap
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await response.write_eof()
    except ConnectionResetError:  # the client went away mid-download: nothing to answer
        pass
    return response


async def _answer(request: web.Request, state: SimState, key: str) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return s3_error("MethodNotAllowed", key)
    asked = parse_archive_path(request.path)
    settings = state.scenario.archive
    if asked is None or not settings.enabled:
        return s3_error("NoSuchKey", key)
    name = asked.name
    market = state.scenario.market(name.symbol, name.venue)
    if market is None or name.file_name in settings.missing:
        return s3_error("NoSuchKey", key)
    now_ms = state.now_ms()
    delay = settings.publish_delay
    delay_s = delay.daily if name.period == "daily" else delay.monthly
    if now_ms < name.end_ms + delay_s * 1000 or not has_bars(market, name, now_ms):
        return s3_error("NoSuchKey", key)
    seed = state.scenario.seed
    lacking = settings.spans_missing_from(name.file_name)
    corrupt = name.file_name in settings.corrupt
    mismatch = name.file_name in settings.checksum_mismatch
    # everything the bytes depend on (not ``now``: a published period is all closed)
    symbol, listing, halts = market.symbol, market.listing, market.halts
    cache_key = (seed, symbol, listing, halts, name, lacking, corrupt, mismatch)

    def build() -> ServedArchive:
        return build_archive(
            seed, market, name, now_ms, lacking=lacking, corrupt=corrupt, mismatch=mismatch
        )

    file = await state.archives.get(cache_key, build)
    cap = settings.bandwidth_bytes_per_s
    if asked.checksum:
        return await _send(request, file.checksum, "text/plain", cap)
    return await _send(request, file.body, "application/zip", cap)


async def _archive(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    path = request.path
    key = path.removeprefix("/")
    at_ms = int(state.clock.now() * 1000)
    response: web.StreamResponse
    try:
        response = await _answer(request, state, key)
    except Exception:
        logger.exception("exchange simulator: unexpected error on %s", path[:_LOGGED_CHARS])
        response = s3_error("InternalError", key)
    query = request.query_string[:_LOGGED_CHARS]
    record = RequestRecord(path[:_LOGGED_CHARS], response.status, 0, at_ms, ARCHIVE_VENUE, query)
    state.log.record(record)
    return response


def add_archive_routes(app: web.Application) -> None:
    """Serve every path under ``/data/`` (any method) from the archive handler; register
    before any catch-all route."""
    app.router.add_route("*", ARCHIVE_PREFIX + r"{tail:[\s\S]*}", _archive)  # "\n" too
