"""The floors of nnx held against the source: read with `ast`, nothing is imported.

The floor list is the numbered list in README.md's "Layout" section, lowest floor first. Each
item starts with the files of one floor in backticks, paths under ``nnx/`` (``dir/*`` is every
file of that subpackage not named on a floor of its own), then a colon and what they hold.

- Every ``.py`` file under ``nnx/`` is on exactly one floor, and every entry names a file.
- No file imports a file on a higher floor. Imports at module level and inside functions count
  alike; imports under ``if TYPE_CHECKING:`` are exempt (they never run).
- No import cycle among the modules of nnx. Imports inside functions count too: one that closes
  a cycle only postpones it. So files on one floor may import each other, but never in a ring.
- ``transforms/`` and ``nn/`` sit below ``spmd.py``, so they never import it: what they need of
  sharding lives on a floor below them (``_sharding_meta.py``, ``_sharding_specs.py``).
- No module of nnx monkeypatches another at import time (``other_module.name = ...`` at module
  level), the way ``spmd.py`` once installed ``variables._place_new_value``.

``KNOWN_VIOLATIONS`` lists the imports that break the floors today; the test fails as soon as
one of them no longer occurs, so that the list cannot go stale.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnx"
README = ROOT / "README.md"

# (importing file, imported file) under nnx/: imports that break the floors today, exempt from
# the upward-import and cycle checks; a pair that no longer breaks them fails the test. Empty
# since the graph-core rewrite of issue 15 (GraphDef.apply no longer imports graph.py: the
# functional call lives beside GraphDef). Add a pair only with the issue that removes it.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()

# Where to look instead, for imports of files that lower floors tend to reach up to.
HINTS = {
    "spmd.py": "import from nnx._sharding_meta (annotations, eager sharding, place_new_value, "
    "stacking metadata) or nnx._sharding_specs (PartitionSpec/NamedSharding of a State, "
    "abstract shardings)",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _files(*subdirs: str) -> list[Path]:
    roots = [PACKAGE / d for d in subdirs] if subdirs else [PACKAGE]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def _ids(paths: list[Path]) -> list[str]:
    return [_rel(p) for p in paths]


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` in `path` imports from."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


# --- The floor list -------------------------------------------------------------------------

_ITEM = re.compile(r"(\d+)\. (.*)")
_ENTRIES = re.compile(r"((?:`[^`]+`,\s*)*`[^`]+`):\s")


def _parse_floors(readme: str) -> list[list[str]]:
    """The floors of `readme`'s Layout section, lowest first, each as its list of entries.

    Raises:
      ValueError: no Layout section, items not numbered 1, 2, 3..., or an item that does not
        start with its files in backticks followed by a colon.
    """
    _, found, section = readme.partition("\n## Layout\n")
    if not found:
        raise ValueError("README.md has no '## Layout' section.\nFix: restore it.")
    items: list[str] = []
    open_item = False
    for line in section.split("\n## ")[0].splitlines():
        item = _ITEM.fullmatch(line)
        if item:
            if int(item[1]) != len(items) + 1:
                raise ValueError(
                    f"Layout item {item[1]} follows item {len(items)}.\nFix: number the floors "
                    "1, 2, 3... from the bottom up."
                )
            items.append(item[2])
            open_item = True
        elif open_item and line.startswith(" ") and line.strip():
            items[-1] += " " + line.strip()
        else:
            open_item = False
    floors = []
    for number, text in enumerate(items, 1):
        entries = _ENTRIES.match(text)
        if not entries:
            raise ValueError(
                f"Layout item {number} does not start with its files: {text[:60]!r}.\n"
                "Fix: write it as '`a.py`, `b.py`, `sub/*`: what they hold'."
            )
        floors.append(re.findall(r"`([^`]+)`", entries[1]))
    if not floors:
        raise ValueError("README.md's Layout section lists no floor.\nFix: restore the list.")
    return floors


def _place(floors: list[list[str]], files: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Each file's floor number (1 is the lowest), and what is wrong with the list.

    A file named on a floor is on that floor; otherwise a ``dir/*`` entry that covers it
    places it. Wrong: a file on no floor, on two, or an entry that names no file.
    """
    files = sorted(files)
    named: dict[str, list[int]] = {}
    globbed: dict[str, list[int]] = {}
    problems = []
    for number, entries in enumerate(floors, 1):
        for entry in entries:
            if entry.endswith("/*"):
                hits = [f for f in files if f.startswith(entry[:-1])]
                places = globbed
            else:
                hits = [entry] if entry in files else []
                places = named
            if not hits:
                problems.append(f"floor {number} lists `{entry}`, which is no file of nnx/")
            for hit in hits:
                places.setdefault(hit, []).append(number)
    floor = {}
    for file in files:
        numbers = named.get(file) or globbed.get(file) or []
        if len(numbers) == 1:
            floor[file] = numbers[0]
        elif numbers:
            problems.append(f"nnx/{file} is on floors {', '.join(map(str, numbers))}")
        else:
            problems.append(f"nnx/{file} is on no floor")
    return floor, problems


def _describe(floors: list[list[str]], number: int) -> str:
    return f"floor {number} ({', '.join(f'`{e}`' for e in floors[number - 1])})"


# --- Imports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Import:
    """One nnx file an import statement runs."""

    line: int
    target: str  # under nnx/, e.g. "transforms/_lift.py"
    in_function: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(
    node: ast.AST, in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each import statement under `node` that can run, and whether it sits in a function.

    The body of an ``if TYPE_CHECKING:`` never runs (its ``else:`` does).
    """
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, in_function
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    for child in children:
        yield from _runtime_imports(child, inner)


def _with_packages(module: str) -> set[str]:
    """`module` and the packages it sits in: ``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _dependencies(
    path: Path, node: ast.Import | ast.ImportFrom, modules: Mapping[str, str]
) -> set[str]:
    """The nnx files (under nnx/) that import statement `node` of file `path` runs.

    Importing ``a.b.c`` runs ``a`` and ``a.b`` first; ``from a.b import x`` runs ``a.b``, then
    ``a.b.x`` when that is a module. The packages `path` sits in are already running when it
    runs, so they are no dependency, unless a name that is no submodule is taken from one:
    ``from nnx import Linear`` needs ``nnx/__init__.py`` to have run. `modules` maps the module
    names of nnx to their files.
    """
    me = _module_name(path)
    running = _with_packages(me)
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            found |= _with_packages(alias.name) - running
            found.add(alias.name)  # `import nnx` from inside binds the whole package
    else:
        source = _resolve(path, node)
        found |= _with_packages(source) - running
        submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
        found |= submodules
        if len(submodules) < len(node.names):  # a name defined in `source` itself
            found.add(source)
    return {modules[m] for m in found - {me} if m in modules}


def _imports(sources: Mapping[str, str]) -> dict[str, list[_Import]]:
    """For each file of `sources` (path under nnx/ -> text), the nnx files its imports run."""
    modules = {_module_name(PACKAGE / rel): rel for rel in sources}
    found: dict[str, list[_Import]] = {}
    for rel, text in sources.items():
        path = PACKAGE / rel
        found[rel] = [
            _Import(node.lineno, target, in_function)
            for node, in_function in _runtime_imports(ast.parse(text, str(path)))
            for target in sorted(_dependencies(path, node, modules))
        ]
    return found


def _upward(
    imports: Mapping[str, list[_Import]],
    floors: list[list[str]],
    floor: Mapping[str, int],
    exempt: frozenset[tuple[str, str]] = frozenset(),
) -> list[str]:
    """A message for each import of a file on a higher floor, but for the `exempt` pairs."""
    messages = []
    for rel, found in sorted(imports.items()):
        for imp in found:
            here, there = floor[rel], floor[imp.target]
            if there <= here or (rel, imp.target) in exempt:
                continue
            where = " inside a function" if imp.in_function else ""
            hint = f"\nFor nnx/{imp.target}: {HINTS[imp.target]}." if imp.target in HINTS else ""
            messages.append(
                f"nnx/{rel}:{imp.line} imports nnx/{imp.target}{where}, which is on "
                f"{_describe(floors, there)}, above nnx/{rel} on {_describe(floors, here)}.\n"
                f"Fix: move what it uses down to floor {here} or below, or move nnx/{rel} up "
                f"to floor {there} or above in README.md's Layout when nothing below needs it. "
                f"Importing inside a function does not make it right.{hint}"
            )
    return messages


def _stale(
    known: Iterable[tuple[str, str]],
    imports: Mapping[str, list[_Import]],
    floor: Mapping[str, int],
) -> list[str]:
    """A message for each `known` violation that no longer occurs."""
    messages = []
    for importer, target in sorted(known):
        found = any(i.target == target for i in imports.get(importer, []))
        if not found or floor.get(target, 0) <= floor.get(importer, 0):
            messages.append(
                f"nnx/{importer} no longer imports nnx/{target} from a lower floor.\n"
                "Fix: remove the pair from KNOWN_VIOLATIONS in tests/test_floors.py."
            )
    return messages


def _graph(
    imports: Mapping[str, list[_Import]], exempt: frozenset[tuple[str, str]] = frozenset()
) -> dict[str, set[str]]:
    return {
        rel: {i.target for i in found if (rel, i.target) not in exempt}
        for rel, found in imports.items()
    }


def _reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    """The nodes one or more edges away from `start`."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def _shortest_cycle(graph: Mapping[str, set[str]], start: str) -> list[str]:
    """A shortest path start -> ... -> start (`start` must be on a cycle)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise ValueError(f"{start} is on no cycle")


def _cycles(graph: Mapping[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """For each strongly connected component (the nodes caught in cycles with each other), a
    shortest cycle through its first node, and the sorted component."""
    reach = {node: _reachable(graph, node) for node in graph}
    done: set[str] = set()
    cycles = []
    for node in sorted(graph):
        if node in done or node not in reach[node]:
            continue
        component = {other for other in reach[node] if node in reach.get(other, ())}
        done |= component
        cycles.append((_shortest_cycle(graph, node), sorted(component)))
    return cycles


def _cycle_message(
    cycle: list[str], component: list[str], imports: Mapping[str, list[_Import]]
) -> str:
    hops = []
    for here, there in itertools.pairwise(cycle):
        imp = next(i for i in imports[here] if i.target == there)
        where = ", inside a function" if imp.in_function else ""
        hops.append(f"nnx/{here} (line {imp.line}{where})")
    tangle = ""
    if len(component) > len(cycle) - 1:
        tangle = f" ({len(component)} files are tangled in cycles: {', '.join(component)})"
    return (
        f"import cycle: {' -> '.join([*hops, f'nnx/{cycle[-1]}'])}{tangle}.\n"
        "Fix: move what they share to a file on a lower floor that imports none of them (or "
        "merge them). An import inside a function only postpones the cycle."
    )


# --- Monkeypatching -------------------------------------------------------------------------


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


# --- The package against the list -----------------------------------------------------------

ALL_FILES = _files()


@functools.cache
def _floors() -> list[list[str]]:
    return _parse_floors(README.read_text())


@functools.cache
def _placed() -> tuple[dict[str, int], list[str]]:
    return _place(_floors(), _ids(ALL_FILES))


@functools.cache
def _package_imports() -> dict[str, list[_Import]]:
    return _imports({_rel(p): p.read_text() for p in ALL_FILES})


def test_the_checks_see_the_files():
    names = set(_ids(ALL_FILES))
    assert {"__init__.py", "spmd.py", "transforms/tracing.py", "nn/lazy.py"} <= names
    assert len(_floors()) > 10
    assert sum(len(found) for found in _package_imports().values()) > 300


def test_every_file_is_on_exactly_one_floor():
    _, problems = _placed()
    assert not problems, (
        "README.md's Layout section and the files of nnx/ disagree:\n  "
        + "\n  ".join(problems)
        + "\nFix: list each file of nnx/ on exactly one floor (`dir/*` covers a subpackage), "
        "and drop entries for files that are gone."
    )


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_no_upward_import(path: Path):
    floor, _ = _placed()
    rel = _rel(path)
    imports = {rel: _package_imports()[rel]}
    unplaced = sorted({rel, *(i.target for i in imports[rel])} - floor.keys())
    if unplaced:
        pytest.fail(f"{unplaced} on no floor of README.md's Layout: see the test above")
    messages = _upward(imports, _floors(), floor, KNOWN_VIOLATIONS)
    assert not messages, "\n".join(messages)


def test_no_import_cycle():
    imports = _package_imports()
    cycles = _cycles(_graph(imports, KNOWN_VIOLATIONS))
    assert not cycles, "\n".join(_cycle_message(*c, imports) for c in cycles)


def test_the_known_violations_still_occur():
    floor, _ = _placed()
    stale = _stale(KNOWN_VIOLATIONS, _package_imports(), floor)
    assert not stale, "\n".join(stale)


def test_transforms_and_nn_sit_below_spmd():
    floor, _ = _placed()
    low = {f: n for f, n in floor.items() if f.startswith(("transforms/", "nn/"))}
    above = sorted(f for f, n in low.items() if n >= floor["spmd.py"])
    assert low and not above, (
        f"README.md's Layout puts {above} on or above spmd.py's floor.\nFix: keep transforms/ "
        f"and nn/ below spmd.py; for sharding they {HINTS['spmd.py']}."
    )


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_no_module_patches_another_at_import_time(path: Path):
    found = _patches(path, path.read_text())
    assert not found, (
        f"nnx/{_rel(path)} assigns attributes of another module at import "
        f"time: {found}.\nFix: move the definition to the module that uses it (or a floor "
        "below both) and import it there."
    )


# Private names (``_x``) that one module of nnx imports from another, each with its reason.
# Shared internals live under plain names in private modules (``nnx/_build.py`` exports
# ``build``); importing a private *module* (``from . import _version``) is fine.
PRIVATE_IMPORTS = {
    ("var_modes.py", "nnx.variablelib", "_refuse_refs"): "the one refusal message of flax's "
    "hijax/ref Variables, shared with Variable's constructors; variablelib is flax's public "
    "namespace and gets no extra name for it",
}


def _private_imports(path: Path, tree: ast.Module) -> list[tuple[str, str, str, int]]:
    """(file, source module, name, line) for every private name `path` imports from nnx."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(path, node)
            if source.split(".")[0] != "nnx":
                continue
            for alias in node.names:
                name = alias.name
                private = name.startswith("_") and not name.startswith("__")
                if private and not _is_nnx_module(f"{source}.{name}"):
                    found.append((_rel(path), source, name, node.lineno))
    return found


def test_private_names_stay_in_their_module():
    found = [
        hit for path in ALL_FILES for hit in _private_imports(path, ast.parse(path.read_text()))
    ]
    unexpected = [
        f"nnx/{f}:{line} imports {name} from {src}"
        for f, src, name, line in found
        if (f, src, name) not in PRIVATE_IMPORTS
    ]
    assert not unexpected, (
        "Private names imported across modules:\n  "
        + "\n  ".join(unexpected)
        + "\nFix: give the shared internal a plain name in a private module (nnx/_x.py) and "
        "import that, or add it to PRIVATE_IMPORTS with the reason."
    )
    stale = set(PRIVATE_IMPORTS) - {(f, src, name) for f, src, name, _ in found}
    assert not stale, f"PRIVATE_IMPORTS lists imports that are gone: {sorted(stale)}"


def test_the_private_import_check_catches_one(tmp_path: Path):
    source = "from ._graphdef import _hidden, GraphDef\nfrom . import _version\n"
    tree = ast.parse(source)
    assert _private_imports(PACKAGE / "graph.py", tree) == [
        ("graph.py", "nnx._graphdef", "_hidden", 1)
    ]


# --- The checks can fail --------------------------------------------------------------------

LAYOUT = """\
# Title

## Layout

Some prose, then the floors:

1. `errors.py`, `_keys.py`: errors (with `NNXError`: a colon in the prose)
2. `state.py`:
   State
3. `graph.py`, `sub/*`, `sub/low.py`: one line
   and its continuation; `not_an_entry.py`
4. `sub/low.py`, `gone.py`: again

## Next
1. `ignored.py`: another section
"""


def test_the_layout_parser_reads_the_numbered_floors():
    floors = _parse_floors(LAYOUT)
    assert floors == [
        ["errors.py", "_keys.py"],
        ["state.py"],
        ["graph.py", "sub/*", "sub/low.py"],
        ["sub/low.py", "gone.py"],
    ]
    files = ["errors.py", "state.py", "graph.py", "sub/__init__.py", "sub/low.py", "extra.py"]
    floor, problems = _place(floors, files)
    assert floor == {"errors.py": 1, "state.py": 2, "graph.py": 3, "sub/__init__.py": 3}
    assert problems == [
        "floor 1 lists `_keys.py`, which is no file of nnx/",
        "floor 4 lists `gone.py`, which is no file of nnx/",
        "nnx/extra.py is on no floor",
        "nnx/sub/low.py is on floors 3, 4",
    ]
    with pytest.raises(ValueError, match="item 3 follows item 1"):
        _parse_floors(LAYOUT.replace("2. `state", "3. `state"))
    with pytest.raises(ValueError, match="item 2 does not start with its files"):
        _parse_floors(LAYOUT.replace("2. `state.py`:", "2. State, in"))


def test_the_import_check_resolves_every_form():
    modules = {_module_name(p): _rel(p) for p in ALL_FILES}

    def deps(rel: str, line: str) -> set[str]:
        node = ast.parse(line).body[0]
        assert isinstance(node, ast.Import | ast.ImportFrom)
        return _dependencies(PACKAGE / rel, node, modules)

    probe = "transforms/probe.py"
    for line in (
        "from ..spmd import X",
        "from .. import spmd",
        "import nnx.spmd",
        "from nnx.spmd import Y",
        "from nnx import spmd as s",
    ):
        assert deps(probe, line) == {"spmd.py"}, line
    assert deps(probe, "from ._lift import f, g") == {"transforms/_lift.py"}
    assert deps(probe, "from .spmd import Z") == set()  # no such module
    assert deps(probe, "import jax.numpy as jnp") == set()
    # A name from a package's __init__ needs it run; a package one sits in is already running.
    assert deps("examples/job.py", "from nnx import Linear") == {"__init__.py"}
    assert deps("examples/job.py", "import nnx") == {"__init__.py"}
    assert deps("checkpointing.py", "from .transforms._lift import f") == {
        "transforms/__init__.py",
        "transforms/_lift.py",
    }
    assert deps("transforms/__init__.py", "from . import jit") == {"transforms/jit.py"}


SOURCES = {
    "__init__.py": "",
    "errors.py": "class NNXError(Exception): ...\n",
    "state.py": (
        "from typing import TYPE_CHECKING\n"
        "from .errors import NNXError\n"
        "if TYPE_CHECKING:\n"
        "    from .graph import split\n"  # never runs: exempt
        "def f():\n"
        "    from .graph import merge\n"  # line 6: upward, inside a function
        "    return merge\n"
        "class C:\n"
        "    import nnx.graph_tools as gt\n"  # line 9: upward, in a class body
    ),
    "graph.py": "from . import state\nfrom .errors import NNXError\n",
    "graph_tools.py": "from .graph import split\n",
}
FLOORS = [["__init__.py", "errors.py"], ["state.py"], ["graph.py", "graph_tools.py"]]


def test_the_upward_check_catches_an_import_from_above():
    imports = _imports(SOURCES)
    floor, problems = _place(FLOORS, SOURCES)
    assert not problems
    messages = _upward(imports, FLOORS, floor)
    assert [m.split(" imports ")[0] for m in messages] == ["nnx/state.py:6", "nnx/state.py:9"]
    assert (
        "imports nnx/graph.py inside a function, which is on floor 3 (`graph.py`, "
        "`graph_tools.py`)" in messages[0]
    )
    assert "above nnx/state.py on floor 2 (`state.py`)" in messages[0]
    assert "Fix: move what it uses down to floor 2 or below" in messages[0]
    assert _upward(imports, FLOORS, floor, frozenset({("state.py", "graph.py")})) == messages[1:]


def test_the_stale_check_catches_a_violation_that_is_gone():
    imports = _imports(SOURCES)
    floor, _ = _place(FLOORS, SOURCES)
    assert _stale({("state.py", "graph.py"), ("state.py", "graph_tools.py")}, imports, floor) == []
    gone = [("state.py", "errors.py"), ("graph.py", "graph_tools.py"), ("nope.py", "graph.py")]
    assert [m.split(" no longer")[0] for m in _stale(gone, imports, floor)] == [
        "nnx/graph.py",  # does not import graph_tools.py at all
        "nnx/nope.py",  # no such file
        "nnx/state.py",  # imports errors.py, from above
    ]


def test_the_cycle_check_reports_the_path():
    imports = _imports(SOURCES)
    cycles = _cycles(_graph(imports))
    tangle = ["graph.py", "graph_tools.py", "state.py"]
    assert cycles == [(["graph.py", "state.py", "graph.py"], tangle)]
    assert _cycle_message(*cycles[0], imports).startswith(
        "import cycle: nnx/graph.py (line 1) -> nnx/state.py (line 6, inside a function) -> "
        "nnx/graph.py (3 files are tangled in cycles: graph.py, graph_tools.py, state.py).\nFix:"
    )
    longer = _cycles(_graph(imports, frozenset({("state.py", "graph.py")})))
    assert longer == [(["graph.py", "state.py", "graph_tools.py", "graph.py"], tangle)]
    assert "tangled" not in _cycle_message(*longer[0], imports)
    assert _cycles(_graph(imports, frozenset({("graph.py", "state.py")}))) == []
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert _cycles(ring) == [(["a", "b", "c", "a"], ["a", "b", "c"]), (["e", "e"], ["e"])]


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
