"""docs/operations.md stays true: every command it shows parses with the CLI's own parser,
every runbook an alert links to has its anchor, and its metrics table names every metric
of the catalog (as exposed) with the labels the code gives it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from qmtl.cli.main import build_parser
from qmtl.runtime.sdk.metrics import SeamlessMetrics

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def _commands() -> list[str]:
    """Every ``qmtl-seamless …`` line inside the page's code blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC, flags=re.S)
    return [
        line.strip().removeprefix("qmtl-seamless ")
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("qmtl-seamless ")
    ]


def test_the_page_shows_commands_for_every_runbook() -> None:
    assert len(_commands()) >= 15


@pytest.mark.parametrize("command", _commands())
def test_every_command_on_the_page_parses(command: str) -> None:
    args = build_parser().parse_args(shlex.split(command))
    assert callable(args.handler)


def test_every_alerts_runbook_anchor_exists() -> None:
    alerts = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())
    anchors = set(re.findall(r'<a id="([a-z-]+)"></a>', DOC))
    linked = {
        rule["annotations"]["runbook_url"].split("#", 1)[1]
        for group in alerts["groups"]
        for rule in group["rules"]
    }
    assert linked <= anchors, f"runbooks the alerts link to but the page lacks: {linked - anchors}"
    assert anchors <= linked, f"runbooks no alert links to: {anchors - linked}"


def test_the_metrics_table_matches_the_catalog() -> None:
    rows = {
        m.group(1): {label.strip() for label in m.group(2).split(",")}
        for m in re.finditer(r"^\| `([a-z_]+)` \| [^|]+ \| ([a-z_, ]+) \|", DOC, flags=re.M)
    }
    catalog = {}
    for metric in vars(SeamlessMetrics(CollectorRegistry())).values():
        if hasattr(metric, "_labelnames"):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            catalog[name] = set(metric._labelnames)
    assert rows == catalog
