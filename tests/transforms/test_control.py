"""Control flow over graph objects: ``nnx.cond``, ``nnx.switch``, ``nnx.fori_loop``,
``nnx.while_loop``: the branch/body taken changes state, and the caller's objects see it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Acc(nnx.Module):
    def __init__(self):
        self.total = nnx.BatchStat(jnp.zeros((2,)))
        self.steps = nnx.Variable(jnp.array(0))
        self.w = nnx.Param(jnp.array([1.0, 2.0]))
        self.rngs = nnx.Rngs(0)


def add(acc, x):
    acc.total.value = acc.total.value + x
    acc.steps.value += 1
    return jnp.sum(acc.total.value * acc.w.value)


def sub(acc, x):
    acc.total.value = acc.total.value - x
    return -jnp.sum(acc.total.value)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


@pytest.mark.parametrize("pred", [True, jnp.array(True)])
def test_cond_true_branch(pred):
    acc = Acc()
    y = nnx.cond(pred, add, sub, acc, jnp.array([1.0, 3.0]))
    close(y, 7.0)
    close(acc.total.value, [1.0, 3.0])
    assert int(acc.steps.value) == 1


def test_cond_false_branch_leaves_other_state_alone():
    acc = Acc()
    y = nnx.cond(jnp.array(False), add, sub, acc, jnp.array([1.0, 3.0]))
    close(y, 4.0)
    close(acc.total.value, [-1.0, -3.0])
    assert int(acc.steps.value) == 0


def test_cond_under_jit_with_traced_predicate():
    acc = Acc()

    @nnx.jit
    def f(acc, flag):
        return nnx.cond(flag, add, sub, acc, jnp.ones((2,)))

    f(acc, jnp.array(True))
    f(acc, jnp.array(True))
    f(acc, jnp.array(False))
    close(acc.total.value, [1.0, 1.0])
    assert int(acc.steps.value) == 2


def test_cond_branch_using_rngs_advances_counter():
    acc = Acc()
    ref = nnx.Rngs(0)

    def noisy(acc):
        return jax.random.normal(acc.rngs(), (2,))

    def quiet(acc):
        return jnp.zeros((2,))

    y = nnx.cond(jnp.array(True), noisy, quiet, acc)
    close(y, jax.random.normal(ref(), (2,)))
    assert int(acc.rngs.default.count.value) == 1
    nnx.cond(jnp.array(False), noisy, quiet, acc)
    assert int(acc.rngs.default.count.value) == 1


def test_cond_with_two_modules_and_a_shared_one():
    a, b = Acc(), Acc()

    def both(a, b):
        a.steps.value += 1
        b.steps.value += 10
        return a.steps.value

    def none(a, b):
        return a.steps.value

    nnx.cond(True, both, none, a, b)
    assert int(a.steps.value) == 1 and int(b.steps.value) == 10
    nnx.cond(True, both, none, a, a)
    assert int(a.steps.value) == 12


@pytest.mark.parametrize(("index", "expected_total"), [(0, 1.0), (1, -1.0), (2, 5.0)])
def test_switch(index, expected_total):
    acc = Acc()

    def times_five(acc, x):
        acc.total.value = acc.total.value + 5 * x
        return jnp.sum(acc.total.value)

    y = nnx.switch(jnp.array(index), [add, sub, times_five], acc, jnp.ones((2,)))
    close(acc.total.value, [expected_total] * 2)
    assert y.shape == ()


def test_switch_index_clamped_like_jax():
    acc = Acc()
    nnx.switch(7, [add, sub], acc, jnp.ones((2,)))  # out of range: the last branch
    close(acc.total.value, [-1.0, -1.0])


def test_fori_loop_updates_in_place_and_returns_same_object():
    acc = Acc()

    def body(i, acc):
        acc.total.value = acc.total.value + i
        acc.steps.value += 1
        return acc

    out = nnx.fori_loop(0, 5, body, acc)
    assert out is acc
    close(acc.total.value, [10.0, 10.0])
    assert int(acc.steps.value) == 5


def test_fori_loop_with_rngs_and_tuple_carry():
    acc = Acc()
    ref = nnx.Rngs(0)

    def body(i, carry):
        acc, s = carry
        s = s + jax.random.uniform(acc.rngs(), ())
        return acc, s

    out, s = nnx.fori_loop(0, 4, body, (acc, jnp.array(0.0)))
    assert out is acc
    assert int(acc.rngs.default.count.value) == 4
    close(s, sum(float(jax.random.uniform(ref(), ())) for _ in range(4)))


def test_fori_loop_under_jit_with_traced_bounds():
    acc = Acc()

    @nnx.jit
    def f(acc, n):
        def body(i, acc):
            acc.steps.value += 1
            return acc

        nnx.fori_loop(0, n, body, acc)

    f(acc, jnp.array(3))
    f(acc, jnp.array(4))
    assert int(acc.steps.value) == 7


def test_fori_loop_unroll():
    acc = Acc()

    def body(i, acc):
        acc.steps.value += 2
        return acc

    nnx.fori_loop(0, 6, body, acc, unroll=3)
    assert int(acc.steps.value) == 12


def test_while_loop():
    acc = Acc()

    def cond(acc):
        return acc.total.value[0] < 10.0

    def body(acc):
        acc.total.value = acc.total.value + jnp.array([3.0, 1.0])
        acc.steps.value += 1
        return acc

    out = nnx.while_loop(cond, body, acc)
    assert out is acc
    close(acc.total.value, [12.0, 4.0])
    assert int(acc.steps.value) == 4


def test_while_loop_cond_sees_current_state_and_does_not_write():
    acc = Acc()
    seen_inside = []

    def cond(acc):
        seen_inside.append(True)
        return acc.steps.value < 3

    def body(acc):
        acc.steps.value += 1
        return acc

    nnx.while_loop(cond, body, acc)
    assert int(acc.steps.value) == 3
    assert seen_inside


def test_plain_values_fall_through_to_jax():
    assert int(nnx.fori_loop(0, 4, lambda i, c: c + i, 0)) == 6
    assert int(nnx.while_loop(lambda c: c < 5, lambda c: c + 2, 0)) == 6
    close(nnx.cond(True, lambda x: x + 1, lambda x: x - 1, jnp.array(1.0)), 2.0)
    close(nnx.switch(1, [lambda x: x, lambda x: 2 * x], jnp.array(3.0)), 6.0)
