"""Checks of the project skeleton: packaging, the test environment, and CI/README agreement."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _distribution_name() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["name"]


def test_distribution_name_is_not_the_unrelated_pypi_nnx():
    name = _distribution_name()
    assert re.sub(r"[-_.]+", "-", name).lower() != "nnx", (
        "`nnx` on PyPI is an unrelated project; the distribution needs its own name"
    )


def test_distribution_is_installed_and_ships_the_nnx_package():
    name = _distribution_name()
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"distribution {name!r} is not installed; run `pip install -e '.[test]'`")
    assert dist.metadata["Name"] == name
    providers = importlib.metadata.packages_distributions().get("nnx", [])
    assert name in providers, f"import package `nnx` comes from {providers}, not from {name!r}"


def test_nnx_imports_from_this_checkout():
    nnx = importlib.import_module("nnx")
    assert nnx.__file__ is not None, "nnx/__init__.py is missing: `nnx` is a namespace package"
    assert Path(nnx.__file__).resolve().parent == ROOT / "nnx"


def test_jax_sees_eight_cpu_devices():
    devices = jax.devices("cpu")
    assert len(devices) == 8, f"expected 8 fake CPU devices, got {devices}"


def test_rank_promotion_raises():
    with pytest.raises(ValueError, match="rank_promotion"):
        jnp.ones((2, 3)) + jnp.ones(3)


def _pytest_commands(text: str) -> list[list[str]]:
    """Every `<venv>/bin/python -m pytest ...` command in `text`, split into words."""
    commands = re.findall(r"^\s*(\S*/bin/python -m pytest\b[^|;&#\n]*)", text, re.MULTILINE)
    return [shlex.split(c) for c in commands]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    tests_section = readme.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    readme_cmds = _pytest_commands(tests_section)
    assert len(readme_cmds) == 1, f"expected one pytest command in README's Tests: {readme_cmds}"
    readme_cmd = readme_cmds[0]
    ci_cmds = _pytest_commands((ROOT / ".ci" / "run").read_text())
    assert ci_cmds, ".ci/run runs no pytest command"
    ci_cmd = ci_cmds[0]
    assert readme_cmd[0] == ".venv/bin/python"
    assert ci_cmd[0] == ".venv-ci/bin/python"
    assert readme_cmd[1:] == ci_cmd[1:], (
        f"README runs {shlex.join(readme_cmd)} but .ci/run runs {shlex.join(ci_cmd)} first"
    )
    # Anything else CI runs is the same command on the slow cases, or the slow cases of named
    # test files (run after installing an extra, e.g. the ONNX test).
    for extra in ci_cmds[1:]:
        files = extra[len(ci_cmd[:3]) + 2 :]
        whole = extra == [*ci_cmd, "-m", "slow"]
        named = extra[:5] == [*ci_cmd[:3], "-m", "slow"] and files != []
        assert whole or named, f".ci/run also runs {shlex.join(extra)}"
        if named:
            missing = [f for f in files if not (ROOT / f).is_file()]
            assert not missing, f".ci/run runs test files that do not exist: {missing}"
