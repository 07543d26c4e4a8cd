"""``qmtl-seamless coordinator inspect`` and ``coordinator release``: what an operator needs
for a stuck lease — see the coordinator's leases, then fail one by hand.

A lease's token is its holder's secret and is never shown; ``inspect`` shows ``held_by``, a
digest of it, and ``release KEY --held-by H`` names the lease by that digest
(``POST /v1/leases/release``). A lease claimed again since the operator looked has another
holder, so the coordinator refuses to release it: a release never kills the wrong lease.

Where the coordinator is: ``--url``, else ``environment.coordinator_url`` as the
configuration loader resolves it (the ``--config`` file with ``QMTL_SEAMLESS_COORDINATOR_URL``
over it); the bearer token is ``environment.coordinator_token``
(``QMTL_SEAMLESS_COORDINATOR_TOKEN``), as for workers. Errors are exceptions mapped to exit
codes by :func:`qmtl.cli.main.exit_code`: a ``ValueError`` is the user's mistake (2: no URL,
a malformed key, a missing or wrong token, an unknown key, a lease held by another holder);
:class:`~qmtl.runtime.io.coordinator_client.CoordinatorUnavailable` is the environment's (3:
unreachable, timed out, a 5xx answer). Times print as ISO-8601 UTC; the JSON keeps the
coordinator's epoch milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Final

import aiohttp

from qmtl.cli._common import settings
from qmtl.runtime.io.coordinator_client import DEFAULT_TIMEOUT_S, CoordinatorUnavailable
from qmtl.runtime.sdk.config import ENV_COORDINATOR_TOKEN, ENV_COORDINATOR_URL
from qmtl.runtime.sdk.lease_rules import parse_lease_key
from qmtl.runtime.sdk.timestamps import format_iso
from qmtl.services.coordinator.app import MAX_INSPECT_LIMIT

__all__ = ["LeaseView", "register"]

NO_URL: Final = (
    "no coordinator URL: pass --url, set environment.coordinator_url in the --config file, "
    f"or set {ENV_COORDINATOR_URL}"
)
NEEDS_TOKEN: Final = f"the coordinator needs a token: set {ENV_COORDINATOR_TOKEN}"
WRONG_TOKEN: Final = f"the coordinator refused the token: check {ENV_COORDINATOR_TOKEN}"
#: Longest reason shown in the table (``--json`` has it whole).
_REASON_WIDTH: Final = 60
_COLUMNS: Final = ("key", "state", "held_by", "lease_until", "updated", "reason")


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseView:
    """One lease as ``GET /v1/leases/inspect`` shows it; times are epoch milliseconds and
    ``state`` is effective (``expired``: held, but its lease ran out)."""

    key: str
    node_id: str
    state: str
    held_by: str
    lease_until_ms: int
    updated_ms: int
    reason: str

    @classmethod
    def parse(cls, raw: object) -> LeaseView:
        """``ValueError`` unless ``raw`` is a lease object of the inspect answer."""
        if not isinstance(raw, dict):
            raise ValueError("a lease is not an object")

        def text(name: str) -> str:
            value = raw.get(name)
            if not isinstance(value, str):
                raise ValueError(f"a lease's {name} is not a string")
            return value

        def millis(name: str) -> int:
            value = raw.get(name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"a lease's {name} is not an integer")
            return value

        return cls(
            key=text("key"),
            node_id=text("node_id"),
            state=text("state"),
            held_by=text("held_by"),
            lease_until_ms=millis("lease_until_ms"),
            updated_ms=millis("updated_ms"),
            reason=text("reason"),
        )

    def row(self) -> tuple[str, ...]:
        """The table's cells, in :data:`_COLUMNS` order."""
        reason = _one_line(self.reason)
        if len(reason) > _REASON_WIDTH:
            reason = reason[: _REASON_WIDTH - 1] + "…"
        return (
            _one_line(self.key),
            _one_line(self.state),
            _one_line(self.held_by),
            format_iso(self.lease_until_ms / 1000),
            format_iso(self.updated_ms / 1000),
            reason or "-",
        )


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``inspect`` and ``release`` to the ``coordinator`` group's sub-commands."""
    inspect = commands.add_parser(
        "inspect",
        help="list the coordinator's leases: key, state, holder, lease end, reason",
        description=(
            "List the coordinator's leases in key order. held_by is a digest of the "
            "holder's token: what 'coordinator release --held-by' takes."
        ),
    )
    _add_target_options(inspect)
    inspect.add_argument(
        "--prefix", default="", metavar="P", help="only keys that start with this text"
    )
    inspect.add_argument(
        "--limit",
        type=int,
        default=100,
        metavar="N",
        help=f"at most this many leases, 1..{MAX_INSPECT_LIMIT} (default 100)",
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON document")
    inspect.set_defaults(handler=_inspect)

    release = commands.add_parser(
        "release",
        help="fail a stuck lease by hand, naming it by its holder (from inspect)",
        description=(
            "Fail the lease on KEY held by --held-by (as 'coordinator inspect' shows it) "
            "without its token: the window can be claimed again at once, and the old "
            "holder can no longer complete it. Refused when the lease was claimed again "
            "since, by another holder."
        ),
    )
    release.add_argument("key", metavar="KEY", help="the lease key, as inspect shows it")
    release.add_argument(
        "--held-by", required=True, metavar="H", help="the holder inspect shows (16 hex digits)"
    )
    release.add_argument(
        "--reason", required=True, metavar="TEXT", help="why (kept in the lease and the log)"
    )
    _add_target_options(release)
    release.set_defaults(handler=_release)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"the coordinator, e.g. http://127.0.0.1:8787 (overrides {ENV_COORDINATOR_URL} "
        "and the --config file)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML configuration (environment.coordinator_url/_token)"
    )


# -- handlers ---------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_INSPECT_LIMIT:
        raise ValueError(f"--limit must be within 1..{MAX_INSPECT_LIMIT}, got {args.limit}")
    url, token = _target(args)
    query = {"prefix": args.prefix, "limit": str(args.limit)}
    status, body = asyncio.run(_call(url, token, "GET", "inspect", query=query))
    _check(url, status, body, "inspect")
    try:
        raw = body["leases"]
        if not isinstance(raw, list) or not isinstance(body.get("truncated"), bool):
            raise ValueError("no lease list")
        leases = [LeaseView.parse(item) for item in raw]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{url} does not answer like a coordinator: {exc}") from None
    truncated: bool = body["truncated"]
    if args.json:
        payload = {"coordinator": url, "leases": [asdict(x) for x in leases]}
        json.dump({**payload, "truncated": truncated}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif leases:
        sys.stdout.write(_table([x.row() for x in leases]))
    else:
        print(f"no leases{f' under {args.prefix!r}' if args.prefix else ''} at {url}")
    if truncated:
        print(
            f"showing the first {len(leases)} leases; more match: raise --limit "
            f"(max {MAX_INSPECT_LIMIT}) or narrow --prefix",
            file=sys.stderr,
        )
    return 0


def _release(args: argparse.Namespace) -> int:
    key = str(parse_lease_key(args.key))  # a malformed key never leaves this machine
    url, token = _target(args)
    payload = {"key": key, "held_by": args.held_by, "reason": args.reason}
    status, body = asyncio.run(_call(url, token, "POST", "release", payload=payload))
    if status == 404 and body.get("error") == "unknown lease key":
        raise ValueError(f"no lease {key} at {url}")
    if status == 409:
        raise ValueError(_refusal(key, args.held_by, body))
    _check(url, status, body, "release")
    print(f"released {key} (was held by {args.held_by})")
    return 0


def _refusal(key: str, given: str, body: dict[str, Any]) -> str:
    """The one line for a 409: who holds the lease now (or that nobody does)."""
    holder = body.get("held_by", "?")
    until = body.get("lease_until_ms")
    when = format_iso(until / 1000) if isinstance(until, int) else "?"
    if body.get("error") == "not held":
        return (
            f"lease {key} is not held (completed, failed or already released; last holder "
            f"{holder}): nothing to release"
        )
    return (
        f"lease {key} is held by {holder} (until {when}), not {given}: claimed again since "
        "you looked, or a mistyped --held-by; nothing released (run 'coordinator inspect')"
    )


# -- transport --------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The coordinator's base URL and bearer token (module docstring)."""
    environment = settings(args).environment
    url = args.url or environment.coordinator_url
    if not url:
        raise ValueError(NO_URL)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url must be http:// or https://, got {url[:80]!r}")
    return url.rstrip("/"), environment.coordinator_token


async def _call(
    url: str,
    token: str | None,
    method: str,
    action: str,
    *,
    query: dict[str, str] | None = None,
    payload: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request to ``/v1/leases/<action>``: the status and the JSON object answered
    (``{}`` for anything else). Unreachable, timed out or 5xx: :class:`CoordinatorUnavailable`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
            session.request(
                method, f"{url}/v1/leases/{action}", params=query, json=payload
            ) as response,
        ):
            status = response.status
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise CoordinatorUnavailable(f"coordinator {url} unreachable: {detail}", url=url) from exc
    body = body if isinstance(body, dict) else {}
    if status >= 500:
        error = body.get("error") or f"HTTP {status}"
        raise CoordinatorUnavailable(f"coordinator {url} failed ({action}): {error}", url=url)
    if status == 401:
        raise ValueError(WRONG_TOKEN if token else NEEDS_TOKEN)
    return status, body


def _check(url: str, status: int, body: dict[str, Any], action: str) -> None:
    """Any answer but 200 left at this point (a 4xx) is the user's mistake: the coordinator
    names it (a 400's error), or the URL has no such route (404 / 405: not a coordinator's
    URL, or a coordinator older than the route)."""
    if status == 200:
        return
    if status in (404, 405):
        raise ValueError(
            f"{url} has no /v1/leases/{action} (HTTP {status}): is it the coordinator's URL, "
            "and a coordinator recent enough?"
        )
    error = body.get("error")
    if isinstance(error, str):
        raise ValueError(f"the coordinator refused {action}: HTTP {status}: {error}")
    raise ValueError(f"{url} does not answer like a coordinator ({action}: HTTP {status})")


# -- output -----------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """Text from the coordinator, safe for one table cell: whitespace runs become one space,
    other control characters are escaped."""
    flat = " ".join(text.split())
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in flat)


def _table(rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns, never cut or wrapped: the key and held_by are copied from here
    into ``coordinator release``, and the lines stay greppable."""
    widths = [max(len(c) for c in column) for column in zip(_COLUMNS, *rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in (_COLUMNS, *rows)
    ]
    return "\n".join(lines) + "\n"
