"""Dataset fingerprints: SHA-256 over a canonical binary serialization of a conformed frame.

``docs/fingerprint.md`` specifies the bytes so that any language can reproduce them. In
short (all integers little-endian)::

    magic "QMTLSFP\\0" | u16 format version (1) | u8 NaN mode | u8 column count (6)
    | u64 row count n
    | ts: n x int64 | open, high, low, close, volume: n x float64 each (columnar)
    | u64 length m | m bytes of canonical JSON metadata

Decisions:

- **Input** is a *conformed* frame (run :class:`~qmtl.runtime.sdk.conformance.
  ConformancePipeline` first): ``ts`` must be strictly increasing, so the bytes do not
  depend on input row order by construction and a stray unsorted frame is an error rather
  than a silently different digest. Integer ``ts`` of any width and integer/float value
  columns are accepted and hashed as their int64/float64 values (float32 → float64 is
  exact); columns beyond the six canonical ones are ignored. pyarrow Tables are accepted.
- **Floats**: -0.0 is hashed as +0.0 in every mode. ``normalize_nan="zero"`` (the
  default) hashes NaN as +0.0, so NaN and 0.0 are indistinguishable; ``"canonical"`` hashes
  every NaN (any sign or payload) as the quiet NaN ``0x7FF8000000000000``. The mode is part
  of the header, so the two modes never produce the same digest.
- **Metadata**: exactly the keys ``node_id`` (validated; its timeframe must match
  ``interval``), ``interval`` (seconds), ``range`` (half-open ``[start, end)`` epoch seconds
  holding every bar) and ``conformance_version``; a missing or unknown key is a
  ``ValueError`` (so nobody believes, say, ``as_of`` is covered). It is serialized as
  ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.
- The digest is ``"sha256:" + 64 lowercase hex digits``. Only raw bytes are hashed, so it is
  independent of pandas, pyarrow and Parquet versions. Hashing is vectorised and streams
  the columns in cache-sized chunks (no copy of the whole frame).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.node_id import check_interval
from qmtl.runtime.sdk.timestamps import format_iso, format_span

__all__ = [
    "CANONICAL_NAN_BITS",
    "FINGERPRINT_FORMAT_VERSION",
    "FINGERPRINT_MAGIC",
    "METADATA_KEYS",
    "NAN_MODES",
    "FingerprintConfig",
    "FingerprintMetadata",
    "NanMode",
    "compute_fingerprint",
    "fingerprint_bytes",
    "iter_fingerprint_chunks",
    "verify_fingerprint",
]

FINGERPRINT_MAGIC: Final = b"QMTLSFP\x00"
FINGERPRINT_FORMAT_VERSION: Final = 1
#: The one quiet NaN every NaN becomes under ``normalize_nan="canonical"``.
CANONICAL_NAN_BITS: Final = 0x7FF8_0000_0000_0000
NanMode = Literal["zero", "canonical"]
NAN_MODES: Final[dict[str, int]] = {"zero": 0, "canonical": 1}  # mode -> header byte
METADATA_KEYS: Final[tuple[str, ...]] = ("conformance_version", "interval", "node_id", "range")
_ALGO = "sha256"
_CHUNK_ROWS = 1 << 16  # 512 KiB per float chunk: normalization stays in cache
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_LE_I8 = np.dtype("<i8")
_LE_F8 = np.dtype("<f8")
_LE_U8 = np.dtype("<u8")


@dataclass(frozen=True, kw_only=True, slots=True)
class FingerprintConfig:
    """``seamless.artifact.fingerprint``. Only sha256 over all six columns is defined.

    ``include_columns`` must be the canonical column list: a fingerprint over a subset
    would not identify the bars served, so other values are refused.
    """

    algo: str = _ALGO
    """Hash algorithm; only ``sha256``."""
    include_columns: Sequence[str] = CANONICAL_COLUMNS
    """Columns hashed; must be ``[ts, open, high, low, close, volume]``."""
    normalize_nan: NanMode = "zero"
    """How NaN is hashed: ``zero`` (as 0.0, so NaN and 0 give the same fingerprint) or
    ``canonical`` (every NaN as one quiet NaN, distinct from 0)."""

    def __post_init__(self) -> None:
        if self.algo != _ALGO:
            raise ValueError(f"fingerprint algo must be 'sha256', got {self.algo!r}")
        columns = self.include_columns
        if isinstance(columns, str) or tuple(columns) != CANONICAL_COLUMNS:
            raise ValueError(
                f"fingerprint include_columns must be {list(CANONICAL_COLUMNS)}, got {columns!r}"
            )
        object.__setattr__(self, "include_columns", tuple(columns))
        if self.normalize_nan not in NAN_MODES:
            raise ValueError(
                f"fingerprint normalize_nan must be one of {', '.join(NAN_MODES)}, "
                f"got {self.normalize_nan!r}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class FingerprintMetadata:
    """The metadata a fingerprint covers; ``range`` is half-open ``[start, end)`` seconds."""

    node_id: str
    interval: int
    range: tuple[int, int]
    conformance_version: str

    def __post_init__(self) -> None:
        check_interval(self.node_id, self.interval)  # ValueError on a bad id or mismatch
        bounds = tuple(self.range)
        if len(bounds) != 2 or not all(_is_int(v) for v in bounds):
            raise ValueError(f"fingerprint range must be [start, end] ints, got {self.range!r}")
        start, end = int(bounds[0]), int(bounds[1])
        if start > end:
            raise ValueError(f"fingerprint range [{start}, {end}) has start > end")
        object.__setattr__(self, "range", (start, end))
        version = self.conformance_version
        if not isinstance(version, str) or not version:
            raise ValueError(f"conformance_version must be a non-empty string, got {version!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FingerprintMetadata:
        """Exactly :data:`METADATA_KEYS`; ``range`` may be a pair or have ``start``/``end``."""
        unknown = sorted(set(data) - set(METADATA_KEYS))
        missing = sorted(set(METADATA_KEYS) - set(data))
        if unknown or missing:
            raise ValueError(
                f"fingerprint metadata must have exactly {list(METADATA_KEYS)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        span = data["range"]
        if hasattr(span, "start") and hasattr(span, "end"):
            span = (span.start, span.end)
        if not isinstance(span, Sequence) or isinstance(span, str):
            raise ValueError(f"fingerprint range must be [start, end] ints, got {span!r}")
        interval = data["interval"]
        if not _is_int(interval):
            raise ValueError(f"interval must be an int number of seconds, got {interval!r}")
        return cls(
            node_id=data["node_id"],
            interval=int(interval),
            range=tuple(span),  # length checked in __post_init__
            conformance_version=data["conformance_version"],
        )

    def to_json_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces, ASCII only."""
        doc = {
            "conformance_version": self.conformance_version,
            "interval": self.interval,
            "node_id": self.node_id,
            "range": list(self.range),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
            "ascii"
        )


def compute_fingerprint(
    frame: pd.DataFrame | pa.Table,
    metadata: FingerprintMetadata | Mapping[str, Any],
    *,
    config: FingerprintConfig | None = None,
) -> str:
    """``"sha256:<64 hex>"`` of the conformed ``frame`` and ``metadata`` (module docstring)."""
    digest = hashlib.sha256()
    for piece in _pieces(frame, metadata, config):
        digest.update(piece)
    return f"{_ALGO}:{digest.hexdigest()}"


def iter_fingerprint_chunks(
    frame: pd.DataFrame | pa.Table,
    metadata: FingerprintMetadata | Mapping[str, Any],
    *,
    config: FingerprintConfig | None = None,
) -> Iterator[bytes]:
    """The serialized bytes in order, as independent chunks (SHA-256 them to fingerprint)."""
    for piece in _pieces(frame, metadata, config):
        yield bytes(piece)


def fingerprint_bytes(
    frame: pd.DataFrame | pa.Table,
    metadata: FingerprintMetadata | Mapping[str, Any],
    *,
    config: FingerprintConfig | None = None,
) -> bytes:
    """The whole serialization as one ``bytes`` (for docs, tests and other implementations)."""
    return b"".join(iter_fingerprint_chunks(frame, metadata, config=config))


def verify_fingerprint(
    frame: pd.DataFrame | pa.Table,
    metadata: FingerprintMetadata | Mapping[str, Any],
    expected: str,
    *,
    config: FingerprintConfig | None = None,
) -> bool:
    """Whether ``frame`` and ``metadata`` hash to ``expected``; ``ValueError`` if malformed."""
    if not isinstance(expected, str) or not _DIGEST_RE.fullmatch(expected):
        raise ValueError(f"not a fingerprint (expected 'sha256:<64 lowercase hex>'): {expected!r}")
    actual = compute_fingerprint(frame, metadata, config=config)
    return hmac.compare_digest(actual, expected)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _pieces(
    frame: pd.DataFrame | pa.Table,
    metadata: FingerprintMetadata | Mapping[str, Any],
    config: FingerprintConfig | None,
) -> Iterator[memoryview | bytes]:
    """Serialization pieces; a yielded view is only valid until the next one is requested."""
    config = config or FingerprintConfig()
    meta = (
        metadata
        if isinstance(metadata, FingerprintMetadata)
        else FingerprintMetadata.from_mapping(metadata)
    )
    ts, values = _columns(frame)
    n = len(ts)
    if n and not (meta.range[0] <= int(ts[0]) and int(ts[-1]) < meta.range[1]):
        raise ValueError(
            f"bars [{format_iso(int(ts[0]))}, {format_iso(int(ts[-1]))}] lie outside the "
            f"fingerprint range {format_span(meta.range[0], meta.range[1])}"
        )
    mode = NAN_MODES[config.normalize_nan]
    yield FINGERPRINT_MAGIC + struct.pack(
        "<HBBQ", FINGERPRINT_FORMAT_VERSION, mode, len(CANONICAL_COLUMNS), n
    )
    yield np.ascontiguousarray(ts, dtype=_LE_I8).data
    buffer = np.empty(min(n, _CHUNK_ROWS), dtype=_LE_F8)
    bits = buffer.view(_LE_U8)
    nan_bits = _LE_U8.type(0 if mode == 0 else CANONICAL_NAN_BITS)
    for column in values:
        for start in range(0, n, _CHUNK_ROWS):
            part = column[start : start + _CHUNK_ROWS]
            out = buffer[: len(part)]
            with np.errstate(invalid="ignore"):  # a signalling NaN input is not an error
                np.add(part, 0.0, out=out)  # -0.0 + 0.0 == +0.0; NaN stays NaN
            nan = np.isnan(out)
            if nan.any():
                bits[: len(part)][nan] = nan_bits
            yield out.data
    body = meta.to_json_bytes()
    yield struct.pack("<Q", len(body)) + body


def _columns(
    frame: pd.DataFrame | pa.Table,
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], list[np.ndarray[Any, np.dtype[np.float64]]]]:
    """``ts`` as int64 and the five value columns as float64 (no copy when already so)."""
    if not isinstance(frame, pa.Table | pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame or pyarrow Table, got {type(frame).__name__}")
    names = list(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
    missing = [name for name in CANONICAL_COLUMNS if name not in names]
    if missing:
        raise ValueError(f"frame lacks canonical column(s) {missing}; conform it first")
    if sum(name in CANONICAL_COLUMNS for name in names) != len(CANONICAL_COLUMNS):
        raise ValueError("frame has duplicate canonical column names")
    ts_col = _series(frame, "ts")
    if not pd.api.types.is_integer_dtype(ts_col.dtype) or ts_col.isna().any():
        raise ValueError(f"ts must be integer epoch seconds without nulls, got {ts_col.dtype}")
    ts = ts_col.to_numpy(dtype=np.int64)
    if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
        raise ValueError("ts must be strictly increasing (sorted, unique); conform it first")
    values = []
    for name in CANONICAL_COLUMNS[1:]:
        col = _series(frame, name)
        dtype = col.dtype
        numeric = pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)
        if not numeric or pd.api.types.is_bool_dtype(dtype):
            raise ValueError(f"column {name!r} must be numeric, got {dtype}")
        values.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
    return ts, values


def _series(frame: pd.DataFrame | pa.Table, name: str) -> pd.Series[Any]:
    if isinstance(frame, pa.Table):
        series: pd.Series[Any] = frame.column(name).to_pandas()
        return series
    return frame[name]
