"""The floors of DESIGN.md held against the source: read with `ast`, nothing is imported.

- ``transforms/`` and ``nn/`` never import ``nnx.spmd``: what they need of sharding lives on
  a floor below them (``nnx._sharding_meta``, ``nnx._sharding_specs``).
- No module of nnx monkeypatches another at import time (``other_module.name = ...`` at module
  level), the way ``spmd.py`` once installed ``variables._place_new_value``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nnx"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(*subdirs: str) -> list[Path]:
    roots = [PACKAGE / d for d in subdirs] if subdirs else [PACKAGE]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(PACKAGE)) for p in paths]


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` in `path` imports from."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imported_modules(path: Path, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every module `tree` imports, at any depth of the file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(path, node)
            yield node.lineno, source
            for alias in node.names:  # `from .. import spmd` imports the module nnx.spmd
                yield node.lineno, f"{source}.{alias.name}"


def _is_nnx_module(name: str) -> bool:
    relative = Path(*name.split("."))
    root = PACKAGE.parent
    return (root / relative).with_suffix(".py").is_file() or (root / relative).is_dir()


def _module_aliases(path: Path, tree: ast.Module) -> dict[str, str]:
    """Names bound at module level to a module: ``import a.b [as c]`` (any module) and
    ``from pkg import sub [as s]`` where ``pkg.sub`` is a module of nnx."""
    aliases: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(path, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full.split(".")[0] == "nnx" and _is_nnx_module(full):
                    aliases[alias.asname or alias.name] = full
    return aliases


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import time: the module body, into if/try/with/for blocks, but not
    into function or class bodies."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _module_level(getattr(stmt, field, []) or [])
        for handler in getattr(stmt, "handlers", []) or []:
            yield from _module_level(handler.body)


def _patches(path: Path, text: str) -> list[str]:
    tree = ast.parse(text, str(path))
    modules = _module_aliases(path, tree)
    found = []
    for stmt in _module_level(tree.body):
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AugAssign | ast.AnnAssign):
            targets = [stmt.target]
        elif (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name)
            and stmt.value.func.id in ("setattr", "delattr")
            and stmt.value.args
        ):
            targets = [ast.Attribute(value=stmt.value.args[0], attr="?", ctx=ast.Store())]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    root = _root_name(sub)
                    if root in modules:
                        found.append(f"line {stmt.lineno}: {ast.unparse(stmt)[:80]}")
    return found


LOW_FILES = _files("transforms", "nn")
ALL_FILES = _files()


def test_the_checks_see_the_files():
    assert any(p.name == "tracing.py" for p in LOW_FILES)
    assert any(p.name == "lazy.py" for p in LOW_FILES)
    assert any(p.name == "spmd.py" for p in ALL_FILES)


@pytest.mark.parametrize("path", LOW_FILES, ids=_ids(LOW_FILES))
def test_transforms_and_nn_do_not_import_spmd(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    bad = sorted({line for line, module in _imported_modules(path, tree) if module == "nnx.spmd"})
    assert not bad, (
        f"nnx/{path.relative_to(PACKAGE)} imports nnx.spmd (line {', '.join(map(str, bad))}): "
        "transforms/ and nn/ must not reach up to spmd.py.\n"
        "Fix: import from nnx._sharding_meta (annotations, eager sharding, _place_new_value, "
        "stacking metadata) or nnx._sharding_specs (PartitionSpec/NamedSharding of a State, "
        "abstract shardings)."
    )


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_no_module_patches_another_at_import_time(path: Path):
    found = _patches(path, path.read_text())
    assert not found, (
        f"nnx/{path.relative_to(PACKAGE)} assigns attributes of another module at import "
        f"time: {found}.\nFix: move the definition to the module that uses it (or a floor "
        "below both) and import it there."
    )


def test_the_patch_check_catches_the_old_spmd_hook():
    path = PACKAGE / "spmd.py"  # only its place in the package is used, not its text
    text = (
        "from . import variablelib as _variables\n"
        "from .errors import ShardingError\n"
        "import nnx.state\n"
        "def f():\n"
        "    _variables.x = 1\n"  # inside a function: not at import time
        "_variables._place_new_value = f\n"
        "if True:\n"
        "    nnx.state.y = 2\n"
        "setattr(_variables, 'z', 3)\n"
        "ShardingError.note = 4\n"  # a class, not a module: not this check's business
    )
    assert _module_aliases(path, ast.parse(text)) == {"_variables": "nnx.variablelib", "nnx": "nnx"}
    assert [f.split(":")[0] for f in _patches(path, text)] == ["line 6", "line 8", "line 9"]


def test_the_import_check_sees_relative_and_absolute_forms():
    path = PACKAGE / "transforms" / "probe.py"
    text = (
        "from ..spmd import X\nfrom .. import spmd\nimport nnx.spmd\nfrom nnx.spmd import Y\n"
        "from nnx import spmd as s\nfrom ..state import State\nfrom .spmd import Z\n"
    )
    hits = {line for line, m in _imported_modules(path, ast.parse(text)) if m == "nnx.spmd"}
    assert hits == {1, 2, 3, 4, 5}
