"""Test-session set-up shared by `tests/` and the doctests under `nnx/`.

pytest loads this rootdir conftest before it collects anything, so the environment below is in
place before any test module, doctest module or `nnx` itself imports jax. Keeping it here (not
in `tests/conftest.py`) is what makes `pytest nnx` and `pytest tests` see the same JAX.
"""

from __future__ import annotations

import os

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_DEVICE_COUNT = 8


def _configure_jax_environment() -> None:
    """Sets the XLA/JAX environment variables; must run before jax creates its backend."""
    # Eight fake CPU devices, so meshes and sharding are tested for real. Any other device-count
    # flag is replaced (never duplicated); every other existing flag is kept.
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith(_DEVICE_COUNT_FLAG + "=")
    ]
    flags.append(f"{_DEVICE_COUNT_FLAG}={_DEVICE_COUNT}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    # The CPU client has one thread per core; collectives across 8 fake devices can deadlock on a
    # 2-core machine unless the pool has at least twice as many threads as devices.
    os.environ.setdefault("PJRT_NPROC", str(2 * _DEVICE_COUNT))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


_configure_jax_environment()

import importlib.util  # noqa: E402

# nnx.bridge needs flax.linen (the optional `linen` extra): without flax its docstring examples
# cannot even be imported, so they are not collected (tests/test_bridge.py skips by itself).
collect_ignore_glob = [] if importlib.util.find_spec("flax") else ["nnx/bridge/*"]

import jax  # noqa: E402  (must come after the environment set-up above)
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("slow", parent=settings.get_profile("ci"), max_examples=5000)
settings.load_profile(os.environ.get("NNX_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _nnx_doctest_namespace(request: pytest.FixtureRequest):
    """Gives every doctest `nnx`, `jax`, `jnp`, `np` and `optax` without imports.

    `nnx` is imported here, lazily and only for doctests, so a broken package shows up as a
    plain ImportError in the doctests that need it instead of breaking collection of everything.
    """
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    import jax.numpy as jnp
    import numpy as np
    import optax

    import nnx

    request.getfixturevalue("doctest_namespace").update(
        nnx=nnx, jax=jax, jnp=jnp, np=np, optax=optax
    )
    # Docstring examples are user code: they run under JAX's default rank promotion, while
    # the test suite itself stays strict.
    with jax.numpy_rank_promotion("allow"):
        yield
