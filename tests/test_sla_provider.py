"""SLA accounting as the provider reports it: which limit a cut-short wait is charged to, and
the per-phase ``seamless_sla_deadline_seconds`` series (real DuckDB storage, real backfiller,
scripted fetcher, fake clock, a fresh metrics registry per test)."""

from __future__ import annotations

import logging

import pytest

from qmtl.runtime.sdk.errors import SeamlessSLAExceeded
from qmtl.runtime.sdk.history_storage import HistoryStorage
from qmtl.runtime.sdk.sla import SLAPolicy, SLAViolationMode
from tests.engine_rig import NODE, Rig, storage

__all__ = ["storage"]  # the fixture, used by name

LABELS = {"node_id": NODE, "interval": "60", "world_id": ""}


class SlaRig(Rig):
    def __init__(self, storage: HistoryStorage, sla: SLAPolicy, *, delay_s: float = 0.0) -> None:
        super().__init__(storage, sla=sla, delay_s=delay_s)

    def deadline(self, suffix: str, phase: str) -> float | None:
        return self.registry.get_sample_value(
            f"seamless_sla_deadline_seconds_{suffix}", {**LABELS, "phase": phase}
        )


async def test_backfill_cut_short_by_the_total_deadline_is_a_total_violation(
    storage: HistoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    # The backfill may wait 5000 ms, but the whole fetch only 200 ms. (Storage reads run in
    # a thread, during which FakeClock.run_until may jump to the background fetcher's wakeup:
    # no storage budget here, so that only the total and the backfill wait are judged.)
    policy = SLAPolicy(max_wait_storage_ms=None, total_deadline_ms=200)
    rig = SlaRig(storage, policy, delay_s=5.0)
    with caplog.at_level(logging.INFO, logger="qmtl"):
        meta = (await rig.fetch()).metadata
    assert meta.sla_violation == "total" and meta.downgrade_reason == "sla_total"
    assert meta.sla_phases_ms["backfill_wait"] == pytest.approx(200.0)
    exceeded = [r for r in caplog.records if r.getMessage() == "seamless.sla.phase_exceeded"]
    assert [(r.phase, r.budget_ms) for r in exceeded] == [("total", 200.0)]  # type: ignore[attr-defined]
    assert exceeded[0].elapsed_ms == pytest.approx(200.0)  # type: ignore[attr-defined]
    reason = {"node_id": NODE, "world_id": "", "reason": "sla_total"}
    assert rig.registry.get_sample_value("partial_fill_returns_total", reason) == 1.0
    await rig.settle()


async def test_fail_fast_on_the_total_deadline_raises_total(storage: HistoryStorage) -> None:
    policy = SLAPolicy(
        max_wait_storage_ms=None, total_deadline_ms=200, on_violation=SLAViolationMode.FAIL_FAST
    )
    rig = SlaRig(storage, policy, delay_s=5.0)
    with pytest.raises(SeamlessSLAExceeded) as info:
        await rig.fetch()
    assert (info.value.phase, info.value.budget_ms) == ("total", 200.0)
    await rig.settle()


async def test_sla_deadline_seconds_has_one_series_per_phase(storage: HistoryStorage) -> None:
    rig = SlaRig(storage, SLAPolicy(total_deadline_ms=None, max_wait_backfill_ms=None), delay_s=2.0)
    meta = (await rig.fetch()).metadata
    assert set(meta.sla_phases_ms) == {"storage_wait", "backfill_wait", "total"}
    assert meta.sla_phases_ms["backfill_wait"] > 0
    for phase, elapsed_ms in meta.sla_phases_ms.items():
        assert rig.deadline("count", phase) == 1.0, phase
        assert rig.deadline("sum", phase) == pytest.approx(elapsed_ms / 1000.0), phase
    assert rig.deadline("count", "live_wait") is None  # not measured: no series
    assert rig.registry.get_sample_value("seamless_sla_deadline_seconds_count", LABELS) is None
