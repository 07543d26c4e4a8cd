"""The configuration reference is generated from the settings model, so it cannot drift:
``docs/configuration.md`` is exactly the generated text, every key the loader accepts is in
it, and a setting without a docstring cannot be added."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qmtl.cli.main import main
from qmtl.runtime.sdk import config_reference
from qmtl.runtime.sdk.config import QMTLConfig, load_config
from qmtl.runtime.sdk.config_reference import REGENERATE, render_reference
from qmtl.runtime.sdk.pending_settings import PENDING_SETTINGS

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
PLACEHOLDERS = {"domains": "<name>", "exchanges": "<id>"}
ROW = re.compile(r"^\| `([^`]+)` \| (.*) \|$")
#: Every environment variable the loader reads (``load_config`` and ``redis_dsn_from_env``).
VARIABLES = {
    "QMTL_SEAMLESS_COORDINATOR_URL",
    "QMTL_SEAMLESS_COORDINATOR_TOKEN",
    "QMTL_CCXT_RATE_LIMITER_REDIS",
    "QMTL_SEAMLESS_ARTIFACTS",
    "QMTL_SEAMLESS_ARTIFACT_DIR",
    "QMTL_SEAMLESS_PUBLISH_FP",
    "QMTL_SEAMLESS_EARLY_FP",
    "QMTL_SEAMLESS_WORKER",
    "HOSTNAME",
    "QMTL_LOG_FORMAT",
}


def _leaf_keys(cls: type, prefix: str) -> Iterator[str]:
    """Every leaf key path under dataclass ``cls``, walked independently of the renderer."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = f"{prefix}.{field.name}" if prefix else field.name
        hint = hints[field.name]
        inner = [
            arg
            for arg in (hint, *typing.get_args(hint))
            if isinstance(arg, type) and dataclasses.is_dataclass(arg)
        ]
        if not inner:
            yield path
        elif typing.get_origin(hint) in (typing.get_origin(typing.Mapping[str, int]), dict):
            yield from _leaf_keys(inner[0], f"{path}.{PLACEHOLDERS[field.name]}")
        else:
            yield from _leaf_keys(inner[0], path)


def _rows(text: str) -> dict[str, str]:
    """Key -> the rest of its table row."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := ROW.match(line))}


def test_docs_configuration_md_is_the_generated_reference() -> None:
    stale = "docs/configuration.md is stale: run qmtl-seamless config reference --out "
    assert DOC.read_text(encoding="utf-8") == render_reference(), stale + "docs/configuration.md"


def test_says_it_is_generated_and_how_to_regenerate() -> None:
    head = render_reference().splitlines()[:5]
    assert any("Generated from the settings model" in line for line in head)
    assert f"`{REGENERATE}`" in "\n".join(head)
    assert REGENERATE == "qmtl-seamless config reference --out docs/configuration.md"


def test_every_leaf_setting_has_a_row() -> None:
    rows = _rows(render_reference())
    keys = list(_leaf_keys(QMTLConfig, ""))
    assert len(keys) > 60
    assert [key for key in keys if key not in rows] == []
    assert set(rows) - set(keys) == VARIABLES  # and nothing else
    for known in (
        "seamless.backfill.window_bars",
        "seamless.rate_limit.redis_dsn",
        "seamless.storage.dsn",
        "exchanges.<id>.rate_limit_rps",
        "exchanges.<id>.rate_limit.tokens_per_interval",
        "domains.<name>.max_lag_sec",
    ):
        assert known in rows


def test_rows_are_typed_and_defaulted_as_yaml() -> None:
    rows = _rows(render_reference())
    assert rows["seamless.backfill.window_bars"].startswith("int | `900` | Bars per backfill")
    assert rows["seamless.backfill.mode"].startswith("one of `background`/`sync` | `background` |")
    assert rows["seamless.sla.max_sync_gap_bars"].startswith("int or null | `null` |")
    assert rows["seamless.live.ws.reconnect_backoff_ms"].startswith(
        "list of int | `[500, 1000, 2000, 5000]` |"
    )
    assert rows["seamless.conformance.gap_flagging"].startswith("bool | `true` |")
    assert rows["seamless.sla.on_violation"].startswith(
        "one of `FAIL_FAST`/`PARTIAL_FILL`/`HOLD` | `PARTIAL_FILL` |"
    )
    assert rows["exchanges.<id>.ccxt_options"].startswith("mapping | `{}` |")
    # Domains: each domain's own default; an exchange's rate_limit block: seamless.rate_limit's.
    assert rows["domains.<name>.source"].split(" | ")[1] == (
        "`artifact_only` (backtest); `artifact_prefers` (dryrun); "
        "`storage_backfill_live` (live, shadow)"
    )
    assert rows["exchanges.<id>.rate_limit.burst_tokens"].split(" | ")[1] == (
        "as `seamless.rate_limit.burst_tokens`"
    )


def test_the_defaults_shown_are_the_loaded_defaults() -> None:
    """A file writing any shown default, as shown, loads to exactly the defaults."""
    rows = _rows(render_reference())
    default = load_config({}, env={})
    checked = 0
    for key, rest in rows.items():
        if "<" in key or key.isupper():  # per-domain / per-exchange tables, variables
            continue
        *blocks, name = key.split(".")
        shown = rest.split(" | ")[1].removeprefix("`").removesuffix("`")
        text = "".join(f"{'  ' * depth}{block}:\n" for depth, block in enumerate(blocks))
        text += f"{'  ' * len(blocks)}{name}: {shown}\n"
        assert load_config(text, env={}) == default, text
        checked += 1
    assert checked > 50


def test_the_example_in_the_intro_loads() -> None:
    text = render_reference()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = load_config(example, env={"QMTL_CCXT_RATE_LIMITER_REDIS": "redis://r:6379/0"})
    assert config.exchanges["binance"].rate_limit_rps == 20


def test_every_pending_setting_is_marked_and_only_those() -> None:
    rows = _rows(render_reference())
    pending = {key.replace("*", "<name>") for key in PENDING_SETTINGS}
    marked = {key for key, rest in rows.items() if rest.endswith("(accepted, not used yet)")}
    assert marked == pending


def test_environment_variables_the_loader_reads_are_listed() -> None:
    rows = _rows(render_reference())
    assert set(rows) >= VARIABLES
    assert rows["QMTL_LOG_FORMAT"].startswith("`seamless.observability.log_format`")
    text = render_reference()
    assert "explicit command-line argument" in text
    assert text.index("command-line argument") < text.index("environment variable (below)")
    assert text.index("environment variable (below)") < text.index("> the file > the default")


def test_no_spec_references_and_deterministic() -> None:
    text = render_reference()
    assert "SPEC" not in text
    assert "§" not in text
    assert text == render_reference()
    assert text.endswith("|\n")


@dataclass(frozen=True, kw_only=True)
class _Undocumented:
    """A throwaway settings block: one field documented, one not."""

    documented: int = 1
    """Has its docstring."""
    bare: int = 2


@dataclass(frozen=True, kw_only=True)
class _Documented:
    """A throwaway settings block, fully documented."""

    retries: int | None = 3
    """How many times; ``null``: never."""
    tags: tuple[str, ...] = ("a",)
    """Labels, see :class:`~x.Y`."""


def test_a_setting_without_docstring_fails_the_renderer() -> None:
    with pytest.raises(TypeError, match=r"_Undocumented\.bare") as caught:
        config_reference._walk(_Undocumented, "x")
    assert "documented" not in str(caught.value).replace("_Undocumented", "")


def test_the_walker_reads_attribute_docstrings() -> None:
    (section,) = config_reference._walk(_Documented, "x", "Intro.")
    assert section.path == "x"
    assert section.intro == "Intro."
    assert section.rows == (
        ("x.retries", "int or null", "`3`", "How many times; `null`: never."),
        ("x.tags", "list of str", "`[a]`", "Labels, see `x.Y`."),
    )


def test_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    out, err = capsys.readouterr()
    assert out == render_reference()
    assert err == ""


def test_cli_writes_the_reference_with_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "configuration.md"
    assert main(["config", "reference", "--out", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_reference()
    assert capsys.readouterr().out == ""


def test_cli_out_to_a_missing_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "reference", "--out", str(tmp_path / "nope" / "c.md")]) == 2
    assert capsys.readouterr().err.startswith("qmtl-seamless config: error: ")
