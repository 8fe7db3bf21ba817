"""``nnx.scan``: Carry, length, reverse, unroll, in_axes/out_axes (StateAxes included), and the
scan-over-layers pattern on layers stacked by ``nnx.vmap`` -- with a BatchNorm-like running
statistic and a Dropout-like RNG stream -- compared against a Python loop over the unstacked
layers; structural changes inside a step (new state on a scanned argument comes out stacked,
as in flax; carried state keeps its structure)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import TraceContextError

N_LAYERS = 3
D = 4


class BatchNormish(nnx.Module):
    def __init__(self, n: int):
        self.scale = nnx.Param(jnp.ones((n,)))
        self.mean = nnx.BatchStat(jnp.zeros((n,)))

    def __call__(self, x):
        self.mean.value = 0.9 * self.mean.value + 0.1 * x.mean(axis=0)
        return (x - self.mean.value[None, :]) * self.scale.value[None, :]


class Dropoutish(nnx.Module):
    def __init__(self, rate: float, rngs: nnx.Rngs):
        self.rate = rate
        self.rngs = rngs.dropout.fork()

    def __call__(self, x):
        keep = jax.random.bernoulli(self.rngs(), 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), 0.0)


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (D, D)) * 0.5)
        self.bn = BatchNormish(D)
        self.drop = Dropoutish(0.5, rngs)

    def __call__(self, x):
        return self.drop(self.bn(jnp.tanh(x @ self.w.value)))


def make_stack(seed: int = 0) -> Block:
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    with nnx.split_rngs(rngs, splits=N_LAYERS):
        return nnx.vmap(lambda r: Block(r), in_axes=0, out_axes=0)(rngs)


def unstack(stacked: nnx.Module) -> list:
    graphdef, state = nnx.split(stacked)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(N_LAYERS)]


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


X = jnp.arange(8.0).reshape(2, D) / 8.0


def forward(x, layer):
    return layer(x)


scan_layers = nnx.scan(forward, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)


# -- scan over layers --------------------------------------------------------------------------
def test_scan_over_layers_matches_python_loop():
    stack = make_stack()
    ref_layers = unstack(nnx.clone(stack))
    assert stack.drop.rngs.key.value.shape == (N_LAYERS,)

    y = scan_layers(X, stack)

    y_ref = X
    for layer in ref_layers:
        y_ref = layer(y_ref)
    close(y, y_ref)
    # Per-layer statistics are updated, each with its own layer's input.
    assert stack.bn.mean.value.shape == (N_LAYERS, D)
    for i, layer in enumerate(ref_layers):
        close(stack.bn.mean.value[i], layer.bn.mean.value)
        assert not np.allclose(stack.bn.mean.value[i], 0.0)
    # Each layer's dropout stream advanced once.
    np.testing.assert_array_equal(stack.drop.rngs.count.value, [1] * N_LAYERS)
    # Params untouched.
    for i, layer in enumerate(ref_layers):
        close(stack.w.value[i], layer.w.value)


def test_scan_over_layers_twice_advances_rngs_and_stats_again():
    stack = make_stack()
    ref_layers = unstack(nnx.clone(stack))
    y1 = scan_layers(X, stack)
    y2 = scan_layers(X, stack)
    assert not np.allclose(y1, y2)  # new dropout masks / new statistics
    np.testing.assert_array_equal(stack.drop.rngs.count.value, [2] * N_LAYERS)
    for _ in range(2):
        y_ref = X
        for layer in ref_layers:
            y_ref = layer(y_ref)
    close(y2, y_ref)
    for i, layer in enumerate(ref_layers):
        close(stack.bn.mean.value[i], layer.bn.mean.value)


def test_scan_over_layers_with_shared_broadcast_rngs():
    """A Dropout-like use of one shared Rngs, broadcast into every step: its counter is carried
    from step to step, so each layer draws a new key."""

    class Plain(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jax.random.normal(rngs.params(), (D, D)) * 0.5)

    rngs = nnx.Rngs(params=0)
    with nnx.split_rngs(rngs, splits=N_LAYERS):
        stack = nnx.vmap(lambda r: Plain(r))(rngs)
    layers = unstack(stack)
    dropout = nnx.Rngs(dropout=7)
    ref_dropout = nnx.Rngs(dropout=7)

    def step(x, layer, rngs):
        keep = jax.random.bernoulli(rngs.dropout(), 0.5, x.shape)
        return jnp.where(keep, jnp.tanh(x @ layer.w.value), 0.0)

    y = nnx.scan(step, in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)(X, stack, dropout)
    assert int(dropout.dropout.count.value) == N_LAYERS
    y_ref = X
    for layer in layers:
        keep = jax.random.bernoulli(ref_dropout.dropout(), 0.5, X.shape)
        y_ref = jnp.where(keep, jnp.tanh(y_ref @ layer.w.value), 0.0)
    close(y, y_ref)


def test_scan_over_layers_gradient_matches_loop():
    stack = make_stack()
    ref_layers = unstack(nnx.clone(stack))

    def loss(stack, x):
        return jnp.sum(scan_layers(x, stack) ** 2)

    grads = nnx.grad(loss)(stack, X)
    assert grads["w"].value.shape == (N_LAYERS, D, D)

    def ref_loss(ws):
        y = X
        # Copies made inside the trace may take its values (the layers themselves may not).
        for w, layer in zip(ws, nnx.clone(ref_layers), strict=True):
            layer.w.value = w
            y = layer(y)
        return jnp.sum(y**2)

    ref = jax.grad(ref_loss)([layer.w.value for layer in ref_layers])
    for i in range(N_LAYERS):
        close(grads["w"].value[i], ref[i])
    np.testing.assert_array_equal(stack.drop.rngs.count.value, [1] * N_LAYERS)


def test_scan_over_layers_under_jit_no_retrace():
    traces = [0]

    @nnx.jit
    def run(stack, x):
        traces[0] += 1
        return scan_layers(x, stack)

    stack = make_stack()
    for _ in range(4):
        run(stack, X)
    assert traces[0] == 1
    np.testing.assert_array_equal(stack.drop.rngs.count.value, [4] * N_LAYERS)


# -- Carry, length, reverse, unroll ----------------------------------------------------------------
class Acc(nnx.Module):
    def __init__(self):
        self.total = nnx.BatchStat(jnp.array(0.0))
        self.steps = nnx.Variable(jnp.array(0))


def running_sum(acc, x):
    acc.total.value = acc.total.value + x
    acc.steps.value += 1
    return acc, acc.total.value


def test_module_as_carry_with_per_step_outputs():
    acc = Acc()
    out, ys = nnx.scan(running_sum, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(
        acc, jnp.arange(5.0)
    )
    assert out is acc
    close(ys, np.cumsum(np.arange(5.0)))
    close(acc.total.value, 10.0)
    assert int(acc.steps.value) == 5


@pytest.mark.parametrize("unroll", [1, 2, True])
def test_reverse_and_unroll(unroll):
    acc = Acc()
    _, ys = nnx.scan(
        running_sum, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), reverse=True, unroll=unroll
    )(acc, jnp.arange(5.0))
    # Reverse scan: visits 4, 3, 2, 1, 0, and stacks the outputs back in input order.
    close(ys, np.cumsum(np.arange(5.0)[::-1])[::-1])
    close(acc.total.value, 10.0)
    assert int(acc.steps.value) == 5


def test_unroll_does_not_change_the_result():
    a, b = make_stack(), make_stack()
    y1 = nnx.scan(forward, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, unroll=1)(X, a)
    y2 = nnx.scan(forward, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, unroll=N_LAYERS)(X, b)
    close(y1, y2)
    close(a.bn.mean.value, b.bn.mean.value)


def test_length_without_scanned_inputs():
    acc = Acc()

    def tick(acc):
        acc.steps.value += 1
        return acc, acc.steps.value * 2

    out, ys = nnx.scan(tick, in_axes=(nnx.Carry,), out_axes=(nnx.Carry, 0), length=4)(acc)
    assert out is acc
    np.testing.assert_array_equal(ys, [2, 4, 6, 8])
    assert int(acc.steps.value) == 4


def test_plain_carry_with_broadcast_module():
    acc = Acc()
    acc.total.value = jnp.array(2.0)

    def step(c, acc, x):
        acc.steps.value += 1
        return c + x * acc.total.value, c

    c, ys = nnx.scan(step, in_axes=(nnx.Carry, None, 0), out_axes=(nnx.Carry, 0))(
        jnp.array(0.0), acc, jnp.ones((4,))
    )
    close(c, 8.0)
    close(ys, [0.0, 2.0, 4.0, 6.0])
    assert int(acc.steps.value) == 4  # broadcast state is carried, so it keeps counting


def test_in_axes_1_and_out_axes_1():
    def step(c, x):
        return c + x, jnp.stack([x, 2 * x])

    c, ys = nnx.scan(step, in_axes=(nnx.Carry, 1), out_axes=(nnx.Carry, 1))(
        jnp.zeros((2,)), jnp.arange(6.0).reshape(2, 3)
    )
    close(c, np.arange(6.0).reshape(2, 3).sum(axis=1))
    assert ys.shape == (2, 3, 2)
    close(ys[0], np.arange(6.0).reshape(2, 3).T)


def test_module_state_sliced_along_axis_1():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(6.0).reshape(2, 3))  # 3 steps along axis 1

    m = M()

    def step(c, m):
        m.w.value = m.w.value * 10.0
        return c + m.w.value.sum()

    c = nnx.scan(step, in_axes=(nnx.Carry, 1), out_axes=nnx.Carry)(jnp.array(0.0), m)
    close(c, 150.0)
    assert m.w.value.shape == (2, 3)
    close(m.w.value, np.arange(6.0).reshape(2, 3) * 10.0)


def test_state_axes_scan_params_and_carry_stats():
    class L(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(6.0).reshape(3, 2))
            self.count = nnx.BatchStat(jnp.array(0))

    m = L()

    def step(m, x):
        m.count.value += 1
        return m, x + m.w.value

    axes = nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: nnx.Carry})
    out, ys = nnx.scan(step, in_axes=(axes, None), out_axes=(nnx.Carry, 0))(m, jnp.ones((2,)))
    assert out is m
    close(ys, np.arange(6.0).reshape(3, 2) + 1.0)
    assert int(m.count.value) == 3
    assert m.w.value.shape == (3, 2)


def test_scan_rnn_over_time():
    class Cell(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.eye(2) * 0.5)
            self.h = nnx.Variable(jnp.zeros((2,)))

        def __call__(self, x):
            self.h.value = jnp.tanh(self.h.value @ self.w.value + x)
            return self.h.value

    cell = Cell()
    xs = jnp.arange(10.0).reshape(5, 2) / 10.0
    _, hs = nnx.scan(lambda c, x: (c, c(x)), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))(
        cell, xs
    )
    ref = Cell()
    expected = np.stack([np.asarray(ref(x)) for x in xs])
    close(hs, expected)
    close(cell.h.value, expected[-1])


# -- structural changes inside a step -----------------------------------------------------------
def _pure(m) -> dict:
    return jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())


def _same_tree(a: dict, b: dict) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert np.shape(x) == np.shape(y)
        close(x, y)


def _stacked(lib):
    """A Param (3, 4) and a BatchStat (2, 4): 4 steps along axis 1."""

    class M(lib.Module):
        def __init__(self):
            self.w = lib.Param(jnp.arange(12.0).reshape(3, 4))
            self.s = lib.BatchStat(jnp.arange(8.0).reshape(2, 4))

    return M()


def _grow(lib, c, m):
    m.c = lib.Cache(jnp.zeros((2,)) + c)  # one slice per step
    m.p = lib.Param(m.w[...][:2] * c)
    return c + 1


def _shrink(lib, c, m):
    del m.w
    return c + 1


def _add_submodule(lib, c, m):
    m.sub = lib.Linear(2, 2, rngs=lib.Rngs(0))
    m.sub.bias[...] = m.sub.bias[...] + c
    return c + m.w[...].sum()


NEW_STATE_CASES = [
    (_grow, lambda lib: 1),
    (_grow, lambda lib: lib.StateAxes({lib.Param: 1, lib.BatchStat: None, ...: 0})),
    (_shrink, lambda lib: 1),
    (_add_submodule, lambda lib: lib.StateAxes({lib.Param: 1, ...: None})),
]


@pytest.mark.parametrize("change, axes", NEW_STATE_CASES, ids=["grow", "grow-sa", "del", "sub"])
def test_state_created_on_a_scanned_argument_matches_flax(change, axes):
    fnnx = pytest.importorskip("flax.nnx")
    pures, carries = [], []
    for lib in (nnx, fnnx):
        m = _stacked(lib)
        fn = functools.partial(change, lib)
        in_axes = (lib.Carry, axes(lib))
        c = lib.scan(fn, in_axes=in_axes, out_axes=lib.Carry)(jnp.zeros(()), m)
        pure = nnx.state(m).to_pure_dict() if lib is nnx else fnnx.to_pure_dict(fnnx.state(m))
        pures.append(pure)
        carries.append(c)
    _same_tree(*pures)
    close(*carries)


def test_new_cache_on_scanned_layers_is_stacked_along_the_layer_axis():
    layers = make_stack()
    seen_w = layers.w

    def step(x, layer):
        layer.trace = nnx.Intermediate(x.mean(axis=0))  # per layer: stacked
        return forward(x, layer)

    x = jnp.ones((2, D))
    nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, layers)
    assert layers.w is seen_w  # the caller's module, updated in place
    assert layers.trace.value.shape == (N_LAYERS, D)
    # The first layer saw the input.
    close(layers.trace.value[0], np.ones((D,)))


def test_static_attribute_set_inside_a_step():
    m = _stacked(nnx)

    def step(c, m):
        m.tag = "seen"
        return c + m.w.value.sum()

    c = nnx.scan(step, in_axes=(nnx.Carry, 1), out_axes=nnx.Carry)(jnp.zeros(()), m)
    assert m.tag == "seen"
    close(c, np.arange(12.0).sum())


def _refused_scan(fn, in_axes, args, m, match, length=None):
    def attributes():
        return {k: v for k, v in vars(m).items() if not k.startswith("_nnx")}

    before, attrs = _pure(m), attributes()
    with pytest.raises(TraceContextError, match=match):
        nnx.scan(fn, in_axes=in_axes, out_axes=nnx.Carry, length=length)(*args)
    assert attributes().keys() == attrs.keys()
    assert all(attributes()[k] is v for k, v in attrs.items())
    _same_tree(_pure(m), before)


CREATED = (
    r"structure of state carried.*created args\[{}\]\.{} \({}\) on an argument whose in_axes \({}\)"
)
REMOVED = r"structure of state carried.*removed or replaced args\[{}\]\.{} \(in_axes {}\)"


def test_a_carried_module_cannot_gain_a_variable():
    def step(m, x):
        m.c = nnx.Cache(jnp.zeros((2,)) + x)
        return m

    m = _stacked(nnx)
    match = CREATED.format(0, "c", "a Cache", r"nnx\.Carry") + r".*\nFix: \(1\) create it before"
    _refused_scan(step, (nnx.Carry, 0), (m, jnp.arange(3.0)), m, match)
    assert not hasattr(m, "c")


def test_a_carried_module_cannot_lose_or_swap_a_variable():
    def delete(m, x):
        del m.s
        return m

    def swap(m, x):
        m.s = nnx.Param(m.s.value)
        return m

    m = _stacked(nnx)
    _refused_scan(
        delete, (nnx.Carry, 0), (m, jnp.arange(3.0)), m, REMOVED.format(0, "s", "nnx.Carry")
    )
    match = CREATED.format(0, "s", "a Param in place of a BatchStat", r"nnx\.Carry")
    _refused_scan(swap, (nnx.Carry, 0), (m, jnp.arange(3.0)), m, match)
    assert isinstance(m.s, nnx.BatchStat)


def test_broadcast_state_cannot_gain_a_variable_in_a_step():
    def step(c, m):
        m.c = nnx.Cache(jnp.zeros((2,)))
        return c + 1

    m = _stacked(nnx)
    match = CREATED.format(1, "c", "a Cache", "None")
    _refused_scan(step, (nnx.Carry, None), (jnp.zeros(()), m), m, match, length=3)
    axes = nnx.StateAxes({nnx.Param: 1, ...: None})
    _refused_scan(step, (nnx.Carry, axes), (jnp.zeros(()), m), m, match)
