"""Test helpers of the ops pack: the metrics catalog as prometheus-client exposes it, and a
small PromQL reader (a tokenizer, enough to find selectors, matchers and ``by``/``without``/
``on``/``ignoring`` label lists; it evaluates nothing — promtool does, for the alerts)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from qmtl.runtime.sdk.metrics import SeamlessMetrics

# --- the catalog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str  # as registered (prometheus-client drops a trailing ``_total`` from counters)
    kind: str  # counter | gauge | histogram
    labels: frozenset[str]


@dataclass(frozen=True)
class Series:
    """One name of the exposition and the labels it carries."""

    name: str
    family: Family
    labels: frozenset[str]


def catalog_families() -> list[Family]:
    """Every metric object of a fresh ``SeamlessMetrics``, with its type and label names."""
    metrics = SeamlessMetrics(CollectorRegistry())
    found = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    return [Family(m._name, m._type, frozenset(m._labelnames)) for m in found]


def exposition_series(families: list[Family]) -> dict[str, Series]:
    """Series names as scraped: ``_total`` for counters, ``_bucket``/``_sum``/``_count`` for
    histograms (``le`` only on ``_bucket``), the name itself for gauges."""
    out: dict[str, Series] = {}
    for fam in families:
        if fam.kind == "counter":
            names = {f"{fam.name}_total": fam.labels}
        elif fam.kind == "histogram":
            names = {
                f"{fam.name}_bucket": fam.labels | {"le"},
                f"{fam.name}_sum": fam.labels,
                f"{fam.name}_count": fam.labels,
            }
        else:
            assert fam.kind == "gauge", fam
            names = {fam.name: fam.labels}
        for name, labels in names.items():
            out[name] = Series(name, fam, labels)
    return out


@cache
def catalog() -> dict[str, Series]:
    return exposition_series(catalog_families())


# --- a small PromQL reader --------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:\d|\.\d)[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)

AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "end", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "start", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}  # fmt: skip
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
MATCH_OPS = {"=", "!=", "=~", "!~"}


@dataclass(frozen=True)
class Selector:
    metric: str | None
    labels: tuple[str, ...]  # label names used in ``{…}`` matchers (``__name__`` excluded)


@dataclass
class Usage:
    """What one expression references."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: list[str] = field(default_factory=list)  # by/without/on/ignoring/group_*
    unknown_functions: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"unexpected {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


def _unquote(text: str) -> str:
    return text[1:-1]


def extract(expr: str) -> Usage:
    """Metric names and label names used by a PromQL expression (Grafana ``$vars`` and
    ``[range]``/``[range:step]`` contents are skipped; keywords are case-insensitive)."""
    toks = tokenize(expr)
    usage = Usage()

    def at(i: int) -> str | None:
        return toks[i][1] if i < len(toks) else None

    def matchers(i: int, metric: str | None) -> int:
        """Parse ``{label op "value", …}`` starting at the ``{`` at ``i``; return the index
        after ``}``."""
        assert at(i) == "{"
        i += 1
        labels: list[str] = []
        while at(i) != "}":
            if i >= len(toks) or toks[i][0] != "ident":
                raise ValueError(f"expected a label name at {at(i)!r} in {expr!r}")
            label = toks[i][1]
            op, value = at(i + 1), toks[i + 2] if i + 2 < len(toks) else ("", "")
            if op not in MATCH_OPS or value[0] != "string":
                raise ValueError(f"bad matcher for {label!r} in {expr!r}")
            if label == "__name__":
                if op == "=":
                    metric = _unquote(value[1])
            else:
                labels.append(label)
            i += 3
            if at(i) == ",":
                i += 1
        usage.selectors.append(Selector(metric, tuple(labels)))
        return i + 1

    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if text == "[":
            while at(i) not in ("]", None):
                i += 1
            i += 1
        elif text == "{":
            i = matchers(i, None)
        elif kind == "ident":
            word = text.lower()
            if word in LABEL_LISTS:
                i += 1
                if at(i) == "(":
                    i += 1
                    while at(i) not in (")", None):
                        if toks[i][0] == "ident":
                            usage.grouping.append(toks[i][1])
                        elif toks[i][1] != ",":
                            raise ValueError(f"bad label list near {toks[i][1]!r} in {expr!r}")
                        i += 1
                    i += 1
            elif word in KEYWORDS or word in AGGREGATORS:
                i += 1
            elif at(i + 1) == "(":
                if text not in FUNCTIONS:
                    usage.unknown_functions.append(text)
                i += 1
            elif at(i + 1) == "{":
                i = matchers(i + 1, text)
            else:
                usage.selectors.append(Selector(text, ()))
                i += 1
        else:
            i += 1
    return usage


def problems(expr: str, series: dict[str, Series]) -> list[str]:
    """What in ``expr`` the catalog does not have: metrics, labels, functions."""
    try:
        usage = extract(expr)
    except ValueError as exc:
        return [f"unreadable PromQL: {exc}"]
    found: list[str] = []
    referenced: list[Series] = []
    for sel in usage.selectors:
        if sel.metric is None:
            found.append("a selector without a metric name")
            continue
        known = series.get(sel.metric)
        if known is None:
            found.append(f"unknown metric {sel.metric!r}")
            continue
        referenced.append(known)
        found += [
            f"unknown label {label!r} on {sel.metric}"
            for label in sel.labels
            if label not in known.labels
        ]
    available = set().union(*(s.labels for s in referenced)) if referenced else set()
    if referenced:
        names = ", ".join(sorted({s.name for s in referenced}))
        found += [
            f"unknown label {label!r} in by/without/on (none of {names} has it)"
            for label in usage.grouping
            if label not in available
        ]
    found += [f"unknown function {name!r}" for name in usage.unknown_functions]
    return found
