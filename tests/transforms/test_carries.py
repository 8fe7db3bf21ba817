"""Loop and scan carries follow what the body returns (issue 11, cases 1-5).

The rule, the same for nnx.scan, nnx.fori_loop and nnx.while_loop: objects returned are
returned (an input object returned is the caller's very object; a new object is new);
objects passed in and mutated are updated in place; both at once works. Each test here
failed before the carries were taken from the body's output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx.errors import TraceContextError


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(3, 2, rngs=rngs)
        self.steps = nnx.BatchStat(jnp.array(0))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin(x)


def _scan_carry(f, *args, in_axes=(nnx.Carry, 0)):
    return nnx.scan(f, in_axes=in_axes, out_axes=(nnx.Carry, 0))(*args)


# -- case 1: a carry the body returns as new objects --------------------------------------
def test_scan_returns_new_param_carry():
    p0 = nnx.Param(jnp.zeros(()))
    p, _ = _scan_carry(lambda p, x: (nnx.Param(p[...] + x), None), p0, jnp.ones(3))
    assert float(p[...]) == 3.0
    assert p is not p0 and isinstance(p, nnx.Param)
    assert float(p0[...]) == 0.0  # the caller's object it replaced is left as it was


def test_scan_carried_state_built_with_tree_map():
    model = Model(nnx.Rngs(0))
    s0 = nnx.state(model, nnx.Param)
    s, _ = _scan_carry(lambda s, x: (jax.tree.map(lambda a: a + x, s), None), s0, jnp.ones(4))
    np.testing.assert_allclose(s["lin"]["kernel"][...], s0["lin"]["kernel"][...] + 4.0)


def _loss(model: Model, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def test_scan_gradient_accumulation_equals_full_batch():
    model = Model(nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (4, 5, 3))  # 4 micro-batches of 5
    y = jax.random.normal(jax.random.key(1), (4, 5, 2))
    zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))

    def step(carry, batch):
        model, gsum = carry
        g = nnx.grad(_loss)(model, *batch)
        return (model, jax.tree.map(jnp.add, gsum, g)), None

    (m_out, gsum), _ = _scan_carry(step, (model, zeros), (x, y))
    assert m_out is model
    full = nnx.grad(_loss)(model, x.reshape(20, 3), y.reshape(20, 2))
    for a, b in zip(jax.tree.leaves(gsum), jax.tree.leaves(full), strict=True):
        assert bool(jnp.any(a != 0))
        np.testing.assert_allclose(a / 4, b, rtol=1e-5, atol=1e-6)


def test_scan_mutated_and_new_objects_at_once():
    model = Model(nnx.Rngs(0))

    def step(carry, x):
        m, total = carry
        m.steps[...] += 1  # the input object, mutated and returned
        return (m, nnx.Param(total[...] + x)), x * 2

    (m, total), ys = _scan_carry(step, (model, nnx.Param(jnp.zeros(()))), jnp.arange(3.0))
    assert m is model and int(model.steps[...]) == 3
    assert float(total[...]) == 3.0
    np.testing.assert_allclose(ys, [0.0, 2.0, 4.0])


# -- case 2: carries mixing graph objects and arrays / Python scalars ----------------------
@pytest.mark.parametrize("start", [jnp.zeros(()), 0.0, np.float32(0.0)])
def test_scan_carry_module_with_array_or_scalar(start):
    model = Model(nnx.Rngs(0))

    def step(carry, x):
        m, a = carry
        return (m, a + 1.0), None

    (m, a), _ = _scan_carry(step, (model, start), jnp.ones(4))
    assert m is model
    assert float(a) == 4.0


@pytest.mark.parametrize("wrap", [list, dict])
def test_scan_list_and_dict_carries(wrap):
    model = Model(nnx.Rngs(0))
    carry = [model, jnp.zeros(())] if wrap is list else {"m": model, "a": jnp.zeros(())}

    def step(c, x):
        if wrap is list:
            c[0].steps[...] += 1
            return [c[0], c[1] + x], None
        c["m"].steps[...] += 1
        return {"m": c["m"], "a": c["a"] + x}, None

    out, _ = _scan_carry(step, carry, jnp.ones(3))
    m, a = (out[0], out[1]) if wrap is list else (out["m"], out["a"])
    assert m is model and int(model.steps[...]) == 3 and float(a) == 3.0


def test_scan_unchanged_array_in_carry():
    model = Model(nnx.Rngs(0))
    (m, a), _ = _scan_carry(lambda c, x: (c, None), (model, jnp.full((), 7.0)), jnp.ones(2))
    assert m is model and float(a) == 7.0


# -- case 3: flax's RNN form -----------------------------------------------------------------
def test_scan_state_axes_carry_with_carry_argument():
    cell = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    cell.calls = nnx.BatchStat(jnp.array(0))

    def body(cell, h, x):
        cell.calls[...] += 1
        h = jnp.tanh(cell(h) + x)
        return h, h

    xs = jnp.ones((3, 2))
    expected_h = jnp.zeros(2)
    for x in xs:
        expected_h = jnp.tanh(cell(expected_h) + x)
    h, hs = nnx.scan(
        body, in_axes=(nnx.StateAxes({...: nnx.Carry}), nnx.Carry, 0), out_axes=(nnx.Carry, 0)
    )(cell, jnp.zeros(2), xs)
    np.testing.assert_allclose(h, expected_h, rtol=1e-6)
    assert hs.shape == (3, 2)
    assert int(cell.calls[...]) == 3  # the cell's carried state is updated in place


def test_scan_two_carry_arguments_is_an_error():
    with pytest.raises(nnx.errors.TransformError, match="at most one argument can be the carry"):
        nnx.scan(lambda a, b, x: ((a, b), x), in_axes=(nnx.Carry, nnx.Carry, 0))(
            jnp.zeros(()), jnp.zeros(()), jnp.ones(2)
        )


def test_scan_carry_structure_change_is_an_error_and_loses_nothing():
    model = Model(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model))

    def step(m, x):
        m.extra = nnx.Param(jnp.zeros(()))
        return m, x

    with pytest.raises(TraceContextError, match=r"args\[0\]\.extra"):
        _scan_carry(step, model, jnp.ones(2))
    assert not hasattr(model, "extra")
    after = nnx.state(model)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


# -- case 4: loops --------------------------------------------------------------------------
def test_fori_loop_returns_new_object():
    p0 = nnx.Param(jnp.zeros(()))
    p = nnx.fori_loop(0, 3, lambda i, p: nnx.Param(p[...] + 1.0), p0)
    assert p is not p0 and float(p[...]) == 3.0 and float(p0[...]) == 0.0


def test_fori_loop_mutated_object_is_the_callers():
    model = Model(nnx.Rngs(0))

    def body(i, m):
        m.steps[...] += i
        return m

    assert nnx.fori_loop(0, 4, body, model) is model
    assert int(model.steps[...]) == 6


def test_fori_loop_mutated_and_new_at_once():
    model = Model(nnx.Rngs(0))

    def body(i, carry):
        m, acc = carry
        m.steps[...] += 1
        return m, nnx.Param(acc[...] + i)

    m, acc = nnx.fori_loop(0, 4, body, (model, nnx.Param(jnp.zeros(()))))
    assert m is model and int(model.steps[...]) == 4 and float(acc[...]) == 6.0


def test_fori_loop_python_scalar_in_carry():
    model = Model(nnx.Rngs(0))
    m, total = nnx.fori_loop(0, 5, lambda i, c: (c[0], c[1] + i), (model, 0))
    assert m is model and int(total) == 10


def test_while_loop_returns_new_object_and_updates_mutated_one():
    model = Model(nnx.Rngs(0))

    def body(c):
        m, p = c
        m.steps[...] += 1
        return m, nnx.Param(p[...] * 2)

    m, p = nnx.while_loop(lambda c: c[1][...] < 10, body, (model, nnx.Param(jnp.ones(()))))
    assert m is model and float(p[...]) == 16.0 and int(model.steps[...]) == 4


def test_fori_loop_structure_change_is_an_error():
    def body(i, m):
        m.extra = nnx.Param(jnp.zeros(()))
        return m

    model = Model(nnx.Rngs(0))
    with pytest.raises(TraceContextError, match="keeps its structure"):
        nnx.fori_loop(0, 2, body, model)
    assert not hasattr(model, "extra")


# -- case 5: RNN(broadcast_rngs=...) ------------------------------------------------------
class _DropCell(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, c, x):
        return c, self.drop(x)

    def initialize_carry(self, shape, rngs=None):
        return jnp.zeros((*shape[:-1], 4))


@pytest.mark.parametrize("broadcast", ["dropout", ("dropout",), nnx.RngState])
def test_rnn_broadcast_rngs_reuses_one_mask(broadcast):
    rnn = nnx.RNN(_DropCell(nnx.Rngs(0, dropout=1)), broadcast_rngs=broadcast)
    ys = rnn(jnp.ones((2, 6, 4)))
    masks = ys == 0
    assert bool(jnp.all(masks == masks[:, :1]))  # the same mask at every time step
    assert bool(jnp.any(masks)) and not bool(jnp.all(masks))
    # the stream advanced as one step advanced it
    assert int(rnn.cell.drop.rngs.count[...]) == 1


def test_rnn_without_broadcast_rngs_draws_per_step():
    rnn = nnx.RNN(_DropCell(nnx.Rngs(0, dropout=1)))
    masks = rnn(jnp.ones((2, 6, 4))) == 0
    assert not bool(jnp.all(masks == masks[:, :1]))
    assert int(rnn.cell.drop.rngs.count[...]) == 6


def test_optimizer_in_scan_carry_trains_like_a_loop():
    """A training loop in nnx.scan (model and optimizer carried) equals the Python loop."""

    def run(scanned: bool):
        model = Model(nnx.Rngs(2))
        opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        xs = jax.random.normal(jax.random.key(3), (3, 5, 3))
        ys = jnp.ones((3, 5, 2))

        def step(carry, batch):
            m, o = carry
            loss, g = nnx.value_and_grad(_loss)(m, *batch)
            o.update(m, g)
            return (m, o), loss

        if scanned:
            (_, _), losses = _scan_carry(step, (model, opt), (xs, ys))
        else:
            losses = jnp.stack([step((model, opt), (x, y))[1] for x, y in zip(xs, ys, strict=True)])
        return model, losses

    m1, l1 = run(True)
    m2, l2 = run(False)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(m1.lin.kernel[...], m2.lin.kernel[...], rtol=1e-5)


# -- found by the eager-equivalence properties (tests/transforms/test_eager_equivalence.py) --
def test_fori_loop_that_never_runs_returns_the_callers_object():
    model = Model(nnx.Rngs(0))
    assert nnx.fori_loop(0, 0, lambda i, m: nnx.clone(m), model) is model


def _mutate_and_copy(m: Model) -> Model:
    m.steps[...] += 1
    return nnx.clone(m)


def test_loops_refuse_a_mutation_handed_on_as_a_copy():
    """Eagerly the caller's object changes on the first step only; a traced loop cannot
    express that, so it refuses (and changes nothing) instead of dropping the change."""
    model = Model(nnx.Rngs(0))
    with pytest.raises(TraceContextError, match=r"(?s)carry\.steps.*first step only"):
        nnx.fori_loop(0, 2, lambda i, m: _mutate_and_copy(m), model)
    with pytest.raises(TraceContextError, match=r"(?s)args\[0\]\.steps.*first step only"):
        _scan_carry(lambda m, x: (_mutate_and_copy(m), x), model, jnp.ones(2))
    assert int(model.steps[...]) == 0


def test_scan_refuses_a_carry_whose_references_change():
    model = Model(nnx.Rngs(0))

    def step(m, x):
        m.me = m  # a new reference: no Variable added, but the structure changed
        return m, x

    with pytest.raises(TraceContextError, match=r"structure of args\[0\]"):
        _scan_carry(step, model, jnp.ones(2))
    assert "me" not in vars(model)


def test_remat_outside_jit_gives_jax_arrays():
    model = Model(nnx.Rngs(0))

    def f(m):
        m.extra = nnx.Param(jnp.zeros(()))
        return jnp.ones(())

    out = nnx.remat(f)(model)
    assert isinstance(out, jax.Array) and isinstance(model.extra[...], jax.Array)
