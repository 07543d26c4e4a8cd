"""Instant normalization and the fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from qmtl.runtime.sdk.clock import FakeClock, SystemClock
from qmtl.runtime.sdk.timestamps import format_iso, to_epoch_seconds


def test_accepted_forms() -> None:
    assert to_epoch_seconds(0) == 0
    assert to_epoch_seconds(datetime(2024, 1, 1, tzinfo=UTC)) == 1704067200
    plus2 = timezone(timedelta(hours=2))
    assert to_epoch_seconds(datetime(2024, 1, 1, 2, tzinfo=plus2)) == 1704067200
    assert to_epoch_seconds("2024-01-01T00:00:00Z") == 1704067200
    assert to_epoch_seconds("2024-01-01") == 1704067200


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-01-01T00:00:00.5Z", "fractional seconds"),
        ("", "is not a date or time"),
        ("\x00", "is not a date or time"),
        (None, "got NoneType"),
        (12.0, "got float"),
    ],
)
def test_refused_forms(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_epoch_seconds(value)  # type: ignore[arg-type]


def test_format_iso_has_z_suffix() -> None:
    assert format_iso(1704067200) == "2024-01-01T00:00:00Z"
    assert format_iso(1704067200.25) == "2024-01-01T00:00:00.250Z"


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(start=100.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("early", 1))]
    await asyncio.sleep(0)
    clock.advance(2)
    await asyncio.sleep(0)
    assert woke == ["early"]
    clock.advance(3)
    await asyncio.gather(*tasks)
    assert woke == ["early", "late"]
    assert clock.now() == 105.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_auto_advancing_clock_and_system_clock() -> None:
    clock = FakeClock(start=0.0, auto_advance=True)
    await clock.sleep(2.5)
    assert clock.now() == 2.5 and clock.slept == [2.5]
    system = SystemClock()
    before = system.monotonic()
    await system.sleep(0)
    assert system.monotonic() >= before and system.now() > 1.7e9
