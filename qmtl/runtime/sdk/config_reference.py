"""The user's configuration reference (``docs/configuration.md``), generated from the model.

Pure: it walks the settings dataclasses from :class:`~qmtl.runtime.sdk.config.QMTLConfig`
(``dataclasses.fields`` for the keys and their order, ``typing.get_type_hints`` for the
types, the defaults of the fields themselves) and takes each description from the field's
*attribute docstring* — the string literal on the line after it, read with :mod:`ast` from
the class source. So the reference cannot drift from the loader: a new field appears by
itself, and a field without a docstring makes :func:`render_reference` raise ``TypeError``
(a test renders it, so an undocumented setting fails CI). Settings listed in
:data:`~qmtl.runtime.sdk.pending_settings.PENDING_SETTINGS` are marked "accepted, not used
yet". The output is deterministic: no timestamps, field order.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import re
import textwrap
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from qmtl.runtime.sdk import config as config_module
from qmtl.runtime.sdk.config import DOMAIN_DEFAULTS, QMTLConfig
from qmtl.runtime.sdk.pending_settings import PENDING_SETTINGS

__all__ = ["REGENERATE", "render_reference"]

REGENERATE = "qmtl-seamless config reference --out docs/configuration.md"
"""The command that writes ``docs/configuration.md``."""

_PENDING_MARK = "(accepted, not used yet)"

#: What stands for the key of a mapping section in key paths.
_MAPPING_KEYS: Mapping[str, str] = {"domains": "<name>", "exchanges": "<id>"}
#: Mapping sections whose defaults differ per key: key -> that key's defaults.
_PER_KEY_DEFAULTS: Mapping[str, Mapping[str, object]] = {"domains": DOMAIN_DEFAULTS}
#: Blocks whose omitted keys take another block's values.
_INHERITS: Mapping[str, str] = {"exchanges.<id>.rate_limit": "seamless.rate_limit"}

#: Environment variable (the loader's ``ENV_*`` constant) -> what it overrides. The first
#: code span names the key; every ``ENV_*`` constant must be here (checked when rendering).
_ENV_HELP: Mapping[str, str] = {
    config_module.ENV_COORDINATOR_URL: "`environment.coordinator_url`",
    config_module.ENV_COORDINATOR_TOKEN: "`environment.coordinator_token`",
    config_module.ENV_RATE_LIMITER_REDIS: (
        "`environment.rate_limiter_redis`, `seamless.rate_limit.redis_dsn` and the "
        "`redis_dsn` of every `rate_limit` block an exchange writes"
    ),
    config_module.ENV_ARTIFACTS: "`seamless.artifact.publish_optional` (boolean)",
    config_module.ENV_ARTIFACT_DIR: (
        "`seamless.artifact.object_store_uri` (a directory becomes `file://DIR`; a URI is kept)"
    ),
    config_module.ENV_PUBLISH_FP: "`seamless.artifact.publish_fingerprint` (boolean)",
    config_module.ENV_EARLY_FP: "`seamless.artifact.early_fingerprint` (boolean)",
    config_module.ENV_WORKER: "`environment.worker_id`",
    config_module.ENV_HOSTNAME: (
        "`environment.worker_id` when neither `QMTL_SEAMLESS_WORKER` nor the file sets it"
    ),
    config_module.ENV_LOG_FORMAT: "`seamless.observability.log_format` (`text` or `json`)",
}

_INTRO = f"""\
# Configuration reference

> Generated from the settings model: do not edit by hand. Regenerate with
> `{REGENERATE}`.

## The file

A YAML mapping with up to five sections: `seamless` (engine settings), `cache`, `domains`,
`exchanges` and `environment`. Every section and key is optional: an empty file means every
default, and `null` for a section or block means its defaults. An unknown key is an error that
names the nearest valid key; every problem is reported as `<key.path>: <problem>`. Check a file
with `qmtl-seamless config check FILE`, which also prints what it resolved (store, exchanges,
rate limiter, artifact destination). `docs/config.example.yaml` writes out every section.

```yaml
seamless:
  backfill: {{window_bars: 900, max_concurrent_requests: 8}}
  storage: {{dsn: "duckdb:///.qmtl/seamless.duckdb"}}
exchanges:
  binance: {{symbols: [BTC/USDT, ETH/USDT], timeframes: [1m], rate_limit_rps: 20}}
environment:
  rate_limiter_redis: ${{QMTL_CCXT_RATE_LIMITER_REDIS}}
```

String values may use `${{NAME}}` (the environment variable `NAME`) or `${{NAME:-default}}`
(`default` when `NAME` is unset or empty); `$${{` is a literal `${{`. A value that is exactly
`${{NAME}}` with `NAME` unset becomes `null`: fine for optional keys, an error for required
ones. Interpolated text is converted to the key's type (`"20"` becomes `20`).

Precedence, highest first: an explicit command-line argument (`--dsn`, `--exchange-url`) >
an environment variable (below) > the file > the default.

## Environment variables

Booleans read `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`; an empty variable counts as
unset. `qmtl-seamless config check --no-env FILE` ignores them all.

| variable | overrides |
|---|---|
"""

_SETTINGS_INTRO = f"""
## Settings

Keys are written in full; `<name>` stands for a domain name and `<id>` for a ccxt exchange id.
Types: `list of X` is a YAML list, `mapping` a free-form YAML mapping, `or null` means `null`
is allowed. Settings marked {_PENDING_MARK} are valid but no component reads them yet;
`config check` names each one a file changes.
"""

_CODE = re.compile(r"`([^`]+)`")
_ROLE = re.compile(r"(?<![\w/:`]):[a-z]+:`~?([^`]+)`")  # :class:`X`, not ``a:b:`` text


@dataclasses.dataclass(frozen=True, slots=True)
class _Section:
    """One table: the block's key path, its intro and its rows (key, type, default, text)."""

    path: str
    intro: str
    rows: tuple[tuple[str, str, str, str], ...]


def render_reference() -> str:
    """The configuration reference as Markdown (``docs/configuration.md``).

    Raises ``TypeError`` when a settings field has no attribute docstring, and
    ``ValueError`` when a pending setting or an environment variable names no known key."""
    sections = _walk(QMTLConfig, "")
    keys = {row[0] for section in sections for row in section.rows}
    pending = {_generic(key) for key in PENDING_SETTINGS}
    unknown = sorted(pending - keys)
    if unknown:
        raise ValueError(f"pending settings that are no setting: {unknown}")
    parts = [_INTRO, *_env_rows(keys), _SETTINGS_INTRO]
    for section in sections:
        parts.append(f"\n### `{section.path}`\n\n{section.intro}\n")
        if section.rows:
            parts.append("\n| key | type | default | description |\n|---|---|---|---|\n")
        for key, kind, default, text in section.rows:
            text = f"{text} {_PENDING_MARK}" if key in pending else text
            cells = (f"`{key}`", kind, default, text)
            parts.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    return "".join(parts)


def _generic(pending_key: str) -> str:
    """``domains.*.source`` -> ``domains.<name>.source``."""
    section = pending_key.partition(".")[0]
    return pending_key.replace("*", _MAPPING_KEYS.get(section, "<key>"))


def _env_rows(keys: set[str]) -> list[str]:
    names = {
        getattr(config_module, name) for name in config_module.__all__ if name.startswith("ENV_")
    }
    if names != set(_ENV_HELP):
        raise ValueError(f"environment variables without a description: {names ^ set(_ENV_HELP)}")
    rows = []
    for name, text in _ENV_HELP.items():
        first = _CODE.search(text)
        if first is None or first.group(1) not in keys:
            raise ValueError(f"{name}: its description names no setting: {text!r}")
        rows.append(f"| `{name}` | {_cell(text)} |\n")
    return rows


def _walk(
    cls: type[Any],
    path: str,
    intro: str = "",
    samples: Mapping[str, object] | None = None,
) -> list[_Section]:
    """The sections of dataclass ``cls`` at ``path``: its own table, then its blocks.

    ``samples`` are instances whose values are the defaults (by label when they differ);
    ``None``: the field defaults. ``TypeError`` lists the fields without a docstring."""
    docs = _attribute_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in docs]
    if missing:
        names = ", ".join(f"{cls.__qualname__}.{name}" for name in missing)
        raise TypeError(f"settings without a docstring (add one on the next line): {names}")
    hints = get_type_hints(cls)
    rows: list[tuple[str, str, str, str]] = []
    blocks: list[_Section] = []
    for item in dataclasses.fields(cls):
        if not item.init:
            continue
        key = f"{path}.{item.name}" if path else item.name
        hint, text = hints[item.name], docs[item.name]
        block = _block_type(hint)
        if block is not None:
            if get_origin(hint) in (Mapping, dict):  # a mapping of blocks: domains, exchanges
                key = f"{key}.{_MAPPING_KEYS.get(item.name, '<key>')}"
                inner = _PER_KEY_DEFAULTS.get(item.name)
            else:
                value = _default(item)
                inner = None if value is None else {"": value}
            blocks.extend(_walk(block, key, text, inner))
            continue
        rows.append((key, _type_name(hint), _default_cell(key, item, samples), text))
    return [_Section(path, intro, tuple(rows)), *blocks] if path else blocks


def _block_type(hint: object) -> type[Any] | None:
    """The dataclass of a block field (``X``, ``X | None``, ``Mapping[str, X]``), else None."""
    for arg in (hint, *get_args(hint)):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _default(item: dataclasses.Field[Any]) -> object:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    raise TypeError(f"setting {item.name} has no default")


def _default_cell(
    key: str, item: dataclasses.Field[Any], samples: Mapping[str, object] | None
) -> str:
    block, _, name = key.rpartition(".")
    if block in _INHERITS:
        return f"as `{_INHERITS[block]}.{name}`"
    if samples is None:
        return f"`{_yaml(_default(item))}`"
    labels: dict[str, list[str]] = {}
    for label, sample in samples.items():
        labels.setdefault(_yaml(getattr(sample, item.name)), []).append(label)
    if len(labels) == 1:
        return f"`{next(iter(labels))}`"
    return "; ".join(f"`{value}` ({', '.join(names)})" for value, names in labels.items())


def _yaml(value: object) -> str:
    """``value`` as YAML writes it inline (``null``, ``true``, ``[500, 1000]``, ``'{a}'``)."""
    text: str = yaml.safe_dump(
        _plain(value), default_flow_style=True, width=1_000_000, sort_keys=False
    )
    return text.strip().removesuffix("\n...").strip()


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_name(hint: object) -> str:
    """``int``, ``one of `a`/`b```, ``list of str``, ``str or null``..."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"unsupported settings type {hint!r}")
        return f"{_type_name(options[0])} or null"
    if origin is Literal:
        return "one of " + "/".join(f"`{v}`" for v in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + "/".join(f"`{m.value}`" for m in hint)
    if origin in (tuple, list, Sequence) and args:
        return f"list of {_type_name(args[0])}"
    if origin in (Mapping, dict):
        return "mapping"
    if hint in (bool, int, float, str):
        return str(getattr(hint, "__name__", hint))
    raise TypeError(f"unsupported settings type {hint!r}")


def _attribute_docs(cls: type[Any]) -> Mapping[str, str]:
    """Field name -> attribute docstring (one line of plain text) of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        node = tree.body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = _plain_text(after.value.value)
    return docs


def _plain_text(docstring: str) -> str:
    """A docstring as one Markdown line: reST roles and ``code`` become `code`."""
    text = " ".join(inspect.cleandoc(docstring).split())
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
