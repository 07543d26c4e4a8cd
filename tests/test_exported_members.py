"""The public surface is derived from the modules, never typed by hand (httpx's rule):

- a package ``__init__`` exports exactly the public names it binds — importing one
  more name there without exporting it (or exporting one it does not bind) fails;
- every module declares ``__all__``, and a module's ``__all__`` names only what that module
  defines: a name is exported from one module and re-exported only by package ``__init__``s
  (a public module may front a private ``_sibling`` it is split into).

The SPEC's required names (§2) are checked as a subset: the contract, not the inventory.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import types
from pathlib import Path

import qmtl

#: SPEC §2: what ``qmtl.runtime.io`` must re-export (ArtifactRegistrar arrives with artifacts).
SPEC_IO = {"EnhancedQuestDBProvider", "CcxtOHLCVFetcher", "CcxtBackfillConfig", "RateLimiterConfig"}


def _modules() -> list[types.ModuleType]:
    return [
        importlib.import_module(info.name) for info in pkgutil.walk_packages(qmtl.__path__, "qmtl.")
    ]


def _is_package(module: types.ModuleType) -> bool:
    return hasattr(module, "__path__")


def test_package_inits_export_exactly_what_they_bind() -> None:
    for module in _modules():
        if not _is_package(module):
            continue
        public = sorted(
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        )
        exported = sorted(getattr(module, "__all__", []))  # order: ruff's RUF022
        assert exported == public, f"{module.__name__}: __all__ vs bound names"


def _defined_names(path: Path) -> set[str]:
    """Names bound at module level by a def, class or assignment (not by an import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _private_sibling_names(module: types.ModuleType, path: Path) -> set[str]:
    """Names imported from private modules of the same package (``_config_models`` for
    ``config``): the public module is their one public home."""
    package = module.__name__.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "._")
        for alias in node.names
    }


def test_every_module_exports_only_its_own_names() -> None:
    for module in _modules():
        if _is_package(module):
            continue
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module.__name__} has no __all__"
        path = Path(inspect.getfile(module))
        own = _defined_names(path) | _private_sibling_names(module, path)
        foreign = sorted(set(exported) - own)
        assert not foreign, f"{module.__name__}.__all__ re-exports {foreign}"
        for name in exported:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_spec_names_are_public() -> None:
    import qmtl.runtime.io as io_pkg

    assert set(io_pkg.__all__) >= SPEC_IO
