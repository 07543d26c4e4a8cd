"""PostgreSQL's binary wire formats for bars, vectorised: the ``COPY ... (FORMAT binary)``
payload the store writes through, and the ``array_send`` bytea of each column it reads back.
Column types come from the bar schema (:func:`~qmtl.runtime.sdk.bars.empty_frame`), in network
byte order; no per-row Python either way."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from qmtl.runtime.sdk.bars import (
    CANONICAL_COLUMNS,
    BarColumns,
    empty_frame,
    frame_from_columns,
    prepare_bars,
)
from qmtl.runtime.sdk.errors import StorageError

__all__ = ["decode_bars", "encode_bars"]

#: Big-endian (network order) dtype of each canonical column, from the bar schema itself.
_WIRE: Final[dict[str, np.dtype[Any]]] = {
    str(name): np.dtype(dtype).newbyteorder(">") for name, dtype in empty_frame().dtypes.items()
}

# Binary COPY row: int16 field count, then per field int32 length + big-endian value.
_COPY_ROW = np.dtype(
    [("nfields", ">i2")]
    + [
        item
        for i, name in enumerate(CANONICAL_COLUMNS)
        for item in ((f"len{i}", ">i4"), (name, _WIRE[name]))
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header-extension length
_COPY_TRAILER = b"\xff\xff"


def encode_bars(frame: pd.DataFrame) -> tuple[int, bytes]:
    """Validate ``frame`` and build its binary COPY payload (vectorised)."""
    columns = prepare_bars(frame)
    rows = np.empty(len(columns["ts"]), dtype=_COPY_ROW)
    rows["nfields"] = len(CANONICAL_COLUMNS)
    for i, name in enumerate(CANONICAL_COLUMNS):
        rows[f"len{i}"] = _WIRE[name].itemsize
        rows[name] = columns[name]
    return len(rows), _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def decode_bars(row: tuple[bytes | None, ...]) -> pd.DataFrame:
    """A canonical frame from the ``array_send`` bytea of each column (``None``: no rows)."""
    columns: BarColumns = {
        name: _decode_array(buf, _WIRE[name])
        for name, buf in zip(CANONICAL_COLUMNS, row, strict=True)
    }
    ts = columns["ts"]
    if ts.size > 1 and not bool((ts[1:] > ts[:-1]).all()):
        # The ordered subquery feeds array_agg in order in practice; never trust it blindly.
        order = np.argsort(ts, kind="stable")
        columns = {name: arr[order] for name, arr in columns.items()}
    return frame_from_columns(columns)


def _decode_array(buf: bytes | None, value: np.dtype[Any]) -> npt.NDArray[Any]:
    """Decode PostgreSQL's binary array format (1-D, fixed-width elements, no NULLs)."""
    native = value.newbyteorder("=")
    if buf is None:
        return np.empty(0, dtype=native)
    ndim, has_null = (int(x) for x in np.frombuffer(buf, dtype=">i4", count=2))
    if ndim == 0:
        return np.empty(0, dtype=native)
    if ndim != 1 or has_null:
        raise StorageError(f"unexpected array shape from PostgreSQL (ndim={ndim})")
    count = int(np.frombuffer(buf, dtype=">i4", count=1, offset=12)[0])
    cells = np.frombuffer(
        buf, dtype=np.dtype([("len", ">i4"), ("v", value)]), count=count, offset=20
    )
    if count and not bool((cells["len"] == value.itemsize).all()):
        raise StorageError("unexpected element width in PostgreSQL array")
    return cells["v"].astype(native)
