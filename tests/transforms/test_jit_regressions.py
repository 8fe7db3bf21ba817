"""Regressions of nnx.jit and of Variables under raw JAX transforms (issue cases 6-9).

6. A Variable reached through a closure and given a traced value inside a raw JAX transform
   raises TraceContextError at the assignment (not JAX's UnexpectedTracerError a call later).
7. Static arguments given by position when marked by name, and the reverse, as in jax.jit.
8. A graph object as a static argument of nnx.jit is a clear error at call time.
9. ``jax.export.export(nnx.jit(f))`` exports a pure function of arrays that serialises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx.errors import TraceContextError, TransformError


class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.array(0))
        self.w = nnx.Param(jnp.arange(3.0))

    def __call__(self, x):
        self.count.value = self.count.value + 1
        return x * self.w


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.blocks = [Counter(), Counter()]
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.drop(self.linear(x))


X = jnp.ones((3,))


def raw(x):
    """An array's data (a PRNG key's too) as numpy."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def concrete(x) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


# -- 6. a Variable mutated inside a raw JAX transform -------------------------------------------
RAW_LEAK = r"(?s)inside a JAX transform it was not passed to.*Fix: use the nnx transform instead"


def _raw_transform_cases():
    """(name, run): `run(model)` assigns a traced value to model.w through a closure."""

    def bump(model, x):
        model.w.value = model.w.value + x
        return x.sum()

    return [
        ("jit", lambda m: jax.jit(lambda x: bump(m, x))(X)),
        ("grad", lambda m: jax.grad(lambda x: bump(m, x))(X)),
        ("vmap", lambda m: jax.vmap(lambda x: bump(m, x))(jnp.ones((2, 3)))),
        ("fori_loop", lambda m: jax.lax.fori_loop(0, 2, lambda i, c: c + bump(m, X), 0.0)),
        ("cond", lambda m: jax.lax.cond(True, lambda x: bump(m, x), lambda x: x.sum(), X)),
        ("setitem", lambda m: jax.jit(lambda x: m.w.__setitem__(0, x.sum()))(X)),
    ]


@pytest.mark.parametrize(
    ("name", "run"), _raw_transform_cases(), ids=[n for n, _ in _raw_transform_cases()]
)
def test_raw_jax_transform_closure_mutation_raises_at_the_assignment(name, run):
    model = Counter()
    before = model.w.value
    with pytest.raises(TraceContextError, match=r"Param Counter\.w was assigned"):
        run(model)
    # The Variable keeps its old, concrete value, and works normally afterwards.
    assert model.w.value is before
    model.w.value = model.w.value + 1
    np.testing.assert_array_equal(model.w.value, [1.0, 2.0, 3.0])


def test_raw_jit_error_names_the_fix_and_repeats_instead_of_a_leaked_tracer():
    model = Counter()
    step = jax.jit(lambda x: model(x))
    for _ in range(2):  # the second call used to fail with JAX's UnexpectedTracerError
        with pytest.raises(TraceContextError, match=RAW_LEAK) as info:
            step(X)
        assert "nnx.jit(lambda model, x: ...)(model, x)" in str(info.value)
        assert "pass the module to the JAX transform as an argument" in str(info.value)
    assert concrete(model.count.value) and int(model.count.value) == 0
    # The suggested fix works.
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(model, X), [0.0, 1.0, 2.0])
    assert int(model.count.value) == 1


def test_raw_jit_error_names_the_path_in_a_nested_model():
    net = Net(nnx.Rngs(0))
    with pytest.raises(TraceContextError, match=r"BatchStat Net\.blocks\[0\]\.count was"):
        jax.jit(lambda x: net(x))(X)
    assert all(concrete(b.count.value) for b in net.blocks)


def test_raw_jit_rngs_stream_draw_raises():
    rngs = nnx.Rngs(0, dropout=1)
    before = rngs.dropout.count.value
    with pytest.raises(TraceContextError, match=r"RngCount Rngs\.dropout\.count was assigned"):
        jax.jit(lambda x: jax.random.bernoulli(rngs.dropout(), 0.5, x.shape))(X)
    assert rngs.dropout.count.value is before
    rngs.dropout()  # still usable
    assert int(rngs.dropout.count.value) == 1


def test_raw_jit_optimizer_update_raises_and_keeps_the_optimizer_state():
    model = Counter()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    step_before = optimizer.step.value
    opt_before = jax.tree.leaves(nnx.state(optimizer.opt_state))
    with pytest.raises(TraceContextError, match=r"Optimizer\.(model|opt_state).*was assigned"):
        jax.jit(lambda g: optimizer.update(g))(grads)
    assert optimizer.step.value is step_before
    after = jax.tree.leaves(nnx.state(optimizer.opt_state))
    assert all(a is b for a, b in zip(after, opt_before, strict=True))


def test_raw_jit_optimizer_update_keeps_the_parameters():
    model = Counter()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    with pytest.raises(TraceContextError):
        jax.jit(lambda g: optimizer.update(g))(grads)
    assert concrete(model.w.value)


def test_raw_transform_inside_nnx_jit_raises_for_the_rebuilt_module():
    model = Counter()

    @nnx.jit
    def f(m, x):
        # m is nnx.jit's own (rebuilt) module, but the fori_loop body is another trace.
        return jax.lax.fori_loop(0, 2, lambda i, c: c + m(x).sum(), 0.0)

    with pytest.raises(TraceContextError, match=r"BatchStat Counter\.count was assigned"):
        f(model, X)
    assert concrete(model.count.value) and int(model.count.value) == 0


def test_raw_jit_mutates_what_it_created_or_was_given_but_not_a_closure():
    model = Counter()

    @jax.jit
    def created(x):
        v = nnx.Variable(0)  # a concrete initial value, then a traced one
        v.value = v.value + x.sum()
        fresh = Counter()
        fresh(x)
        rngs = nnx.Rngs(0, dropout=1)
        rngs.dropout()
        clone = nnx.clone(model)  # copies made inside the trace are its own
        clone(x)
        merged = nnx.merge(*nnx.split(model))
        merged(x)
        return v.value + fresh.count.value + rngs.dropout.count.value + clone.count.value

    assert float(created(X)) == 6.0

    @jax.jit
    def given(m, x):  # a module passed in is unflattened inside: the trace's own
        return m(x), nnx.state(m)

    y, state = given(model, X)
    np.testing.assert_array_equal(y, [0.0, 1.0, 2.0])
    nnx.update(model, state)
    assert int(model.count.value) == 1

    with pytest.raises(TraceContextError, match=r"BatchStat Counter\.count was assigned"):
        jax.jit(lambda x: model(x))(X)  # the same model through a closure
    assert concrete(model.count.value) and int(model.count.value) == 1


def test_nnx_transforms_carry_mutations_where_raw_jit_raises():
    net = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(net, optax.sgd(0.1))

    def loss(net, x):
        return jnp.sum(net(x) ** 2)

    with pytest.raises(TraceContextError, match=r"BatchStat \w+(\.model)?\.blocks\[0\]\.count was"):
        jax.jit(lambda x: loss(net, x))(X)  # the path may start at the optimizer

    @nnx.jit
    def train_step(net, optimizer, x):
        optimizer.update(net, nnx.grad(loss)(net, x))

    train_step(net, optimizer, X)
    train_step(net, optimizer, X)
    assert int(optimizer.step.value) == 2
    assert [int(b.count.value) for b in net.blocks] == [2, 2]
    assert int(net.drop.rngs.count.value) == 2
    nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(net.blocks[0], jnp.ones((2, 3)))
    assert int(net.blocks[0].count.value) == 3


# -- 7. static arguments by position and by name ------------------------------------------------
def scaled(m, x, mode="single"):
    return x * m.w * (2.0 if mode == "double" else 1.0)


def test_static_argname_given_positionally():
    model = Counter()
    f = nnx.jit(scaled, static_argnames="mode")
    np.testing.assert_array_equal(f(model, X, "double"), [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(f(model, X, "single"), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(f(model, X, mode="double"), [0.0, 2.0, 4.0])
    assert f.static_argnums == (2,) and f.static_argnames == ("mode",)


def test_static_argnum_given_by_keyword():
    model = Counter()
    f = nnx.jit(scaled, static_argnums=2)
    np.testing.assert_array_equal(f(model, X, mode="double"), [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(f(model, X, "double"), [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(f(model, x=X, mode="single"), [0.0, 1.0, 2.0])


def test_static_argname_given_positionally_to_a_method():
    class Scaler(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

        @nnx.jit(static_argnames="power")
        def __call__(self, x, power):
            for _ in range(power):  # needs a Python int
                x = x * self.w
            return x

    np.testing.assert_array_equal(Scaler()(jnp.full((2,), 3.0), 2), [3.0, 3.0])


# -- 8. graph objects cannot be static ----------------------------------------------------------
def test_module_as_static_argnum_is_a_clear_error():
    model = Counter()
    f = nnx.jit(lambda model, x: model.w * x, static_argnums=0)
    with pytest.raises(
        TransformError,
        match=r"(?s)argument 0 \(`model`\) is static \(static_argnums=\(0,\)\) but holds a graph "
        r"object, `Counter`.*Fix: pass it as a normal argument",
    ):
        f(model, X)


def test_pytree_of_modules_as_static_argname_is_a_clear_error():
    f = nnx.jit(lambda models, x: models[0].w * x, static_argnames="models")
    with pytest.raises(
        TransformError, match=r"argument `models` is static .* `Counter` inside a tuple"
    ):
        f(models=(Counter(),), x=X)
    with pytest.raises(TransformError, match=r"argument 0 \(`models`\) is static"):
        f((Counter(),), X)  # static by name, given by position


def test_module_in_a_static_position_after_cached_calls_is_a_clear_error():
    model = Counter()
    f = nnx.jit(scaled, static_argnums=2)
    f(model, X, "double")
    f(model, X, "double")  # the fast path of a repeated call
    with pytest.raises(TransformError, match=r"argument 2 \(`mode`\) is static"):
        f(model, X, Counter())


# -- 9. jax.export ------------------------------------------------------------------------------
def test_export_of_a_forward_pass_serialises_and_matches_the_live_call():
    net = Net(nnx.Rngs(0))
    net.eval()
    f = nnx.jit(lambda net, x: net.linear(x))
    exported = jax.export.export(f)(net, X)
    restored = jax.export.deserialize(exported.serialize())
    state = jax.tree.leaves(nnx.state(net))
    np.testing.assert_allclose(restored.call(state, X), f(net, X), rtol=1e-6)
    assert restored.fun_name == "<lambda>"


def test_export_of_a_stateful_step_returns_the_new_state():
    net = Net(nnx.Rngs(0))
    f = nnx.jit(lambda net, x: net(x))
    exported = jax.export.export(f)(net, X)
    restored = jax.export.deserialize(exported.serialize())
    y, (new_state,) = restored.call(jax.tree.leaves(nnx.state(net)), X)
    live = f(net, X)  # updates net: the block counters, the dropout stream
    np.testing.assert_allclose(y, live, rtol=1e-6)
    for a, b in zip(new_state, jax.tree.leaves(nnx.state(net)), strict=True):
        np.testing.assert_array_equal(raw(a), raw(b))
    assert int(new_state[0]) == 1  # the first block's count, in nnx.state order


def test_export_from_an_abstract_model_with_a_static_argument():
    abstract = nnx.eval_shape(Counter)
    f = nnx.jit(scaled, static_argnames="mode")
    exported = jax.export.export(f)(abstract, jax.ShapeDtypeStruct((3,), jnp.float32), "double")
    restored = jax.export.deserialize(exported.serialize())
    model = Counter()
    out = restored.call(jax.tree.leaves(nnx.state(model)), X)
    np.testing.assert_array_equal(out, f(model, X, "double"))


def test_export_of_a_function_returning_a_module_cannot_serialise():
    exported = jax.export.export(nnx.jit(lambda x: Counter()))(X)
    with pytest.raises(TransformError, match=r"(?s)returns graph objects.*Fix: export a function"):
        exported.serialize()


def test_nnx_transform_inside_raw_jit_on_a_closure_raises_and_keeps_values():
    """The write-back of an nnx transform checks the trace too: nnx.grad called inside a raw
    jax.jit on a model reached through a closure would otherwise leak the tracers."""
    model = Counter()

    def loss(m, x):
        return jnp.sum(m(x))

    with pytest.raises(TraceContextError, match="Counter"):
        jax.jit(lambda x: nnx.grad(loss)(model, x))(X)
    assert concrete(model.count.value) and int(model.count.value) == 0
