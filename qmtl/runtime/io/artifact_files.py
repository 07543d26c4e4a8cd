"""The data file of an artifact: canonical bars as Parquet, and back.

The bytes depend only on the bars and the identity written into the file's key-value
metadata (node id, interval, range, fingerprint) — never on the clock, the host or the pandas
version — so the same bars always give the same file, which is what lets a fingerprint name
one file and a re-run reproduce it byte for byte. :func:`data_file_bytes` is the one way a
data file is encoded — by publication, and again by repair
(:mod:`~qmtl.runtime.io.artifact_repair`), which relies on getting the very same bytes.
They also depend on the compression and the pyarrow version (its name is in the footer): the
manifest records neither, only the file's SHA-256, which is how a re-encoding is checked.
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qmtl.runtime.sdk.artifact_catalog import SCHEMA
from qmtl.runtime.sdk.artifact_store import Blob
from qmtl.runtime.sdk.bars import CANONICAL_COLUMNS, BarColumns, frame_from_columns

__all__ = [
    "COMPRESSIONS",
    "data_file_bytes",
    "parquet_bytes",
    "read_parquet_bars",
    "read_parquet_columns",
]

#: The Parquet compressions a data file may use (``seamless.artifact.compression``).
COMPRESSIONS: Final = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")

#: Files at least this large decode their columns in parallel (pyarrow's threads); smaller
#: ones decode faster on the calling thread alone.
_THREADED_BYTES = 1 << 20


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
    pq.write_table(
        pa.Table.from_arrays(arrays, schema=schema),
        buffer,
        compression=compression,
        use_dictionary=False,  # prices and times rarely repeat: plain pages decode faster
        write_page_checksum=True,  # every read checks each page's CRC (see read below)
    )
    return buffer.getvalue()


def data_file_bytes(
    bars: pd.DataFrame,
    *,
    node_id: str,
    interval: int,
    span: tuple[int, int],
    fingerprint: str,
    compression: str,
) -> bytes:
    """The data file of an artifact: ``bars`` (conformed, exactly the published ones) with
    the artifact's identity — node, interval (seconds), half-open ``span`` ``[start, end)``
    in epoch seconds, dataset fingerprint — as key-value metadata."""
    identity = {
        "node_id": node_id,
        "interval": str(interval),
        "start": str(span[0]),
        "end": str(span[1]),
        "dataset_fingerprint": fingerprint,
    }
    return parquet_bytes(bars, identity, compression)


def read_parquet_columns(data: Blob) -> BarColumns:
    """A data file's canonical columns as numpy arrays (``ts`` int64, the rest float64), in
    file order. They may share memory with the decoded Arrow data and be read-only: copy
    before handing them to anyone who may write. Every page's CRC is checked: a flipped
    byte in the data is an ``OSError`` here, not a wrong price served (``verify`` checks
    the whole file's SHA-256 too)."""
    threads = len(data) >= _THREADED_BYTES
    with pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True) as file:
        table = file.read(columns=list(CANONICAL_COLUMNS), use_threads=threads)
    return {
        name: np.asarray(
            table.column(name).to_numpy(), dtype=np.int64 if name == "ts" else np.float64
        )
        for name in CANONICAL_COLUMNS
    }


def read_parquet_bars(data: Blob) -> pd.DataFrame:
    """A data file's bars as a canonical frame."""
    return frame_from_columns(read_parquet_columns(data))
