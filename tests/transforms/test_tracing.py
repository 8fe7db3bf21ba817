"""Abstract evaluation and introspection: ``nnx.eval_shape`` (abstract models, nothing
allocated), ``nnx.make_jaxpr`` and ``nnx.checkify``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify as jax_checkify

import nnx


class Huge(nnx.Module):
    """40 GB of float32 if it were ever allocated."""

    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (100_000, 100_000)))
        self.mean = nnx.BatchStat(jnp.zeros((100_000,)))
        self.count = nnx.Variable(jnp.array(0, jnp.int32))


class Small(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(2, 3))
        self.mean = nnx.BatchStat(jnp.zeros((3,)))
        self.calls = nnx.Variable(jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        y = x @ self.w.value
        self.mean.value = 0.5 * self.mean.value + 0.5 * y.mean(axis=0)
        return y


def pure(m) -> dict:
    return jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())


def assert_tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)


# -- eval_shape ------------------------------------------------------------------------------
def test_eval_shape_builds_an_abstract_model_without_allocating():
    abstract = nnx.eval_shape(lambda: Huge(nnx.Rngs(0)))
    assert isinstance(abstract, Huge)
    assert isinstance(abstract.w, nnx.Param)
    assert isinstance(abstract.mean, nnx.BatchStat)
    w = abstract.w.value
    assert isinstance(w, jax.ShapeDtypeStruct)
    assert w.shape == (100_000, 100_000) and w.dtype == jnp.float32
    assert abstract.count.value.dtype == jnp.int32
    for leaf in jax.tree.leaves(nnx.state(abstract)):
        assert isinstance(leaf, jax.ShapeDtypeStruct)


def test_eval_shape_abstract_model_splits_and_filters():
    abstract = nnx.eval_shape(lambda: Huge(nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    assert list(params.keys()) == ["w"]
    assert set(rest.keys()) == {"mean", "count"}
    # The abstract GraphDef is the real one: a concrete small model has the same structure.
    assert graphdef == nnx.graphdef(nnx.eval_shape(lambda: Huge(nnx.Rngs(1))))


def test_eval_shape_with_graph_arguments_does_not_touch_them():
    m = Small()
    before = pure(m)
    out = nnx.eval_shape(lambda m, x: m(x), m, jnp.ones((4, 2)))
    assert isinstance(out, jax.ShapeDtypeStruct)
    assert out.shape == (4, 3)
    assert_tree_equal(pure(m), before)
    assert int(m.calls.value) == 0
    for leaf in jax.tree.leaves(nnx.state(m)):
        assert isinstance(leaf, jax.Array)


def test_eval_shape_output_module_of_a_graph_argument_is_abstract():
    rngs = nnx.Rngs(params=0)
    abstract = nnx.eval_shape(lambda r: Huge(r), rngs)
    assert isinstance(abstract.w.value, jax.ShapeDtypeStruct)
    # The caller's Rngs were not advanced.
    assert int(rngs.params.count.value) == 0


# -- make_jaxpr ------------------------------------------------------------------------------
def test_make_jaxpr_of_a_module_call():
    m = Small()
    closed = nnx.make_jaxpr(lambda m, x: m(x))(m, jnp.ones((4, 2)))
    assert hasattr(closed, "jaxpr") and hasattr(closed, "consts")
    text = str(closed)
    assert "dot_general" in text
    n_state = len(jax.tree.leaves(nnx.state(m)))
    assert len(closed.jaxpr.invars) == n_state + 1
    # make_jaxpr only traces: the module is unchanged.
    assert int(m.calls.value) == 0


def test_make_jaxpr_with_static_python_values():
    m = Small()
    text = str(nnx.make_jaxpr(lambda m, k: m.w.value * k)(m, 3.0))
    assert "mul" in text


# -- checkify --------------------------------------------------------------------------------
def _checked(m, x):
    jax_checkify.check(jnp.all(x > 0), "x must be positive, got {x}", x=x.min())
    return m(x)


def test_checkify_passes_and_writes_back():
    m = Small()
    err, y = nnx.checkify(_checked)(m, jnp.ones((4, 2)))
    assert err.get() is None
    assert y.shape == (4, 3)
    assert int(m.calls.value) == 1
    assert not np.allclose(m.mean.value, 0.0)


def test_checkify_reports_failure():
    m = Small()
    err, _ = nnx.checkify(_checked)(m, -jnp.ones((4, 2)))
    assert err.get() is not None
    assert "x must be positive" in err.get()
    with pytest.raises(jax_checkify.JaxRuntimeError, match="x must be positive"):
        err.throw()


def test_checkify_under_jit():
    m = Small()

    @nnx.jit
    def f(m, x):
        return nnx.checkify(_checked)(m, x)

    err, _ = f(m, jnp.ones((4, 2)))
    assert err.get() is None
    err, _ = f(m, jnp.zeros((4, 2)))
    assert "x must be positive" in err.get()
    assert int(m.calls.value) == 2


def test_checkify_other_error_sets():
    m = Small()

    def index(m, i):
        return m.w.value[i, 0]

    err, _ = nnx.checkify(index, errors=jax_checkify.index_checks)(m, 5)
    assert err.get() is not None and "out-of-bounds" in err.get()
    err, _ = nnx.checkify(index, errors=jax_checkify.index_checks)(m, 1)
    assert err.get() is None


def test_make_jaxpr_of_a_function_returning_graph_objects():
    """A State, a module or nnx.grad's State as the output: their arrays are the outputs."""
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    for fn in (
        lambda m: nnx.state(m),
        lambda m: m,
        lambda m: nnx.grad(lambda m: (m(jnp.ones(2)) ** 2).sum())(m),
        lambda m: (m.kernel, m(jnp.ones(2))),
    ):
        jaxpr = nnx.make_jaxpr(fn)(model)
        shapes = sorted(tuple(v.aval.shape) for v in jaxpr.jaxpr.outvars)
        assert shapes == [(2, 3), (3,)], shapes
