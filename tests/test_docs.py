"""The documentation: every public name has a docstring and an API-reference entry, and the site
builds with ``mkdocs build --strict`` (slow; needs the ``docs`` extra).

The API reference (``docs/api/*.md``) is a list of mkdocstrings entries, ``::: nnx.Name``. A
public name is documented by an entry whose path ends in that name and leads to the same object
(``::: nnx.graph.state`` documents ``nnx.state``, since ``nnx.state`` is also the name of a
submodule, which is what the docs tooling would find); a public submodule is documented by any
entry for that module, under any of its names (``nnx.filters`` documents ``nnx.filterlib``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import itertools
import os
import re
import subprocess
import sys
import types
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import nnx

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = (ROOT / "tests" / "public_api.txt").read_text().split()
if importlib.util.find_spec("flax") is None:  # nnx.bridge / nnx.wrappers need flax.linen
    PUBLIC = [name for name in PUBLIC if name not in ("bridge", "wrappers")]
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
ENTRY = re.compile(r"^::: ([\w.]+)[ \t]*$", re.MULTILINE)
_MISSING: Any = object()


@cache
def _attribute_docstrings() -> dict[str, str]:
    """``NAME = value`` at module level followed by a string literal, in nnx's sources: the
    docstring of a constant, which the constant itself cannot carry."""
    docs: dict[str, str] = {}
    for path in sorted((ROOT / "nnx").rglob("*.py")):
        body = ast.parse(path.read_text(), str(path)).body
        for node, after in itertools.pairwise(body):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                for target in targets:
                    if isinstance(target, ast.Name):
                        docs.setdefault(target.id, after.value.value)
    return docs


def _docstring(name: str) -> str | None:
    obj = getattr(nnx, name)
    is_plain_data = type(obj).__module__ == "builtins" and not (
        callable(obj) or isinstance(obj, types.ModuleType)
    )
    if is_plain_data:  # a str, int, tuple...: its __doc__ is the type's
        return _attribute_docstrings().get(name)
    return obj.__doc__


def test_every_public_name_has_a_docstring():
    missing = [name for name in PUBLIC if not (_docstring(name) or "").strip()]
    assert not missing, (
        f"{len(missing)} public names have no docstring (the API reference would show nothing "
        f"for them): {', '.join(missing)}"
    )


def _resolve(path: str) -> Any:
    """What an entry's dotted path names, as the docs tooling sees it: the longest importable
    module prefix, then attributes (so ``nnx.graph.state`` is the function, and a path whose
    prefix is a submodule shadowed by a function still reaches the submodule)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def _entries() -> dict[str, Any]:
    return {path: _resolve(path) for page in API_PAGES for path in ENTRY.findall(page.read_text())}


def test_api_reference_entries_resolve():
    assert API_PAGES, "docs/api/ holds no pages"
    broken = sorted(path for path, obj in _entries().items() if obj is _MISSING)
    assert not broken, f"docs/api/ has entries that name nothing: {', '.join(broken)}"


def test_every_public_name_is_in_the_api_reference():
    entries = _entries()
    by_name = [(path.rsplit(".", 1)[-1], obj) for path, obj in entries.items()]
    modules = [obj for obj in entries.values() if isinstance(obj, types.ModuleType)]
    missing = []
    for name in PUBLIC:
        obj = getattr(nnx, name)
        if isinstance(obj, types.ModuleType):
            found = any(obj is module for module in modules)
        else:
            found = any(name == last and obj is target for last, target in by_name)
        if not found:
            missing.append(name)
    assert not missing, (
        f"{len(missing)} public names have no entry in docs/api/*.md; add a '::: nnx.NAME' line "
        f"to the page of their group: {', '.join(missing)}"
    )


def _docs_tooling_missing() -> list[str]:
    packages = ["mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"]
    packages += ["mkdocs_jupyter", "ipykernel"]
    return [p for p in packages if importlib.util.find_spec(p.split(".")[0]) is None]


@pytest.mark.slow
def test_site_builds_strict_with_executed_notebooks(tmp_path):
    missing = _docs_tooling_missing()
    if missing:
        pytest.skip(
            f"the docs tooling is not installed ({', '.join(missing)} missing): "
            "pip install -e '.[docs]'; .ci/run builds the site after the tests"
        )
    site = tmp_path / "site"
    # The build runs as CI runs it, without the 8 fake devices the test session sets up.
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["XLA_FLAGS"] = " ".join(
        flag
        for flag in env.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count=")
    )
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    quickstart = site / "guides" / "01_quickstart" / "index.html"
    assert quickstart.is_file(), f"no quickstart guide page in the site:\n{log[-3000:]}"
    html = quickstart.read_text()
    outputs = re.findall(r'class="[^"]*\bjp-OutputArea-output\b', html)
    assert outputs, "the quickstart guide page has no cell outputs: were the notebooks executed?"
    api = (site / "api" / "training" / "index.html").read_text()
    assert 'id="nnx.Optimizer"' in api, "the API reference has no entry for nnx.Optimizer"
