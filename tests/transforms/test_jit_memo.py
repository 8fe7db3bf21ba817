"""nnx.jit's last-call memo: a repeated call with the same graph objects skips the argument
scan and the structure-cache lookup. Every way the next call can differ must miss it."""

from __future__ import annotations

import gc
import weakref

import jax.numpy as jnp
import numpy as np

import nnx


class Acc(nnx.Module):
    def __init__(self, n: int = 3):
        self.w = nnx.Param(jnp.ones(n))
        self.calls = nnx.BatchStat(jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        return x * self.w


@nnx.jit
def step(model, x):
    model.w.value = model.w.value + x
    return model(x)


def test_repeated_calls_write_back_every_time():
    m = Acc()
    for k in range(1, 5):
        step(m, jnp.ones(3))
        assert int(m.calls.value) == k
    np.testing.assert_allclose(m.w.value, 5 * np.ones(3))


def test_two_functions_on_the_same_model_keep_their_own_write_plans():
    """A training step (writes w and calls) and an evaluation (writes nothing) share the
    model's flatten; alternating them, each writes back by its own plan."""

    @nnx.jit
    def evaluate(model, x):
        return (x * model.w.value).sum()

    @nnx.jit
    def count(model, x):
        model.calls.value += 1
        return x

    m = Acc()
    for k in range(1, 6):
        step(m, jnp.ones(3))
        evaluate(m, jnp.ones(3))
        count(m, jnp.ones(3))
        assert int(m.calls.value) == 2 * k
        np.testing.assert_allclose(m.w.value, (1 + k) * np.ones(3))
    np.testing.assert_allclose(evaluate(m, jnp.ones(3)), 18.0)


def test_another_model_of_the_same_structure_is_the_one_updated():
    a, b = Acc(), Acc()
    step(a, jnp.ones(3))
    step(a, jnp.ones(3))
    step(b, jnp.ones(3))
    assert int(a.calls.value) == 2 and int(b.calls.value) == 1
    np.testing.assert_allclose(b.w.value, 2 * np.ones(3))


def test_graph_object_moved_to_another_argument_is_not_replayed():
    @nnx.jit
    def f(x, y):
        m = y if isinstance(y, nnx.Module) else x
        m.calls.value += 1
        return m.w.value.sum()

    m = Acc()
    f(m, jnp.ones(()))
    f(m, jnp.ones(()))
    f(jnp.ones(()), m)  # the model now sits at position 1
    f((m,)[0], jnp.ones(()))
    assert int(m.calls.value) == 4


def test_graph_object_in_a_non_graph_position_of_the_last_call():
    @nnx.jit
    def f(m, extra):
        m.calls.value += 1
        if isinstance(extra, dict):
            extra["other"].calls.value += 10
        return m.w.value.sum()

    m, other = Acc(), Acc()
    f(m, jnp.ones(()))
    f(m, jnp.ones(()))
    f(m, {"other": other})  # same first argument, but the second now holds a graph
    assert int(m.calls.value) == 3 and int(other.calls.value) == 10


def test_structural_change_between_calls_is_seen():
    m = Acc()
    step(m, jnp.ones(3))
    m.w = nnx.Param(jnp.zeros(3))  # replaced Variable: a structural change
    step(m, jnp.ones(3))
    np.testing.assert_allclose(m.w.value, np.ones(3))
    m.extra = nnx.Param(jnp.ones(2))
    step(m, jnp.ones(3))
    assert int(m.calls.value) == 3


def test_value_assigned_outside_between_calls_is_used():
    m = Acc()
    step(m, jnp.ones(3))
    m.w.value = jnp.full(3, 10.0)
    y = step(m, jnp.ones(3))
    np.testing.assert_allclose(y, 11 * np.ones(3))


def test_memo_does_not_keep_the_model_alive():
    m = Acc()
    step(m, jnp.ones(3))
    step(m, jnp.ones(3))
    step(m, jnp.ones(3))  # the third call writes back through the cached write plan
    ref, var_ref = weakref.ref(m), weakref.ref(m.calls)
    del m
    gc.collect()
    assert ref() is None
    assert var_ref() is None  # nor its Variables (and their buffers)
    # the next call with a new model works (the memo's flatten is gone)
    m2 = Acc()
    step(m2, jnp.ones(3))
    assert int(m2.calls.value) == 1


def test_kwargs_and_different_arity_bypass_the_memo():
    @nnx.jit
    def f(m, x=None, y=None):
        m.calls.value += 1
        return m.w.value.sum()

    m = Acc()
    f(m)
    f(m, jnp.ones(()))
    f(m, x=jnp.ones(()))
    f(m, jnp.ones(()), jnp.ones(()))
    assert int(m.calls.value) == 4
