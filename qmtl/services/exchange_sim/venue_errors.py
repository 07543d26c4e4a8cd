"""The refusal every venue's request handlers raise, rendered in that venue's format.

Handlers raise a :class:`VenueError` subclass (Binance's
:class:`~qmtl.services.exchange_sim.params.BinanceError`, OKX's
:class:`~qmtl.services.exchange_sim.okx_params.OkxError`); the application's middleware turns
it into the HTTP answer and records it, without knowing which venue it came from.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["VenueError"]


class VenueError(Exception):
    """A refusal with an HTTP ``status`` and a JSON body of the venue's own shape."""

    status: int

    def body(self) -> bytes:
        raise NotImplementedError

    @property
    def fault(self) -> str:
        """How the request log names this refusal (``"code -1121"``, ``"code 51001"``)."""
        raise NotImplementedError

    def response(self) -> web.Response:
        return web.Response(body=self.body(), status=self.status, content_type="application/json")
