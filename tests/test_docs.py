"""The user docs stay true to the code: every metadata field, scenario key, command and exit
code the code defines is documented (and nothing documented is invented), the scenario
example loads, and no page cites the internal spec.

Everything compared is derived from the code (dataclass fields, the scenario loader's
source, the argparse tree, the exit-code constants), so a new field, key or command fails
here until the docs describe it."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
from pathlib import Path

from qmtl.cli import main as cli_main
from qmtl.runtime.sdk.fetch_result import SeamlessFetchMetadata
from qmtl.services.exchange_sim import scenario_load
from qmtl.services.exchange_sim.scenario import Scenario
from qmtl.services.exchange_sim.scenario_parse import Reader
from qmtl.services.exchange_sim.scenario_venues import VENUE_IDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: A Markdown table cell separator: a ``|`` not escaped as ``\|`` (types like ``str \| None``).
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_BACKTICKED = re.compile(r"`([^`]+)`")


# -- Markdown helpers -------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in _CELL_SPLIT.split(line.strip().strip("|"))]


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """Every Markdown table in ``lines``: its body rows as cell lists (header and the
    ``|---|`` separator left out)."""
    tables: list[list[list[str]]] = []
    i = 0
    while i < len(lines):
        is_table = (
            lines[i].lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|?\s*:?-{3,}.*", lines[i + 1]) is not None
        )
        if not is_table:
            i += 1
            continue
        i += 2
        rows = []
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            rows.append(_cells(lines[i]))
            i += 1
        tables.append(rows)
    return tables


def _section(text: str, heading: str) -> list[str]:
    """The lines of the section whose heading contains ``heading``, up to the next heading of
    the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(#+) ", line)
        if match and heading in line:
            level = len(match.group(1))
            end = next(
                (
                    j
                    for j in range(i + 1, len(lines))
                    if (m := re.match(r"(#+) ", lines[j])) and len(m.group(1)) <= level
                ),
                len(lines),
            )
            return lines[i + 1 : end]
    raise AssertionError(f"no section {heading!r}")


def _first_column_keys(rows: list[list[str]]) -> set[str]:
    """The backticked names in the first column of ``rows``."""
    keys: set[str] = set()
    for row in rows:
        keys.update(_BACKTICKED.findall(row[0]))
    return keys


# -- metadata.md ------------------------------------------------------------------------------


def _metadata_rows() -> list[list[str]]:
    text = (DOCS / "metadata.md").read_text()
    tables = _tables(_section(text, "`SeamlessFetchMetadata`"))
    assert tables, "docs/metadata.md has no table under its SeamlessFetchMetadata heading"
    return tables[0]


def test_every_metadata_field_has_exactly_one_row() -> None:
    rows = _metadata_rows()
    documented = [_BACKTICKED.fullmatch(row[0]) for row in rows]
    assert all(documented), f"first cells must be a backticked field name: {rows}"
    names = [m.group(1) for m in documented if m]
    fields = [f.name for f in dataclasses.fields(SeamlessFetchMetadata)]
    assert sorted(set(fields) - set(names)) == [], "fields without a row in docs/metadata.md"
    assert sorted(set(names) - set(fields)) == [], "rows in docs/metadata.md naming no field"
    assert len(names) == len(set(names)), "a field has two rows"
    assert all(len(row) >= 3 and row[1] and row[2] for row in rows), "type and meaning needed"


# -- simulator.md -----------------------------------------------------------------------------


def _reader_methods() -> set[str]:
    """The ``Reader`` methods that read a key (their first parameter is ``key``)."""
    methods = set()
    for name, member in inspect.getmembers(Reader, inspect.isfunction):
        params = list(inspect.signature(member).parameters)
        if len(params) > 1 and params[1] == "key":
            methods.add(name)
    return methods


def _accepted_scenario_keys() -> set[str]:
    """Every key the scenario loader reads: string literals passed to a ``Reader`` key
    method in its source, the venues it reads by name, and its Binance spot weight keys."""
    methods = _reader_methods()
    assert {"get", "integer", "required"} <= methods
    keys: set[str] = set(VENUE_IDS) | set(scenario_load._SPOT_WEIGHT_KEYS)
    tree = ast.parse(inspect.getsource(scenario_load))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in methods
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            keys.add(node.args[0].value)
    return keys


def _documented_scenario_keys() -> set[str]:
    text = (DOCS / "simulator.md").read_text()
    keys: set[str] = set()
    for rows in _tables(_section(text, "Scenario format")):
        keys |= _first_column_keys(rows)
    return keys


def test_every_scenario_key_is_documented_and_nothing_else() -> None:
    accepted = _accepted_scenario_keys()
    assert {"seed", "symbols", "venues", "halts", "empty_pages", "rate_limits"} <= accepted
    documented = _documented_scenario_keys()
    assert sorted(accepted - documented) == [], "scenario keys missing from docs/simulator.md"
    assert sorted(documented - accepted) == [], "docs/simulator.md documents unknown keys"


def test_the_simulator_example_loads() -> None:
    text = "\n".join(_section((DOCS / "simulator.md").read_text(), "Full example"))
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None, "docs/simulator.md has no YAML block under 'Full example'"
    scenario = Scenario.from_yaml(block.group(1))
    assert scenario.symbols == ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    for venue in VENUE_IDS:
        assert scenario.venue_markets(venue), venue


# -- cli.md -----------------------------------------------------------------------------------


def _command_paths(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every command registered under ``parser``, nested groups included (``config check``)."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix}{name}"
                paths.append(path)
                paths.extend(_command_paths(sub, f"{path} "))
    return paths


def _cli_text() -> str:
    return (DOCS / "cli.md").read_text()


def test_every_command_is_documented() -> None:
    paths = _command_paths(cli_main.build_parser())
    assert {"fetch", "config", "config check", "simulator serve"} <= set(paths)
    lines = _cli_text().splitlines()
    places = [line for line in lines if line.startswith("#")]
    places += [row[0] for rows in _tables(lines) for row in rows]
    for path in paths:
        wanted = re.compile(rf"qmtl-seamless {re.escape(path)}(?![\w-])")
        assert any(wanted.search(place) for place in places), (
            f"'qmtl-seamless {path}' has no heading or table row in docs/cli.md"
        )


def test_the_exit_code_table_matches_the_code() -> None:
    rows = _tables(_section(_cli_text(), "Exit codes"))[0]
    documented = {_BACKTICKED.fullmatch(row[1]).group(1): int(row[0]) for row in rows}  # type: ignore[union-attr]
    expected = {
        name: getattr(cli_main, name)
        for name in dir(cli_main)
        if name.startswith("EXIT_") and isinstance(getattr(cli_main, name), int)
    }
    assert {"EXIT_OK", "EXIT_MISSING", "EXIT_USAGE", "EXIT_ENVIRONMENT"} <= set(expected)
    assert documented == expected


# -- no internal references -------------------------------------------------------------------


def test_no_doc_cites_the_internal_spec() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(DOCS.rglob("*"))
        if path.is_file()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if "SPEC" in line
    ]
    assert offenders == [], "user docs must stand on their own"


def test_readme_does_not_cite_the_internal_spec() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    offenders = [number for number, line in enumerate(lines, 1) if "SPEC" in line]
    assert offenders == [], f"README.md lines citing the internal spec: {offenders}"
