"""Where artifacts live under a store's root: Hive-partitioned data files and a manifest
catalog per node (pure: names only, no I/O).

Layout (``partition`` is the configured template, ``exchange={exchange}/symbol={symbol}/
timeframe={timeframe}`` by default, each value percent-encoded)::

    {partition}/part-{start}-{end}-{fp16}.parquet             published bars (tile time)
    compacted/{partition}/period={YYYY-MM}/part-...parquet   compacted copies (same bars)
    _manifests/{node}/{as_of}-{fp16}.json                     one manifest per publication

Publications of one node never overlap (each publishes bars no earlier artifact holds), so
``read_parquet('{root}/exchange=*/**/*.parquet', hive_partitioning = true)`` in DuckDB (or a
pyarrow / polars dataset over the same files) returns every published bar exactly once;
compacted copies live apart for the same reason. ``start``/``end`` are epoch seconds,
``fp16`` the first 16 hex digits of the dataset fingerprint, ``as_of`` the publication
instant as ``YYYYMMDDTHHMMSSmmmZ`` (sorts as time does).

Percent-encoding keeps every byte outside ``[A-Za-z0-9._-]`` out of paths (``/`` is
``%2F``, ``:`` is ``%3A``), which is what pyarrow's Hive partitioning decodes
(``segment_encoding="uri"``); a component that would be ``.`` or ``..`` is encoded too, and
one longer than 200 bytes is cut and suffixed with a hash — no node id can name a path
outside the root.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from qmtl.runtime.sdk.artifact_store import check_key
from qmtl.runtime.sdk.node_id import NodeId, parse_node_id

__all__ = [
    "COMPACTED_PREFIX",
    "MANIFEST_PREFIX",
    "as_of_from_ms",
    "as_of_to_ms",
    "compacted_key",
    "data_key",
    "encode_component",
    "manifest_key",
    "manifest_prefix",
    "partition_path",
]

MANIFEST_PREFIX = "_manifests"
COMPACTED_PREFIX = "compacted"
_MAX_COMPONENT = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_component(text: str) -> str:
    """``text`` as one safe path component (module docstring)."""
    encoded = quote(text, safe="")
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    if len(encoded) > _MAX_COMPONENT:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        head = encoded[: _MAX_COMPONENT - 18]
        head = head[: head.rfind("%")] if "%" in head[-2:] else head  # no cut escape
        encoded = f"{head}+h{digest}"
    return encoded


def partition_path(template: str, node: NodeId | str) -> str:
    """The partition directory of ``node`` (``template`` filled with encoded values)."""
    parsed = node if isinstance(node, NodeId) else parse_node_id(node)
    return check_key(
        template.format(
            exchange=encode_component(parsed.exchange),
            symbol=encode_component(parsed.symbol),
            timeframe=encode_component(parsed.timeframe),
        )
    )


def _fp16(fingerprint: str) -> str:
    digest = fingerprint.partition(":")[2] or fingerprint
    if len(digest) < 16 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a sha256 fingerprint: {fingerprint[:80]!r}")
    return digest[:16]


def data_key(template: str, node: NodeId | str, start: int, end: int, fingerprint: str) -> str:
    """The data file of a publication of ``[start, end)`` (epoch seconds)."""
    name = f"part-{start}-{end}-{_fp16(fingerprint)}.parquet"
    return check_key(f"{partition_path(template, node)}/{name}")


def compacted_key(
    template: str, node: NodeId | str, period: str, start: int, end: int, fingerprint: str
) -> str:
    """The data file of a compacted ``period`` (``YYYY-MM`` or ``YYYY``)."""
    name = f"part-{start}-{end}-{_fp16(fingerprint)}.parquet"
    partition = partition_path(template, node)
    return check_key(f"{COMPACTED_PREFIX}/{partition}/period={encode_component(period)}/{name}")


def manifest_prefix(node_id: str) -> str:
    """The catalog directory of one node (ends with ``/``)."""
    return check_key(f"{MANIFEST_PREFIX}/{encode_component(node_id)}") + "/"


def manifest_key(node_id: str, as_of_ms: int, fingerprint: str) -> str:
    stamp = datetime.fromtimestamp(as_of_ms / 1000, tz=UTC)
    compact = stamp.strftime("%Y%m%dT%H%M%S") + f"{as_of_ms % 1000:03d}Z"
    return check_key(f"{manifest_prefix(node_id)}{compact}-{_fp16(fingerprint)}.json")


def as_of_from_ms(as_of_ms: int) -> str:
    """The ``as_of`` text of a publication instant: ISO-8601 UTC, milliseconds, ``Z``."""
    stamp = datetime.fromtimestamp(as_of_ms // 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{as_of_ms % 1000:03d}Z"


def as_of_to_ms(text: str) -> int:
    """Milliseconds of an ``as_of`` text written by :func:`as_of_from_ms` (or any ISO-8601
    instant with an offset); finer digits are truncated."""
    parsed = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError(f"as_of {text!r} has no timezone")
    return (parsed - _EPOCH) // timedelta(milliseconds=1)
