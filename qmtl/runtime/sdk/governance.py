"""What a provider does to govern fetches by execution domain: the decisions of
:mod:`~qmtl.runtime.sdk.domain_gate` applied, with their logs, metrics and state.

- **Admission**: a fetch its domain refuses (no ``as_of`` in backtest or dryrun) logs
  ``seamless.domain_gate.missing_as_of`` and raises :class:`SeamlessDomainPolicyError`; a
  backtest over a range no published artifact holds logs
  ``seamless.domain_gate.missing_artifact`` and raises too.
- **as_of marks**: a fetch of a domain that keeps ``as_of`` monotonic (live, shadow) advances
  the ``(world_id, node_id)`` mark in the hot store (so it survives restarts and is shared by
  processes); the first sighting and every advance count in
  ``as_of_advancement_events{node_id, world_id}`` and log ``seamless.as_of.advanced``; a
  request under the mark is served HOLD ``as_of_regression``.
- **Verdict**: every downgrade that applies — domain (coverage, freshness, regression) or
  SLA — logs ``seamless.domain_gate.downgrade`` with the exact ``{dataset_fingerprint,
  as_of}`` it governed and counts in ``domain_gate_holds{reason}`` (HOLD) or
  ``partial_fill_returns{reason}`` (PARTIAL_FILL); the result carries the strongest.
- **Cache**: results are kept and found by every part of their key
  (:mod:`~qmtl.runtime.sdk.cache`); a hit is re-gated (staleness against the new fetch's
  clock, the mark, the limits) before it is served, with ``cache_key`` in its metadata.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from qmtl.runtime.sdk.artifact_keys import as_of_from_ms
from qmtl.runtime.sdk.cache import CacheKey, ResultCache
from qmtl.runtime.sdk.domain_gate import (
    Downgrade,
    GateVerdict,
    check_request,
    evaluate,
    policy_for,
)
from qmtl.runtime.sdk.errors import SeamlessDomainPolicyError
from qmtl.runtime.sdk.events import (
    AS_OF_ADVANCED,
    DOMAIN_GATE_DOWNGRADE,
    DOMAIN_GATE_MISSING_ARTIFACT,
    DOMAIN_GATE_MISSING_AS_OF,
    log_event,
)
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata, SeamlessFetchResult

if TYPE_CHECKING:
    from qmtl.runtime.sdk.clock import Clock
    from qmtl.runtime.sdk.compute_context import ComputeContext
    from qmtl.runtime.sdk.config import DomainPolicy
    from qmtl.runtime.sdk.history_coverage import Range
    from qmtl.runtime.sdk.history_storage import HistoryStorage
    from qmtl.runtime.sdk.metrics import SeamlessMetrics
    from qmtl.runtime.sdk.sla import SLAPolicy

__all__ = ["Governor"]

logger = logging.getLogger(__name__)


class Governor:
    """Domain governance of one provider (module docstring)."""

    def __init__(
        self,
        *,
        storage: HistoryStorage,
        domains: Mapping[str, DomainPolicy] | None,
        sla: SLAPolicy | None,
        cache: ResultCache | None,
        metrics: SeamlessMetrics,
        clock: Clock,
    ) -> None:
        self.storage = storage
        self.domains = dict(domains or {})
        self.sla = sla
        self.cache = cache
        self.metrics = metrics
        self.clock = clock

    # -- before -----------------------------------------------------------------------------

    def admit(self, node_id: str, context: ComputeContext) -> DomainPolicy | None:
        """The fetch's policy, or :class:`SeamlessDomainPolicyError` when its domain
        refuses it outright (``missing_as_of``)."""
        policy = policy_for(context.execution_domain, self.domains)
        try:
            check_request(node_id, context, policy)
        except SeamlessDomainPolicyError:
            log_event(
                logger,
                DOMAIN_GATE_MISSING_AS_OF,
                level=logging.WARNING,
                node_id=node_id,
                world_id=context.world_id,
                execution_domain=context.execution_domain,
            )
            raise
        return policy

    def refuse_missing_artifact(
        self, node_id: str, context: ComputeContext, missing: tuple[Range, ...]
    ) -> None:
        """A backtest over ranges no published artifact holds fails, naming them."""
        as_of = None if context.as_of is None else as_of_from_ms(context.as_of)
        log_event(
            logger,
            DOMAIN_GATE_MISSING_ARTIFACT,
            level=logging.WARNING,
            node_id=node_id,
            world_id=context.world_id,
            execution_domain=context.execution_domain,
            as_of=as_of,
            missing=[str(r) for r in missing],
        )
        shown = ", ".join(str(r) for r in missing[:3])
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SeamlessDomainPolicyError(
            f"{node_id}: no artifact published as of {as_of} holds {shown}{more} "
            "(missing_artifact): a backtest serves only published artifacts"
        )

    def cache_key(
        self, node_id: str, window: Range, interval: int, version: str, context: ComputeContext
    ) -> CacheKey:
        return CacheKey(
            node_id, window.start, window.end, interval, version, context.world_id, context.as_of
        )

    async def cached(
        self, key: CacheKey, context: ComputeContext, policy: DomainPolicy | None
    ) -> SeamlessFetchResult | None:
        """A cached result of ``key``, re-gated for this fetch; ``None`` on a miss."""
        if self.cache is None:
            return None
        started = self.clock.monotonic()
        hit = self.cache.get(key, domain=context.execution_domain)
        if hit is None:
            return None
        meta = hit.metadata
        staleness_ms = None
        if meta.coverage_bounds is not None:
            staleness_ms = max(0.0, (self.clock.now() - meta.coverage_bounds.end) * 1000.0)
        meta = dataclasses.replace(
            meta,
            staleness_ms=staleness_ms,
            sla_phases_ms={"total": (self.clock.monotonic() - started) * 1000.0},
            cache_key=self.cache.key_text(key),
            downgraded=False,
            downgrade_mode=None,
            downgrade_reason=None,
        )
        meta = await self.judge(meta, context, policy, sla_downgrade=None)
        return SeamlessFetchResult(hit.frame, meta)

    def keep(
        self, key: CacheKey, result: SeamlessFetchResult, context: ComputeContext
    ) -> SeamlessFetchResult:
        """Cache ``result`` (when complete) and say so in its metadata."""
        if self.cache is None or not self.cache.put(key, result, domain=context.execution_domain):
            return result
        meta = dataclasses.replace(result.metadata, cache_key=self.cache.key_text(key))
        return SeamlessFetchResult(result.frame, meta)

    # -- after ------------------------------------------------------------------------------

    async def judge(
        self,
        meta: SeamlessFetchMetadata,
        context: ComputeContext,
        policy: DomainPolicy | None,
        *,
        sla_downgrade: Downgrade | None,
    ) -> SeamlessFetchMetadata:
        """``meta`` with the verdict of its domain and SLA applied, every downgrade logged
        and counted (module docstring)."""
        previous = await self._advance_mark(meta.node_id, context, policy)
        staleness = None if meta.staleness_ms is None else meta.staleness_ms / 1000.0
        verdict = evaluate(
            context=context,
            policy=policy,
            sla=self.sla,
            coverage_ratio=meta.coverage_ratio,
            staleness_seconds=staleness,
            previous_as_of_ms=previous,
            sla_downgrade=sla_downgrade,
        )
        self._report(meta, context, verdict)
        governing = verdict.governing
        if governing is None:
            return meta
        return dataclasses.replace(
            meta,
            downgraded=True,
            downgrade_mode=governing.mode,
            downgrade_reason=governing.reason,
        )

    async def _advance_mark(
        self, node_id: str, context: ComputeContext, policy: DomainPolicy | None
    ) -> int | None:
        if policy is None or not policy.monotonic_as_of or context.as_of is None:
            return None
        world = context.world_id or ""
        previous = await self.storage.advance_as_of(world, node_id, context.as_of)
        if previous is None or context.as_of > previous:
            self.metrics.as_of_advancement_events.labels(node_id=node_id, world_id=world).inc()
            log_event(
                logger,
                AS_OF_ADVANCED,
                node_id=node_id,
                world_id=context.world_id,
                previous=None if previous is None else as_of_from_ms(previous),
                current=as_of_from_ms(context.as_of),
            )
        return previous

    def _report(
        self, meta: SeamlessFetchMetadata, context: ComputeContext, verdict: GateVerdict
    ) -> None:
        world = context.world_id or ""
        for downgrade in verdict.downgrades:
            counter = (
                self.metrics.domain_gate_holds
                if downgrade.mode == "HOLD"
                else self.metrics.partial_fill_returns
            )
            counter.labels(node_id=meta.node_id, world_id=world, reason=downgrade.reason).inc()
            log_event(
                logger,
                DOMAIN_GATE_DOWNGRADE,
                level=logging.WARNING,
                node_id=meta.node_id,
                interval=meta.interval,
                world_id=context.world_id,
                execution_domain=context.execution_domain,
                from_mode=meta.strategy,
                to_mode=downgrade.mode,
                reason=downgrade.reason,
                dataset_fingerprint=meta.dataset_fingerprint,
                as_of=meta.as_of
                if meta.as_of is not None
                else (None if context.as_of is None else as_of_from_ms(context.as_of)),
            )
