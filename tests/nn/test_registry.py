"""Every registered layer through eager, jit, grad, vmap, split/merge, lazy init and bf16."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from tests.nn.registry import CASES, Case

IDS = [c.name for c in CASES]


def _public_layers() -> set[type]:
    layers = set()
    for name in dir(nnx):
        obj = getattr(nnx, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, nnx.Module)
            and obj.__module__.startswith("nnx.nn")
        ):
            layers.add(obj)
    return layers


def test_every_public_layer_is_registered():
    covered = {c.cls for c in CASES}
    missing = sorted(cls.__name__ for cls in _public_layers() - covered)
    assert not missing, (
        f"layers without a registry case (add one to tests/nn/cases_*.py): {missing}"
    )


def _build(case: Case, dtype=None, seed: int = 0):
    return case.build(nnx.Rngs(seed), dtype)


def _inputs(case: Case, seed: int = 1):
    return case.inputs(jax.random.key(seed))


def _close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(x, np.float32), np.asarray(y, np.float32), atol=tol, rtol=tol
        )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_matches_eager(case: Case):
    model = _build(case)
    x = _inputs(case)
    eager = case.run(nnx.clone(model), *x)
    jitted = nnx.jit(lambda m, *a: case.run(m, *a))(model, *x)
    _close(eager, jitted, case.tol * 10)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad_covers_params(case: Case):
    model = _build(case)
    params = nnx.state(model, nnx.Param)
    if not params.flat_state():
        pytest.skip("no parameters")
    x = _inputs(case)

    def loss(m, *a):
        out = case.run(m, *a)
        return sum(jnp.sum(jnp.asarray(o, jnp.float32) ** 2) for o in jax.tree.leaves(out))

    grads = nnx.grad(loss)(model, *x)
    assert grads.flat_state().paths == params.flat_state().paths
    for g in jax.tree.leaves(grads):
        assert bool(jnp.all(jnp.isfinite(g)))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_over_inputs(case: Case):
    if not case.batchable:
        pytest.skip("not batchable")
    model = _build(case)
    xs = [_inputs(case, seed) for seed in (1, 2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *xs)
    n = len(xs[0])
    out = nnx.vmap(lambda m, *a: case.run(m, *a), in_axes=(None,) + (0,) * n)(model, *stacked)
    for i, x in enumerate(xs):
        single = case.run(nnx.clone(model), *x)
        _close(jax.tree.map(lambda o, i=i: o[i], out), single, case.tol * 10)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_split_merge_round_trip(case: Case):
    model = _build(case)
    x = _inputs(case)
    copy = nnx.merge(*nnx.split(model))
    _close(case.run(model, *x), case.run(copy, *x), 0)
    assert nnx.graphdef(copy) == nnx.graphdef(model)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bfloat16(case: Case):
    if not case.bf16:
        pytest.skip("no bfloat16 computation")
    x = _inputs(case)
    ref = case.run(_build(case), *x)
    x16 = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, x
    )
    out = case.run(_build(case, jnp.bfloat16), *x16)
    for o in jax.tree.leaves(out):
        if jnp.issubdtype(o.dtype, jnp.floating):
            assert o.dtype == jnp.bfloat16, f"{case.name} returned {o.dtype} with dtype=bfloat16"
    _close(out, ref, 0.1)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.lazy_build], ids=[c.name for c in CASES if c.lazy_build]
)
def test_lazy_matches_eager(case: Case):
    eager = _build(case)
    lazy = case.lazy_build(nnx.Rngs(0), None)
    x = _inputs(case)
    case.run(lazy, *x)
    shapes = lambda m: [(p, v.value.shape) for p, v in nnx.state(m, nnx.Param).flat_state()]
    assert shapes(lazy) == shapes(eager)
    # lazy_init gives the same shapes without computing, and the model then jits.
    abstract_ready = nnx.lazy_init(case.lazy_build(nnx.Rngs(0), None), *x)
    assert shapes(abstract_ready) == shapes(eager)
    nnx.jit(lambda m, *a: case.run(m, *a))(abstract_ready, *x)
    # Inside nnx.jit, the first call creates the parameters on the original object.
    in_jit = case.lazy_build(nnx.Rngs(0), None)
    nnx.jit(lambda m, *a: case.run(m, *a))(in_jit, *x)
    assert shapes(in_jit) == shapes(eager)
