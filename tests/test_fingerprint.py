"""Fingerprint: golden vector rebuilt by hand with ``struct``, invariances and sensitivity."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS
from qmtl.runtime.sdk.conformance import ConformancePipeline
from qmtl.runtime.sdk.fingerprint import (
    CANONICAL_NAN_BITS,
    FINGERPRINT_MAGIC,
    FingerprintConfig,
    FingerprintMetadata,
    compute_fingerprint,
    fingerprint_bytes,
    iter_fingerprint_chunks,
    verify_fingerprint,
)

GOLDEN = json.loads((Path(__file__).parent / "data" / "fingerprint_golden.json").read_text())
T0 = 1_704_067_200
NODE = "ohlcv:binance:BTC/USDT:1m"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def meta(start: int = T0, end: int = T0 + 3600, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "node_id": NODE,
        "interval": 60,
        "range": [start, end],
        "conformance_version": "v2",
    }
    data.update(changes)
    return data


def frame_from_rows(rows: list[list[Any]]) -> pd.DataFrame:
    data = [[r[0], *(math.nan if v is None else v for v in r[1:])] for r in rows]
    frame = pd.DataFrame(data, columns=list(CANONICAL_COLUMNS))
    return frame.astype({"ts": np.int64, **dict.fromkeys(CANONICAL_COLUMNS[1:], np.float64)})


def reference_bytes(rows: list[list[Any]], metadata: dict[str, Any], mode: str) -> bytes:
    """An independent, row-by-row rendering of docs/fingerprint.md with ``struct``."""
    out = b"QMTLSFP\x00" + struct.pack("<H", 1) + bytes([{"zero": 0, "canonical": 1}[mode], 6])
    out += struct.pack("<Q", len(rows))
    out += b"".join(struct.pack("<q", r[0]) for r in rows)
    for column in range(1, 6):
        for r in rows:
            value = r[column]
            if value is None or math.isnan(value):
                out += struct.pack("<Q", 0 if mode == "zero" else 0x7FF8000000000000)
            elif value == 0.0:
                out += struct.pack("<Q", 0)  # -0.0 and +0.0 alike
            else:
                out += struct.pack("<d", value)
    start, end = metadata["range"]
    text = (
        f'{{"conformance_version":"{metadata["conformance_version"]}",'
        f'"interval":{metadata["interval"]},"node_id":"{metadata["node_id"]}",'
        f'"range":[{start},{end}]}}'
    ).encode("ascii")
    return out + struct.pack("<Q", len(text)) + text


def random_frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = {name: rng.integers(1, 10_000, n) / 8.0 for name in CANONICAL_COLUMNS[1:]}
    return pd.DataFrame({"ts": T0 + 60 * np.arange(n, dtype=np.int64), **values})


# --- golden vector ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zero", "canonical"])
def test_golden_vector(mode: str) -> None:
    rows, metadata = GOLDEN["rows"], GOLDEN["metadata"]
    frame = frame_from_rows(rows)
    config = FingerprintConfig(normalize_nan=mode)  # type: ignore[arg-type]
    expected_bytes = reference_bytes(rows, metadata, mode)
    assert fingerprint_bytes(frame, metadata, config=config) == expected_bytes
    independent = "sha256:" + hashlib.sha256(expected_bytes).hexdigest()
    assert independent == GOLDEN["expected"][mode]
    assert compute_fingerprint(frame, metadata, config=config) == GOLDEN["expected"][mode]
    assert verify_fingerprint(frame, metadata, GOLDEN["expected"][mode], config=config)


def test_golden_through_pyarrow_and_conformance() -> None:
    frame = frame_from_rows(GOLDEN["rows"])
    conformed, _ = ConformancePipeline().normalize(pa.Table.from_pandas(frame), 60)
    assert compute_fingerprint(conformed, GOLDEN["metadata"]) == GOLDEN["expected"]["zero"]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert compute_fingerprint(table, GOLDEN["metadata"]) == GOLDEN["expected"]["zero"]


def test_layout() -> None:
    frame = random_frame(1, 3)
    data = fingerprint_bytes(frame, meta())
    body = json.dumps(
        {"conformance_version": "v2", "interval": 60, "node_id": NODE, "range": [T0, T0 + 3600]},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert data[:8] == FINGERPRINT_MAGIC
    assert struct.unpack_from("<HBBQ", data, 8) == (1, 0, 6, 3)
    assert len(data) == 20 + 6 * 8 * 3 + 8 + len(body)
    assert np.array_equal(np.frombuffer(data, "<i8", 3, 20), frame["ts"].to_numpy())
    assert np.array_equal(np.frombuffer(data, "<f8", 3, 20 + 24), frame["open"].to_numpy())
    assert data.endswith(struct.pack("<Q", len(body)) + body)
    assert b"".join(iter_fingerprint_chunks(frame, meta())) == data
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert compute_fingerprint(frame, meta()) == expected


def test_large_frame_crosses_chunks() -> None:
    frame = random_frame(2, 200_000)
    frame.loc[::7, "low"] = np.nan
    data = fingerprint_bytes(frame, meta(end=T0 + 60 * 200_000))
    assert compute_fingerprint(frame, meta(end=T0 + 60 * 200_000)) == (
        "sha256:" + hashlib.sha256(data).hexdigest()
    )


def test_empty_frame() -> None:
    frame = random_frame(0, 0)
    assert fingerprint_bytes(frame, meta())[8:20] == struct.pack("<HBBQ", 1, 0, 6, 0)
    assert compute_fingerprint(frame, meta()).startswith("sha256:")


# --- NaN and signed zero ------------------------------------------------------------------


def with_value(frame: pd.DataFrame, column: str, row: int, value: float) -> pd.DataFrame:
    changed = frame.copy()
    changed.loc[row, column] = value
    return changed


def nan_with_bits(bits: int) -> float:
    value: float = np.array([bits], dtype="<u8").view("<f8")[0].item()
    assert math.isnan(value)
    return value


def test_negative_zero_equals_zero_in_every_mode() -> None:
    frame = random_frame(3, 4)
    for mode in ("zero", "canonical"):
        config = FingerprintConfig(normalize_nan=mode)
        a = compute_fingerprint(with_value(frame, "close", 2, 0.0), meta(), config=config)
        b = compute_fingerprint(with_value(frame, "close", 2, -0.0), meta(), config=config)
        assert a == b


def test_nan_modes() -> None:
    frame = random_frame(4, 4)
    zero, canonical = FingerprintConfig(), FingerprintConfig(normalize_nan="canonical")
    nans = [
        math.nan,
        -math.nan,
        nan_with_bits(0x7FF0000000000001),
        nan_with_bits(0xFFF800000000DEAD),
    ]
    for config in (zero, canonical):
        prints = {
            compute_fingerprint(with_value(frame, "open", 1, nan), meta(), config=config)
            for nan in nans
        }
        assert len(prints) == 1  # every NaN alike
    as_zero = with_value(frame, "open", 1, 0.0)
    as_nan = with_value(frame, "open", 1, math.nan)
    assert compute_fingerprint(as_nan, meta()) == compute_fingerprint(as_zero, meta())
    assert compute_fingerprint(as_nan, meta(), config=canonical) != compute_fingerprint(
        as_zero, meta(), config=canonical
    )
    # The mode is in the header: the two modes never agree, even without NaN.
    assert compute_fingerprint(frame, meta()) != compute_fingerprint(
        frame, meta(), config=canonical
    )
    assert fingerprint_bytes(as_nan, meta(), config=canonical)[20 + 32 + 8 : 20 + 32 + 16] == (
        struct.pack("<Q", CANONICAL_NAN_BITS)
    )


def test_input_frame_is_not_modified() -> None:
    frame = with_value(random_frame(5, 3), "high", 0, -0.0)
    frame.loc[1, "low"] = math.nan
    before = frame.copy()
    compute_fingerprint(frame, meta(), config=FingerprintConfig(normalize_nan="canonical"))
    pd.testing.assert_frame_equal(frame, before)
    assert math.copysign(1.0, float(frame["high"].to_numpy()[0])) == -1.0


# --- invariances --------------------------------------------------------------------------

PRICE = st.integers(-(2**20), 2**20).map(lambda k: k / 64.0)  # exact in float32


@FAST
@given(
    n=st.integers(0, 25),
    data=st.data(),
)
def test_invariant_to_order_duplicates_and_dtype_round_trips(n: int, data: st.DataObject) -> None:
    slots = sorted(data.draw(st.sets(st.integers(0, 500), min_size=n, max_size=n)))
    values = data.draw(st.lists(st.tuples(*[PRICE] * 5), min_size=n, max_size=n))
    truth = pd.DataFrame(
        [[T0 + 60 * s, *v] for s, v in zip(slots, values, strict=True)],
        columns=list(CANONICAL_COLUMNS),
    ).astype({"ts": np.int64, **dict.fromkeys(CANONICAL_COLUMNS[1:], np.float64)})
    metadata = meta(end=T0 + 60 * 501)
    expected = compute_fingerprint(truth, metadata)

    # Messy input: superseded duplicates placed before the winning rows, shuffled otherwise.
    junk = truth.sample(frac=0.5, random_state=data.draw(st.integers(0, 2**31)))
    junk = junk.assign(close=junk["close"] + 1.0, volume=-1.0)
    order = data.draw(st.permutations(range(len(truth))))
    messy = pd.concat([junk, truth.iloc[list(order)]], ignore_index=True)
    messy = messy.astype(
        {"ts": np.int32 if data.draw(st.booleans()) else np.int64}
        | dict.fromkeys(CANONICAL_COLUMNS[1:], np.float32)
    )
    if data.draw(st.booleans()):
        messy["ts"] = messy["ts"].astype(np.int64) * 1000  # epoch milliseconds
    conformed, report = ConformancePipeline().normalize(messy, 60)
    assert report.flags["duplicate_ts"] == len(junk)
    assert compute_fingerprint(conformed, metadata) == expected
    table = pa.Table.from_pandas(conformed)
    assert compute_fingerprint(table, metadata) == expected


@FAST
@given(data=st.data())
def test_any_single_value_change_changes_it(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 30))
    frame = random_frame(data.draw(st.integers(0, 1000)), n)
    if data.draw(st.booleans()):
        frame.loc[data.draw(st.integers(0, n - 1)), "volume"] = math.nan
    column = data.draw(st.sampled_from(CANONICAL_COLUMNS))
    row = data.draw(st.integers(0, n - 1))
    metadata = meta(start=T0 - 60, end=T0 + 60 * (n + 1))
    changed = frame.copy()
    if column == "ts":  # move the first bar earlier or the last bar later: stays sorted
        edge = 0 if row == 0 else n - 1
        changed.loc[edge, "ts"] = int(frame["ts"].to_numpy()[edge]) + (-60 if row == 0 else 60)
    else:
        old = float(frame[column].to_numpy()[row])
        delta = data.draw(st.sampled_from([1.0, -1.0, 2.0**-20, 1e6]))
        changed.loc[row, column] = 1.0 if math.isnan(old) else old + delta
    assert not changed.equals(frame)
    for mode in ("zero", "canonical"):
        config = FingerprintConfig(normalize_nan=mode)
        assert compute_fingerprint(changed, metadata, config=config) != compute_fingerprint(
            frame, metadata, config=config
        )


@pytest.mark.parametrize(
    "change",
    [
        {"node_id": "ohlcv:binance:ETH/USDT:1m"},
        {"interval": 300, "node_id": "ohlcv:binance:BTC/USDT:5m"},
        {"range": [T0, T0 + 3660]},
        {"range": [T0 - 60, T0 + 3600]},
        {"conformance_version": "v3"},
    ],
)
def test_metadata_changes_change_it(change: dict[str, Any]) -> None:
    frame = random_frame(6, 5)
    assert compute_fingerprint(frame, meta(**change)) != compute_fingerprint(frame, meta())


def test_metadata_object_and_mapping_agree() -> None:
    frame = random_frame(7, 5)
    obj = FingerprintMetadata(
        node_id=NODE, interval=60, range=(T0, T0 + 3600), conformance_version="v2"
    )
    assert compute_fingerprint(frame, obj) == compute_fingerprint(frame, meta())

    class Span:
        start, end = T0, T0 + 3600

    assert compute_fingerprint(frame, meta(range=Span())) == compute_fingerprint(frame, meta())


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algo": "md5"}, "algo"),
        ({"include_columns": ["ts", "close"]}, "include_columns"),
        ({"include_columns": "ts"}, "include_columns"),
        ({"normalize_nan": "drop"}, "normalize_nan"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FingerprintConfig(**kwargs)


def test_config_accepts_the_canonical_list() -> None:
    config = FingerprintConfig(include_columns=list(CANONICAL_COLUMNS))
    assert config.include_columns == CANONICAL_COLUMNS


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (meta(as_of="2024-01-01T00:00:00Z"), "unknown"),
        ({k: v for k, v in meta().items() if k != "range"}, "missing"),
        (meta(interval=300), "does not match"),
        (meta(node_id="ohlcv:binance:BTCUSDT:1m"), "symbol"),
        (meta(interval=True), "interval"),
        (meta(range=[T0 + 60, T0]), "start > end"),
        (meta(range=[T0, 1.5]), "range"),
        (meta(range="ab"), "range"),
        (meta(conformance_version=""), "conformance_version"),
        (meta(start=T0 + 60), "outside"),
        (meta(end=T0 + 120), "outside"),
    ],
)
def test_metadata_validation(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_fingerprint(random_frame(8, 3), metadata)


def test_frame_validation() -> None:
    frame = random_frame(9, 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        compute_fingerprint(frame.iloc[::-1], meta())
    with pytest.raises(ValueError, match="strictly increasing"):
        compute_fingerprint(pd.concat([frame, frame.iloc[[2]]], ignore_index=True), meta())
    with pytest.raises(ValueError, match="lacks canonical"):
        compute_fingerprint(frame.drop(columns="volume"), meta())
    with pytest.raises(ValueError, match="ts must be integer"):
        compute_fingerprint(frame.astype({"ts": np.float64}), meta())
    with pytest.raises(ValueError, match="must be numeric"):
        compute_fingerprint(frame.astype({"close": str}), meta())
    with pytest.raises(TypeError):
        compute_fingerprint([1, 2, 3], meta())
    # Extra columns are ignored.
    assert compute_fingerprint(frame.assign(symbol="x"), meta()) == compute_fingerprint(
        frame, meta()
    )


def test_verify() -> None:
    frame = random_frame(10, 3)
    good = compute_fingerprint(frame, meta())
    assert verify_fingerprint(frame, meta(), good)
    assert not verify_fingerprint(frame, meta(), "sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="not a fingerprint"):
        verify_fingerprint(frame, meta(), good.upper())
