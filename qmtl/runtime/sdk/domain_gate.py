"""Execution-domain governance: the domain matrix as pure decisions (no I/O, no clock).

A fetch names who asks (``world_id``), in which execution domain and as of when
(:class:`~qmtl.runtime.sdk.compute_context.ComputeContext`). The domain's policy
(``domains.<name>`` in the configuration, defaults in
:data:`~qmtl.runtime.sdk.config.DOMAIN_DEFAULTS`) decides:

- **before the fetch** (:func:`check_request`): ``backtest`` and ``dryrun`` require an
  ``as_of`` (without one: :class:`SeamlessDomainPolicyError`, reason ``missing_as_of``);
- **where bars come from** (:func:`source_of`): ``artifact_only`` (backtest: published
  artifacts only, a range without one is a hard failure, ``missing_artifact``),
  ``artifact_prefers`` (dryrun: fresh reads are published, then served from artifacts), or
  the hot store with backfill and the live feed (live, shadow, no domain);
- **after it** (:func:`evaluate`): what is served and how it is marked. ``HOLD`` (the result
  is not to be acted on) when the requested ``as_of`` went backwards for this
  ``(world_id, node_id)`` (``as_of_regression``, where the policy keeps ``as_of``
  monotonic), when coverage is under ``min_coverage`` (``coverage_breach``) or when the
  newest bar is older than ``max_lag_seconds`` (``freshness_breach``); an SLA downgrade to
  ``PARTIAL_FILL`` or ``HOLD`` carries its own reason. ``HOLD`` outranks ``PARTIAL_FILL``.

Limits come from the fetch (``min_coverage=``, ``max_lag_seconds=``) first, then the domain's
policy, then ``seamless.sla``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qmtl.runtime.sdk.errors import SeamlessDomainPolicyError

if TYPE_CHECKING:
    from qmtl.runtime.sdk.compute_context import ComputeContext
    from qmtl.runtime.sdk.config import DomainPolicy, DomainSource
    from qmtl.runtime.sdk.sla import SLAPolicy

__all__ = [
    "Downgrade",
    "DowngradeMode",
    "GateVerdict",
    "check_request",
    "evaluate",
    "policy_for",
    "source_of",
]

DowngradeMode = Literal["HOLD", "PARTIAL_FILL"]
_RANK: Mapping[str, int] = {"HOLD": 2, "PARTIAL_FILL": 1}


@dataclass(frozen=True, slots=True)
class Downgrade:
    """One reason a result is not served plainly: the mode it is served in and why
    (``as_of_regression``, ``coverage_breach``, ``freshness_breach``, ``sla_<phase>``)."""

    mode: DowngradeMode
    reason: str


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """Every downgrade that applies, and the one the result carries (``HOLD`` outranks
    ``PARTIAL_FILL``; among equals, the first found)."""

    downgrades: tuple[Downgrade, ...] = ()

    @property
    def governing(self) -> Downgrade | None:
        if not self.downgrades:
            return None
        return max(self.downgrades, key=lambda d: _RANK[d.mode])  # max keeps the first


def policy_for(
    domain: str | None, domains: Mapping[str, DomainPolicy] | None = None
) -> DomainPolicy | None:
    """The policy of ``domain`` (``None``: an ungated fetch): the configured one, else the
    domain's default."""
    if domain is None:
        return None
    from qmtl.runtime.sdk.config import DOMAIN_DEFAULTS

    configured = (domains or {}).get(domain)
    return configured if configured is not None else DOMAIN_DEFAULTS.get(domain)


def source_of(policy: DomainPolicy | None) -> DomainSource:
    """Where a fetch under ``policy`` may read bars (ungated: everywhere)."""
    return "storage_backfill_live" if policy is None else policy.source


def check_request(node_id: str, context: ComputeContext, policy: DomainPolicy | None) -> None:
    """Refuse a fetch its domain forbids before anything is read: an ``as_of`` is required
    and missing (:class:`SeamlessDomainPolicyError`, reason ``missing_as_of``)."""
    if policy is not None and policy.require_as_of and context.as_of is None:
        raise SeamlessDomainPolicyError(
            f"{node_id}: a {context.execution_domain} fetch must name the as_of it reads "
            "(missing_as_of): pass as_of=<ISO-8601 instant> (a published artifact's as_of)"
        )


def evaluate(
    *,
    context: ComputeContext,
    policy: DomainPolicy | None,
    sla: SLAPolicy | None,
    coverage_ratio: float,
    staleness_seconds: float | None,
    previous_as_of_ms: int | None,
    sla_downgrade: Downgrade | None = None,
) -> GateVerdict:
    """The downgrades a served result takes (module docstring). ``staleness_seconds`` is
    ``None`` when nothing was served (then any lag limit is breached); ``previous_as_of_ms``
    is the newest ``as_of`` this ``(world_id, node_id)`` read before (``None``: first)."""
    found: list[Downgrade] = []
    monotonic = policy is not None and policy.monotonic_as_of
    if (
        monotonic
        and context.as_of is not None
        and previous_as_of_ms is not None
        and context.as_of < previous_as_of_ms
    ):
        found.append(Downgrade("HOLD", "as_of_regression"))
    min_coverage = _first(
        context.min_coverage,
        None if policy is None else policy.min_coverage,
        None if sla is None else sla.min_coverage,
    )
    if min_coverage is not None and coverage_ratio < min_coverage:
        found.append(Downgrade("HOLD", "coverage_breach"))
    max_lag = _first(
        context.max_lag_seconds,
        None if policy is None else policy.max_lag_sec,
        None if sla is None else sla.max_lag_seconds,
    )
    if max_lag is not None and (staleness_seconds is None or staleness_seconds > max_lag):
        found.append(Downgrade("HOLD", "freshness_breach"))
    if sla_downgrade is not None:
        found.append(sla_downgrade)
    return GateVerdict(tuple(found))


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)
