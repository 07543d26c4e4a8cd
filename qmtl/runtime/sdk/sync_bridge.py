"""Blocking calls for scripts and notebooks: ``provider.fetch_sync(...)``.

A provider's resources (store connections, the exchange's HTTP session) belong to the event
loop that first used them, and Jupyter already runs a loop in the main thread, where
``asyncio.run`` is refused. So the blocking methods run the provider on a private event loop
in a daemon thread that lives as long as the provider: every ``*_sync`` call of one provider
uses the same loop, the calling thread just waits for the answer. Use one style per provider:
either ``await provider.fetch(...)`` in your own loop, or the ``*_sync`` methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

__all__ = ["LoopThread", "SyncMethods"]

_T = TypeVar("_T")


class LoopThread:
    """An event loop running in a daemon thread; :meth:`run` submits a coroutine and blocks
    the caller until it finishes (its exception re-raised in the caller)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            coro.close()
            raise RuntimeError("a *_sync method was called from inside the provider's own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._started())
        try:
            return future.result()
        except (KeyboardInterrupt, concurrent.futures.CancelledError):
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and join its thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class SyncMethods:
    """Blocking twins of a provider's coroutines (module docstring). The class using it
    defines ``fetch``, ``coverage_report`` and ``aclose``."""

    _loop_thread: LoopThread | None = None

    def _bridge(self) -> LoopThread:
        if self._loop_thread is None:
            self._loop_thread = LoopThread(f"qmtl-sync-{id(self):x}")
        return self._loop_thread

    def run_sync(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run one of this provider's coroutines to completion from synchronous code."""
        return self._bridge().run(coro)

    def close_sync(self) -> None:
        """Release what the ``*_sync`` calls opened (background backfills are cancelled,
        committed batches stay) and stop the private loop. Idempotent."""
        if self._loop_thread is None:
            return
        try:
            self._loop_thread.run(self.aclose())
        finally:
            self._loop_thread.stop()
            self._loop_thread = None

    async def aclose(self) -> None:  # pragma: no cover - the provider defines it
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_sync()
