"""The YAML configuration as frozen typed objects, and :func:`load_config`.

Shape: ``seamless`` (engine settings), ``cache``, ``domains``, ``exchanges``, ``environment``.
Every section and key is optional; an empty document means all defaults (``null`` for a
section or block also means its defaults). Sub-blocks *are* the runtime objects:
``seamless.conformance`` → ``ConformancePipeline``, ``seamless.sla`` → ``SLAPolicy``,
``seamless.backfill`` → ``BackfillConfig``, ``seamless.rate_limit`` → ``RateLimiterConfig``,
``seamless.artifact.fingerprint`` → ``FingerprintConfig``.

- ``domains``: absent (or null) configures backtest, dryrun and live with
  :data:`DOMAIN_DEFAULTS`; a written section configures exactly the domains it lists, each
  key it omits taking that domain's default (``domains: {}`` configures none).
- ``exchanges``: none by default (``docs/config.example.yaml`` has a ``binance`` example). An
  entry's ``rate_limit`` block is merged over ``seamless.rate_limit``; ``rate_limit_rps`` is
  shorthand for ``tokens_per_interval: rps, interval_ms: 1000`` and may not be combined with
  either key.

Interpolation: string values may use ``${NAME}`` / ``${NAME:-default}`` (``$${`` is a literal
``${``; an empty variable counts as unset). A value that is exactly ``${NAME}`` with ``NAME``
unset becomes ``null`` — fine for optional keys such as ``environment.coordinator_url``, an
error naming the variable for required ones. Interpolated text is converted to the key's
type (``"20"`` → 20). Details in :mod:`qmtl.runtime.sdk._config_source`.

Precedence (lowest first): defaults < the file < the environment variables below <
``overrides=`` of :func:`load_config` (dotted key paths: a CLI flag, a constructor argument).

=============================== ==============================================
variable                        key it sets
=============================== ==============================================
QMTL_SEAMLESS_COORDINATOR_URL   ``environment.coordinator_url``
QMTL_SEAMLESS_COORDINATOR_TOKEN ``environment.coordinator_token`` (not in repr)
QMTL_CCXT_RATE_LIMITER_REDIS    ``environment.rate_limiter_redis`` and every
                                written rate-limit block's ``redis_dsn``
QMTL_SEAMLESS_ARTIFACTS         ``seamless.artifact.publish_optional`` (bool)
QMTL_SEAMLESS_ARTIFACT_DIR      ``seamless.artifact.object_store_uri`` (a path
                                becomes ``file://path``; a URI is kept)
QMTL_SEAMLESS_PUBLISH_FP        ``seamless.artifact.publish_fingerprint`` (bool)
QMTL_SEAMLESS_EARLY_FP          ``seamless.artifact.early_fingerprint`` (bool)
QMTL_SEAMLESS_WORKER            ``environment.worker_id`` (else the file's value,
                                else ``HOSTNAME``)
QMTL_LOG_FORMAT                 ``seamless.observability.log_format``
=============================== ==============================================

Booleans from the environment read ``1/0/true/false/yes/no/on/off``; a bad value is an
error ending ``(from <VARIABLE>)``. ``environment.rate_limiter_redis`` also fills every
rate-limit block whose ``redis_dsn`` is null (:meth:`QMTLConfig.rate_limiter_for`).

Validation reports *all* problems in one :class:`ConfigError` whose ``errors`` read
``"<key.path>: <problem>"``: unknown keys (with the renamed or nearest valid key), types
(booleans are not integers), enum values (all listed), ranges. The cross-checks of
:mod:`qmtl.runtime.sdk._config_checks` run once every section is valid on its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, cast

from qmtl.runtime.sdk._config_checks import check_exchange, cross_check
from qmtl.runtime.sdk._config_exchange import ArchiveConfig, ExchangeConfig, ExchangeUrls
from qmtl.runtime.sdk._config_models import (
    DEFAULT_PARTITION_TEMPLATE,
    DOMAIN_DEFAULTS,
    DOMAIN_NAMES,
    ArtifactConfig,
    CacheConfig,
    DomainPolicy,
    DomainSource,
    EnvironmentConfig,
    LiveConfig,
    LiveWsConfig,
    ObservabilityConfig,
    SeamlessSettings,
    StorageConfig,
    StrategyName,
)
from qmtl.runtime.sdk._config_parse import Builder, describe, join_path
from qmtl.runtime.sdk._config_source import (
    EnvText,
    check_tree,
    interpolate_tree,
    parse_yaml,
    read_text,
)
from qmtl.runtime.sdk.backfill_config import BackfillConfig
from qmtl.runtime.sdk.compute_context import DOMAIN_ALIASES
from qmtl.runtime.sdk.errors import ConfigError
from qmtl.runtime.sdk.rate_limiter_config import RateLimiterConfig

__all__ = [
    "DEFAULT_PARTITION_TEMPLATE",
    "DOMAIN_DEFAULTS",
    "DOMAIN_NAMES",
    "ENV_ARTIFACTS",
    "ENV_ARTIFACT_DIR",
    "ENV_COORDINATOR_TOKEN",
    "ENV_COORDINATOR_URL",
    "ENV_EARLY_FP",
    "ENV_HOSTNAME",
    "ENV_LOG_FORMAT",
    "ENV_PUBLISH_FP",
    "ENV_RATE_LIMITER_REDIS",
    "ENV_WORKER",
    "ArchiveConfig",
    "ArtifactConfig",
    "CacheConfig",
    "DomainPolicy",
    "DomainSource",
    "EnvironmentConfig",
    "ExchangeConfig",
    "ExchangeUrls",
    "LiveConfig",
    "LiveWsConfig",
    "ObservabilityConfig",
    "QMTLConfig",
    "SeamlessSettings",
    "StorageConfig",
    "StrategyName",
    "load_config",
    "redis_dsn_from_env",
]

ENV_COORDINATOR_URL = "QMTL_SEAMLESS_COORDINATOR_URL"
ENV_COORDINATOR_TOKEN = "QMTL_SEAMLESS_COORDINATOR_TOKEN"
ENV_RATE_LIMITER_REDIS = "QMTL_CCXT_RATE_LIMITER_REDIS"
ENV_ARTIFACTS = "QMTL_SEAMLESS_ARTIFACTS"
ENV_ARTIFACT_DIR = "QMTL_SEAMLESS_ARTIFACT_DIR"
ENV_PUBLISH_FP = "QMTL_SEAMLESS_PUBLISH_FP"
ENV_EARLY_FP = "QMTL_SEAMLESS_EARLY_FP"
ENV_WORKER = "QMTL_SEAMLESS_WORKER"
ENV_HOSTNAME = "HOSTNAME"
ENV_LOG_FORMAT = "QMTL_LOG_FORMAT"

#: Simple "variable → key path" overrides (the others need a transformation).
_ENV_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (ENV_COORDINATOR_URL, ("environment", "coordinator_url")),
    (ENV_COORDINATOR_TOKEN, ("environment", "coordinator_token")),
    (ENV_RATE_LIMITER_REDIS, ("environment", "rate_limiter_redis")),
    (ENV_RATE_LIMITER_REDIS, ("seamless", "rate_limit", "redis_dsn")),
    (ENV_ARTIFACTS, ("seamless", "artifact", "publish_optional")),
    (ENV_PUBLISH_FP, ("seamless", "artifact", "publish_fingerprint")),
    (ENV_EARLY_FP, ("seamless", "artifact", "early_fingerprint")),
    (ENV_WORKER, ("environment", "worker_id")),
    (ENV_LOG_FORMAT, ("seamless", "observability", "log_format")),
)

#: Old key names that now have another name (named in "unknown key" errors).
_RENAMED: dict[type, dict[str, str]] = {
    BackfillConfig: {
        "retry_max": "max_attempts",
        "retry_base_backoff_ms": "retry_backoff_ms",
        "retry_jitter": "jitter_ratio",
    },
    DomainPolicy: {"max_lag_seconds": "max_lag_sec"},
    CacheConfig: {"enabled": "enable"},
}

#: ``ComputeContext`` aliases (``prod`` → live...), suggested when used as a ``domains`` key.
_DOMAIN_ALIASES = DOMAIN_ALIASES

_SECTIONS = ("seamless", "cache", "domains", "exchanges", "environment")
_ROOT = "(root)"


@dataclass(frozen=True, kw_only=True, slots=True)
class QMTLConfig:
    """The whole configuration. ``domains`` lists the *configured* execution domains (a
    missing ``domains`` section means backtest, dryrun and live with their defaults);
    ``exchanges`` maps a ccxt id to its entry. Both are read-only mappings.

    Constructing it runs :func:`cross_check` and raises :class:`ConfigError` on problems.
    """

    seamless: SeamlessSettings = field(default_factory=SeamlessSettings)
    """Engine settings: fetch strategy, conformance, time budgets, backfill, rate limits,
    the store, artifacts, live feeds and observability."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """The in-memory cache of fetch results."""
    domains: Mapping[str, DomainPolicy] = field(default_factory=lambda: _default_domains())
    """Execution domains (``backtest``, ``dryrun``, ``live``, ``shadow``) and their rules.
    Without this section backtest, dryrun and live are configured with their defaults; a
    written section configures exactly the domains it lists, each key a domain omits taking
    that domain's default (``domains: {}`` configures none)."""
    exchanges: Mapping[str, ExchangeConfig] = field(default_factory=dict)
    """Exchanges to keep filled, keyed by ccxt id (``binance``, ``okx``...); none by
    default."""
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    """Deployment endpoints; null means not used."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", MappingProxyType(dict(self.domains)))
        object.__setattr__(self, "exchanges", MappingProxyType(dict(self.exchanges)))
        errors = cross_check(self)
        if errors:
            raise ConfigError(errors)

    def rate_limiter_for(self, exchange_id: str) -> RateLimiterConfig:
        """The effective limiter settings for ``exchange_id``.

        The exchange's own ``rate_limit`` block (already merged over ``seamless.rate_limit``
        by the loader) or ``seamless.rate_limit`` for an exchange without one or not listed;
        then ``rate_limit_rps`` (tokens_per_interval = rps per interval_ms = 1000); then a
        null ``redis_dsn`` takes ``environment.rate_limiter_redis``.
        """
        entry = self.exchanges.get(exchange_id)
        limiter = self.seamless.rate_limit
        if entry is not None:
            limiter = entry.rate_limit or limiter
            if entry.rate_limit_rps is not None:
                limiter = replace(
                    limiter, tokens_per_interval=entry.rate_limit_rps, interval_ms=1000
                )
        redis = self.environment.rate_limiter_redis
        if limiter.redis_dsn is None and redis is not None:
            limiter = replace(limiter, redis_dsn=redis)
        return limiter

    def node_ids(self, exchange_id: str | None = None) -> tuple[str, ...]:
        """Configured node ids (exchange × symbol × timeframe, in file order), optionally
        of one exchange."""
        template = self.seamless.node_id_format
        return tuple(
            template.format(exchange=ex_id, symbol=symbol, timeframe=timeframe)
            for ex_id, entry in self.exchanges.items()
            if exchange_id is None or ex_id == exchange_id
            for symbol in entry.symbols
            for timeframe in entry.timeframes
        )


def load_config(
    source: str | os.PathLike[str] | Mapping[str, object],
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> QMTLConfig:
    """Load and validate a configuration.

    ``source`` is a path to a YAML file, YAML text (a ``str`` containing a newline) or an
    already-parsed mapping. ``env`` defaults to ``os.environ`` (tests pass their own).
    ``overrides`` maps dotted key paths (``"seamless.storage.dsn"``) to values that win over
    the file and the environment. Raises :class:`ConfigError` listing every problem.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    raw, errors = _read(source)
    if errors:
        raise ConfigError(errors)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [
                f"{_ROOT}: expected a mapping of sections ({', '.join(_SECTIONS)}), "
                f"got {describe(raw)}"
            ]
        )
    tree = cast("dict[str, Any]", interpolate_tree(raw, environ, "", errors))
    if errors:
        raise ConfigError(errors)
    _apply_env(tree, environ)
    for dotted, value in (overrides or {}).items():
        problem = _set_path(tree, dotted.split("."), value)
        if problem:
            errors.append(f"{dotted}: {problem}")
    if errors:
        raise ConfigError(errors)
    return _build(tree)


def redis_dsn_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``QMTL_CCXT_RATE_LIMITER_REDIS`` from ``env`` (default: the process environment), or
    ``None`` when unset or empty: the one place outside :func:`load_config` that reads it, for
    limiters built without a configuration file."""
    value = (os.environ if env is None else env).get(ENV_RATE_LIMITER_REDIS)
    return value or None


def _read(source: str | os.PathLike[str] | Mapping[str, object]) -> tuple[object, list[str]]:
    if isinstance(source, Mapping):
        return source, check_tree(source, _ROOT)
    if isinstance(source, str) and "\n" in source:
        return parse_yaml(source, "<yaml text>")
    origin = os.fspath(source)
    text, problem = read_text(source)
    if text is None:
        return None, [f"{origin}: {problem}"]
    return parse_yaml(text, origin)


def _apply_env(tree: dict[str, Any], env: Mapping[str, str]) -> None:
    """Write the environment overrides into ``tree`` as :class:`EnvText` (env beats file)."""
    for name, path in _ENV_KEYS:
        if env.get(name):
            _set_path(tree, list(path), EnvText(env[name], name))
    redis = env.get(ENV_RATE_LIMITER_REDIS)
    exchanges = tree.get("exchanges")
    if redis and isinstance(exchanges, dict):
        for entry in exchanges.values():
            if isinstance(entry, dict) and isinstance(entry.get("rate_limit"), dict):
                entry["rate_limit"]["redis_dsn"] = EnvText(redis, ENV_RATE_LIMITER_REDIS)
    directory = env.get(ENV_ARTIFACT_DIR)
    if directory:
        uri = directory if "://" in directory else f"file://{directory}"
        _set_path(
            tree, ["seamless", "artifact", "object_store_uri"], EnvText(uri, ENV_ARTIFACT_DIR)
        )
    hostname = env.get(ENV_HOSTNAME)
    if hostname and not env.get(ENV_WORKER):
        section = tree.get("environment")
        if section is None or (isinstance(section, dict) and section.get("worker_id") is None):
            _set_path(tree, ["environment", "worker_id"], EnvText(hostname, ENV_HOSTNAME))


def _set_path(tree: dict[str, Any], keys: list[str], value: object) -> str | None:
    """Set ``tree[k1][k2]... = value``, creating missing (or null) mappings."""
    if not keys or any(not key for key in keys):
        return "empty key in the path"
    node = tree
    for index, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            return f"{'.'.join(keys[: index + 1])} is {describe(child)}, not a mapping"
        node = child
    node[keys[-1]] = value
    return None


def _build(tree: Mapping[str, Any]) -> QMTLConfig:
    builder = Builder(_RENAMED)
    for key in tree:
        if not isinstance(key, str):
            builder.add(_ROOT, f"keys must be strings, got {describe(key)}")
        elif key not in _SECTIONS:
            builder.unknown_key(key, key, _SECTIONS, noun="section")
    seamless = builder.build(SeamlessSettings, tree.get("seamless"), "seamless")
    cache = builder.build(CacheConfig, tree.get("cache"), "cache")
    environment = builder.build(EnvironmentConfig, tree.get("environment"), "environment")
    domains = _build_domains(builder, tree.get("domains"))
    base_limit = seamless.rate_limit if seamless is not None else RateLimiterConfig()
    exchanges = _build_exchanges(builder, tree.get("exchanges"), base_limit)
    parts = (seamless, cache, environment, domains, exchanges)
    if (
        builder.errors
        or any(part is None for part in parts)
        or domains is None
        or exchanges is None
    ):
        raise ConfigError(builder.errors)
    return QMTLConfig(
        seamless=seamless,
        cache=cache,
        domains=domains,
        exchanges=exchanges,
        environment=environment,
    )


def _as_kwargs(instance: RateLimiterConfig | DomainPolicy) -> dict[str, object]:
    return {f.name: getattr(instance, f.name) for f in fields(instance) if f.init}


def _default_domains() -> dict[str, DomainPolicy]:
    return {name: DOMAIN_DEFAULTS[name] for name in ("backtest", "dryrun", "live")}


def _build_domains(builder: Builder, raw: object) -> dict[str, DomainPolicy] | None:
    if raw is None:
        return _default_domains()
    if not isinstance(raw, Mapping):
        builder.add("domains", f"expected a mapping, got {describe(raw)}")
        return None
    result: dict[str, DomainPolicy] = {}
    for name, value in raw.items():
        if name not in DOMAIN_NAMES:
            builder.unknown_key(
                join_path("domains", name),
                str(name),
                DOMAIN_NAMES,
                renamed=_DOMAIN_ALIASES,
                noun="domain",
                note="an alias",
            )
            continue
        base = _as_kwargs(DOMAIN_DEFAULTS[name])
        policy = builder.build(DomainPolicy, value, f"domains.{name}", base=base)
        if policy is not None:
            result[name] = policy
    return result


def _build_exchanges(
    builder: Builder, raw: object, base_limit: RateLimiterConfig
) -> dict[str, ExchangeConfig] | None:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        builder.add("exchanges", f"expected a mapping of ccxt ids, got {describe(raw)}")
        return None
    result: dict[str, ExchangeConfig] = {}
    for exchange_id, value in raw.items():
        if not isinstance(exchange_id, str):
            builder.add("exchanges", f"keys must be strings, got {describe(exchange_id)}")
            continue
        path = f"exchanges.{exchange_id}"
        block = value.get("rate_limit") if isinstance(value, Mapping) else None
        limiter: RateLimiterConfig | None = None
        if block is not None:
            limiter = builder.build(
                RateLimiterConfig, block, f"{path}.rate_limit", base=_as_kwargs(base_limit)
            )
            rps = value.get("rate_limit_rps") if isinstance(value, Mapping) else None
            if rps is not None and isinstance(block, Mapping):
                for key in ("tokens_per_interval", "interval_ms"):
                    if key in block:
                        builder.add(
                            f"{path}.rate_limit_rps",
                            f"conflicts with {path}.rate_limit.{key}; rate_limit_rps is "
                            "shorthand for tokens_per_interval=rps, interval_ms=1000 "
                            "(set one or the other)",
                        )
        entry = builder.build(
            ExchangeConfig, value, path, base={"rate_limit": limiter}, exclude=("rate_limit",)
        )
        if entry is not None:
            for problem in check_exchange(exchange_id, entry):
                builder.errors.append(problem)
            result[exchange_id] = entry
    return result
