"""One behaviour suite for both artifact stores: a local directory and S3 on a real moto server.

The behaviour tests run once per backend through ``make_store`` (a factory of stores under
fresh sub-roots of one directory or bucket); the backend specifics (a SIGKILLed local writer,
a dead or missing S3 endpoint/bucket, a local root that is a file) and URI parsing follow.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmtl.runtime.io.artifact_stores import (
    LocalArtifactStore,
    S3ArtifactStore,
    open_artifact_store,
)
from qmtl.runtime.sdk.artifact_store import ArtifactNotFoundError, ArtifactStore
from qmtl.runtime.sdk.errors import StorageError
from qmtl.testing.servers import free_port
from tests.conftest import S3Bucket

BACKENDS = ["local", "s3"]
MakeStore = Callable[[str], ArtifactStore]


def s3_store(bucket: S3Bucket, name: str = "") -> S3ArtifactStore:
    return S3ArtifactStore(
        f"{bucket.uri}/{name}" if name else bucket.uri,
        endpoint_url=bucket.endpoint_url,
        access_key_id=bucket.access_key,
        secret_access_key=bucket.secret_key,
        region=bucket.region,
    )


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """Stores under ``<root>/<name>``: a directory below ``tmp_path`` or a bucket prefix."""
    if request.param == "local":
        return lambda name: LocalArtifactStore(tmp_path / "stores" / name)
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return lambda name: s3_store(bucket, name)


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[ArtifactStore]:
    async with make_store("root") as opened:
        yield opened


# -- behaviour --------------------------------------------------------------------------------


async def test_put_new_creates_once_and_never_overwrites(store: ArtifactStore) -> None:
    assert await store.put_new("a/b/c.parquet", b"first") is True
    assert await store.put_new("a/b/c.parquet", b"second") is False
    assert await store.get("a/b/c.parquet") == b"first"
    with pytest.raises(ArtifactNotFoundError):
        await store.get("a/b/missing.parquet")
    with pytest.raises(ArtifactNotFoundError):
        await store.get("a/b")  # a prefix is not an object


async def test_an_unused_store_is_empty(store: ArtifactStore) -> None:
    assert await store.list("") == []
    assert await store.list("a/") == []
    with pytest.raises(ArtifactNotFoundError):
        await store.get("x")


async def test_list_is_sorted_and_stays_under_the_prefix(store: ArtifactStore) -> None:
    keys = ["m/z", "m/a", "m/k/deep/er=1%2F2", "a", "ab/x", "n/y", "m-x/q"]
    for key in keys:
        assert await store.put_new(key, key.encode())
    assert await store.list("") == sorted(keys)
    assert await store.list("m/") == ["m/a", "m/k/deep/er=1%2F2", "m/z"]
    assert await store.list("m") == await store.list("m/")  # a directory either way
    assert await store.list("m/k/") == ["m/k/deep/er=1%2F2"]
    assert await store.list("a/") == []  # the object `a` is not under `a/`, nor is `ab/x`
    assert await store.list("zz/") == []
    for key in keys:
        assert await store.get(key) == key.encode()


async def test_uri_shapes(store: ArtifactStore, make_store: MakeStore, tmp_path: Path) -> None:
    if isinstance(store, LocalArtifactStore):
        assert store.root_uri == f"file://{tmp_path}/stores/root"
    else:
        assert store.root_uri.startswith("s3://qmtl-") and store.root_uri.endswith("/root")
    assert store.uri_of("a/b=1/c.json") == store.root_uri + "/a/b=1/c.json"
    with pytest.raises(ValueError, match="artifact key"):
        store.uri_of("../x")


async def test_empty_and_large_objects_round_trip(store: ArtifactStore) -> None:
    big = os.urandom(20 * 1024 * 1024)
    assert await store.put_new("empty", b"")
    assert await store.put_new("big/blob.bin", big)
    assert await store.get("empty") == b""
    assert await store.get("big/blob.bin") == big
    assert await store.list("") == ["big/blob.bin", "empty"]


async def test_sibling_roots_do_not_see_each_other(make_store: MakeStore) -> None:
    async with make_store("one") as one, make_store("one-two") as other:
        assert await other.put_new("x", b"other")
        assert await one.list("") == []
        with pytest.raises(ArtifactNotFoundError):
            await one.get("x")
        assert await one.put_new("x", b"one")
        assert await other.get("x") == b"other"


async def test_closed_store_refuses_and_close_is_idempotent(make_store: MakeStore) -> None:
    opened = make_store("closing")
    await opened.close()
    await opened.close()
    with pytest.raises(StorageError, match="closed"):
        await opened.put_new("x", b"x")
    with pytest.raises(StorageError, match="closed"):
        await opened.list("")


async def test_concurrent_put_new_has_exactly_one_winner(store: ArtifactStore) -> None:
    """20 writers race for one key: one wins, and the key holds exactly its bytes."""
    contents = [bytes([i]) * 256 * 1024 for i in range(20)]
    won = await asyncio.gather(*(store.put_new("race/key", c) for c in contents))
    assert won.count(True) == 1
    assert await store.get("race/key") == contents[won.index(True)]
    assert await store.list("race/") == ["race/key"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_restore_puts_back_exactly_the_bytes_it_is_told_to(store: ArtifactStore) -> None:
    published = b"the published bytes"
    # a lost object comes back (its parent prefixes too) ...
    await store.restore("a/b/c.parquet", published, expected_sha256=sha(published))
    assert await store.get("a/b/c.parquet") == published
    # ... and damaged bytes are replaced whole, however long they were
    assert await store.put_new("d/e", b"damaged, and longer than the published bytes")
    await store.restore("d/e", published, expected_sha256=sha(published))
    assert await store.get("d/e") == published
    await store.restore("d/e", published, expected_sha256=sha(published))  # idempotent
    assert await store.get("d/e") == published
    assert await store.list("") == ["a/b/c.parquet", "d/e"]  # no staging object is listed
    big = os.urandom(12 * 1024 * 1024)  # above obstore's multipart threshold: still one PUT
    assert await store.put_new("big", b"x")
    await store.restore("big", big, expected_sha256=sha(big))
    assert await store.get("big") == big


async def test_restore_refuses_bytes_without_the_expected_sha256(store: ArtifactStore) -> None:
    published = b"published"
    assert await store.put_new("k", b"damaged")
    refused = [
        (b"other bytes", sha(published)),  # the wrong bytes
        (published, sha(published).upper()),  # the digest as manifests do not write it
        (published, "sha256:" + sha(published)),
        (published, sha(published)[:-1]),
        (published, ""),
    ]
    for data, expected in refused:
        with pytest.raises(ValueError, match="restore 'k'"):
            await store.restore("k", data, expected_sha256=expected)
    with pytest.raises(ValueError, match="refused, sha256 of the data"):
        await store.restore("gone", b"other bytes", expected_sha256=sha(published))
    with pytest.raises(ValueError, match="artifact key"):
        await store.restore("../k", published, expected_sha256=sha(published))
    assert await store.get("k") == b"damaged"  # nothing was written
    assert await store.list("") == ["k"]


# -- a dict model -----------------------------------------------------------------------------

# Leaves only: the local store cannot hold both `d` and `d/x` (a file cannot be a directory).
KEYS = ["x", "y", "d/x", "d/y", "d/e/x"]
PREFIXES = ["", "d/", "d/e/", "e/"]
operation = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=16)),
    st.tuples(st.just("get"), st.sampled_from(KEYS)),
    st.tuples(st.just("list"), st.sampled_from(PREFIXES)),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, max_size=12))
def test_behaves_like_a_create_once_dict(
    make_store: MakeStore, ops: list[tuple[str, ...] | tuple[str, str, bytes]]
) -> None:
    model: dict[str, bytes] = {}
    store = make_store(uuid.uuid4().hex)  # fresh per example: the fixture is shared
    with asyncio.Runner() as runner:
        for op in ops:
            if op[0] == "put":
                key, data = str(op[1]), bytes(op[2])
                assert runner.run(store.put_new(key, data)) is (key not in model)
                model.setdefault(key, data)
            elif op[0] == "get":
                key = str(op[1])
                if key in model:
                    assert runner.run(store.get(key)) == model[key]
                else:
                    with pytest.raises(ArtifactNotFoundError):
                        runner.run(store.get(key))
            else:
                prefix = str(op[1])
                expected = sorted(k for k in model if k.startswith(prefix))
                assert runner.run(store.list(prefix)) == expected
        runner.run(store.close())


# -- hostile keys -----------------------------------------------------------------------------

HOSTILE = [
    "",
    "/",
    "../x",
    "a/../../x",
    "/etc/passwd",
    "a//b",
    "a\\b",
    "a\x00b",
    ".",
    "..",
    "x" * 300,
    "a/" + "b" * 1100,
    "\u2025",
    "\u2024\u2024/x",
    "a\uff0fb",
    "e\u0301",
    "a/#1",
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def test_hostile_keys_are_refused_and_nothing_leaves_the_root(
    store: ArtifactStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert await store.put_new("ok", b"ok")
    outside = tmp_path.parent
    before = await asyncio.to_thread(_tree, outside)
    for key in HOSTILE:
        with pytest.raises(ValueError, match="artifact key"):
            await store.put_new(key, b"evil")
        with pytest.raises(ValueError, match="artifact key"):
            await store.get(key)
        with pytest.raises(ValueError, match="artifact key"):
            store.uri_of(key)
        if key not in ("", "/"):  # "" lists everything
            with pytest.raises(ValueError, match="artifact key"):
                await store.list(key + "/")
    assert await asyncio.to_thread(_tree, outside) == before
    if isinstance(store, S3ArtifactStore):
        async with s3_store(request.getfixturevalue("s3_bucket")) as whole_bucket:
            assert await whole_bucket.list("") == ["root/ok"]


# -- backend specifics ------------------------------------------------------------------------

_WRITER = """
import asyncio, sys
from qmtl.runtime.io.artifact_stores import LocalArtifactStore
data = bytes(range(256)) * (int(sys.argv[2]) // 256)
asyncio.run(LocalArtifactStore(sys.argv[1]).put_new("big/obj.bin", data))
"""
_SIZE = 96 * 1024 * 1024


def _kill_when_a_file_appears(root: Path, deadline: float) -> bool:
    """Run the writer; SIGKILL it as soon as any file exists under ``root``. ``True`` when
    the kill landed mid-write: bytes were on disk, the key did not exist yet."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(_SIZE)])
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(files for _, _, files in os.walk(root)):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    on_disk = any(files for _, _, files in os.walk(root))
    return on_disk and not (root / "big" / "obj.bin").exists()


def test_a_killed_writer_leaves_no_partial_object(tmp_path: Path) -> None:
    """A writer SIGKILLed mid-``put_new`` leaves either nothing under the key or the whole
    object, and the key can then be created. Retried until one kill lands mid-write."""
    expected = bytes(range(256)) * (_SIZE // 256)
    deadline = time.monotonic() + 8
    caught = 0
    with asyncio.Runner() as runner:
        for attempt in range(10):
            root = tmp_path / f"try{attempt}"
            mid_write = _kill_when_a_file_appears(root, deadline)
            store = LocalArtifactStore(root)
            listed = runner.run(store.list(""))
            if mid_write:
                caught += 1
                assert listed == []  # the partial bytes stay hidden (a staging file)
                assert runner.run(store.put_new("big/obj.bin", b"retry")) is True
                assert runner.run(store.get("big/obj.bin")) == b"retry"
            else:
                assert listed == ["big/obj.bin"]
                assert runner.run(store.get("big/obj.bin")) == expected
            if caught or time.monotonic() > deadline:
                break
    assert caught, "no kill landed mid-write"


async def test_a_dead_s3_endpoint_fails_fast_in_one_line() -> None:
    store = S3ArtifactStore(
        "s3://some-bucket/p",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="k",
        secret_access_key="s",
        region="us-east-1",
    )
    started = time.monotonic()
    for call in (store.put_new("k", b"x"), store.get("k"), store.list("")):
        with pytest.raises(StorageError) as info:
            await call
        message = str(info.value)
        assert "\n" not in message and "s3://some-bucket/p" in message, message
    assert time.monotonic() - started < 5


async def test_a_missing_bucket_is_a_storage_error(s3_bucket: S3Bucket) -> None:
    gone = S3Bucket(**{**vars(s3_bucket), "bucket": f"qmtl-gone-{uuid.uuid4().hex[:8]}"})
    async with s3_store(gone) as store:
        for call in (store.put_new("k", b"x"), store.get("k"), store.list("")):
            with pytest.raises(StorageError, match="NoSuchBucket") as info:
                await call
            assert "\n" not in str(info.value)


async def test_a_local_root_that_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    for root in (tmp_path / "file", tmp_path / "file" / "sub"):
        store = LocalArtifactStore(root)
        with pytest.raises(StorageError) as info:
            await store.put_new("k", b"x")
        assert "\n" not in str(info.value) and str(root) in str(info.value)
    with pytest.raises(StorageError):
        await LocalArtifactStore(tmp_path / "file").list("")


async def test_a_local_key_named_like_a_directory_is_a_storage_error(tmp_path: Path) -> None:
    """Files cannot be directories: locally, ``d`` and ``d/x`` cannot both exist."""
    store = LocalArtifactStore(tmp_path / "root")
    assert await store.put_new("d/x", b"x")
    with pytest.raises(StorageError, match="directory"):
        await store.put_new("d", b"d")
    with pytest.raises(StorageError):
        await store.put_new("d/x/y", b"y")


async def test_a_local_restore_renames_a_new_file_over_the_key(tmp_path: Path) -> None:
    """A reader holding the damaged file keeps reading it whole; new readers get the new
    file; no staging file is left behind; a directory under the key's name is refused."""
    store = LocalArtifactStore(tmp_path)
    assert await store.put_new("d/x", b"damaged")
    with (tmp_path / "d" / "x").open("rb") as held:
        await store.restore("d/x", b"published", expected_sha256=sha(b"published"))
        assert held.read() == b"damaged"  # replaced by rename, never written in place
    assert (tmp_path / "d" / "x").read_bytes() == b"published"
    assert _tree(tmp_path) == {"d", "d/x"}
    with pytest.raises(StorageError, match="restore 'd' failed"):
        await store.restore("d", b"published", expected_sha256=sha(b"published"))
    assert _tree(tmp_path) == {"d", "d/x"}


# -- open_artifact_store ----------------------------------------------------------------------


def test_open_artifact_store_accepts_every_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    forms = {
        f"file://{tmp_path}/abs": f"file://{tmp_path}/abs",
        "file://rel/dir": f"file://{tmp_path}/rel/dir",
        "rel/bare": f"file://{tmp_path}/rel/bare",
        f"{tmp_path}/bare/": f"file://{tmp_path}/bare",
    }
    for uri, root_uri in forms.items():
        store = open_artifact_store(uri)
        assert isinstance(store, LocalArtifactStore)
        assert asyncio.run(store.list("")) == []  # first use: a relative root is resolved
        assert store.root_uri == root_uri
        again = open_artifact_store(store.root_uri)  # round trip
        asyncio.run(again.list(""))
        assert again.root_uri == root_uri
    s3 = open_artifact_store("s3://my-bucket/pre/fix/", s3_endpoint_url="http://127.0.0.1:9")
    assert isinstance(s3, S3ArtifactStore) and s3.root_uri == "s3://my-bucket/pre/fix"
    assert open_artifact_store("s3://my-bucket").root_uri == "s3://my-bucket"


@pytest.mark.parametrize(
    "uri",
    ["", "ftp://x", "s3://", "s3:///prefix", "s3://b", "s3://bucket/../x", "file://", "http://h/p"],
)
def test_open_artifact_store_refuses_other_forms(uri: str) -> None:
    with pytest.raises(ValueError, match=r"artifact (store URI|key)") as info:
        open_artifact_store(uri)
    assert "\n" not in str(info.value)


async def test_s3_credentials_come_from_the_aws_environment(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key)
    monkeypatch.setenv("AWS_REGION", s3_bucket.region)
    uri = f"{s3_bucket.uri}/env"
    async with open_artifact_store(uri, s3_endpoint_url=s3_bucket.endpoint_url) as store:
        assert await store.put_new("k", b"v")
    async with s3_store(s3_bucket) as whole_bucket:
        assert await whole_bucket.get("env/k") == b"v"
