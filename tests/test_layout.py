"""The package's layout rules, checked on the source: no module reads another module's
private names, no function grows past a screenful and a half, the model class stays thin."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "src" / "multidgd").rglob("*.py"))
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
MAX_FUNCTION_LINES = 100


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_private_attributes(tree: ast.AST) -> set[str]:
    """Private attribute names a module defines itself (``self._x = ...`` or in a class body)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(item.name):
                    names.add(item.name)
    return names


def private_reads(path: Path) -> list[str]:
    """``from x import _y`` and ``obj._attr`` where the module does not define ``_attr``."""
    tree = ast.parse(path.read_text())
    own = _own_private_attributes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            is_super = isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super"
            if not is_super:
                found.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", SOURCES + BENCHMARKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_across_modules(path):
    assert private_reads(path) == []


def test_the_check_finds_private_reads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .model import _select\n\ndef f(model):\n    return model._state, super()._apply\n")
    assert private_reads(bad) == ["bad.py:1 imports _select", "bad.py:4 reads model._state"]


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path):
    assert long_functions(path) == []


def test_every_module_declares_its_public_names():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        declared = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__"]
        if path.name in ("__main__.py",):
            continue
        assert declared, f"{path.relative_to(ROOT)} has no __all__"
        try:
            exported = set(ast.literal_eval(declared[0].value))
        except ValueError:  # built from submodules' lists: ask the module itself
            name = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
            exported = set(importlib.import_module(name).__all__)
        public = {
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.ClassDef) and not _private(n.name) and not n.name.startswith("__")
        }
        assert public <= exported, f"{path.relative_to(ROOT)}: {sorted(public - exported)} missing from __all__"
