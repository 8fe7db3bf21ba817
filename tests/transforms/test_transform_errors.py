"""Misuse of transforms is caught where it happens, with an error that says what and where,
and it never leaves the caller's objects half-updated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import TraceContextError, TransformError


class M(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((3, 2)))
        self.mean = nnx.BatchStat(jnp.zeros((3,)))
        self.inner = Inner()


class Inner(nnx.Module):
    def __init__(self):
        self.b = nnx.Param(jnp.zeros((3,)))
        self.count = nnx.BatchStat(jnp.zeros((3,)))


def pure(m) -> dict:
    return jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())


def assert_unchanged(m, before: dict, keys: set | None = None):
    after = pure(m)
    la, ta = jax.tree.flatten(after)
    lb, tb = jax.tree.flatten(before)
    assert ta == tb, "the structure changed"
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)
    for leaf in jax.tree.leaves(nnx.state(m)):
        assert isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
    if keys is not None:
        assert set(after) == keys


# -- a Variable mutated through a closure -------------------------------------------------------
CLOSURE_MESSAGE = r"not passed to that transform.*closure"


def _closure_cases():
    """(name, run) pairs; `run(outer)` mutates outer.mean from inside a transform that was
    not given `outer`."""

    def bump(outer, x):
        outer.mean.value = outer.mean.value + x

    def jit_case(outer):
        nnx.jit(lambda x: bump(outer, x))(jnp.ones((3,)))

    def grad_case(outer):
        def loss(m, x):
            bump(outer, x * m.w.value.sum())
            return m.w.value.sum()

        nnx.grad(loss)(M(), jnp.ones((3,)))

    def vmap_case(outer):
        nnx.vmap(lambda x: bump(outer, x))(jnp.ones((4, 3)))

    def scan_case(outer):
        def step(c, x):
            bump(outer, x)
            return c

        nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(jnp.zeros(()), jnp.ones((2, 3)))

    def cond_case(outer):
        def branch(m, x):
            bump(outer, x)
            return x

        nnx.cond(jnp.array(True), branch, branch, M(), jnp.ones((3,)))

    def fori_case(outer):
        def body(i, m):
            bump(outer, jnp.ones((3,)) * i)
            return m

        nnx.fori_loop(0, 2, body, M())

    def remat_case(outer):
        def f(m, x):
            bump(outer, x)
            return x

        nnx.grad(lambda m, x: nnx.remat(f)(m, x).sum() + m.w.value.sum())(M(), jnp.ones((3,)))

    def eval_shape_case(outer):
        nnx.eval_shape(lambda x: bump(outer, x), jnp.ones((3,)))

    return [
        ("jit", jit_case),
        ("grad", grad_case),
        ("vmap", vmap_case),
        ("scan", scan_case),
        ("cond", cond_case),
        ("fori_loop", fori_case),
        ("remat", remat_case),
        ("eval_shape", eval_shape_case),
    ]


@pytest.mark.parametrize(("name", "run"), _closure_cases(), ids=[n for n, _ in _closure_cases()])
def test_closure_mutation_raises_trace_context_error(name, run):
    outer = M()
    outer.mean.value = jnp.array([1.0, 2.0, 3.0])
    before = pure(outer)
    with pytest.raises(TraceContextError, match=CLOSURE_MESSAGE):
        run(outer)
    # The Variable outside keeps its old, concrete value.
    assert isinstance(outer.mean.value, jax.Array)
    assert not isinstance(outer.mean.value, jax.core.Tracer)
    np.testing.assert_array_equal(outer.mean.value, [1.0, 2.0, 3.0])
    assert_unchanged(outer, before)
    # And it still works normally afterwards.
    outer.mean.value = outer.mean.value + 1
    np.testing.assert_array_equal(outer.mean.value, [2.0, 3.0, 4.0])


def test_closure_mutation_error_names_the_fix():
    outer = M()
    with pytest.raises(TraceContextError) as info:
        nnx.jit(lambda x: setattr(outer.mean, "value", x))(jnp.ones((3,)))
    message = str(info.value)
    assert "BatchStat" in message
    assert "Fix" in message and "argument" in message


def test_closure_read_of_concrete_value_is_fine():
    outer = M()
    outer.mean.value = jnp.array([1.0, 2.0, 3.0])
    y = nnx.jit(lambda x: x + outer.mean.value)(jnp.ones((3,)))
    np.testing.assert_array_equal(y, [2.0, 3.0, 4.0])


def test_closure_concrete_assignment_outside_any_trace_is_fine():
    outer = M()

    @nnx.jit
    def f(x):
        return x * 2

    f(jnp.ones((3,)))
    outer.mean.value = jnp.ones((3,))  # no trace running: a plain assignment
    np.testing.assert_array_equal(outer.mean.value, np.ones((3,)))


def test_variable_leaked_out_of_a_trace_raises_on_use():
    leaked = []

    @nnx.jit
    def f(x):
        v = nnx.Variable(x * 2)
        leaked.append(v)
        return x

    f(jnp.ones((3,)))
    with pytest.raises(TraceContextError, match="leaked"):
        _ = leaked[0].value + 1


# -- structural changes where they cannot be carried out ----------------------------------------
def _add_attribute(m, *rest):
    m.extra = nnx.Param(jnp.ones((3,)))
    m.mean.value = m.mean.value + 1.0  # a value change too: must not leak out either
    return rest[0] if rest else None


def _change_variable_type(m, *rest):
    m.mean = nnx.Param(jnp.zeros((3,)))
    return rest[0] if rest else None


def _delete_submodule(m, *rest):
    del m.inner
    return rest[0] if rest else None


STRUCTURAL = [_add_attribute, _change_variable_type, _delete_submodule]


@pytest.mark.parametrize("change", STRUCTURAL, ids=lambda f: f.__name__)
def test_batchable_structural_change_inside_vmap_is_carried_out(change):
    """On a broadcast module a change whose values are the same for every batch element is
    carried out, as in flax (test_vmap.py covers batched arguments)."""
    m = M()
    nnx.vmap(change, in_axes=(None, 0))(m, jnp.ones((4,)))
    if change is _add_attribute:
        np.testing.assert_array_equal(m.extra.value, np.ones((3,)))
        np.testing.assert_array_equal(m.mean.value, np.ones((3,)))
    elif change is _change_variable_type:
        assert type(m.mean) is nnx.Param and m.mean.value.shape == (3,)
    else:
        assert not hasattr(m, "inner")


def _add_batched_attribute(m, x):
    m.extra = nnx.Param(jnp.ones((3,)) * x)
    m.mean.value = m.mean.value + 1.0  # a value change too: must not leak out either


def _change_variable_type_batched(m, x):
    m.mean = nnx.Param(jnp.zeros((3,)) + x)


def _replace_submodule_batched(m, x):
    m.inner = Inner()
    m.inner.count.value = m.inner.count.value + x


UNBATCHABLE = [
    (_add_batched_attribute, "extra"),
    (_change_variable_type_batched, "mean"),
    (_replace_submodule_batched, r"inner\.count"),
]


@pytest.mark.parametrize("change, where", UNBATCHABLE, ids=lambda c: getattr(c, "__name__", ""))
def test_unbatchable_structural_change_inside_vmap(change, where):
    """A new value that differs per batch element cannot live on a broadcast module."""
    m = M()
    before = pure(m)
    inner = m.inner
    match = rf"nnx\.vmap: args\[0\]\.{where} has axis None .*differs per batch element"
    with pytest.raises(TraceContextError, match=match):
        nnx.vmap(change, in_axes=(None, 0))(m, jnp.ones((4,)) * jnp.arange(4.0))
    assert_unchanged(m, before, {"w", "mean", "inner"})
    assert not hasattr(m, "extra") and m.inner is inner


@pytest.mark.parametrize("change", STRUCTURAL, ids=lambda f: f.__name__)
def test_structural_change_inside_scan(change):
    m = M()
    before = pure(m)

    def step(c, m):
        change(m)
        return c

    with pytest.raises(TraceContextError, match=r"nnx\.scan: the step changed the structure"):
        nnx.scan(step, in_axes=(nnx.Carry, None), out_axes=nnx.Carry, length=3)(jnp.zeros(()), m)
    assert_unchanged(m, before, {"w", "mean", "inner"})
    assert not hasattr(m, "extra")


@pytest.mark.parametrize("change", STRUCTURAL, ids=lambda f: f.__name__)
def test_structural_change_inside_cond_and_loops(change):
    m = M()
    before = pure(m)

    def branch(m):
        change(m)
        return jnp.zeros(())

    with pytest.raises(TraceContextError, match="structure"):
        nnx.cond(jnp.array(True), branch, lambda m: jnp.zeros(()), m)
    assert_unchanged(m, before, {"w", "mean", "inner"})

    def body(i, m):
        change(m)
        return m

    with pytest.raises(TraceContextError, match="structure"):
        nnx.fori_loop(0, 2, body, m)
    assert_unchanged(m, before, {"w", "mean", "inner"})


def test_same_type_variable_replacement_inside_vmap_is_a_value_change():
    """Replacing a Variable by one of the same type keeps the structure: no error, and the
    caller's model holds the new value afterwards."""
    m = M()

    def f(m, x):
        m.mean = nnx.BatchStat(jnp.full((3,), 7.0))
        return x

    nnx.vmap(f, in_axes=(None, 0))(m, jnp.ones((4,)))
    assert isinstance(m.mean, nnx.BatchStat)
    np.testing.assert_array_equal(m.mean.value, np.full((3,), 7.0))


# -- axes that do not fit ----------------------------------------------------------------------
def test_vmap_wrong_number_of_in_axes():
    m = M()
    before = pure(m)
    with pytest.raises(TransformError, match=r"in_axes has 1 entries for 2 arguments"):
        nnx.vmap(lambda m, x: x, in_axes=(None,))(m, jnp.ones((4,)))
    assert_unchanged(m, before)


def test_scan_wrong_number_of_in_axes():
    with pytest.raises(TransformError, match=r"in_axes has 3 entries for 2 arguments"):
        nnx.scan(lambda c, x: c, in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)(
            jnp.zeros(()), jnp.ones((3,))
        )


def test_vmap_state_axes_not_covering_every_leaf_names_the_paths():
    m = M()
    before = pure(m)
    axes = nnx.StateAxes({nnx.Param: 0})
    with pytest.raises(TransformError) as info:
        nnx.vmap(lambda m: None, in_axes=(axes,))(m)
    message = str(info.value)
    assert "arg.mean" in message
    assert "arg.inner.count" in message
    assert "arg.w" not in message and "arg.inner.b" not in message
    assert "...:" in message  # says how to fix it
    assert_unchanged(m, before)


def test_scan_state_axes_not_covering_every_leaf_names_the_paths():
    m = M()
    axes = nnx.StateAxes({nnx.BatchStat: nnx.Carry})
    with pytest.raises(TransformError, match=r"arg\.w") as info:
        nnx.scan(lambda m: (m, None), in_axes=(axes,), out_axes=(nnx.Carry, 0), length=2)(m)
    assert "arg.inner.b" in str(info.value)


def test_jit_state_sharding_not_covering_every_leaf_names_the_paths():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:2]), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    m = M()
    sharding = nnx.StateSharding({nnx.BatchStat: NamedSharding(mesh, P())})
    with pytest.raises(TransformError, match=r"arg\.inner\.b"):
        nnx.jit(lambda m: None, in_shardings=(sharding,))(m)


def test_vmap_axis_spec_for_graph_argument_must_be_int_none_or_state_axes():
    with pytest.raises(TransformError, match="StateAxes"):
        nnx.vmap(lambda m: None, in_axes=("zero",))(M())


def test_scan_carry_in_but_not_out():
    with pytest.raises(TransformError, match="out_axes"):
        nnx.scan(lambda c, x: (c, x), in_axes=(nnx.Carry, 0), out_axes=(0, 0))(
            jnp.zeros(()), jnp.ones((3,))
        )


def test_scan_two_carries_rejected():
    with pytest.raises(TransformError, match="at most one"):
        nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, nnx.Carry), out_axes=nnx.Carry)(
            jnp.zeros(()), jnp.zeros(())
        )


def test_scan_output_graph_object_per_step_rejected():
    m = M()
    before = pure(m)
    with pytest.raises(TransformError, match="graph objects"):
        nnx.scan(lambda c, m: (c, m), in_axes=(nnx.Carry, None), out_axes=(nnx.Carry, 0), length=2)(
            jnp.zeros(()), m
        )
    assert_unchanged(m, before)


# -- grad misuse -------------------------------------------------------------------------------
def test_grad_module_returned_as_the_loss():
    m = M()
    before = pure(m)

    def loss(m):
        m.mean.value = m.mean.value + 1.0
        return m

    with pytest.raises(TransformError, match=r"scalar loss.*Module") as info:
        nnx.grad(loss)(m)
    assert "has_aux" in str(info.value)
    assert_unchanged(m, before)


def test_grad_state_returned_as_the_loss():
    with pytest.raises(TransformError, match="scalar loss"):
        nnx.grad(lambda m: nnx.state(m))(M())


@pytest.mark.parametrize("argnums", [2, (0, 5), nnx.DiffState(3, nnx.Param)])
def test_grad_argnums_out_of_range(argnums):
    m = M()
    before = pure(m)
    with pytest.raises(TransformError, match=r"argnums refers to argument \d"):
        nnx.grad(lambda m, x: m.w.value.sum() * x, argnums=argnums)(m, 2.0)
    assert_unchanged(m, before)


def test_grad_has_aux_without_a_pair():
    with pytest.raises(TransformError, match=r"has_aux=True"):
        nnx.grad(lambda m: m.w.value.sum(), has_aux=True)(M())


# -- nothing half-updated after an exception inside ---------------------------------------------
def _mutate_then_fail(m, *rest):
    m.mean.value = m.mean.value + 1.0
    m.inner.count.value = m.inner.count.value + 1.0
    m.w.value = m.w.value * 5.0
    raise RuntimeError("user code failed")


FAILING = {
    "jit": lambda m: nnx.jit(_mutate_then_fail)(m),
    "grad": lambda m: nnx.grad(_mutate_then_fail)(m),
    "value_and_grad": lambda m: nnx.value_and_grad(_mutate_then_fail)(m),
    "vmap": lambda m: nnx.vmap(_mutate_then_fail, in_axes=(None, 0))(m, jnp.ones((2,))),
    "scan": lambda m: nnx.scan(
        lambda c, m: _mutate_then_fail(m), in_axes=(nnx.Carry, None), out_axes=nnx.Carry, length=2
    )(jnp.zeros(()), m),
    "cond": lambda m: nnx.cond(True, _mutate_then_fail, _mutate_then_fail, m),
    "switch": lambda m: nnx.switch(0, [_mutate_then_fail], m),
    "fori_loop": lambda m: nnx.fori_loop(0, 2, lambda i, m: _mutate_then_fail(m), m),
    "while_loop": lambda m: nnx.while_loop(lambda m: True, _mutate_then_fail, m),
    "remat": lambda m: nnx.remat(_mutate_then_fail)(m),
    "eval_shape": lambda m: nnx.eval_shape(_mutate_then_fail, m),
    "checkify": lambda m: nnx.checkify(_mutate_then_fail)(m),
}


@pytest.mark.parametrize("name", sorted(FAILING))
def test_exception_inside_leaves_the_model_untouched(name):
    m = M()
    before = pure(m)
    with pytest.raises(RuntimeError, match="user code failed"):
        FAILING[name](m)
    assert_unchanged(m, before, {"w", "mean", "inner"})
    # The model still works with the same transform afterwards.
    nnx.jit(lambda m: m.w.value.sum())(m)


def test_closure_mutation_of_a_variable_outside_any_module_says_so():
    count = nnx.Variable(jnp.zeros(()))

    @nnx.jit
    def step(x):
        count.value = x

    with pytest.raises(nnx.TraceContextError, match=r"^Variable \(not found in any module\) was"):
        step(jnp.ones(()))
    assert float(count.value) == 0.0
