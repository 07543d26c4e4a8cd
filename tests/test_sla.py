"""SLA tracker: budgets, phase timing with a fake clock, decisions vs a reference model."""

from __future__ import annotations

from collections.abc import Sequence

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
    assert tracker.remaining_ms("total") == pytest.approx(500.0)
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
    budgets: dict[SLAPhase, float],
    mode: SLAViolationMode,
    events: Sequence[tuple[SLAPhase, float]],
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


# --- a wait cut short by the total deadline is a `total` violation --------------------------


def wait_until_timeout(clock: FakeClock, tracker: SLATracker, phase: SLAPhase) -> float:
    """What the engine does: wait ``remaining_ms(phase)`` on the clock, then record a timeout."""
    waited = tracker.remaining_ms(phase)
    assert waited is not None
    clock.advance(waited / 1000.0)
    tracker.record(phase, waited, timed_out=True)
    return waited


@pytest.mark.parametrize("phase", [SLAPhase.BACKFILL_WAIT, SLAPhase.LIVE_WAIT])
def test_total_deadline_cutting_a_wait_short_is_blamed_on_total(phase: SLAPhase) -> None:
    clock = FakeClock()
    tracker = SLATracker(SLAPolicy(), node_id="n", clock=clock)  # total 1500 ms
    with tracker.phase(SLAPhase.STORAGE_WAIT):
        clock.advance(0.1)
    clock.advance(1.2)  # 1300 ms gone: the phase has >= 800 ms left, the total only 200 ms
    assert tracker.remaining_ms(phase) == pytest.approx(200.0)
    waited = wait_until_timeout(clock, tracker, phase)
    assert waited == pytest.approx(200.0)
    (violation,) = tracker.violations
    assert violation.phase is SLAPhase.TOTAL
    assert violation.budget_ms == 1500.0
    assert violation.elapsed_ms == pytest.approx(1500.0)  # the total elapsed, not the wait
    assert tracker.phases_ms[phase.value] == pytest.approx(200.0)  # still measured
    decided = tracker.decision()
    assert decided.action == "partial" and decided.violation is violation
    assert tracker.finish() is None  # the total is reported once
    assert tracker.violations == [violation]


def test_fail_fast_on_total_deadline_raises_total() -> None:
    clock = FakeClock()
    policy = SLAPolicy(on_violation=SLAViolationMode.FAIL_FAST, total_deadline_ms=200)
    tracker = SLATracker(policy, node_id="ohlcv:binance:BTC/USDT:1m", clock=clock)
    wait_until_timeout(clock, tracker, SLAPhase.BACKFILL_WAIT)  # 5000 ms budget, 200 ms total
    with pytest.raises(SeamlessSLAExceeded) as info:
        tracker.raise_if_fail_fast()
    assert info.value.phase == "total"
    assert info.value.budget_ms == 200.0
    assert info.value.elapsed_ms == pytest.approx(200.0)


def test_later_waits_after_the_total_deadline_add_no_phase_violation() -> None:
    clock = FakeClock()
    tracker = SLATracker(SLAPolicy(total_deadline_ms=200), node_id="n", clock=clock)
    wait_until_timeout(clock, tracker, SLAPhase.BACKFILL_WAIT)
    assert tracker.remaining_ms(SLAPhase.LIVE_WAIT) == 0.0
    wait_until_timeout(clock, tracker, SLAPhase.LIVE_WAIT)  # a zero-length wait, timed out
    assert [v.phase for v in tracker.violations] == [SLAPhase.TOTAL]


def test_unbounded_phase_cut_by_the_total_deadline_is_a_total_violation() -> None:
    clock = FakeClock()
    policy = SLAPolicy(max_wait_backfill_ms=None, total_deadline_ms=300)
    tracker = SLATracker(policy, node_id="n", clock=clock)
    wait_until_timeout(clock, tracker, SLAPhase.BACKFILL_WAIT)
    (violation,) = tracker.violations
    assert (violation.phase, violation.budget_ms) == (SLAPhase.TOTAL, 300.0)


def test_phase_budget_nearer_than_the_total_is_blamed_on_the_phase() -> None:
    clock = FakeClock()
    policy = SLAPolicy(max_wait_backfill_ms=100, total_deadline_ms=1500)
    tracker = SLATracker(policy, node_id="n", clock=clock)
    wait_until_timeout(clock, tracker, SLAPhase.BACKFILL_WAIT)
    (violation,) = tracker.violations
    assert (violation.phase, violation.budget_ms) == (SLAPhase.BACKFILL_WAIT, 100.0)
    assert violation.elapsed_ms == pytest.approx(100.0)


@given(
    phase=st.sampled_from([SLAPhase.BACKFILL_WAIT, SLAPhase.LIVE_WAIT]),
    budget=st.one_of(st.none(), st.integers(0, 5000)),
    spent=st.integers(0, 5000),
    total=st.one_of(st.none(), st.integers(0, 5000)),
    before=st.integers(0, 5000),
)
def test_timeout_is_charged_to_the_nearer_limit(
    phase: SLAPhase, budget: int | None, spent: int, total: int | None, before: int
) -> None:
    """Model: a timed-out wait blames the limit with the least time left when it began (its
    phase on a tie); its phase's spent time and the total elapsed time both include it."""
    policy = SLAPolicy(
        max_wait_storage_ms=None,
        max_wait_backfill_ms=budget,
        max_wait_live_ms=budget,
        total_deadline_ms=total,
    )
    clock = FakeClock(start=0.0)
    tracker = SLATracker(policy, node_id="n", clock=clock)
    tracker.phases_ms[phase.value] = float(spent)  # spent earlier in this phase, within ...
    clock.advance(before / 1000.0)  # ... the `before` ms that have gone by
    phase_left = None if budget is None else budget - spent
    total_left = None if total is None else total - before
    if phase_left is None and total_left is None:
        assert tracker.remaining_ms(phase) is None  # nothing bounds the wait: no timeout
        return
    if phase_left is not None and phase_left < 0:
        return  # over its budget before the wait: not a wait that times out
    waited = wait_until_timeout(clock, tracker, phase)
    (violation,) = tracker.violations
    total_nearer = phase_left is None or (total_left is not None and total_left < phase_left)
    if total_nearer:
        assert total is not None
        assert (violation.phase, violation.budget_ms) == (SLAPhase.TOTAL, float(total))
        assert violation.elapsed_ms == pytest.approx(before + waited)
    else:
        assert budget is not None
        assert (violation.phase, violation.budget_ms) == (phase, float(budget))
        assert violation.elapsed_ms == pytest.approx(spent + waited)
