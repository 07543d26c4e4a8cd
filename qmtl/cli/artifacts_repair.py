"""``qmtl-seamless artifacts repair [NODE_ID]``: put damaged or lost artifact data files back,
byte for byte, from the bars in the hot store (:mod:`qmtl.runtime.io.artifact_repair`).

Two stores are involved. The artifact store is resolved as for every ``artifacts``
sub-command (``--store``, else ``seamless.artifact`` of ``--config``, else
``file://.qmtl/artifacts``); the hot store the bars come from as for every store command
(``--dsn``, else ``seamless.storage.dsn`` of ``--config``, else the default). The hot store is
opened read-only, before anything else, so a mistyped path is ``no store at ...`` (exit 2)
and never a new, empty store. The conformance pipeline is ``seamless.conformance`` of
``--config``: the one publication used.

Each damaged artifact is one line (``RESTORED``, ``WOULD RESTORE`` with ``--dry-run``, or
``NOT REPAIRABLE``): the node, the data file, what ``verify`` found, what was done or why
not, and the manifest; a summary follows. Manifests are never written; ``--dry-run`` writes
nothing at all. Exit codes: 0 when nothing was damaged or every damaged artifact was restored
(with ``--dry-run``: would be); 1 when one cannot be repaired (its bars are no longer in the
hot store, or its bytes cannot be reproduced); 2 for a bad argument (node id, ``--store``,
``--dsn``, a hot store that does not exist); 3 when a store fails or holds an unreadable
manifest.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmtl.cli._common import console, open_read_only, print_json, settings, show_store, store_dsn
from qmtl.runtime.io.artifact_repair import CATALOG_PROBLEM, RepairResult, repair
from qmtl.runtime.sdk.errors import StorageError
from qmtl.runtime.sdk.node_id import parse_node_id

if TYPE_CHECKING:
    from qmtl.runtime.io.artifact import ArtifactRegistrar
    from qmtl.runtime.sdk.conformance import ConformancePipeline

__all__ = ["register_repair"]

#: ``--config``, ``--store`` and ``--json``, as every ``artifacts`` sub-command takes them.
AddStoreOptions = Callable[[argparse.ArgumentParser, str], None]
#: The registrar of the ``--config``/``--store`` artifact store (opens nothing).
RegistrarOf = Callable[[argparse.Namespace], "ArtifactRegistrar"]

_LABELS = {
    "restored": "RESTORED",
    "would restore": "WOULD RESTORE",
    "not repairable": "NOT REPAIRABLE",
}


def register_repair(
    commands: argparse._SubParsersAction[Any],
    add_store_options: AddStoreOptions,
    registrar_of: RegistrarOf,
) -> None:
    """Add ``repair`` to the ``artifacts`` group, with the group's store options and
    registrar (passed in by :mod:`qmtl.cli.artifacts_cmd`, which owns them)."""
    parser = commands.add_parser(
        "repair", help="restore damaged or missing data files from the hot store, byte for byte"
    )
    parser.add_argument("node_id", metavar="NODE_ID", nargs="?", help="default: every node")
    add_store_options(parser, "print the result as JSON")
    parser.add_argument(
        "--dsn",
        help="the hot store holding the bars: duckdb:///path.duckdb or postgresql://... "
        "(overrides --config and the default duckdb:///.qmtl/seamless.duckdb)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be restored; write nothing"
    )

    def handler(args: argparse.Namespace) -> int:
        return _repair(args, registrar_of)

    parser.set_defaults(handler=handler, command="artifacts repair")


@dataclass(frozen=True, slots=True)
class _Outcome:
    results: list[RepairResult]
    artifacts: int  # checked
    nodes: int
    hot_store: str  # where the bars came from, for people


def _repair(args: argparse.Namespace, registrar_of: RegistrarOf) -> int:
    node: str | None = args.node_id
    if node is not None:
        parse_node_id(node)  # the user's mistake, named before any I/O
    registrar = registrar_of(args)
    dsn = store_dsn(args)
    pipeline = settings(args).seamless.conformance
    outcome = asyncio.run(_run(registrar, dsn, node, args.dry_run, pipeline))
    store = registrar.store
    code = 0 if all(r.repairable for r in outcome.results) else 1
    if args.json:
        print_json(
            {
                "store": store.root_uri,
                "hot_store": outcome.hot_store,
                "node_id": node,
                "dry_run": args.dry_run,
                "artifacts": outcome.artifacts,
                "nodes": outcome.nodes,
                "ok": code == 0,
                "results": [_result_dict(registrar, r) for r in outcome.results],
            }
        )
        return code
    show_store(f"{store.root_uri} (bars from {outcome.hot_store})")
    for result in outcome.results:
        console.print(_line(registrar, result), markup=False, soft_wrap=True)
    console.print(_summary(outcome, args.dry_run), markup=False, soft_wrap=True)
    return code


async def _run(
    registrar: ArtifactRegistrar,
    dsn: str,
    node: str | None,
    dry_run: bool,
    pipeline: ConformancePipeline,
) -> _Outcome:
    try:
        async with open_read_only(dsn) as (storage, location):
            try:
                results = await repair(
                    registrar, storage, node, dry_run=dry_run, conformance=pipeline
                )
            except ValueError as exc:  # a manifest that cannot be read: the store's problem
                if str(exc).startswith("manifest "):
                    raise StorageError(f"unreadable artifact store: {exc}") from exc
                raise
        unreadable = {r.node_id for r in results if r.manifest_key == CATALOG_PROBLEM}
        nodes = [node] if node is not None else await registrar.nodes()
        checked = [len((await registrar.catalog(n)).entries) for n in nodes if n not in unreadable]
        nodes_seen = sum(1 for c in checked if c) + len(unreadable)
        return _Outcome(results, sum(checked), nodes_seen, location)
    finally:
        await registrar.close()


def _line(registrar: ArtifactRegistrar, result: RepairResult) -> str:
    """``LABEL node data-file: problems -> what was done (manifest URI)``."""
    where = f" {registrar.store.uri_of(result.data_key)}" if result.data_key else ""
    manifest = (
        f" (manifest {registrar.store.uri_of(result.manifest_key)})"
        if result.manifest_key != CATALOG_PROBLEM
        else ""
    )
    problems = " ".join("; ".join(result.problems).split())  # pyarrow's messages span lines
    return (
        f"{_LABELS[result.action]} {result.node_id}{where}: {problems} -> {result.reason}{manifest}"
    )


def _summary(outcome: _Outcome, dry_run: bool) -> str:
    checked = f"checked {outcome.artifacts} artifacts of {outcome.nodes} nodes"
    if not outcome.results:
        if not outcome.artifacts:
            return "no artifacts yet: nothing to repair"
        return f"{checked}: nothing damaged"
    done = sum(r.repairable for r in outcome.results)
    failed = len(outcome.results) - done
    parts = [f"{len(outcome.results)} damaged"]
    if done:
        would = f"{done} would be restored (dry run: nothing written)"
        parts.append(would if dry_run else f"{done} restored")
    if failed:
        parts.append(f"{failed} not repairable")
    return f"{checked}: {', '.join(parts)}"


def _result_dict(registrar: ArtifactRegistrar, result: RepairResult) -> dict[str, Any]:
    store = registrar.store
    return {
        "node_id": result.node_id,
        "data_uri": store.uri_of(result.data_key) if result.data_key else None,
        "manifest_uri": (
            store.uri_of(result.manifest_key) if result.manifest_key != CATALOG_PROBLEM else None
        ),
        "problems": list(result.problems),
        "action": result.action,
        "reason": result.reason,
    }
