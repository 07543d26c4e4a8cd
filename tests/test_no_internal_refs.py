"""Users have the README, ``docs/``, ``--help`` and docstrings — not the engineers' contract
document. Nothing they can read may send them to it."""

from __future__ import annotations

from pathlib import Path

from qmtl.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_no_source_file_cites_the_internal_spec() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "qmtl").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "SPEC" in line.replace("_INSPECT", "")
    ]
    assert cited == []


def test_no_help_text_cites_it() -> None:
    parser = build_parser()
    texts = [parser.format_help()]
    actions = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    while actions:
        for sub in actions.pop().choices.values():
            texts.append(sub.format_help())
            actions += [a for a in sub._actions if a.choices and isinstance(a.choices, dict)]
    assert len(texts) > 10 and not [t for t in texts if "SPEC" in t]
