"""The scenario's ``archive`` block: Binance public-data archives and their faults (pure, frozen).

Archive files are named like Binance's (``BTCUSDT-1m-2024-02.zip`` monthly,
``BTCUSDT-1m-2024-02-03.zip`` daily); a name in a fault list applies to every market (spot
and USD-M) that has a file of that name. Incomplete spans are *bar time*, half-open
``[start, end)`` epoch seconds, like halts. Publication delays are seconds after the end of
the file's period (its UTC day or calendar month) on the exchange's clock (the scenario's
``now`` when pinned); the bandwidth cap is wall time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from qmtl.services.exchange_sim._scenario_markets import TimeSpan
from qmtl.services.exchange_sim.archive_names import parse_file_name

__all__ = ["ArchiveSettings", "PublishDelay", "check_file_name"]


def check_file_name(name: object, where: str) -> str:
    """``name`` if it is an archive zip name like ``BTCUSDT-1m-2024-02.zip`` (a real date, an
    archived interval), else ``ValueError`` naming ``where``."""
    if not isinstance(name, str) or parse_file_name(name) is None:
        raise ValueError(
            f"{where}: expected an archive file name like 'BTCUSDT-1m-2024-02.zip' or "
            f"'BTCUSDT-1m-2024-02-03.zip' (a real date, an interval of 1s to 1d), got {name!r}"
        )
    return name


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishDelay:
    """Seconds after the end of a file's period before it exists (0: at once). Binance
    publishes daily files within hours and monthly files within a day or so."""

    daily: int = 3600
    monthly: int = 86_400

    def __post_init__(self) -> None:
        for key in ("daily", "monthly"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}: must be an integer >= 0 (seconds), got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ArchiveSettings:
    """What ``/data/...`` serves.

    ``enabled=False`` makes every archive path 404. ``missing`` files 404 (their CHECKSUM
    too). ``corrupt`` files are served as a broken zip whose CHECKSUM matches the broken
    bytes (only unzipping fails). ``checksum_mismatch`` files are valid but their CHECKSUM
    states another hash. ``incomplete`` maps a file name to bar-time spans whose rows the
    file lacks (rows of bars intersecting a span; REST still serves them). The lists may
    overlap: missing wins; corrupt and checksum_mismatch combine.
    ``bandwidth_bytes_per_s`` caps each response (``None``: unlimited).
    """

    enabled: bool = True
    publish_delay: PublishDelay = field(default_factory=PublishDelay)
    missing: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()
    checksum_mismatch: tuple[str, ...] = ()
    incomplete: Mapping[str, tuple[TimeSpan, ...]] = field(default_factory=dict, hash=False)
    bandwidth_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled: must be true or false, got {self.enabled!r}")
        for key in ("missing", "corrupt", "checksum_mismatch"):
            names = tuple(getattr(self, key))
            for i, name in enumerate(names):
                check_file_name(name, f"{key}[{i}]")
            object.__setattr__(self, key, names)
        incomplete = dict(self.incomplete)
        for name, spans in incomplete.items():
            check_file_name(name, "incomplete")
            if not all(isinstance(span, TimeSpan) for span in spans):
                raise ValueError(f"incomplete: spans of {name!r} must be TimeSpans")
            incomplete[name] = tuple(spans)
        object.__setattr__(self, "incomplete", incomplete)
        bandwidth = self.bandwidth_bytes_per_s
        if bandwidth is not None and (
            isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or bandwidth <= 0
        ):
            raise ValueError(
                f"bandwidth_bytes_per_s: must be a number > 0 or null, got {bandwidth!r}"
            )

    def spans_missing_from(self, file_name: str) -> tuple[TimeSpan, ...]:
        """The ``incomplete`` spans of ``file_name`` (``()`` for a complete file)."""
        return self.incomplete.get(file_name, ())
