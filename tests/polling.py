"""Waiting for a condition in async tests (for state another process or thread changes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], *, timeout_s: float) -> None:
    """Check ``condition`` every 20 ms until it holds; ``TimeoutError`` after ``timeout_s``."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not reached")
