"""``SeamlessDataProvider``: storage first, then backfill, within an SLA — and say what was served.

A fetch reads the coverage ledger of the hot store, computes the missing ranges of the
half-open request, repairs them according to the :class:`DataAvailabilityStrategy`, reads the
bars, conforms them and returns a :class:`SeamlessFetchResult` whose metadata names the exact
bars served (``dataset_fingerprint``), what is still missing and why, and the SLA phase times.

Strategies:

- ``FAIL_FAST``: storage only; any missing range raises :class:`SeamlessCoverageError`.
- ``AUTO_BACKFILL``: backfill every missing range synchronously (no budget), then serve.
- ``PARTIAL_FILL``: serve what storage has *now*; the backfill of the rest runs in the
  background and a later fetch sees it.
- ``SEAMLESS``: storage, then a synchronous backfill bounded by the SLA budgets; gaps longer
  than ``sla.max_sync_gap_bars`` go to the background at once (unless ``BackfillConfig.mode``
  is ``sync``: then the fetch waits for every gap, within budget). When a budget runs out the
  backfill keeps running in the background and ``sla.on_violation`` decides: raise
  (FAIL_FAST), serve partial (PARTIAL_FILL) or serve marked HOLD.

``partial_ok=False`` turns any result that is still missing bars after its repair into a
:class:`SeamlessCoverageError` (for consumers that must never see a partial frame).

The live feed, when configured, is asked for the newest bars still missing at the end of the
request (``live_wait`` phase); those bars are served (and flagged in the metadata) but not
stored: the backfill stores them once they are stable.

A fetch's execution domain governs it (:mod:`~qmtl.runtime.sdk.governance`): a backtest reads
only artifacts published at or before its ``as_of``, a dryrun serves what it publishes, live
and shadow keep ``as_of`` monotonic and are HOLD when stale or incomplete; repeated identical
fetches are answered from the world-keyed cache, re-gated.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pandas as pd

from qmtl.runtime.sdk._config_models import ObservabilityConfig
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.cache import ResultCache
from qmtl.runtime.sdk.clock import Clock, SystemClock, wait_within
from qmtl.runtime.sdk.compute_context import ComputeContext
from qmtl.runtime.sdk.conformance import ConformancePipeline, ConformanceReport
from qmtl.runtime.sdk.domain_gate import source_of
from qmtl.runtime.sdk.errors import SeamlessCoverageError, SeamlessDomainPolicyError
from qmtl.runtime.sdk.events import SLA_DOWNGRADE, log_event
from qmtl.runtime.sdk.fetch_metrics import observe_fetch
from qmtl.runtime.sdk.fetch_outcome import FetchOutcome, served_metadata, sla_downgrade_of
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata, SeamlessFetchResult
from qmtl.runtime.sdk.governance import Governor
from qmtl.runtime.sdk.history_coverage import (
    Range,
    compute_missing_ranges,
    merge_ranges,
    subtract_ranges,
)
from qmtl.runtime.sdk.live_feed import closed_runs, consult_live
from qmtl.runtime.sdk.metrics import SeamlessMetrics, default_metrics
from qmtl.runtime.sdk.node_id import check_interval
from qmtl.runtime.sdk.provider_queries import StoreQueries
from qmtl.runtime.sdk.served_artifacts import publish_covered, publishes
from qmtl.runtime.sdk.served_bars import ServedBars
from qmtl.runtime.sdk.sla import SLAPhase, SLAPolicy, SLATracker, check_violations
from qmtl.runtime.sdk.sync_bridge import SyncMethods
from qmtl.runtime.sdk.timestamps import InstantLike, check_span_bounds, parse_instant

if TYPE_CHECKING:
    from collections.abc import Mapping

    from qmtl.runtime.sdk.artifact_publisher import ArtifactPublisher, ArtifactView
    from qmtl.runtime.sdk.backfill_coordinator import BackfillCoordinator
    from qmtl.runtime.sdk.backfill_types import Backfiller
    from qmtl.runtime.sdk.config import DomainPolicy
    from qmtl.runtime.sdk.history_storage import HistoryStorage
    from qmtl.runtime.sdk.live_feed import LiveDataFeed

__all__ = [
    "DataAvailabilityStrategy",
    "SeamlessDataProvider",
]

logger = logging.getLogger(__name__)

#: The domain sources that consult the live feed for the newest bars.
_LIVE_SOURCES = frozenset({"storage_backfill_live", "artifact_prefers"})

_UNBOUNDED_SLA = SLAPolicy(
    max_wait_storage_ms=None,
    max_wait_backfill_ms=None,
    max_wait_live_ms=None,
    total_deadline_ms=None,
)


class DataAvailabilityStrategy(StrEnum):
    FAIL_FAST = "FAIL_FAST"
    AUTO_BACKFILL = "AUTO_BACKFILL"
    PARTIAL_FILL = "PARTIAL_FILL"
    SEAMLESS = "SEAMLESS"


class SeamlessDataProvider(StoreQueries, SyncMethods):
    """The engine behind ``fetch`` (module docstring). Safe to share between tasks of one
    event loop; storage and backfiller do their own I/O off the loop. Synchronous code uses
    :meth:`fetch_sync` (and ``with provider:`` or :meth:`close_sync`)."""

    def __init__(
        self,
        *,
        strategy: DataAvailabilityStrategy | str = DataAvailabilityStrategy.SEAMLESS,
        storage: HistoryStorage,
        backfiller: Backfiller | None = None,
        live_feed: LiveDataFeed | None = None,
        conformance: ConformancePipeline | None = None,
        sla: SLAPolicy | None = None,
        partial_ok: bool = True,
        registrar: ArtifactPublisher | None = None,
        backfill_config: BackfillConfig | None = None,
        coordinator: BackfillCoordinator | None = None,
        cache: ResultCache | None = None,
        publish_fingerprint: bool = True,
        early_fingerprint: bool = False,
        clock: Clock | None = None,
        metrics: SeamlessMetrics | None = None,
        publish_optional: bool = False,
        domains: Mapping[str, DomainPolicy] | None = None,
        observability: ObservabilityConfig | None = None,
    ) -> None:
        try:
            self.strategy = DataAvailabilityStrategy(strategy)
        except ValueError:
            valid = ", ".join(s.value for s in DataAvailabilityStrategy)
            raise ValueError(f"strategy must be one of {valid}, got {strategy!r}") from None
        if early_fingerprint and not getattr(registrar, "early_fingerprint", False):
            raise ValueError(
                "early_fingerprint: the registrar records preview fingerprints; give one "
                "built with early_fingerprint=True"
            )
        self.storage = storage
        self.backfiller = backfiller
        # The backfiller claims its batches from it; kept here to say which one is in use.
        self.coordinator = coordinator
        self.live_feed = live_feed
        self.conformance = conformance or ConformancePipeline()
        self.sla = sla
        self.partial_ok = partial_ok
        self.backfill_config = backfill_config or BackfillConfig()
        #: Thresholds whose crossing a fetch logs (``seamless.observability``).
        self.observability = observability or ObservabilityConfig()
        self.registrar = registrar
        self.publish_fingerprint = publish_fingerprint
        self.publish_optional = publish_optional
        self.clock = clock or SystemClock()
        self.metrics = metrics or default_metrics()
        self._last_metadata: contextvars.ContextVar[SeamlessFetchMetadata | None] = (
            contextvars.ContextVar(f"qmtl_last_fetch_metadata_{id(self)}", default=None)
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._served = ServedBars(self.conformance)
        self.governor = Governor(
            storage=storage, domains=domains, sla=sla, cache=cache,
            metrics=self.metrics, clock=self.clock,
        )  # fmt: skip

    @property
    def last_fetch_metadata(self) -> SeamlessFetchMetadata | None:
        """The metadata of the newest fetch *made by the calling task* (a context variable:
        concurrent fetches of other tasks never overwrite it; a task started after a fetch
        inherits the value its parent saw). ``None`` before the first fetch."""
        return self._last_metadata.get()

    # -- public API -----------------------------------------------------------------------

    async def fetch(
        self,
        start: InstantLike,
        end: InstantLike,
        *,
        node_id: str,
        interval: int | None = None,
        compute_context: ComputeContext | Mapping[str, Any] | None = None,
        world_id: str | None = None,
        execution_domain: str | None = None,
        as_of: InstantLike | None = None,
        min_coverage: float | None = None,
        max_lag_seconds: float | None = None,
    ) -> SeamlessFetchResult:
        """Bars of ``node_id`` with open time in ``[start, end)`` (module docstring).
        ``interval`` (seconds) defaults to the node id's timeframe; when given it must agree."""
        interval = check_interval(node_id, interval).interval
        window = self._window(start, end, interval)
        context = ComputeContext.coerce(compute_context).with_overrides(
            world_id=world_id,
            execution_domain=execution_domain,
            as_of=as_of,
            min_coverage=min_coverage,
            max_lag_seconds=max_lag_seconds,
        )
        policy = self.governor.admit(node_id, context)
        key = self.governor.cache_key(node_id, window, interval, self.conformance.version, context)
        cached = await self.governor.cached(key, context, policy)
        if cached is not None:
            observe_fetch(self.metrics, cached.metadata, None, self.observability)
            self._last_metadata.set(cached.metadata)
            return cached
        tracker = SLATracker(self._policy(), node_id=node_id, clock=self.clock)
        source = source_of(policy)
        pinned = context.as_of is not None and self.registrar is not None
        if source == "artifact_only" or (policy is None and pinned):
            result = await self._fetch_as_of(
                node_id,
                interval,
                window,
                context,
                tracker,
                policy,
                strict=source == "artifact_only",
            )
        else:
            result = await self._fetch_store(node_id, interval, window, context, tracker, policy)
        result = self.governor.keep(key, result, context)
        self._last_metadata.set(result.metadata)
        return result

    async def _fetch_store(
        self,
        node_id: str,
        interval: int,
        window: Range,
        context: ComputeContext,
        tracker: SLATracker,
        policy: DomainPolicy | None,
    ) -> SeamlessFetchResult:
        """Storage, then what the domain's source allows: backfill, the live feed; a dryrun
        (``artifact_prefers``) then publishes and serves from the artifacts at its ``as_of``."""
        source = source_of(policy)
        with tracker.phase(SLAPhase.STORAGE_WAIT):
            ledger = await self.storage.read_ledger(node_id, interval)
        outcome = FetchOutcome(compute_missing_ranges(ledger, window.start, window.end, interval))
        check_violations(tracker, outcome.handled)
        unstored = None  # live bars the store refused: served from memory
        if self.live_feed is not None and outcome.missing and source in _LIVE_SOURCES:
            unstored = await consult_live(
                self.live_feed, self.storage, node_id, interval, window, tracker, outcome,
                self.clock,
            )  # fmt: skip
            check_violations(tracker, outcome.handled)
        repaired = bool(outcome.missing) and source != "storage_only"
        if repaired:
            await self._repair(node_id, interval, tracker, outcome)
        elif outcome.missing:
            outcome.partial = True  # the domain reads the store only
        with tracker.phase(SLAPhase.STORAGE_WAIT):
            if repaired:  # the ledger moved on: say what is missing *now*
                ledger = await self.storage.read_ledger(node_id, interval)
                outcome.missing = compute_missing_ranges(ledger, window.start, window.end, interval)
            revision = await self.storage.revision(node_id)
            raw = await self.storage.read_range(node_id, window.start, window.end)
            if revision is not None and revision != await self.storage.revision(node_id):
                revision = None  # a write landed during the read
        # The ledger was read before the bars, and writes only add: every bar it vouches for
        # was read. A batch committed in between (a background backfill) added bars it
        # calls missing: they are served, so they are not missing.
        if outcome.missing and len(raw):
            served = closed_runs(raw["ts"].to_numpy(dtype="int64"), interval)
            outcome.missing = subtract_ranges(outcome.missing, served)
        if unstored is not None and not unstored.empty:
            runs = closed_runs(unstored["ts"].to_numpy(dtype="int64"), interval)
            outcome.missing = subtract_ranges(outcome.missing, runs)
            raw = pd.concat([raw, unstored], ignore_index=True)
            revision = None  # these bars are not the store's
        check_violations(tracker, outcome.handled)
        if source != "artifact_prefers":
            self._refuse_partial(node_id, interval, outcome, policy)
        frame, report, fingerprint = await self._served.conform(
            raw, node_id, interval, window, revision
        )
        view = None
        if self.registrar is not None and publishes(
            context.execution_domain,
            publish_fingerprint=self.publish_fingerprint,
            publish_optional=self.publish_optional,
        ):
            view = await publish_covered(
                self.registrar, node_id=node_id, interval=interval, window=window,
                frame=frame, report=report, ledger=ledger, context=context,
            )  # fmt: skip
        if source == "artifact_prefers" and self.registrar is not None:
            # A dryrun serves what it just published: its as_of is a floor, the newest
            # publication the cap (the metadata names it; a backtest there replays this).
            newest = (await self.registrar.catalog(node_id)).last_as_of_ms
            floor = context.as_of
            cap = floor if newest is None or (floor is not None and floor > newest) else newest
            return await self._fetch_as_of(
                node_id, interval, window, context, tracker, policy, as_of_ms=cap
            )
        return await self._finish(
            node_id, interval, window, context, tracker, frame, report, fingerprint, outcome,
            policy, view,
        )  # fmt: skip

    def _refuse_partial(
        self, node_id: str, interval: int, outcome: FetchOutcome, policy: DomainPolicy | None
    ) -> None:
        """``partial_ok=False`` or a domain that does not allow partial results: a result
        still missing bars is :class:`SeamlessCoverageError` instead."""
        allowed = self.partial_ok and (policy is None or policy.allow_partial)
        if not allowed and outcome.missing:
            raise SeamlessCoverageError(node_id, merge_ranges(outcome.missing, interval))

    async def _fetch_as_of(
        self,
        node_id: str,
        interval: int,
        window: Range,
        context: ComputeContext,
        tracker: SLATracker,
        policy: DomainPolicy | None,
        *,
        strict: bool = False,
        as_of_ms: int | None = None,
    ) -> SeamlessFetchResult:
        """A fetch pinned to ``as_of``: only published artifacts, per bar the newest one
        published at or before it — never the hot store, never the exchange, so the answer
        cannot change once given. ``strict`` (a backtest): a part no artifact holds fails.
        ``as_of_ms`` overrides the context's (a dryrun's cap)."""
        if self.registrar is None:
            raise SeamlessDomainPolicyError(
                f"{node_id}: a {context.execution_domain} fetch reads published artifacts, "
                "and this provider has no artifact registrar"
            )
        with tracker.phase(SLAPhase.STORAGE_WAIT):
            cap = context.as_of if as_of_ms is None else as_of_ms
            read = await self.registrar.read(node_id, interval, window, as_of=cap)
        outcome = FetchOutcome(list(read.view.missing))
        if strict and outcome.missing:
            self.governor.refuse_missing_artifact(node_id, context, read.view.missing)
        self._refuse_partial(node_id, interval, outcome, policy)
        frame, report, fingerprint = await self._served.conform(
            read.frame, node_id, interval, window, None
        )
        return await self._finish(
            node_id, interval, window, context, tracker, frame, report, fingerprint, outcome,
            policy, read.view,
        )  # fmt: skip

    def fetch_sync(
        self,
        start: InstantLike,
        end: InstantLike,
        *,
        node_id: str,
        interval: int | None = None,
        **options: Any,
    ) -> SeamlessFetchResult:
        """:meth:`fetch` for synchronous code (scripts, Jupyter): runs on the provider's
        private event loop (:mod:`~qmtl.runtime.sdk.sync_bridge`) and blocks until done.
        ``options`` are :meth:`fetch`'s keywords. Release with ``close_sync()`` or ``with``."""
        result = self.run_sync(
            self.fetch(start, end, node_id=node_id, interval=interval, **options)
        )
        self._last_metadata.set(result.metadata)
        return result

    def _policy(self) -> SLAPolicy:
        """The budgets this fetch runs under: ``AUTO_BACKFILL`` backfills everything before
        serving, so it has none (phases are still measured, never violated or downgraded)."""
        if self.sla is None or self.strategy is DataAvailabilityStrategy.AUTO_BACKFILL:
            return _UNBOUNDED_SLA
        return self.sla

    def _window(self, start: InstantLike, end: InstantLike, interval: int) -> Range:
        """The aligned request, refused in one line when ambiguous (an 8-digit ``int``) or
        absurd (before the epoch, after year 9999, or more than
        ``backfill_config.max_range_bars`` bars). Epoch milliseconds are recognised."""
        window = Range.aligned(
            parse_instant(start, name="start"), parse_instant(end, name="end"), interval
        )
        check_span_bounds(window.start, window.end)
        self.backfill_config.check_range_bars(window, interval, of=f"{interval} s")
        return window

    async def wait_background(self) -> None:
        """Wait for every background backfill started by this provider."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel background work (the backfiller's committed batches stay committed)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- repair -----------------------------------------------------------------------------

    async def _repair(
        self, node_id: str, interval: int, tracker: SLATracker, outcome: FetchOutcome
    ) -> None:
        if self.strategy is DataAvailabilityStrategy.FAIL_FAST:
            raise SeamlessCoverageError(node_id, outcome.missing)
        if self.backfiller is None:
            outcome.partial = True
            return
        if self.strategy is DataAvailabilityStrategy.PARTIAL_FILL:
            self._spawn(node_id, interval, outcome.missing)
            outcome.partial = True
            return
        if self.strategy is DataAvailabilityStrategy.AUTO_BACKFILL:
            with tracker.phase(SLAPhase.BACKFILL_WAIT):
                report = await self.backfiller.backfill(node_id, interval, outcome.missing)
            outcome.errors += report.errors
            return
        policy = self._policy()
        # ``backfill.mode: sync`` waits (within the budget) for every gap, however long.
        waits_all = self.backfill_config.mode == "sync"
        sync = [
            r for r in outcome.missing if waits_all or policy.allows_sync_fill(r.bars(interval))
        ]
        deferred = [r for r in outcome.missing if r not in sync]
        if deferred:
            self._spawn(node_id, interval, deferred)
            outcome.partial = True
        if not sync:
            return
        task = self._spawn(node_id, interval, sync)
        budget_ms = tracker.remaining_ms(SLAPhase.BACKFILL_WAIT)
        started = self.clock.monotonic()
        finished = await wait_within(task, budget_ms, self.clock)
        elapsed_ms = (self.clock.monotonic() - started) * 1000.0
        tracker.record(SLAPhase.BACKFILL_WAIT, elapsed_ms, timed_out=not finished)
        if finished:
            outcome.errors += task.result().errors
        else:
            outcome.partial = True
        check_violations(tracker, outcome.handled)

    def _spawn(self, node_id: str, interval: int, ranges: list[Range]) -> asyncio.Task[Any]:
        assert self.backfiller is not None
        task = asyncio.create_task(self.backfiller.backfill(node_id, interval, ranges))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- result -----------------------------------------------------------------------------

    async def _finish(
        self,
        node_id: str,
        interval: int,
        window: Range,
        context: ComputeContext,
        tracker: SLATracker,
        frame: pd.DataFrame,
        report: ConformanceReport,
        fingerprint: str,
        outcome: FetchOutcome,
        policy: DomainPolicy | None,
        view: ArtifactView | None = None,
    ) -> SeamlessFetchResult:
        tracker.finish()
        check_violations(tracker, outcome.handled)
        decision = tracker.decision()
        metadata = served_metadata(
            node_id=node_id,
            interval=interval,
            window=window,
            strategy=self.strategy.value,
            context=context,
            decision=decision,
            phases_ms=tracker.phases_ms,
            frame=frame,
            report=report,
            fingerprint=fingerprint,
            outcome=outcome,
            now=self.clock.now(),
            view=view,
            pinned=context.as_of is not None,
        )
        sla_downgrade = sla_downgrade_of(decision)
        if sla_downgrade is not None and decision.violation is not None:
            log_event(
                logger,
                SLA_DOWNGRADE,
                level=logging.WARNING,
                node_id=node_id,
                phase=decision.violation.phase.value,
                mode=sla_downgrade.mode,
                reason=sla_downgrade.reason,
            )
        metadata = await self.governor.judge(metadata, context, policy, sla_downgrade=sla_downgrade)
        observe_fetch(self.metrics, metadata, report, self.observability)
        self._last_metadata.set(metadata)
        return SeamlessFetchResult(frame, metadata)
