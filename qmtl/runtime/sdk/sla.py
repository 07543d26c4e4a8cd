"""SLA budgets for a fetch, and the decision taken when one is blown (pure; clock injected).

A fetch runs in phases: ``storage_wait`` (reading the hot store), ``backfill_wait`` (waiting
for a synchronous backfill), ``live_wait`` (asking the live feed for the newest bars) and
``total`` (the whole call). Each has a budget in milliseconds; ``None`` means unbounded.
The first phase over budget decides the outcome by ``on_violation``:

- ``FAIL_FAST``: raise :class:`SeamlessSLAExceeded`;
- ``PARTIAL_FILL``: serve what is ready, keep backfilling in the background;
- ``HOLD``: serve what is ready, marked HOLD (consumers must not act on it).

A wait is bounded by the smaller of its phase's remaining budget and the total deadline's
(:meth:`SLATracker.remaining_ms`). When such a wait times out, the violation is charged to
the limit that cut it short: its phase, or ``total`` (with the total budget and the total
elapsed time) when the total deadline was the nearer one — a backfill that had 5000 ms of
its own budget left but was stopped after 200 ms because the 1500 ms total ran out is a
``total`` violation, not a ``backfill_wait`` one.

The tracker only measures and decides; the provider logs ``seamless.sla.*`` events and
observes histograms from the values it returns.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from qmtl.runtime.sdk.clock import Clock, SystemClock
from qmtl.runtime.sdk.errors import SeamlessSLAExceeded
from qmtl.runtime.sdk.events import SLA_PHASE_EXCEEDED, log_event

__all__ = [
    "SLAAction",
    "SLADecision",
    "SLAPhase",
    "SLAPolicy",
    "SLATracker",
    "SLAViolation",
    "SLAViolationMode",
    "check_violations",
]

logger = logging.getLogger(__name__)


class SLAPhase(StrEnum):
    STORAGE_WAIT = "storage_wait"
    BACKFILL_WAIT = "backfill_wait"
    LIVE_WAIT = "live_wait"
    TOTAL = "total"


class SLAViolationMode(StrEnum):
    FAIL_FAST = "FAIL_FAST"
    PARTIAL_FILL = "PARTIAL_FILL"
    HOLD = "HOLD"


SLAAction = Literal["ok", "raise", "partial", "hold"]
_ACTION_OF_MODE: dict[SLAViolationMode, SLAAction] = {
    SLAViolationMode.FAIL_FAST: "raise",
    SLAViolationMode.PARTIAL_FILL: "partial",
    SLAViolationMode.HOLD: "hold",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class SLAPolicy:
    """Budgets in milliseconds (``None`` = unbounded).

    ``max_sync_gap_bars``: gaps longer than this many bars are never filled synchronously
    (background only). ``min_coverage`` (0..1) and ``max_lag_seconds`` are the defaults the
    domain gate applies when a fetch does not pass its own.
    """

    max_wait_storage_ms: float | None = 300
    """Budget (ms) for reading the hot store; >= 0; null: unbounded."""
    max_wait_backfill_ms: float | None = 5000
    """Budget (ms) for waiting on a backfill of missing bars; >= 0; null: unbounded."""
    max_wait_live_ms: float | None = 800
    """Budget (ms) for asking the live feed for the newest bars; >= 0; null: unbounded."""
    total_deadline_ms: float | None = 1500
    """Budget (ms) for the whole fetch; >= 0; null: unbounded."""
    max_sync_gap_bars: int | None = None
    """Gaps longer than this many bars are filled in the background only, never while the
    fetch waits; >= 0; null: no limit."""
    min_coverage: float | None = None
    """Coverage (share of the requested bars present) below which a result is served
    marked HOLD, when neither the fetch nor its domain sets one; 0 to 1; null: none."""
    max_lag_seconds: float | None = None
    """Staleness (seconds behind now) beyond which a result is served marked HOLD, when
    neither the fetch nor its domain sets one; >= 0; null: none."""
    on_violation: SLAViolationMode = SLAViolationMode.PARTIAL_FILL
    """When a budget runs out: ``FAIL_FAST`` (the fetch fails), ``PARTIAL_FILL`` (serve
    what is ready, keep filling in the background) or ``HOLD`` (serve what is ready,
    marked HOLD: not to be acted on)."""

    def __post_init__(self) -> None:
        for name in (
            "max_wait_storage_ms",
            "max_wait_backfill_ms",
            "max_wait_live_ms",
            "total_deadline_ms",
            "max_lag_seconds",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name}: must be a number >= 0 or null, got {value!r}")
        if self.max_sync_gap_bars is not None and (
            isinstance(self.max_sync_gap_bars, bool)
            or not isinstance(self.max_sync_gap_bars, int)
            or self.max_sync_gap_bars < 0
        ):
            raise ValueError(
                "max_sync_gap_bars: must be an integer >= 0 or null, "
                f"got {self.max_sync_gap_bars!r}"
            )
        if self.min_coverage is not None and (
            isinstance(self.min_coverage, bool)
            or not isinstance(self.min_coverage, int | float)
            or not 0.0 <= self.min_coverage <= 1.0
        ):
            raise ValueError(f"min_coverage: must be within [0, 1], got {self.min_coverage!r}")
        try:
            object.__setattr__(self, "on_violation", SLAViolationMode(self.on_violation))
        except ValueError:
            raise ValueError(
                f"on_violation: must be one of {[m.value for m in SLAViolationMode]}, "
                f"got {self.on_violation!r}"
            ) from None

    def budget_ms(self, phase: SLAPhase | str) -> float | None:
        """The budget of ``phase`` in milliseconds, ``None`` when unbounded."""
        return {
            SLAPhase.STORAGE_WAIT: self.max_wait_storage_ms,
            SLAPhase.BACKFILL_WAIT: self.max_wait_backfill_ms,
            SLAPhase.LIVE_WAIT: self.max_wait_live_ms,
            SLAPhase.TOTAL: self.total_deadline_ms,
        }[SLAPhase(phase)]

    def allows_sync_fill(self, gap_bars: int) -> bool:
        """Whether a gap of ``gap_bars`` bars may be filled synchronously."""
        return self.max_sync_gap_bars is None or gap_bars <= self.max_sync_gap_bars


@dataclass(frozen=True, slots=True)
class SLAViolation:
    """One phase over budget."""

    phase: SLAPhase
    elapsed_ms: float
    budget_ms: float
    mode: SLAViolationMode


@dataclass(frozen=True, slots=True)
class SLADecision:
    """What the fetch must do: ``ok``, ``raise``, ``partial`` or ``hold``."""

    action: SLAAction
    violation: SLAViolation | None = None


@dataclass(slots=True)
class SLATracker:
    """Times the phases of one fetch against ``policy``. Not thread-safe (one fetch, one task).

    Phase times accumulate (a phase entered twice adds up). ``remaining_ms`` tells the engine
    how long it may still wait in a phase before the phase or the total deadline is blown;
    ``record(..., timed_out=True)`` then blames whichever of the two it was. Times are
    milliseconds measured on ``clock.monotonic()`` (seconds), so a ``FakeClock`` drives it.
    """

    policy: SLAPolicy
    node_id: str
    clock: Clock = field(default_factory=SystemClock)
    phases_ms: dict[str, float] = field(default_factory=dict)
    violations: list[SLAViolation] = field(default_factory=list)
    _started: float = 0.0

    def __post_init__(self) -> None:
        self._started = self.clock.monotonic()

    def elapsed_total_ms(self) -> float:
        return (self.clock.monotonic() - self._started) * 1000.0

    @contextlib.contextmanager
    def phase(self, phase: SLAPhase | str) -> Iterator[None]:
        """Time a block as ``phase``; the elapsed time is recorded even if the block raises."""
        begin = self.clock.monotonic()
        try:
            yield
        finally:
            self.record(phase, (self.clock.monotonic() - begin) * 1000.0)

    def record(
        self, phase: SLAPhase | str, elapsed_ms: float, *, timed_out: bool = False
    ) -> SLAViolation | None:
        """Add ``elapsed_ms`` to ``phase``; return the violation if one is new now.

        ``timed_out=True`` says the caller stopped waiting after :meth:`remaining_ms` of
        ``phase``: that is a violation even when the measured time equals the limit exactly,
        and it is charged to the limit that was nearer (:meth:`_binding_limit`) — ``phase``
        itself, or ``total`` when the total deadline cut the wait short. Each phase
        (``total`` included) is reported at most once."""
        key = SLAPhase(phase)
        spent = self.phases_ms.get(key.value, 0.0) + max(0.0, elapsed_ms)
        self.phases_ms[key.value] = spent
        if timed_out:
            if key is not SLAPhase.TOTAL and self._binding_limit(key) is SLAPhase.TOTAL:
                return self._violate(SLAPhase.TOTAL, self.elapsed_total_ms())
            return self._violate(key, spent)
        budget = self.policy.budget_ms(key)
        if budget is None or spent <= budget:
            return None
        return self._violate(key, spent)

    def finish(self) -> SLAViolation | None:
        """Record the ``total`` phase (call once, at the end of the fetch)."""
        return self.record(SLAPhase.TOTAL, self.elapsed_total_ms())

    def remaining_ms(self, phase: SLAPhase | str) -> float | None:
        """Milliseconds left before ``phase`` or the total deadline is over (``None``: no
        limit); never negative."""
        limits = self._limits_left(SLAPhase(phase))
        return max(0.0, min(limits.values())) if limits else None

    def _limits_left(self, key: SLAPhase) -> dict[SLAPhase, float]:
        """Milliseconds left (negative once over) of each bounded limit on a wait in ``key``:
        its own budget (time spent in ``key`` so far), and the total deadline (time since
        the fetch began — which is also the only limit of ``total`` itself)."""
        limits: dict[SLAPhase, float] = {}
        budget = self.policy.budget_ms(key)
        if budget is not None and key is not SLAPhase.TOTAL:
            limits[key] = budget - self.phases_ms.get(key.value, 0.0)
        total_budget = self.policy.total_deadline_ms
        if total_budget is not None:
            limits[SLAPhase.TOTAL] = total_budget - self.elapsed_total_ms()
        return limits

    def _binding_limit(self, key: SLAPhase) -> SLAPhase | None:
        """Which limit bounded the wait in ``key`` that just timed out: the one with the
        least left (both shrink by the same wait, so it is also the one that was nearer when
        the wait began). A tie — within a nanosecond, so that float rounding of clock
        readings cannot decide it — goes to the phase itself, whose budget then is spent
        too; ``None`` when nothing bounds it."""
        limits = self._limits_left(key)
        if not limits:
            return None
        return min(limits, key=lambda limit: (round(limits[limit], 6), limit is SLAPhase.TOTAL))

    def _violate(self, key: SLAPhase, elapsed_ms: float) -> SLAViolation | None:
        """Record that ``key`` is over its budget (once per phase); ``None`` when already
        recorded or when ``key`` has no budget."""
        budget = self.policy.budget_ms(key)
        if budget is None or any(v.phase is key for v in self.violations):
            return None
        violation = SLAViolation(key, elapsed_ms, float(budget), self.policy.on_violation)
        self.violations.append(violation)
        return violation

    def decision(self) -> SLADecision:
        """The action demanded by the first violation, or ``ok``."""
        if not self.violations:
            return SLADecision("ok")
        first = self.violations[0]
        return SLADecision(_ACTION_OF_MODE[first.mode], first)

    def raise_if_fail_fast(self) -> None:
        """Raise :class:`SeamlessSLAExceeded` when the decision is ``raise``."""
        decided = self.decision()
        if decided.action == "raise" and decided.violation is not None:
            v = decided.violation
            raise SeamlessSLAExceeded(
                v.phase.value, node_id=self.node_id, elapsed_ms=v.elapsed_ms, budget_ms=v.budget_ms
            )


def check_violations(tracker: SLATracker, handled: set[SLAPhase]) -> None:
    """Log each violation of ``tracker`` not in ``handled`` once (``seamless.sla.
    phase_exceeded``), add it there, and raise now if the policy says ``FAIL_FAST``."""
    for violation in tracker.violations:
        if violation.phase in handled:
            continue
        handled.add(violation.phase)
        log_event(
            logger,
            SLA_PHASE_EXCEEDED,
            level=logging.WARNING,
            node_id=tracker.node_id,
            phase=violation.phase.value,
            elapsed_ms=violation.elapsed_ms,
            budget_ms=violation.budget_ms,
            mode=violation.mode.value,
        )
    tracker.raise_if_fail_fast()
