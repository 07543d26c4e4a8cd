"""Helpers the benchmark scripts share (run as ``python bench/<name>.py``: this directory is
on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Sequence


def pct(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by the nearest-rank rule."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
