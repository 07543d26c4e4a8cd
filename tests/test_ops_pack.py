"""The ops pack (Prometheus alerts, their promtool tests, the Grafana dashboard) against the
real metrics catalog.

Every metric and label an alert or a panel queries must exist in ``SeamlessMetrics`` as
prometheus-client exposes it (counters with ``_total``; histograms as ``_bucket{le}``,
``_sum``, ``_count``). The PromQL is read by the small tokenizer of :mod:`tests.promql`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from qmtl.runtime.sdk.config import ObservabilityConfig
from qmtl.runtime.sdk.metrics import SeamlessMetrics
from tests.promql import catalog, catalog_families, extract, problems

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "ops" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "seamless.json"

RUNBOOK_ANCHORS = {
    "persistent-gap", "rate-limit-ban", "redis-down", "storage-outage", "stuck-lease",
    "artifact-verify-failure", "live-staleness",
}  # fmt: skip

#: Alerts whose threshold is an ``ObservabilityConfig`` default: name -> (field, comparison).
THRESHOLD_ALERTS = {
    "SeamlessStorageReadSlow": ("storage_wait_warn_ms", ">"),
    "SeamlessCoverageLow": ("coverage_ratio_threshold", "<"),
    "SeamlessBackfillCompletionLow": ("backfill_completion_ratio_min", "<"),
}
CRITICAL_ALERTS = {
    "SeamlessFingerprintCollision",
    "SeamlessRateLimitBan",
    "SeamlessRedisLimiterDown",
}
PANEL_TYPES = {"timeseries", "stat", "gauge"}


def test_catalog_matches_the_real_exposition() -> None:
    """The derivation above agrees with what prometheus-client actually exposes."""
    registry = CollectorRegistry()
    metrics = SeamlessMetrics(registry)
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            metric.labels(*("x" for _ in metric._labelnames))
    seen: dict[str, set[str]] = {}
    for fam in registry.collect():
        for sample in fam.samples:
            if not sample.name.endswith("_created"):
                seen.setdefault(sample.name, set()).update(sample.labels)
    assert {name: set(s.labels) for name, s in catalog().items()} == seen
    assert len(catalog_families()) == 23  # SPEC section 11


@pytest.mark.parametrize(
    ("expr", "metrics", "labels", "grouping"),
    [
        (  # a string holding '}' and ',' ; a Grafana range variable
            'histogram_quantile(0.95, sum by (node_id, le) (rate(x_bucket{node_id=~"$node_id",'
            ' world_id!="a,b}"}[$__rate_interval])))',
            ["x_bucket"],
            [("node_id", "world_id")],
            ["node_id", "le"],
        ),
        (  # subquery range, offset, trailing without, on/group_left lists
            "sum(rate(foo_total[5m:30s] offset 1h)) without (instance) "
            "/ on (job) group_left (key) bar",
            ["foo_total", "bar"],
            [(), ()],
            ["instance", "job", "key"],
        ),
        ('{__name__="coverage_ratio", node_id="x"}', ["coverage_ratio"], [("node_id",)], []),
        (  # bool, and, an empty on(), a function of no metric
            "max_over_time(live_staleness_seconds[1h]) > bool 180 and on() vector(1)",
            ["live_staleness_seconds"],
            [()],
            [],
        ),
        (  # a comment, keywords in capitals, a label list after the parentheses
            "# mentions fake_metric{a='b'}\nSUM(x) BY (a) OR count(y) without(b)",
            ["x", "y"],
            [(), ()],
            ["a", "b"],
        ),
        ('1e3 * foo{a="say \\"hi\\" }"} - inf', ["foo"], [("a",)], []),
        ("a:recorded:rate5m{k='v'} @ start()", ["a:recorded:rate5m"], [("k",)], []),
    ],
)
def test_extract_reads_tricky_expressions(
    expr: str, metrics: list[str], labels: list[tuple[str, ...]], grouping: list[str]
) -> None:
    usage = extract(expr)
    assert [s.metric for s in usage.selectors] == metrics
    assert [s.labels for s in usage.selectors] == labels
    assert usage.grouping == grouping
    assert usage.unknown_functions == []


def test_problems_names_what_is_wrong() -> None:
    series = catalog()
    assert problems("sum by (node_id, le) (rate(gap_repair_latency_ms_bucket[5m]))", series) == []
    assert problems("rat(coverage_ratio[5m])", series) == ["unknown function 'rat'"]
    assert problems("seamless_rl_dropped", series) == ["unknown metric 'seamless_rl_dropped'"]
    # `le` exists on _bucket only; a by-label must be on a referenced metric.
    assert problems("sum by (le) (rate(seamless_total_ms_count[5m]))", series) == [
        "unknown label 'le' in by/without/on (none of seamless_total_ms_count has it)"
    ]
    assert problems('seamless_rl_tokens_available{node_id="n"}', series) == [
        "unknown label 'node_id' on seamless_rl_tokens_available"
    ]
    # A by-label on any referenced metric is enough.
    assert problems("sum by (key, node_id) (seamless_rl_tokens_available * on() "
                    "group_left() max(coverage_ratio))", series) == []  # fmt: skip
    assert problems('{job="x"}', series) == ["a selector without a metric name"]
    assert problems('foo{a=="b"}', series)[0].startswith("unreadable PromQL")


# --- alerts -------------------------------------------------------------------------------


@cache
def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    (group,) = doc["groups"]
    assert group["name"] == "qmtl-seamless"
    return [rule for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: install Debian's `prometheus` package "
            "(sudo apt-get install prometheus; .ci/run does it)",
            pytrace=False,
        )
    proc = subprocess.run(
        [exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )


def test_promtool_check_rules() -> None:
    _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


def test_promtool_test_rules() -> None:
    _promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))


def test_alert_expressions_use_only_the_catalog() -> None:
    found = [
        f"alert {rule['alert']}: {problem}"
        for rule in alert_rules()
        for problem in problems(rule["expr"], catalog())
    ]
    assert found == []


def test_alerts_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    anchors = set()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+", name), name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for"))), name
        expected = "critical" if name in CRITICAL_ALERTS else "warning"
        assert rule["labels"] == {"severity": expected}, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert all(notes[key].strip() for key in notes), name
        m = re.fullmatch(r"docs/operations\.md#([a-z-]+)", notes["runbook_url"])
        assert m and m.group(1) in RUNBOOK_ANCHORS, (name, notes["runbook_url"])
        anchors.add(m.group(1))
    assert anchors == RUNBOOK_ANCHORS  # every runbook section has an alert pointing at it


def test_alert_thresholds_are_the_observability_defaults() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ObservabilityConfig)}
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, (setting, op) in THRESHOLD_ALERTS.items():
        expr = " ".join(rules[name]["expr"].split())
        m = re.fullmatch(r"(.*\S)\s*([<>]=?)\s*([0-9.]+)", expr)
        assert m, (name, expr)
        assert m.group(2) == op, (name, expr)
        assert float(m.group(3)) == defaults[setting], (name, setting, defaults[setting])
        # The description quotes the same number.
        assert f"{defaults[setting]:g}" in rules[name]["annotations"]["description"], name


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    bad: list[str] = []
    for group in doc["tests"]:
        for item in group["input_series"]:
            bad += [
                f"input series {item['series']}: {p}" for p in problems(item["series"], catalog())
            ]
        for case in group.get("alert_rule_test", []):
            if case["exp_alerts"]:
                fires.add(case["alertname"])
                for exp in case["exp_alerts"]:
                    assert exp.get("exp_labels") and exp.get("exp_annotations"), case
            else:
                quiet.add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert bad == []
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"
    assert (fires | quiet) - names == set(), "tests of alerts that do not exist"


# --- the dashboard ------------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, descending into (collapsed) rows' ``panels``."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, nested rows included."""
    for panel in walk_panels(board["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('id')} {panel.get('title')!r}", target["expr"]


def dashboard_problems(board: dict[str, Any]) -> list[str]:
    series = catalog()
    found = [
        f"{where}: {p}" for where, expr in dashboard_exprs(board) for p in problems(expr, series)
    ]
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        if m is None:
            found.append(f"variable {var['name']}: not label_values(…): {query!r}")
            continue
        selector, label = m.groups()
        # A label_values() label is checked like a matcher on the selector's metric.
        inner = (
            selector[:-1] + f', {label}=""}}'
            if selector.endswith("}")
            else (f'{selector}{{{label}=""}}')
        )
        found += [f"variable {var['name']}: {p}" for p in problems(inner, series)]
    return found


def test_dashboard_uses_only_the_catalog() -> None:
    assert dashboard_problems(dashboard()) == []


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every panel query (as a recording rule, Grafana's range variables
    replaced by durations)."""
    durations = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
    rules = []
    for n, (where, expr) in enumerate(dashboard_exprs(dashboard())):
        for var, value in durations.items():
            expr = expr.replace(var, value)
        assert "$__" not in expr, (where, expr)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


def test_dashboard_covers_every_metric() -> None:
    used: set[str] = set()
    for _, expr in dashboard_exprs(dashboard()):
        used |= {s.metric for s in extract(expr).selectors if s.metric}
    by_family = {
        fam.name: {s.name for s in catalog().values() if s.family == fam}
        for fam in catalog_families()
    }
    missing = sorted(name for name, names in by_family.items() if not names & used)
    assert missing == []


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["uid"] == "qmtl-seamless"
    assert board["title"] == "qmtl-seamless"
    assert board["schemaVersion"] >= 36
    variables = {var["name"]: var for var in board["templating"]["list"]}
    ds = [v for v in variables.values() if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds] == [("DS_PROMETHEUS", "prometheus")]
    node = variables["node_id"]
    assert node["query"]["query"] == node["definition"] == "label_values(coverage_ratio, node_id)"
    assert variables["world_id"]["type"] == "query"

    ids: list[int] = []
    cells: dict[tuple[int, int], str] = {}
    for panel in walk_panels(board["panels"]):
        title = panel.get("title", "")
        ids.append(panel["id"])
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, title
        for cx in range(pos["x"], pos["x"] + pos["w"]):
            for cy in range(pos["y"], pos["y"] + pos["h"]):
                assert (cx, cy) not in cells, f"{title!r} overlaps {cells[(cx, cy)]!r}"
                cells[(cx, cy)] = title
        assert title.strip(), panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_TYPES, title
        assert panel.get("description", "").strip(), title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_a_broken_dashboard_is_reported() -> None:
    """The checks can fail: one misspelled metric and one unknown label, both named."""
    board = copy.deepcopy(dashboard())
    panels = [p for p in walk_panels(board["panels"]) if p["type"] != "row"]
    coverage = next(p for p in panels if "coverage_ratio{" in p["targets"][0]["expr"])
    coverage["targets"][0]["expr"] = coverage["targets"][0]["expr"].replace(
        "coverage_ratio", "coverage_ration"
    )
    flags = next(p for p in panels if "by (flag_type)" in p["targets"][0]["expr"])
    flags["targets"][0]["expr"] = flags["targets"][0]["expr"].replace("flag_type", "flag_kind")
    # And a misspelling hidden in a collapsed row.
    board["panels"].append({
        "type": "row", "id": 999, "title": "collapsed", "collapsed": True,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": 999},
        "panels": [{"id": 1000, "title": "nested", "targets": [{"expr": "live_stalenes"}]}],
    })  # fmt: skip

    found = dashboard_problems(board)
    assert found == [
        f"panel {coverage['id']} {coverage['title']!r}: unknown metric 'coverage_ration'",
        f"panel {flags['id']} {flags['title']!r}: unknown label 'flag_kind' in by/without/on"
        " (none of seamless_conformance_flag_total has it)",
        "panel 1000 'nested': unknown metric 'live_stalenes'",
    ]
