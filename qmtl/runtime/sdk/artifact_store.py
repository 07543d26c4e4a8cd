"""The artifact store port: an immutable object store under one root (a local directory or
an S3 prefix), written through :meth:`ArtifactStore.put_new` (create once) and, to repair
damage only, :meth:`ArtifactStore.restore`.

Keys are relative POSIX paths (``exchange=binance/symbol=BTC%2FUSDT/.../part-....parquet``)
built by :mod:`qmtl.runtime.sdk.artifact_keys` from encoded components; every store checks
them again with :func:`check_key` (defence in depth: a key that could name anything outside
the root is refused, whoever built it). Objects are never deleted, and a key, once created,
holds the same bytes forever. That is what makes a manifest's ``as_of`` a promise.

``restore`` does not break that promise, it keeps it: it writes only bytes whose SHA-256 the
caller names, and the caller (:mod:`qmtl.runtime.io.artifact_repair`) names the one a
manifest already records. So the only content it can ever put under a key is the content
that key was published with — it undoes damage (a flipped byte, a lost file), it cannot
publish anything new or change what any ``as_of`` serves.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol, Self, runtime_checkable

__all__ = [
    "MAX_KEY_BYTES",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "Blob",
    "check_key",
    "check_restore",
]

Blob = bytes | memoryview
"""What a store reads back: the bytes, or a read-only view of the store's own buffer."""

#: S3 keys are at most 1024 bytes; local paths stay far below PATH_MAX with it.
MAX_KEY_BYTES = 1024
#: One path component, as every file system and S3 accept it.
_MAX_COMPONENT_BYTES = 255
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_.=%+-]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactNotFoundError(LookupError):
    """No object under that key."""


def check_key(key: str) -> str:
    """``key`` if it is a safe relative key, else ``ValueError`` naming the problem: ASCII
    components of ``[A-Za-z0-9_.=%+-]`` separated by ``/``, none empty, ``.`` or ``..``, none
    over 255 bytes, at most :data:`MAX_KEY_BYTES` in all — so no key can leave the root,
    whatever the store (no ``..``, no absolute path, no backslash, no NUL, no look-alikes)."""
    if not isinstance(key, str) or not key:
        raise ValueError("artifact key must be a non-empty str")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"artifact key is longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if part in ("", ".", "..") or not _SAFE_COMPONENT.fullmatch(part):
            raise ValueError(f"unsafe artifact key component {part[:40]!r} in {key[:80]!r}")
        if len(part) > _MAX_COMPONENT_BYTES:
            raise ValueError(f"artifact key component longer than {_MAX_COMPONENT_BYTES} bytes")
    return key


def check_restore(key: str, data: bytes, expected_sha256: str) -> None:
    """What every store checks before :meth:`ArtifactStore.restore` writes anything:
    ``key`` is safe (:func:`check_key`), ``expected_sha256`` is 64 lowercase hex digits (as
    manifests record it, no ``sha256:`` prefix) and ``sha256(data)`` equals it; otherwise
    ``ValueError`` naming the mismatch. Hashes ``data`` (CPU: call it off the event loop
    for large objects)."""
    check_key(key)
    if not isinstance(expected_sha256, str) or not _SHA256_HEX.fullmatch(expected_sha256):
        raise ValueError(
            f"restore {key!r}: expected_sha256 must be 64 lowercase hex digits, "
            f"got {str(expected_sha256)[:80]!r}"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ValueError(
            f"restore {key!r}: refused, sha256 of the data is {actual[:16]}..., not the "
            f"expected {expected_sha256[:16]}... (only the exact recorded bytes may be put back)"
        )


@runtime_checkable
class ArtifactStore(Protocol):
    """Immutable objects under one root. Coroutines never block the event loop; an instance
    may be shared by tasks of one loop. Failures of the store itself (unreachable, denied)
    raise :class:`~qmtl.runtime.sdk.errors.StorageError`; bad keys ``ValueError``."""

    @property
    def root_uri(self) -> str:
        """Where the root is, for people and manifests: ``file:///abs/dir`` or
        ``s3://bucket/prefix``."""
        ...

    def uri_of(self, key: str) -> str:
        """The full URI of ``key`` (``root_uri`` + ``/`` + key)."""
        ...

    async def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data``, atomically and never overwriting: readers see
        the whole object or nothing (a crash mid-write leaves nothing under ``key``).
        ``True`` when created; ``False`` when ``key`` already existed (left untouched)."""
        ...

    async def restore(self, key: str, data: bytes, *, expected_sha256: str) -> None:
        """Put back the object under ``key`` — the one deliberate overwrite, for repairs: writes
        ``data`` only when its SHA-256 (lowercase hex) is ``expected_sha256``, else
        ``ValueError`` and nothing is written (:func:`check_restore`). Whatever is under
        ``key`` (damaged bytes, nothing) is replaced whole: readers see the old object or the
        new one, never a mix (local: a temporary file renamed over the key; S3: one plain
        ``PUT``). Callers pass the SHA-256 a manifest records, so only the bytes that were
        published there can come back (module docstring)."""
        ...

    async def get(self, key: str) -> Blob:
        """The bytes under ``key`` (a read-only buffer: ``bytes`` or a ``memoryview`` of
        the store's own memory, never copied); :class:`ArtifactNotFoundError` when there are
        none."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a key prefix ending in ``/``, or ``""`` for all),
        sorted; objects being written are never listed."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
