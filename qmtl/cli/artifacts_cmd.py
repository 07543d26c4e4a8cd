"""``qmtl-seamless artifacts list|show|verify|compact|repair``: the published artifacts of a store.

An artifact is a set of stabilized bars published as an immutable Parquet file with a JSON
manifest (``docs/artifacts.md``). These commands read and maintain the artifact store of
``seamless.artifact`` in the ``--config`` file (``object_store_uri``, ``s3_endpoint_url``; the
default is ``./.qmtl/artifacts``), or the one ``--store`` names (``file://DIR``, a path, or
``s3://bucket/prefix``, which wins over the file). Each says which store it resolved: a
``store:`` line on stderr, ``"store"`` in ``--json``.

- ``list [NODE_ID] [--as-of T]``: one row per artifact, of one node or all of them; with
  ``--as-of`` only the artifacts published at or before ``T`` (what a fetch pinned to ``T``
  may serve).
- ``show NODE_ID [--as-of T]`` or ``show --manifest KEY_OR_URI``: the manifests themselves.
- ``verify [NODE_ID]``: every data file is present, has the size and SHA-256 its manifest
  records, and its bars recompute to the recorded fingerprint and row count.
- ``compact NODE_ID [--period month|year]``: one artifact per calendar period holding what
  many small publications hold (nothing is deleted; reads after it use the compacted file).
- ``repair [NODE_ID]``: :mod:`qmtl.cli.artifacts_repair` (data files back from the hot store).

``list``, ``show`` and ``verify`` only read: a store that does not exist is reported as
holding no artifacts and is not created. Exit codes: 0 done (an empty store included); 1 when
``verify`` found a problem (an artifact that does not hold what its manifest promises would
be served wrong); 2 for a bad argument (node id, ``--as-of``, ``--store``, a manifest that is
not there); 3 when the store is unreachable or holds a manifest that cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from qmtl.cli._common import console, print_json, settings, show_store, usage_handler
from qmtl.cli.artifacts_repair import register_repair
from qmtl.cli.artifacts_report import artifact_table, entry_dict, node_label
from qmtl.runtime.sdk.artifact_keys import MANIFEST_PREFIX, as_of_from_ms
from qmtl.runtime.sdk.artifact_store import ArtifactNotFoundError, check_key
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.node_id import parse_node_id
from qmtl.runtime.sdk.timestamps import LAST_INSTANT, format_iso, parse_as_of

if TYPE_CHECKING:
    from qmtl.runtime.io.artifact import ArtifactRegistrar
    from qmtl.runtime.sdk.artifact_catalog import ArtifactEntry
    from qmtl.runtime.sdk.artifact_publisher import ArtifactPublication

__all__ = ["register", "store_uri"]

_STORE_FORMS: Final = "file://DIR, a directory path, or s3://bucket/prefix"
T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``artifacts`` command group (list, show, verify, compact, repair)."""
    parser = subparsers.add_parser(
        "artifacts", help="list, show, verify, compact and repair the published artifacts"
    )
    commands = parser.add_subparsers(dest="artifacts_command", metavar="SUBCOMMAND")
    as_of_help = (
        "only what was published at or before this instant: ISO-8601 (as_of values, with "
        "milliseconds), a date, epoch s or ms"
    )

    list_parser = commands.add_parser(
        "list", help="one row per artifact: node, kind, range, rows, as_of, fingerprint"
    )
    list_parser.add_argument("node_id", metavar="NODE_ID", nargs="?", help="default: every node")
    list_parser.add_argument("--as-of", metavar="T", help=as_of_help)
    _add_store_options(list_parser, "print the artifacts as JSON")
    list_parser.set_defaults(handler=_list, command="artifacts list")

    show = commands.add_parser("show", help="the manifests of a node (or one manifest)")
    show.add_argument(
        "node_id", metavar="NODE_ID", nargs="?", help="e.g. ohlcv:binance:BTC/USDT:1m"
    )
    show.add_argument("--as-of", metavar="T", help=as_of_help)
    show.add_argument(
        "--manifest",
        metavar="KEY_OR_URI",
        help="one manifest: its key (_manifests/...) in the store, or its full URI",
    )
    _add_store_options(show, "print the manifests as JSON, in full")
    show.set_defaults(handler=_show, command="artifacts show")

    verify_parser = commands.add_parser(
        "verify", help="check every data file against its manifest (size, SHA-256, fingerprint)"
    )
    verify_parser.add_argument("node_id", metavar="NODE_ID", nargs="?", help="default: every node")
    _add_store_options(verify_parser, "print the result as JSON")
    verify_parser.set_defaults(handler=_verify, command="artifacts verify")

    compact_parser = commands.add_parser(
        "compact", help="publish one artifact per calendar period of a node's publications"
    )
    compact_parser.add_argument("node_id", metavar="NODE_ID", help="e.g. ohlcv:binance:BTC/USDT:1m")
    compact_parser.add_argument(
        "--period", choices=("month", "year"), default="month", help="calendar period (UTC)"
    )
    _add_store_options(compact_parser, "print what was published as JSON")
    compact_parser.set_defaults(handler=_compact, command="artifacts compact")
    register_repair(commands, _add_store_options, _registrar)

    parser.set_defaults(handler=usage_handler(parser))


def _add_store_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    """``--config``, ``--store`` and ``--json``: every sub-command takes them. (Its errors
    then name it, as argparse's do: ``qmtl-seamless artifacts list: error: ...``.)"""
    parser.add_argument(
        "--config", metavar="FILE", help="YAML configuration: its seamless.artifact settings"
    )
    parser.add_argument(
        "--store",
        metavar="URI",
        help=f"the artifact store ({_STORE_FORMS}); overrides --config and the default "
        "file://.qmtl/artifacts",
    )
    parser.add_argument("--json", action="store_true", help=json_help)


# -- the store ---------------------------------------------------------------------------------


def store_uri(text: str, *, option: str = "--store") -> str:
    """The artifact store URI a user gave as ``option``: ``file://DIR`` and
    ``s3://bucket/prefix`` as they are, a path as ``file://`` + the path (relative to the
    working directory); ``ValueError`` naming ``option`` for anything else."""
    from qmtl.runtime.sdk.config import ArtifactConfig

    scheme, sep, _ = text.partition("://")
    if not sep and text.strip():
        text = "file://" + text
    elif scheme not in ("file", "s3"):
        raise ValueError(f"{option}: unsupported store {text[:200]!r}; use {_STORE_FORMS}")
    try:
        ArtifactConfig(object_store_uri=text)
    except ValueError as exc:
        raise ValueError(f"{option}: {str(exc).removeprefix('object_store_uri: ')}") from None
    return text


def _registrar(args: argparse.Namespace, store: str | None = None) -> ArtifactRegistrar:
    """The registrar of the ``--config`` file's ``seamless.artifact`` (or the defaults), with
    ``store`` (else ``--store``) as its ``object_store_uri``. Opens nothing."""
    from qmtl.runtime.io.composition import build_registrar

    config = settings(args)
    artifact = config.seamless.artifact
    uri = store if store is not None else args.store
    if uri is not None:
        artifact = replace(artifact, object_store_uri=store_uri(uri))
    return build_registrar(artifact, worker_id=config.environment.worker_id)


@contextmanager
def _store_data() -> Iterator[None]:
    """A manifest in the store that cannot be read is the store's problem (exit 3), not an
    argument's: the registrar reports it as a ``ValueError`` naming the manifest."""
    try:
        yield
    except ValueError as exc:
        if str(exc).startswith("manifest "):
            raise StorageError(f"unreadable artifact store: {exc}") from exc
        raise


def _node(text: str | None) -> str | None:
    if text is not None:
        parse_node_id(text)  # a malformed id is the user's mistake, named before any I/O
    return text


def _as_of(text: str | None) -> int | None:
    """Epoch ms of ``--as-of``. Digits beyond epoch seconds are milliseconds, kept exact."""
    if text is None:
        return None
    digits = text.strip()
    if digits.isdigit() and len(digits) <= 16 and int(digits) > LAST_INSTANT:
        return parse_as_of(int(digits), name="--as-of")
    return parse_as_of(text, name="--as-of")


def _run(registrar: ArtifactRegistrar, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` with ``registrar``, closed afterwards."""

    async def go() -> T:
        try:
            with _store_data():
                return await work
        finally:
            await registrar.close()

    return asyncio.run(go())


# -- list ----------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    node = _node(args.node_id)
    as_of = _as_of(args.as_of)
    registrar = _registrar(args)

    async def collect() -> list[ArtifactEntry]:
        nodes = [node] if node is not None else await registrar.nodes()
        catalogs = [await registrar.catalog(n) for n in nodes]
        return [e for catalog in catalogs for e in catalog.visible(as_of)]

    entries: list[ArtifactEntry] = _run(registrar, collect())
    root = registrar.store.root_uri
    if args.json:
        print_json(
            {
                "store": root,
                "as_of": None if as_of is None else as_of_from_ms(as_of),
                "artifacts": [entry_dict(registrar, e) for e in entries],
            }
        )
        return 0
    show_store(root)
    if not entries:
        when = "" if as_of is None else f" as of {as_of_from_ms(as_of)}"
        console.print(f"no artifacts{when or ' yet'}", markup=False)
        return 0
    console.print(artifact_table(entries, width=console.width), crop=False)
    return 0


# -- show ----------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    if (args.node_id is None) == (args.manifest is None):
        raise ValueError("give NODE_ID or --manifest KEY_OR_URI (one of them)")
    if args.manifest is not None:
        if args.as_of is not None:
            raise ValueError("--as-of selects among a node's manifests: give NODE_ID with it")
        return _show_one(args, args.manifest)
    node = _node(args.node_id)
    assert node is not None
    as_of = _as_of(args.as_of)
    registrar = _registrar(args)
    manifests: list[dict[str, Any]] = _run(registrar, registrar.resolve(node, as_of))
    root = registrar.store.root_uri
    if args.json:
        print_json(
            {
                "store": root,
                "node_id": node,
                "as_of": None if as_of is None else as_of_from_ms(as_of),
                "manifests": manifests,
            }
        )
        return 0
    show_store(root)
    if not manifests:
        when = "" if as_of is None else f" as of {as_of_from_ms(as_of)}"
        console.print(f"{node_label(node)}: no artifacts{when or ' yet'}", markup=False)
        return 0
    for i, manifest in enumerate(manifests):
        if i:
            console.print()
        _print_manifest(manifest)
    return 0


def _show_one(args: argparse.Namespace, value: str) -> int:
    """``--manifest``: a key in the store, or a URI (which names its own store)."""
    marker = f"/{MANIFEST_PREFIX}/"
    if value.startswith(f"{MANIFEST_PREFIX}/"):
        store, key = None, value
    elif marker in value:
        root, _, rest = value.rpartition(marker)
        store, key = root, f"{MANIFEST_PREFIX}/{rest}"
    else:
        raise ValueError(
            f"--manifest: {value[:200]!r} is neither a manifest key ({MANIFEST_PREFIX}/...) nor "
            f"a manifest URI (.../{MANIFEST_PREFIX}/...)"
        )
    check_key(key)
    registrar = _registrar(args, store)

    async def read() -> bytes:
        try:
            return bytes(await registrar.store.get(key))
        except ArtifactNotFoundError:
            raise ValueError(
                f"--manifest: no manifest {key} in {registrar.store.root_uri}"
            ) from None

    document: bytes = _run(registrar, read())
    manifest = _parse(document, key)
    root = registrar.store.root_uri
    if args.json:
        print_json({"store": root, "manifests": [manifest]})
        return 0
    show_store(root)
    _print_manifest(manifest)
    return 0


def _parse(document: bytes, key: str) -> dict[str, Any]:
    import json

    try:
        parsed = json.loads(document)
    except ValueError as exc:
        raise StorageError(f"manifest {key}: not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise StorageError(f"manifest {key}: not a JSON object")
    return parsed


def _print_manifest(manifest: dict[str, Any]) -> None:
    """The key facts of one manifest, one per line (``--json`` prints it whole)."""
    storage = manifest.get("storage") or {}
    producer = manifest.get("producer") or {}
    conformance = manifest.get("conformance") or {}
    interval = manifest.get("interval")
    start, end = (manifest.get("range") or [None, None])[:2]
    kind = str(manifest.get("kind", "publication"))
    if manifest.get("period"):
        kind += f" of {manifest['period']}"
    coverage = manifest.get("coverage") or {}
    flags = conformance.get("flags") or {}
    lines = [
        ("manifest", str(storage.get("manifest_uri", "?"))),
        ("node", f"{manifest.get('node_id')} (interval {interval} s)"),
        ("kind", kind),
        ("as_of", str(manifest.get("as_of"))),
        ("fingerprint", str(manifest.get("dataset_fingerprint"))),
        ("range", f"[{_iso(start)}, {_iso(end)})  [{start}, {end}) epoch s"),
        (
            "rows",
            f"{_count(manifest.get('row_count'))} "
            f"(of {_count(coverage.get('bars_in_range'))} bars in the range)",
        ),
        ("data", f"{storage.get('data_uri')}  {_count(storage.get('bytes'))} bytes"),
        ("sha256", str(storage.get("sha256"))),
        (
            "conformance",
            f"{manifest.get('conformance_version')}, flags: "
            + (", ".join(f"{k}={v}" for k, v in flags.items() if v) or "none"),
        ),
        (
            "stabilization",
            f"{manifest.get('stabilization_bars')} bars, watermark "
            f"{manifest.get('publication_watermark')}",
        ),
        (
            "producer",
            f"{producer.get('identity')} {producer.get('version')} on {producer.get('host')} "
            f"(worker {producer.get('worker_id')})",
        ),
    ]
    for name, value in lines:
        console.print(f"{name:<13} {value}", markup=False, soft_wrap=True)


def _iso(value: Any) -> str:
    return format_iso(value) if isinstance(value, int) else str(value)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


# -- verify --------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    node = _node(args.node_id)
    registrar = _registrar(args)
    found, entries = _run(registrar, _check(registrar, node))
    store = registrar.store
    nodes = len({e.node_id for e in entries} | {p["node_id"] for p in found})
    code = 1 if found else 0
    if args.json:
        print_json(
            {
                "store": store.root_uri,
                "node_id": node,
                "artifacts": len(entries),
                "nodes": nodes,
                "ok": not found,
                "problems": found,
            }
        )
        return code
    show_store(store.root_uri)
    for item in found:
        where = f" {item['data_uri']}" if item["data_uri"] else ""
        manifest = f" (manifest {item['manifest_uri']})" if item["manifest_uri"] else ""
        console.print(
            f"BAD {item['node_id']}{where}: {item['problem']}{manifest}",
            markup=False,
            soft_wrap=True,
        )
    if not entries and not found:
        console.print("no artifacts yet: nothing to verify", markup=False)
        return code
    bad = len({(p["node_id"], p["manifest_uri"]) for p in found})
    verdict = "ok" if not found else f"{bad} bad ({len(found)} problems)"
    console.print(f"verified {len(entries)} artifacts of {nodes} nodes: {verdict}", markup=False)
    return code


async def _check(
    registrar: ArtifactRegistrar, node: str | None
) -> tuple[list[dict[str, Any]], list[ArtifactEntry]]:
    """Every problem of the artifacts of ``node`` (all nodes when ``None``), and the
    artifacts checked. A node whose catalog holds a manifest that cannot be read is one
    problem (its other artifacts cannot be told apart from it)."""
    from qmtl.runtime.io.artifact_maintenance import verify

    store = registrar.store
    found: list[dict[str, Any]] = []
    entries: list[ArtifactEntry] = []
    for name in [node] if node is not None else await registrar.nodes():
        try:
            problems = await verify(registrar, name)
            checked = (await registrar.catalog(name)).entries
        except ValueError as exc:
            if not str(exc).startswith("manifest "):
                raise
            found.append(
                {"node_id": name, "manifest_uri": None, "data_uri": None, "problem": str(exc)}
            )
            continue
        by_manifest = {e.manifest_key: e for e in checked}
        entries += checked
        found += [
            {
                "node_id": p.node_id,
                "manifest_uri": store.uri_of(p.manifest_key),
                "data_uri": store.uri_of(by_manifest[p.manifest_key].data_key),
                "problem": p.problem,
            }
            for p in problems
        ]
    return found, entries


# -- compact -------------------------------------------------------------------------------------


def _compact(args: argparse.Namespace) -> int:
    from qmtl.runtime.io.artifact_maintenance import compact

    node = _node(args.node_id)
    assert node is not None
    registrar = _registrar(args)

    async def run() -> tuple[list[ArtifactPublication], int]:
        before = len((await registrar.catalog(node)).entries)
        return await compact(registrar, node, period=args.period), before

    published, before = _run(registrar, run())
    root = registrar.store.root_uri
    if args.json:
        print_json(
            {
                "store": root,
                "node_id": node,
                "period": args.period,
                "artifacts_before": before,
                "published": [_publication_dict(p) for p in published],
            }
        )
        return 0
    show_store(root)
    if not published:
        state = "no artifacts yet" if before == 0 else f"already compact ({before} artifacts)"
        console.print(f"{node_label(node)}: {state}", markup=False)
        return 0
    for p in published:
        console.print(
            f"compacted {p.manifest.get('period')}: [{format_iso(p.start)}, {format_iso(p.end)}) "
            f"{p.rows:,} rows, as_of {p.as_of}, {p.dataset_fingerprint}\n  data {p.uri}",
            markup=False,
            soft_wrap=True,
        )
    return 0


def _publication_dict(p: ArtifactPublication) -> dict[str, Any]:
    return {
        "node_id": p.node_id,
        "period": p.manifest.get("period"),
        "start": p.start,
        "end": p.end,
        "start_iso": format_iso(p.start),
        "end_iso": format_iso(p.end),
        "rows": p.rows,
        "as_of": p.as_of,
        "dataset_fingerprint": p.dataset_fingerprint,
        "data_uri": p.uri,
        "manifest_uri": p.manifest_uri,
    }
