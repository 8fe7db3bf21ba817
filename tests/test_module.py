"""Module: train/eval, set_attributes, sow, perturb, iteration, pytree leaves, repr, functional
calls, pop, clone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx


class Linear(nnx.Module):
    def __init__(self, din, dout, *, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))
        self.b = nnx.Param(jnp.zeros(dout))
        self.din, self.dout = din, dout

    def __call__(self, x):
        y = x @ self.w
        return y + jnp.broadcast_to(self.b.value, y.shape)


class Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = Linear(2, 2, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)


class Net(nnx.Module):
    def __init__(self, rngs):
        shared = Block(rngs)
        self.blocks = [shared, Block(rngs), shared]
        self.head = Linear(2, 1, rngs=rngs)
        self.extra = {"drop": nnx.Dropout(0.1, rngs=rngs)}


def all_flags(net):
    flags = []
    for _, m in net.iter_modules():
        for name in ("deterministic", "use_running_average"):
            if name in m.__dict__:
                flags.append(getattr(m, name))
    return flags


# -- train / eval / set_attributes ----------------------------------------------------------
def test_train_and_eval_flip_nested_flags():
    net = Net(nnx.Rngs(0))
    assert all_flags(net) == [False] * len(all_flags(net))
    net.eval()
    flags = all_flags(net)
    assert len(flags) == 2 + 2 + 1  # two distinct blocks (drop + bn each) and extra.drop
    assert all(flags)
    assert net.blocks[1].drop.deterministic is True
    assert net.extra["drop"].deterministic is True
    assert net.blocks[0].bn.use_running_average is True
    net.train()
    assert not any(all_flags(net))


def test_eval_changes_the_graphdef_and_behaviour():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(1))
    x = jnp.ones((4, 8))
    g_train = nnx.graphdef(drop)
    assert not np.array_equal(drop(x), x)
    drop.eval()
    assert nnx.graphdef(drop) != g_train
    np.testing.assert_array_equal(drop(x), x)


def test_train_and_eval_with_extra_attributes():
    net = Net(nnx.Rngs(0))
    net.eval(din=7)
    assert net.head.din == 7 and net.blocks[0].lin.din == 7
    with pytest.raises(AttributeError, match=r"\['nope'\]"):
        net.train(nope=1)


def test_set_attributes_with_filters():
    net = Net(nnx.Rngs(0))
    net.set_attributes(nnx.Dropout, deterministic=True)
    assert net.blocks[0].drop.deterministic and net.extra["drop"].deterministic
    assert not net.blocks[0].bn.use_running_average
    net.set_attributes(deterministic=False)
    net.set_attributes(nnx.PathContains("extra"), deterministic=True)
    assert net.extra["drop"].deterministic
    assert not net.blocks[1].drop.deterministic
    net.set_attributes(lambda path, m: isinstance(m, Linear) and path == ("head",), dout=9)
    assert net.head.dout == 9 and net.blocks[0].lin.dout == 2


def test_set_attributes_only_sets_existing_attributes():
    net = Net(nnx.Rngs(0))
    net.set_attributes(use_running_average=True)
    assert "use_running_average" not in net.blocks[0].drop.__dict__
    assert "use_running_average" not in net.__dict__


def test_set_attributes_raise_if_not_found():
    net = Net(nnx.Rngs(0))
    with pytest.raises(
        nnx.errors.AttributeNotFoundError,
        match=r"(?s)no module in this Net has the attribute\(s\) \['nope'\], so nothing was "
        r"set.*Fix.*raise_if_not_found=False",
    ):
        net.set_attributes(nope=1)
    with pytest.raises(
        AttributeError, match=r"no module in this Net matching the filters \(Dropout\) has"
    ):
        net.set_attributes(nnx.Dropout, use_running_average=True)
    net.set_attributes(nope=1, raise_if_not_found=False)
    assert all("nope" not in m.__dict__ for _, m in net.iter_modules())


# -- sow -------------------------------------------------------------------------------------
class Sower(nnx.Module):
    def __call__(self, x, **kwargs):
        self.sow(nnx.Intermediate, "h", x * 2, **kwargs)
        return x


def test_sow_accumulates_in_a_tuple():
    m = Sower()
    m(1.0)
    assert type(m.h) is nnx.Intermediate and m.h.value == (2.0,)
    m(2.0)
    assert m.h.value == (2.0, 4.0)
    assert list(nnx.state(m, nnx.Intermediate)) == ["h"]


def test_sow_custom_reduce_and_init():
    m = Sower()
    m(jnp.ones(2), reduce_fn=lambda a, b: a + b, init_fn=lambda: jnp.zeros(2))
    m(jnp.ones(2), reduce_fn=lambda a, b: a + b, init_fn=lambda: jnp.zeros(2))
    np.testing.assert_array_equal(m.h.value, [4.0, 4.0])
    m2 = Sower()
    m2(3.0, reduce_fn=lambda a, b: max(a, b), init_fn=lambda: -1.0)
    m2(1.0, reduce_fn=lambda a, b: max(a, b), init_fn=lambda: -1.0)
    assert m2.h.value == 6.0


def test_sow_with_a_collection_name():
    class M(nnx.Module):
        def __call__(self, x):
            self.sow("intermediates", "a", x)
            self.sow("my_test_sown_values", "b", x)
            return x

    m = M()
    m(1)
    m(2)
    assert type(m.a) is nnx.Intermediate and m.a.value == (1, 2)
    vtype = nnx.variable_type_from_name("my_test_sown_values")
    assert issubclass(vtype, nnx.Variable)
    assert type(m.b) is vtype and m.b.value == (1, 2)
    assert list(nnx.state(m, vtype)) == ["b"]


def test_set_attributes_error_is_an_nnx_error_flax_code_can_catch():
    # flax.nnx raises ValueError here, nnx used to raise AttributeError: both keep working.
    net = Net(nnx.Rngs(0))
    for caught in (nnx.NNXError, AttributeError, ValueError):
        with pytest.raises(caught):
            net.set_attributes(nope=1)


def test_set_attributes_that_fails_sets_nothing():
    net = Net(nnx.Rngs(0))
    before = all_flags(net)
    with pytest.raises(AttributeError, match=r"\['nope'\]"):
        net.set_attributes(deterministic=True, nope=1)
    assert all_flags(net) == before


def test_sow_into_an_attribute_of_another_type_raises():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(1))

    m = M()
    with pytest.raises(
        nnx.errors.ArgumentError,
        match=r"(?s)M\.sow\(Intermediate, 'w', \.\.\.\): the attribute 'w' already holds a "
        r"Param, but sow keeps its values in a Variable of type Intermediate.*"
        r"Fix: sow under another name, e.g\. self\.sow\(Intermediate, 'w_sown', value\)",
    ):
        m.sow(nnx.Intermediate, "w", 1.0)
    np.testing.assert_array_equal(m.w.value, [1.0])
    # TypeError (nnx before) and ValueError (flax.nnx) handlers keep catching it
    for caught in (nnx.NNXError, TypeError, ValueError):
        with pytest.raises(caught):
            m.sow(nnx.Intermediate, "w", 1.0)


def test_pop_without_filters_raises():
    m = Sower()
    m(1.0)
    with pytest.raises(
        nnx.errors.ArgumentError,
        match=r"(?s)nnx\.pop\(Sower\) got no filter.*Fix.*nnx\.pop\(model, nnx\.Intermediate\)",
    ):
        nnx.pop(m)
    for caught in (TypeError, ValueError):
        with pytest.raises(caught):
            nnx.pop(m)
    assert m.h.value == (2.0,)


def test_pop_removes_sown_values():
    m = Sower()
    m(1.0)
    m(3.0)
    popped = nnx.pop(m, nnx.Intermediate)
    assert popped.to_pure_dict() == {"h": (2.0, 6.0)}
    assert not hasattr(m, "h")
    assert len(nnx.state(m)) == 0
    m(5.0)  # sowing starts afresh
    assert m.h.value == (10.0,)


def test_pop_from_nested_modules_and_lists():
    class Outer(nnx.Module):
        def __init__(self):
            self.inner = [Sower(), Sower()]
            self.w = nnx.Param(jnp.ones(1))

        def __call__(self, x):
            return [m(x) for m in self.inner]

    o = Outer()
    o(1.0)
    inter, params = nnx.pop(o, nnx.Intermediate, nnx.Param)
    assert sorted(inter.flat_state().paths) == [("inner", 0, "h"), ("inner", 1, "h")]
    assert params.flat_state().paths == (("w",),)
    assert not hasattr(o.inner[0], "h") and not hasattr(o, "w")


# -- perturb -------------------------------------------------------------------------------
class Perturbed(nnx.Module):
    def __init__(self, rngs):
        self.l1 = Linear(3, 4, rngs=rngs)
        self.l2 = Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        h = self.l1(x)
        h = self.perturb("h", h)
        return jnp.tanh(self.l2(h))


def test_perturb_creates_a_zero_perturbation():
    m = Perturbed(nnx.Rngs(0))
    x = jnp.ones((5, 3))
    y = m(x)
    assert type(m.h) is nnx.Perturbation
    assert m.h.shape == (5, 4)
    np.testing.assert_array_equal(m.h.value, jnp.zeros((5, 4)))
    np.testing.assert_allclose(y, jnp.tanh(m.l2(m.l1(x))))


def test_perturbation_gradient_equals_intermediate_gradient():
    m = Perturbed(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    m(x)
    graphdef, perturbations, rest = nnx.split(m, nnx.Perturbation, ...)

    def loss(perturbations):
        model = nnx.merge(graphdef, perturbations, rest)
        return jnp.sum(model(x) ** 2)

    grads = jax.grad(loss)(perturbations)
    assert type(grads["h"]) is nnx.Perturbation
    h = m.l1(x)
    expected = jax.grad(lambda h: jnp.sum(jnp.tanh(m.l2(h)) ** 2))(h)
    np.testing.assert_allclose(grads["h"].value, expected, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(expected).sum()) > 0


def test_perturb_with_a_custom_variable_type():
    class Probe(nnx.Variable):
        pass

    class M(nnx.Module):
        def __call__(self, x):
            return self.perturb("p", x, variable_type=Probe)

    m = M()
    np.testing.assert_array_equal(m(jnp.ones(2)), [1, 1])
    assert type(m.p) is Probe
    m.p.value = jnp.ones(2)
    np.testing.assert_array_equal(m(jnp.ones(2)), [2, 2])


# -- iteration ------------------------------------------------------------------------------
def test_iter_modules_yields_each_module_once_with_its_path():
    net = Net(nnx.Rngs(0))
    found = list(net.iter_modules())
    ids = [id(m) for _, m in found]
    assert len(ids) == len(set(ids))
    by_path = dict(found)
    assert by_path[()] is net
    assert by_path[("blocks", 0)] is net.blocks[0]
    assert ("blocks", 2) not in by_path  # the shared block is reported once
    assert by_path[("blocks", 1, "lin")] is net.blocks[1].lin
    assert by_path[("extra", "drop")] is net.extra["drop"]
    assert found[-1] == ((), net)  # children before their parent
    types = sorted(type(m).__name__ for _, m in found)
    assert types == sorted(
        ["Net", "Linear"] + ["Block", "Linear", "Dropout", "BatchNorm"] * 2 + ["Dropout"]
    )


def test_iter_modules_on_a_cycle_terminates():
    net = Net(nnx.Rngs(0))
    net.blocks[1].parent = net
    assert len(list(net.iter_modules())) == 11


def test_iter_modules_function_matches_the_method_and_flax_order():
    net = Net(nnx.Rngs(0))
    found = list(nnx.iter_modules(net))
    assert [(p, id(m)) for p, m in found] == [(p, id(m)) for p, m in net.iter_modules()]
    assert [p for p, _ in found] == [
        ("blocks", 0, "bn"),
        ("blocks", 0, "drop"),
        ("blocks", 0, "lin"),
        ("blocks", 0),
        ("blocks", 1, "bn"),
        ("blocks", 1, "drop"),
        ("blocks", 1, "lin"),
        ("blocks", 1),
        ("extra", "drop"),
        ("head",),
        (),
    ]


def test_iter_modules_accepts_any_graph_root():
    net = Net(nnx.Rngs(0))
    found = dict(nnx.iter_modules([net.head, {"n": net}]))
    assert found[(0,)] is net.head
    assert found[(1, "n")] is net
    assert (1, "n", "head") not in found  # the head was reached first at (0,)
    assert list(nnx.iter_modules(jnp.ones(2))) == []


def test_iter_children_of_a_list_and_a_dict():
    net = Net(nnx.Rngs(0))
    assert [k for k, _ in nnx.iter_children(net.blocks)] == [0, 1, 2]
    assert [k for k, _ in nnx.iter_children(net.extra)] == ["drop"]
    assert [k for k, _ in nnx.iter_children(net)] == ["blocks", "extra", "head"]


@pytest.mark.parametrize("value", [(1, 2), jnp.ones(2), 3], ids=["tuple", "array", "int"])
def test_iter_children_of_a_non_node_raises(value):
    with pytest.raises(
        nnx.errors.ArgumentError,
        match=rf"(?s)iter_children expects a node .*got a {type(value).__name__}.*Fix",
    ):
        nnx.iter_children(value)
    with pytest.raises(ValueError):  # what flax.nnx raises
        nnx.iter_children(value)


def test_iter_children():
    net = Net(nnx.Rngs(0))
    assert [(k, m) for k, m in net.iter_children()] == [("head", net.head)]
    block = net.blocks[0]
    assert [k for k, _ in block.iter_children()] == ["bn", "drop", "lin"]
    keys = [k for k, _ in nnx.iter_children(block.lin)]
    assert keys == ["b", "w"]


def test_tree_leaves_counts_parameters():
    m = Linear(3, 4, rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(m)
    assert sum(x.size for x in leaves) == 3 * 4 + 4
    params = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    # two distinct blocks (lin 2x2+2, bn scale+bias 2+2) and the head (2x1+1)
    assert sum(x.size for x in jax.tree.leaves(params)) == 2 * (6 + 4) + 3


# -- repr ----------------------------------------------------------------------------------
def test_repr_is_readable():
    m = Linear(2, 3, rngs=nnx.Rngs(0))
    text = repr(m)
    assert text.startswith("Linear(")
    assert "w=Param(value=Array(shape=(2, 3), dtype=float32))" in text
    assert "din=2" in text and "dout=3" in text
    net_text = repr(Net(nnx.Rngs(0)))
    assert "blocks=List(" in net_text and "Block(" in net_text


def test_repr_terminates_on_a_cycle():
    net = Net(nnx.Rngs(0))
    net.me = net
    net.blocks[0].up = net
    text = repr(net)
    assert "me=<same Net as root>" in text
    assert "up=<same Net as root>" in text


# -- functional calls ---------------------------------------------------------------------
class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.array(0))
        self.w = nnx.Param(jnp.array(2.0))

    def __call__(self, x):
        self.count.value = self.count.value + 1
        return x * self.w

    def double(self, x):
        self.count.value = self.count.value + 2
        return 2 * x


def test_call_with_flax_tuple_form():
    graphdef, state = nnx.split(Counter())
    y, (graphdef2, state2) = nnx.call((graphdef, state))(3.0)
    assert float(y) == 6.0
    assert graphdef2 == graphdef
    assert int(state2["count"].value) == 1
    assert int(state["count"].value) == 0  # the input state is not changed
    y, (_, state3) = nnx.call((graphdef2, state2))(1.0)
    assert int(state3["count"].value) == 2


def test_graphdef_apply_and_method_access():
    graphdef, state = nnx.split(Counter())
    y, (_, s2) = graphdef.apply(state)(4.0)
    assert float(y) == 8.0 and int(s2["count"].value) == 1
    y, (_, s3) = graphdef.apply(s2).double(5.0)
    assert float(y) == 10.0 and int(s3["count"].value) == 3
    y, (_, s4) = nnx.call((graphdef, state)).double(1.0)
    assert int(s4["count"].value) == 2
    y, (_, s5) = nnx.call(graphdef, state)(1.0)
    assert int(s5["count"].value) == 1


def test_call_with_split_states():
    graphdef, params, rest = nnx.split(Counter(), nnx.Param, ...)
    y, (_, state) = nnx.call((graphdef, params, rest))(1.0)
    assert float(y) == 2.0 and int(state["count"].value) == 1
    y, _ = graphdef.apply(params, rest).double(1.0)
    assert float(y) == 2.0


def test_call_under_jit():
    graphdef, state = nnx.split(Counter())

    @jax.jit
    def step(state, x):
        y, (_, state) = graphdef.apply(state)(x)
        return y, state

    y, state = step(state, 2.0)
    y, state = step(state, 2.0)
    assert float(y) == 4.0 and int(state["count"].value) == 2


def test_call_reports_structural_changes():
    class Grower(nnx.Module):
        def __call__(self):
            self.new = nnx.Param(jnp.ones(1))

    graphdef, state = nnx.split(Grower())
    _, (g2, s2) = graphdef.apply(state)()
    assert g2 != graphdef
    assert list(s2) == ["new"]


# -- clone ---------------------------------------------------------------------------------
def test_clone_is_independent_and_keeps_sharing():
    net = Net(nnx.Rngs(0))
    c = nnx.clone(net)
    assert c is not net and c.blocks[0] is not net.blocks[0]
    assert c.blocks[0] is c.blocks[2]
    assert nnx.graphdef(c) == nnx.graphdef(net)
    c.head.w.value = jnp.zeros((2, 1))
    c.blocks.append(Block(nnx.Rngs(1)))
    c.head.extra = 1
    assert not np.array_equal(net.head.w.value, jnp.zeros((2, 1)))
    assert len(net.blocks) == 3 and not hasattr(net.head, "extra")
    np.testing.assert_array_equal(
        nnx.state(c, nnx.Param).blocks[1].lin.w.value, net.blocks[1].lin.w.value
    )
