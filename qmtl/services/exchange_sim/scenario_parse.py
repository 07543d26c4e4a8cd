"""Reading plain (YAML) data into frozen configs with key-path errors.

A :class:`Reader` wraps one mapping at one key path; typed getters mark keys as read, and
:meth:`Reader.done` refuses whatever was not read, suggesting the nearest valid key. Errors
raised by a dataclass's ``__post_init__`` (``"field: problem"``) are re-raised as
:class:`~qmtl.runtime.sdk.errors.ConfigError` prefixed with the path of the mapping.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from qmtl.runtime.sdk.errors import ConfigError

__all__ = ["Reader", "join_path"]

T = TypeVar("T")
_FIELD_MSG = re.compile(r"([A-Za-z_][\w\[\]]*): (.*)", re.DOTALL)


def join_path(path: str, key: str) -> str:
    if not path:
        return key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


class Reader:
    """One mapping being read at ``path`` (``""`` for the top level)."""

    def __init__(self, data: Mapping[Any, Any], path: str) -> None:
        self._data = data
        self._path = path
        self._seen: set[str] = set()

    @classmethod
    def of(cls, data: object, path: str) -> Reader:
        if not isinstance(data, Mapping):
            raise ConfigError([f"{path}: expected a mapping, got {type(data).__name__}"])
        return cls(data, path)

    def at(self, key: str) -> str:
        return join_path(self._path, key)

    def has(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Any:
        self._seen.add(key)
        return self._data.get(key)

    def required(self, key: str) -> Any:
        if key not in self._data:
            raise ConfigError([f"{self.at(key)}: required"])
        return self.get(key)

    def integer(self, key: str, default: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError([f"{self.at(key)}: must be an integer, got {value!r}"])
        return value

    def optional_int(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        return self.integer(key, 0)

    def number(self, key: str, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError([f"{self.at(key)}: must be a number, got {value!r}"])
        return float(value)

    def string(self, key: str, default: str | None) -> Any:
        """A string; ``default=None`` makes the key required. Returned as ``Any`` so that
        ``Literal`` fields accept it (the dataclass validates the value)."""
        value = self.required(key) if default is None else self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError([f"{self.at(key)}: must be a string, got {value!r}"])
        return value

    def items(self, key: str) -> list[tuple[Any, str]]:
        """Elements of a list value with their paths (``key[i]``); absent → empty."""
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError([f"{self.at(key)}: expected a list, got {type(value).__name__}"])
        return [(item, self.at(f"{key}[{i}]")) for i, item in enumerate(value)]

    def build(self, cls: Callable[..., T], **kwargs: Any) -> T:
        return Reader.build_at(self._path, cls, **kwargs)

    @staticmethod
    def build_at(path: str, cls: Callable[..., T], **kwargs: Any) -> T:
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            message = str(exc)
            match = _FIELD_MSG.fullmatch(message)
            if match:
                message = f"{join_path(path, match.group(1))}: {match.group(2)}"
            elif path:
                message = f"{path}: {message}"
            raise ConfigError([message]) from None

    def done(self) -> None:
        """Refuse keys nobody read."""
        unknown = [k for k in self._data if k not in self._seen]
        if not unknown:
            return
        problems = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(self._seen), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{self.at(str(key))}: unknown key{hint}")
        raise ConfigError(problems)
