"""The layering contract (SPEC §2), checked on the source: the core (``qmtl.runtime.sdk``)
never imports the edges (``qmtl.runtime.io``, ``qmtl.services``, ``qmtl.cli``) — not even
under ``TYPE_CHECKING`` or inside a function — and the pure modules import no I/O library.
Ports (interfaces and the values crossing them) live in the sdk; the edges implement them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "qmtl"
SDK = ROOT / "runtime" / "sdk"
EDGES = ("qmtl.runtime.io", "qmtl.services", "qmtl.cli")
#: Pure logic: values in, values out (SPEC §2; STYLE 2).
PURE = ("bars", "history_coverage", "conformance", "fingerprint", "sla", "node_id")
IO_LIBRARIES = (
    "asyncio", "socket", "aiohttp", "duckdb", "asyncpg", "redis", "ccxt", "obstore",
    "pyarrow.parquet", "requests", "urllib.request", "subprocess", "threading",
)  # fmt: skip


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names (anywhere in the file)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_never_imports_the_edges() -> None:
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {name}"
        for path in sorted(SDK.rglob("*.py"))
        for line, name in _imports(path)
        if _under(name, EDGES)
    ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    offenders = [
        f"{module}.py:{line} imports {name}"
        for line, name in _imports(SDK / f"{module}.py")
        if _under(name, IO_LIBRARIES)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_type_checking_and_local_imports(tmp_path: Path) -> None:
    """The checker itself: an import hidden under TYPE_CHECKING or in a function counts."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from qmtl.runtime.io.storage import open_storage\n"
        "def f():\n    import qmtl.services.exchange_sim\n",
        encoding="utf-8",
    )
    names = [name for _, name in _imports(probe)]
    assert [n for n in names if _under(n, EDGES)] == [
        "qmtl.runtime.io.storage",
        "qmtl.services.exchange_sim",
    ]
