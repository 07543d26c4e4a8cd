"""SLA tracker: budgets, phase timing with a fake clock, decisions vs a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmtl.runtime.sdk.clock import FakeClock
from qmtl.runtime.sdk.errors import SeamlessSLAExceeded
from qmtl.runtime.sdk.sla import SLAPhase, SLAPolicy, SLATracker, SLAViolationMode

PHASES = [SLAPhase.STORAGE_WAIT, SLAPhase.BACKFILL_WAIT, SLAPhase.LIVE_WAIT]


def test_defaults_match_spec() -> None:
    p = SLAPolicy()
    assert (p.max_wait_storage_ms, p.max_wait_backfill_ms, p.max_wait_live_ms) == (300, 5000, 800)
    assert p.total_deadline_ms == 1500
    assert p.on_violation is SLAViolationMode.PARTIAL_FILL
    assert p.max_sync_gap_bars is None and p.allows_sync_fill(10**9)


def test_phase_timing_uses_injected_clock() -> None:
    clock = FakeClock()
    tracker = SLATracker(SLAPolicy(), node_id="n", clock=clock)
    with tracker.phase("storage_wait"):
        clock.advance(0.25)
    assert tracker.phases_ms == {"storage_wait": 250.0}
    assert tracker.decision().action == "ok"
    with tracker.phase(SLAPhase.STORAGE_WAIT):
        clock.advance(0.1)
    decided = tracker.decision()
    assert decided.action == "partial"
    assert decided.violation is not None
    assert decided.violation.phase is SLAPhase.STORAGE_WAIT
    assert decided.violation.elapsed_ms == pytest.approx(350.0)


def test_phase_recorded_even_when_block_raises() -> None:
    clock = FakeClock()
    tracker = SLATracker(SLAPolicy(), node_id="n", clock=clock)

    def timed_failure() -> None:
        with tracker.phase("live_wait"):
            clock.advance(1.0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        timed_failure()
    assert tracker.phases_ms["live_wait"] == 1000.0


def test_fail_fast_raises_with_fields() -> None:
    clock = FakeClock()
    policy = SLAPolicy(on_violation=SLAViolationMode.FAIL_FAST, max_wait_backfill_ms=100)
    tracker = SLATracker(policy, node_id="ohlcv:binance:BTC/USDT:1m", clock=clock)
    tracker.record("backfill_wait", 150)
    with pytest.raises(SeamlessSLAExceeded, match=r"'backfill_wait' took 150\.0 ms") as info:
        tracker.raise_if_fail_fast()
    assert (info.value.phase, info.value.budget_ms) == ("backfill_wait", 100)
    assert info.value.node_id == "ohlcv:binance:BTC/USDT:1m"


def test_total_phase_and_remaining_budget() -> None:
    clock = FakeClock()
    tracker = SLATracker(SLAPolicy(on_violation="HOLD"), node_id="n", clock=clock)  # type: ignore[arg-type]
    clock.advance(1.0)
    # backfill budget 5000 ms, but only 500 ms left of the 1500 ms total deadline
    assert tracker.remaining_ms("backfill_wait") == pytest.approx(500.0)
    clock.advance(1.0)
    assert tracker.remaining_ms("backfill_wait") == 0.0
    violation = tracker.finish()
    assert violation is not None and violation.phase is SLAPhase.TOTAL
    assert tracker.decision().action == "hold"


def test_unbounded_budgets() -> None:
    policy = SLAPolicy(
        max_wait_storage_ms=None,
        max_wait_backfill_ms=None,
        max_wait_live_ms=None,
        total_deadline_ms=None,
    )
    tracker = SLATracker(policy, node_id="n", clock=FakeClock())
    assert tracker.record("storage_wait", 10**9) is None
    assert tracker.remaining_ms("storage_wait") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_wait_storage_ms": -1}, "max_wait_storage_ms: must be a number >= 0"),
        ({"total_deadline_ms": "fast"}, "total_deadline_ms: must be a number"),
        ({"max_sync_gap_bars": -5}, "max_sync_gap_bars: must be an integer >= 0"),
        ({"min_coverage": 1.5}, r"min_coverage: must be within \[0, 1\]"),
        ({"on_violation": "PANIC"}, "on_violation: must be one of"),
    ],
)
def test_bad_policy_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SLAPolicy(**kwargs)  # type: ignore[arg-type]


def reference_decision(
    budgets: dict[SLAPhase, float], mode: SLAViolationMode, events: list[tuple[SLAPhase, float]]
) -> str:
    """Ten-line model: accumulate per phase; the first phase over budget decides."""
    spent: dict[SLAPhase, float] = {}
    for phase, ms in events:
        spent[phase] = spent.get(phase, 0.0) + ms
        if spent[phase] > budgets[phase]:
            return {"FAIL_FAST": "raise", "PARTIAL_FILL": "partial", "HOLD": "hold"}[mode.value]
    return "ok"


@given(
    st.lists(st.integers(min_value=0, max_value=2000), min_size=3, max_size=3),
    st.sampled_from(list(SLAViolationMode)),
    st.lists(st.tuples(st.sampled_from(PHASES), st.integers(min_value=0, max_value=1500))),
)
def test_decisions_match_reference_model(
    budgets: list[int], mode: SLAViolationMode, events: list[tuple[SLAPhase, int]]
) -> None:
    policy = SLAPolicy(
        max_wait_storage_ms=budgets[0],
        max_wait_backfill_ms=budgets[1],
        max_wait_live_ms=budgets[2],
        total_deadline_ms=None,
        on_violation=mode,
    )
    tracker = SLATracker(policy, node_id="n", clock=FakeClock())
    for phase, ms in events:
        tracker.record(phase, ms)
    model = reference_decision(dict(zip(PHASES, map(float, budgets), strict=True)), mode, events)
    assert tracker.decision().action == model


def test_timed_out_wait_is_a_violation_at_exactly_the_budget() -> None:
    tracker = SLATracker(SLAPolicy(max_wait_backfill_ms=100), node_id="n", clock=FakeClock())
    assert tracker.record("backfill_wait", 100) is None
    violation = tracker.record("backfill_wait", 0, timed_out=True)
    assert violation is not None and violation.elapsed_ms == 100
