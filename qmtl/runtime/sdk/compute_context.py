"""``ComputeContext``: who is asking (world), in which execution domain, and as of when.

Domains are ``backtest``, ``dryrun``, ``live`` and ``shadow``; common aliases map onto them
(``compute``/``offline``/``validate``/``sandbox`` → backtest, ``paper``/``sim`` → dryrun,
``prod``/``production`` → live). No context at all means an ungated fetch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from qmtl.runtime.sdk.timestamps import InstantLike, parse_as_of

__all__ = ["DOMAIN_ALIASES", "EXECUTION_DOMAINS", "ComputeContext", "normalize_domain"]

EXECUTION_DOMAINS = ("backtest", "dryrun", "live", "shadow")
DOMAIN_ALIASES: dict[str, str] = {
    "compute": "backtest",
    "offline": "backtest",
    "validate": "backtest",
    "sandbox": "backtest",
    "paper": "dryrun",
    "sim": "dryrun",
    "prod": "live",
    "production": "live",
}


def normalize_domain(domain: str | None) -> str | None:
    """The canonical domain for ``domain`` (aliases resolved, case-insensitive)."""
    if domain is None:
        return None
    key = str(domain).strip().lower()
    key = DOMAIN_ALIASES.get(key, key)
    if key not in EXECUTION_DOMAINS:
        known = ", ".join((*EXECUTION_DOMAINS, *DOMAIN_ALIASES))
        raise ValueError(f"unknown execution_domain {domain!r}; expected one of {known}")
    return key


@dataclass(frozen=True, kw_only=True, slots=True)
class ComputeContext:
    """``as_of`` is epoch **milliseconds** (publication instants have millisecond precision;
    any form :func:`~qmtl.runtime.sdk.timestamps.parse_as_of` reads is accepted)."""

    world_id: str | None = None
    execution_domain: str | None = None
    as_of: int | None = None
    max_lag_seconds: float | None = None
    min_coverage: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "execution_domain", normalize_domain(self.execution_domain))
        if self.as_of is not None:
            object.__setattr__(self, "as_of", parse_as_of(self.as_of, name="as_of"))
        if self.min_coverage is not None and not 0.0 <= float(self.min_coverage) <= 1.0:
            raise ValueError(f"min_coverage must be within [0, 1], got {self.min_coverage!r}")
        if self.max_lag_seconds is not None and float(self.max_lag_seconds) < 0:
            raise ValueError(f"max_lag_seconds must be >= 0, got {self.max_lag_seconds!r}")

    @classmethod
    def coerce(cls, value: ComputeContext | Mapping[str, Any] | None) -> ComputeContext:
        """A context from a context, a mapping (unknown keys are an error) or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, ComputeContext):
            return value
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown compute_context keys {unknown}; expected {sorted(allowed)}")
        return cls(**dict(value))

    def with_overrides(
        self,
        *,
        world_id: str | None = None,
        execution_domain: str | None = None,
        as_of: InstantLike | None = None,
        max_lag_seconds: float | None = None,
        min_coverage: float | None = None,
    ) -> ComputeContext:
        """A copy where every explicit (non-``None``) keyword wins."""
        changes: dict[str, Any] = {
            k: v
            for k, v in {
                "world_id": world_id,
                "execution_domain": execution_domain,
                "as_of": as_of,
                "max_lag_seconds": max_lag_seconds,
                "min_coverage": min_coverage,
            }.items()
            if v is not None
        }
        return replace(self, **changes) if changes else self

    @property
    def gated(self) -> bool:
        """Whether any governance applies (a world or a domain was named)."""
        return self.world_id is not None or self.execution_domain is not None
