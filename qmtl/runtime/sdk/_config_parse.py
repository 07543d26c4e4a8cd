"""Typed conversion of parsed YAML into frozen dataclasses, collecting every error.

Private to :mod:`qmtl.runtime.sdk.config`. A :class:`Builder` walks a mapping against a
dataclass's type hints and records ``"<key.path>: <problem>"`` for each bad value instead of
stopping at the first. Supported hints: ``bool``, ``int`` (booleans are *not* integers),
``float`` (finite; integers accepted), ``str``, ``Literal[...]``, ``Enum`` subclasses,
``X | None``, ``tuple[X, ...]`` and ``Sequence[X]`` (a tuple, from a YAML list),
``Mapping[str, object]`` (free-form, copied) and nested dataclasses. A dataclass's own
``__post_init__`` ``ValueError("field: problem")`` is re-labelled with the key path; when one
fails, each given field is also tried alone so that independent problems in one block are all
reported. Integers must fit in 64 bits.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from qmtl.runtime.sdk._config_source import EnvText, Unset
from qmtl.runtime.sdk.errors import ConfigError

__all__ = ["INVALID", "Builder", "describe", "join_path", "parse_bool_text"]

INVALID: Any = object()
"""Marker returned by :meth:`Builder.convert` for a value that produced an error."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
BOOL_WORDS = "1/0/true/false/yes/no/on/off"
_INT64 = 1 << 63


def join_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def parse_bool_text(text: str) -> bool | None:
    """``1/0/true/false/yes/no/on/off`` (any case) → bool; anything else → ``None``."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def describe(value: object) -> str:
    """How a value reads in an error message: ``string 'abc'``, ``integer 5``, ``null``."""
    if value is None or isinstance(value, Unset):
        return "null"
    if isinstance(value, EnvText):
        return f"string {_short(value.text)}"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a value of type {type(value).__name__}"


class Builder:
    """Collects errors while converting raw values. ``renamed`` maps a dataclass to its old
    key names (``{BackfillConfig: {"retry_max": "max_attempts"}}``) for better hints."""

    def __init__(self, renamed: Mapping[type, Mapping[str, str]] | None = None) -> None:
        self.errors: list[str] = []
        self.origins: dict[str, str] = {}
        self._renamed = renamed or {}

    def add(self, path: str, problem: str) -> None:
        message = f"{path}: {problem}" if path else problem
        origin = self.origins.get(path)
        if origin is not None and "(from " not in message:
            message += f" (from {origin})"
        if message not in self.errors:
            self.errors.append(message)

    def unknown_key(
        self,
        path: str,
        key: str,
        valid: Iterable[str],
        *,
        renamed: Mapping[str, str] | None = None,
        noun: str = "key",
        note: str = "renamed",
    ) -> None:
        """Report ``key`` as unknown, naming its new name or the nearest valid one."""
        valid = sorted(valid)
        new_name = (renamed or {}).get(key)
        if new_name is not None:
            self.add(path, f"unknown {noun}; did you mean {new_name!r}? ({note})")
            return
        lowered = {name.lower(): name for name in valid}
        close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
        if close:
            self.add(path, f"unknown {noun}; did you mean {lowered[close[0]]!r}?")
        else:
            self.add(path, f"unknown {noun}; valid {noun}s: {', '.join(valid)}")

    # --- values ------------------------------------------------------------------------

    def convert(self, hint: object, value: object, path: str) -> Any:
        """``value`` converted to ``hint``, or :data:`INVALID` after recording the error."""
        if isinstance(value, EnvText):
            self.origins[path] = value.origin
        origin = get_origin(hint)
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(hint) if a is not type(None)]
            nullable = len(options) < len(get_args(hint))
            if nullable and (value is None or isinstance(value, Unset)):
                return None
            if len(options) != 1:
                raise TypeError(f"unsupported config type {hint!r}")
            return self.convert(options[0], value, path)
        if isinstance(value, Unset):
            self.add(
                path,
                f"environment variable {value.name} is not set and this key needs a value "
                f"(write ${{{value.name}:-default}} to give a default)",
            )
            return INVALID
        if origin is Literal:
            return self._choice(get_args(hint), value, path, lambda v: v)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._choice([m.value for m in hint], value, path, hint)
        if origin is tuple:
            return self._tuple(get_args(hint), value, path)
        if origin in (list, Sequence):
            return self._tuple((*get_args(hint), Ellipsis), value, path)
        if origin in (dict, Mapping) or hint in (dict, Mapping):
            return self._free_mapping(value, path)
        if hint is Any or hint is object:
            return _plain(value)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            built = self.build(hint, value, path)
            return INVALID if built is None else built
        if hint in (bool, int, float, str):
            return self._scalar(hint, value, path)
        raise TypeError(f"unsupported config type {hint!r}")

    def _type_error(self, path: str, expected: str, value: object) -> Any:
        self.add(path, f"expected {expected}, got {describe(value)}")
        return INVALID

    def _scalar(self, hint: object, value: object, path: str) -> Any:
        if isinstance(value, EnvText):
            return self._from_text(hint, value, path)
        if hint is bool:
            return value if isinstance(value, bool) else self._type_error(path, "boolean", value)
        if hint is str:
            return value if isinstance(value, str) else self._type_error(path, "string", value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            expected = "integer" if hint is int else "number"
            return self._type_error(path, expected, value)
        if hint is int:
            if not isinstance(value, int):
                return self._type_error(path, "integer", value)
            if abs(value) >= _INT64:
                return self._type_error(path, "a 64-bit integer", value)
            return value
        if not math.isfinite(value):
            return self._type_error(path, "a finite number", value)
        return value

    def _from_text(self, hint: object, value: EnvText, path: str) -> Any:
        text = value.text.strip()
        if hint is str:
            return value.text
        if hint is bool:
            parsed = parse_bool_text(text)
            if parsed is None:
                return self._type_error(path, f"boolean ({BOOL_WORDS})", value)
            return parsed
        try:
            number: float = int(text) if hint is int else float(text)
        except ValueError:
            return self._type_error(path, "integer" if hint is int else "number", value)
        if not math.isfinite(number):
            return self._type_error(path, "a finite number", value)
        if isinstance(number, int) and abs(number) >= _INT64:
            return self._type_error(path, "a 64-bit integer", value)
        return number

    def _choice(self, allowed: Iterable[object], value: object, path: str, make: Any) -> Any:
        options = list(allowed)
        raw = value.text if isinstance(value, EnvText) else value
        if isinstance(raw, str) and raw in options:
            return make(raw)
        listed = ", ".join(repr(o) for o in options)
        self.add(path, f"expected one of {listed}, got {describe(value)}")
        return INVALID

    def _tuple(self, args: tuple[object, ...], value: object, path: str) -> Any:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported config type tuple{list(args)!r}")
        if not isinstance(value, list | tuple):
            return self._type_error(path, "a list", value)
        items = [self.convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
        return INVALID if any(item is INVALID for item in items) else tuple(items)

    def _free_mapping(self, value: object, path: str) -> Any:
        if not isinstance(value, Mapping):
            return self._type_error(path, "a mapping", value)
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            self.add(path, f"keys must be strings, got {describe(bad[0])}")
            return INVALID
        return _plain(value)

    # --- dataclasses -------------------------------------------------------------------

    def build(
        self,
        cls: type[Any],
        raw: object,
        path: str,
        *,
        base: Mapping[str, object] | None = None,
        exclude: Iterable[str] = (),
    ) -> Any:
        """Build ``cls`` from mapping ``raw`` (``null`` = all defaults) over ``base`` values.

        Keys in ``exclude`` are handled by the caller and are skipped here. Returns ``None``
        when anything was wrong (the errors are recorded).
        """
        if raw is None or isinstance(raw, Unset):
            raw = {}
        if not isinstance(raw, Mapping):
            self._type_error(path, "a mapping", raw)
            return None
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        hints = get_type_hints(cls)
        skipped = set(exclude)
        kwargs: dict[str, object] = dict(base or {})
        given: list[str] = []
        ok = True
        for key, value in raw.items():
            if key in skipped:
                continue
            if not isinstance(key, str):
                self.add(path, f"keys must be strings, got {describe(key)}")
                ok = False
                continue
            key_path = join_path(path, key)
            if key not in names:
                self.unknown_key(key_path, key, names, renamed=self._renamed.get(cls))
                ok = False
                continue
            converted = self.convert(hints[key], value, key_path)
            if converted is INVALID:
                ok = False
                continue
            kwargs[key] = converted
            given.append(key)
        if not ok:
            # Still report range problems of the keys that did convert.
            self._report(path, names, self._isolate(cls, kwargs, given))
            return None
        return self.instantiate(cls, kwargs, path, names, given)

    def instantiate(
        self,
        cls: type[Any],
        kwargs: Mapping[str, object],
        path: str,
        names: Iterable[str],
        given: Iterable[str],
    ) -> Any:
        """``cls(**kwargs)``; a ``ValueError("field: problem")`` becomes ``path.field: ...``."""
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            for message in exc.errors:
                self.errors.append(join_path(path, message) if path else message)
            return None
        except (ValueError, TypeError) as exc:
            first = str(exc)
        self._report(path, names, self._isolate(cls, kwargs, given) or [first])
        return None

    @staticmethod
    def _isolate(cls: type[Any], kwargs: Mapping[str, object], given: Iterable[str]) -> list[str]:
        """Each given key tried alone on the defaults: its own ``__post_init__`` problem."""
        messages: list[str] = []
        for key in given:
            try:
                cls(**{key: kwargs[key]})
            except (ValueError, TypeError) as exc:
                messages.append(str(exc))
        return messages

    def _report(self, path: str, names: Iterable[str], messages: Iterable[str]) -> None:
        field_names = set(names)
        for message in messages:
            field, sep, problem = message.partition(": ")
            if sep and field in field_names:
                self.add(join_path(path, field), problem)
            else:
                self.add(path, message)


def _plain(value: object) -> object:
    """A deep copy of a free-form value with environment markers resolved to plain values."""
    if isinstance(value, EnvText):
        return value.text
    if isinstance(value, Unset):
        return None
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
