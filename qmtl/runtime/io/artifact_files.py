"""The data file of an artifact: canonical bars as Parquet, and back.

The bytes depend only on the bars and the identity written into the file's key-value
metadata (node id, interval, range, fingerprint) — never on the clock, the host or the pandas
version — so the same bars always give the same file, which is what lets a fingerprint name
one file and a re-run reproduce it byte for byte.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qmtl.runtime.sdk.artifact_catalog import SCHEMA
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS, frame_from_columns

__all__ = ["parquet_bytes", "read_parquet_bars"]


def parquet_bytes(frame: pd.DataFrame, identity: dict[str, str], compression: str) -> bytes:
    """The data file: canonical columns, our identity as key-value metadata, nothing that
    depends on the clock or the pandas version (so the same bars give the same bytes)."""
    arrays = [
        pa.array(frame[name].to_numpy(np.int64 if name == "ts" else np.float64))
        for name in CANONICAL_COLUMNS
    ]
    schema = pa.schema(
        [(name, pa.int64() if kind == "int64" else pa.float64()) for name, kind in SCHEMA],
        metadata={k.encode(): v.encode() for k, v in identity.items()},
    )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), buffer, compression=compression)
    return buffer.getvalue()


def read_parquet_bars(data: bytes) -> pd.DataFrame:
    """A data file's bars as a canonical frame."""
    table = pq.read_table(pa.BufferReader(data), columns=list(CANONICAL_COLUMNS))
    return frame_from_columns({n: table.column(n).to_numpy() for n in CANONICAL_COLUMNS})
