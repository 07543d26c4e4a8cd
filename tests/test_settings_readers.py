"""No setting without a reader: every leaf of the settings tree is read by some component,
or is on the explicit pending list (``qmtl.runtime.sdk.pending_settings``) that names the
capability that will read it. The list only ever shrinks.

"Read" is checked on the source: an attribute load of the field's name in a module of
``qmtl/`` other than the configuration modules, outside any ``__post_init__`` (validating a
value is not using it). Generic names can collide (``mode``), so the check is a floor, not a
proof; the pending list names such fields explicitly.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmtl.runtime.sdk import pending_settings
from qmtl.runtime.sdk.config import QMTLConfig, load_config
from qmtl.runtime.sdk.pending_settings import (
    PENDING_PARAMETERS,
    PENDING_SETTINGS,
    pending_settings_in_use,
)

ROOT = Path(__file__).resolve().parent.parent / "qmtl"
CONFIG_MODULES = {
    "_config_models.py", "_config_exchange.py", "_config_checks.py", "_config_parse.py",
    "_config_source.py",
}  # fmt: skip
#: The pending list may only shrink: lower this number when a capability lands.
MAX_PENDING = 0


def _reads() -> set[str]:
    names: set[str] = set()
    for path in ROOT.rglob("*.py"):
        if path.name in CONFIG_MODULES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
                skip.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Load)
                and id(node) not in skip
            ):
                names.add(node.attr)
    return names


def _leaves(cls: type, prefix: str) -> Iterator[tuple[str, str]]:
    """``(key path, field name)`` of every leaf setting under the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = f"{prefix}.{field.name}" if prefix else field.name
        kinds = [hints[field.name], *typing.get_args(hints[field.name])]
        nested = [k for k in kinds if dataclasses.is_dataclass(k) and isinstance(k, type)]
        mapped = [
            arg
            for k in kinds
            for arg in typing.get_args(k)
            if dataclasses.is_dataclass(arg) and isinstance(arg, type)
        ]
        if typing.get_origin(hints[field.name]) is not None and mapped:
            yield from _leaves(mapped[0], f"{path}.*")  # Mapping[str, Section]: domains.<name>
        elif nested:
            yield from _leaves(nested[0], path)
        else:
            yield path, field.name


def _generic(path: str) -> str:
    return path


def test_every_setting_has_a_reader_or_is_pending() -> None:
    reads = _reads()
    leaves = dict(_leaves(QMTLConfig, ""))
    unread = sorted(
        path
        for path, name in leaves.items()
        if name not in reads and _generic(path) not in PENDING_SETTINGS
    )
    assert not unread, f"settings no component reads (read them, or list them pending): {unread}"


def test_the_pending_list_names_real_settings_and_only_shrinks() -> None:
    leaves = set(dict(_leaves(QMTLConfig, "")))
    unknown = sorted(set(PENDING_SETTINGS) - leaves)
    assert not unknown, f"pending entries that are no setting: {unknown}"
    assert len(PENDING_SETTINGS) + len(PENDING_PARAMETERS) <= MAX_PENDING + 9
    assert len(PENDING_SETTINGS) <= MAX_PENDING


def test_config_check_names_pending_settings_a_file_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mechanism a future capability uses (the list itself is empty now)."""
    assert not PENDING_SETTINGS and not PENDING_PARAMETERS
    assert pending_settings_in_use(load_config({"cache": {"ttl_ms": 5}})) == []
    pending = {"cache.ttl_ms": "a future capability"}
    monkeypatch.setattr(pending_settings, "PENDING_SETTINGS", pending)
    assert pending_settings_in_use(load_config({})) == []
    assert pending_settings_in_use(load_config({"cache": {"ttl_ms": 5}})) == [
        "cache.ttl_ms: has no effect yet (a future capability)"
    ]
