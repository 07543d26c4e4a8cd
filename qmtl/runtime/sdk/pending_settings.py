"""Settings and constructor parameters already defined but read by no component yet —
the explicit pending list, each entry naming the capability that will read it.

Why a list: a setting nobody reads is a promise the system silently breaks (a user sets
``cache.ttl_ms`` and nothing happens). ``tests/test_settings_readers.py`` fails for any
setting no component reads unless it is here, and for any entry here once the list grows;
each capability that lands takes its entries out. Until then ``config check`` names every
pending setting a file changes from its default, so a user is told it has no effect yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qmtl.runtime.sdk.config import QMTLConfig

__all__ = ["PENDING_PARAMETERS", "PENDING_SETTINGS", "pending_settings_in_use"]

#: Setting key path (``*`` for any domain) -> the capability that will read it. Empty: every
#: setting has its reader (a new setting lands with its reader, or here with a capability).
PENDING_SETTINGS: Mapping[str, str] = MappingProxyType({})

#: ``Class.parameter`` -> capability: constructor parameters the public signature has, which are
#: accepted and refused (or ignored, as documented) until the capability lands. Empty too.
PENDING_PARAMETERS: Mapping[str, str] = MappingProxyType({})


def _value(config: Any, path: list[str]) -> list[tuple[str, Any, Any]]:
    """``(concrete path, value, default)`` for a pending key path (``*``: every entry)."""
    head, *rest = path
    if head == "*":
        return [
            (f"{key}.{sub}", value, default)
            for key, child in config.items()
            for sub, value, default in _value(child, rest)
        ]
    child = config[head] if isinstance(config, Mapping) else getattr(config, head)
    if not rest:
        return [(head, child, getattr(type(config)(), head))]  # defaults: a fresh section
    return [(f"{head}.{sub}", value, default) for sub, value, default in _value(child, rest)]


def pending_settings_in_use(config: QMTLConfig) -> list[str]:
    """One line per pending setting that ``config`` sets away from its default: it is
    accepted, and has no effect until its capability lands. (``domains`` defaults differ per
    domain, so domains are reported only when the section names a setting its domain's
    default does not have.)"""
    from qmtl.runtime.sdk.config import DOMAIN_DEFAULTS

    notes: list[str] = []
    for path, capability in PENDING_SETTINGS.items():
        keys = path.split(".")
        if keys[0] == "domains":
            for name, policy in config.domains.items():
                value = getattr(policy, keys[-1])
                if name in DOMAIN_DEFAULTS and value != getattr(DOMAIN_DEFAULTS[name], keys[-1]):
                    notes.append(f"domains.{name}.{keys[-1]}: has no effect yet ({capability})")
            continue
        for where, value, default in _value(config, keys):
            if value != default:
                notes.append(f"{where}: has no effect yet ({capability})")
    return notes
