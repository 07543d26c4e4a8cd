"""The live-feed port: a source of the newest *closed* bars, consulted by ``fetch`` for the
tail of a request the store does not hold yet (the ``live_wait`` phase). Polling and
websocket implementations arrive with the live-data capability."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LiveDataFeed"]


@runtime_checkable
class LiveDataFeed(Protocol):
    """A source of the newest *closed* bars (canonical columns, ``ts >= since``)."""

    async def latest_bars(self, node_id: str, interval: int, since: int) -> pd.DataFrame: ...
