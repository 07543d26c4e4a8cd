"""Reading a config document safely, and ``${VAR}`` interpolation (private to ``config``).

Hostile input is refused with messages, never a traceback:

- files over :data:`MAX_CONFIG_BYTES` are not read; text must be UTF-8;
- YAML is parsed with PyYAML's *safe* loader (no Python objects), one document only, and
  duplicate keys in one mapping are an error (PyYAML would silently keep the last one);
- aliases are allowed, but a document whose alias/merge expansion exceeds
  :data:`MAX_CONFIG_VALUES` values (a "billion laughs" bomb), that nests deeper than
  :data:`MAX_CONFIG_DEPTH` levels or that refers to itself is refused before anything walks it.

Interpolation rule (string *values* only; keys and non-strings are left alone):

- ``${NAME}`` is the environment variable ``NAME``; ``${NAME:-default}`` uses ``default`` when
  ``NAME`` is unset *or empty*; ``$${`` is a literal ``${``. An empty variable counts as unset.
  Defaults cannot contain ``}`` and references do not nest.
- A value that is exactly one reference and resolves to nothing becomes :class:`Unset`, which
  the builder turns into ``null`` for optional keys and into an error for required ones.
- A resolved value is :class:`EnvText`: it is converted to the key's type (``"20"`` → ``20``
  for an integer key), and errors about it say where it came from.
- A reference to an unset variable inside a larger string is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "EnvText",
    "Unset",
    "check_tree",
    "interpolate_tree",
    "parse_yaml",
    "read_text",
]

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\$\$\{|\$\{")


@dataclass(frozen=True, slots=True)
class EnvText:
    """A string that came from the environment; ``origin`` names where (for messages)."""

    text: str
    origin: str


@dataclass(frozen=True, slots=True)
class Unset:
    """A whole-value ``${NAME}`` reference whose variable is unset (or empty)."""

    name: str


class _SafeLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys and oversized merge-key expansions."""

    def compose_mapping_node(self, anchor: dict[object, yaml.Node]) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in seen:
                raise yaml.composer.ComposerError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value!r}",
                    key_node.start_mark,
                )
            seen.add(key_node.value)
        return node

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)
        if len(node.value) > MAX_CONFIG_VALUES:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"merge keys expand to more than {MAX_CONFIG_VALUES} entries",
                node.start_mark,
            )


def read_text(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, problem)``: at most :data:`MAX_CONFIG_BYTES` of UTF-8."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read the file: {exc.strerror or exc}"
    if len(data) > MAX_CONFIG_BYTES:
        return None, f"file is larger than {MAX_CONFIG_BYTES} bytes; refusing to parse it"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        return None, f"file is not UTF-8 text (byte {exc.start})"


def parse_yaml(text: str, origin: str) -> tuple[object, list[str]]:
    """Parse one YAML document with the safe loader; errors carry line and column."""
    if len(text) > MAX_CONFIG_BYTES:
        return None, [f"{origin}: document is larger than {MAX_CONFIG_BYTES} characters"]
    loader = _SafeLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        return None, [_yaml_message(exc, origin)]
    except yaml.YAMLError as exc:
        return None, [f"{origin}: invalid YAML: {exc}"]
    except RecursionError:
        return None, [f"{origin}: invalid YAML: nested too deeply"]
    except (ValueError, TypeError, OverflowError) as exc:
        return None, [f"{origin}: invalid YAML value: {exc}"]
    finally:
        loader.dispose()
    errors = check_tree(data, origin)
    return (None, errors) if errors else (data, [])


def _yaml_message(exc: yaml.MarkedYAMLError, origin: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "syntax error"
    hint = " (YAML indentation must use spaces, not tabs)" if "\\t" in problem else ""
    return f"{origin}: invalid YAML{where}: {problem}{hint}"


class _TreeError(Exception):
    pass


def check_tree(root: object, origin: str) -> list[str]:
    """Refuse self-referencing, too deep or too large (after alias expansion) trees.

    Shared nodes are measured once (memoized by identity), so the check itself stays linear
    in the number of distinct nodes even for an alias bomb.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def visit(node: object, depth: int) -> int:
        if isinstance(node, Mapping):
            children: list[object] = list(node.keys()) + list(node.values())
        elif isinstance(node, list | tuple):
            children = list(node)
        else:
            return 1
        key = id(node)
        if key in active:
            raise _TreeError("refers to itself (a recursive alias)")
        if key in sizes:
            return sizes[key]
        if depth >= MAX_CONFIG_DEPTH:
            raise _TreeError(f"nests deeper than {MAX_CONFIG_DEPTH} levels")
        active.add(key)
        total = 1
        for child in children:
            total += visit(child, depth + 1)
            if total > MAX_CONFIG_VALUES:
                raise _TreeError(
                    f"expands to more than {MAX_CONFIG_VALUES} values "
                    "(aliases multiply what they repeat)"
                )
        active.discard(key)
        sizes[key] = total
        return total

    try:
        visit(root, 0)
    except _TreeError as exc:
        return [f"{origin}: document {exc}"]
    return []


def interpolate_tree(node: object, env: Mapping[str, str], path: str, errors: list[str]) -> object:
    """A copy of ``node`` with every string value interpolated (see the module docstring)."""
    if isinstance(node, Mapping):
        return {
            key: interpolate_tree(value, env, _join(path, key), errors)
            for key, value in node.items()
        }
    if isinstance(node, list | tuple):
        return [
            interpolate_tree(item, env, f"{path}[{index}]", errors)
            for index, item in enumerate(node)
        ]
    if isinstance(node, str):
        return _interpolate(node, env, path, errors)
    return node


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _interpolate(text: str, env: Mapping[str, str], path: str, errors: list[str]) -> object:
    if "${" not in text:
        return text
    pieces: list[str] = []
    refs: list[tuple[str, str | None]] = []
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() < position:
            continue
        pieces.append(text[position : match.start()])
        if match.group() == "$${":
            pieces.append("${")
            position = match.end()
            continue
        close = text.find("}", match.end())
        if close < 0:
            errors.append(f"{path}: unterminated '${{' in {text!r}")
            return None
        expression = text[match.end() : close]
        parsed = _parse_reference(expression)
        if parsed is None:
            errors.append(
                f"{path}: invalid reference '${{{expression}}}'; "
                "use ${NAME} or ${NAME:-default}"
            )
            return None
        name, default = parsed
        refs.append((name, default))
        value = env.get(name) or default or ""
        pieces.append(value)
        position = close + 1
    pieces.append(text[position:])
    result = "".join(pieces)
    if not refs:
        return result
    if len(refs) == 1 and _is_single_reference(text):
        name = refs[0][0]
        return EnvText(result, "${" + name + "}") if result else Unset(name)
    unset = [n for n, d in refs if not env.get(n) and d is None]
    if unset:
        errors.append(
            f"{path}: environment variable {unset[0]} is not set "
            f"(it is part of {text!r}; write ${{{unset[0]}:-default}} to give a default)"
        )
        return None
    return EnvText(result, ", ".join("${" + n + "}" for n, _ in refs))


def _is_single_reference(text: str) -> bool:
    return text.startswith("${") and text.endswith("}") and text.count("}") == 1


def _parse_reference(expression: str) -> tuple[str, str | None] | None:
    name, sep, default = expression.partition(":-")
    if not _NAME.fullmatch(name) or "${" in default or "$" in name:
        return None
    return name, (default if sep else None)
