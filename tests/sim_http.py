"""Shared fixtures of the simulator's HTTP tests: a simulator per scenario (closed at
teardown, on a fake clock at :data:`T0`), an aiohttp session, and a GET that returns status,
parsed body (text when it is not JSON) and headers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from qmtl.runtime.sdk.clock import FakeClock
from qmtl.services.exchange_sim import Scenario, SimulatorServer, run_simulator

T0 = 1_700_000_040  # Tuesday 2023-11-14T22:14:00Z: a minute boundary, epoch seconds
Start = Callable[..., Awaitable[SimulatorServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def _start(
            scenario: Scenario | dict[str, Any] | None = None, clock: FakeClock | None = None
        ) -> SimulatorServer:
            if not isinstance(scenario, Scenario):
                scenario = Scenario.from_dict(scenario or {})
            return await stack.enter_async_context(
                run_simulator(scenario, clock=clock or FakeClock(T0 + 0.0))
            )

        yield _start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession, sim: SimulatorServer, path: str, query: str = ""
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.get(f"{sim.base_url}{path}{'?' + query if query else ''}") as resp:
        text = await resp.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, resp.headers
