"""The structure cache and plain containers: lists and dicts under ``nnx.data`` or inside
tuples, and States held in the graph, are mutated without a stamp, yet the cache sees it;
raw array leaves in plain pytrees (an optax state, namedtuples, registered dataclasses) are
read and written back per attribute through jitted steps and ``nnx.update``.

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx._flatten import flatten_cached
from tests._structure_cache_helpers import (
    Leaf,
    Tree,
    _has_path,
    assert_matches_fresh,
    cache_of,
    warm,
)


# -- mutable containers the cache cannot see being mutated --------------------------------
def _data_list() -> Tree:
    m = Tree()
    m.blocks = nnx.data([Leaf(), Leaf()])  # stays a plain list (as in flax)
    return m


def _list_in_tuple() -> Tree:
    m = Tree()
    m.nest = ([nnx.Param(jnp.ones(1))], nnx.Param(jnp.zeros(1)))
    return m


def _dict_in_tuple() -> Tree:
    m = Tree()
    m.nest = ({"k": jnp.ones(1)},)
    return m


def _state_in_tuple() -> Tree:
    m = Tree()  # an optax state of nnx.State mappings: States inside a (named)tuple
    m.nest = (nnx.State({"k": jnp.ones(1), "inner": {"p": nnx.Param(jnp.ones(2))}}),)
    return m


UNTRACKED = {
    "nnx.data-list-append": (_data_list, lambda m: m.blocks.append(Leaf()), ("blocks", 2)),
    "nnx.data-list-setitem": (
        _data_list,
        lambda m: m.blocks.__setitem__(0, nnx.Param(jnp.ones(1))),
        ("blocks", 0),
    ),
    "nnx.data-list-pop": (_data_list, lambda m: m.blocks.pop(), ("blocks", 0)),
    "list-in-tuple-append": (
        _list_in_tuple,
        lambda m: m.nest[0].append(nnx.Param(jnp.ones(2))),
        ("nest", 0, 1),
    ),
    "dict-in-tuple-setitem": (
        _dict_in_tuple,
        lambda m: m.nest[0].__setitem__("j", jnp.ones(2)),
        ("nest", 0, "j"),
    ),
    "dict-in-tuple-value": (
        _dict_in_tuple,
        lambda m: m.nest[0].__setitem__("k", jnp.full((1,), 5.0)),
        ("nest", 0, "k"),
    ),
    "State-in-tuple-setitem": (
        _state_in_tuple,
        lambda m: m.nest[0].__setitem__("j", jnp.ones(2)),
        ("nest", 0, "j"),
    ),
    "State-in-tuple-setattr": (
        _state_in_tuple,
        lambda m: setattr(m.nest[0], "j", nnx.BatchStat(jnp.ones(2))),
        ("nest", 0, "j"),
    ),
    "State-in-tuple-value": (
        _state_in_tuple,
        lambda m: m.nest[0].__setitem__("k", jnp.full((1,), 5.0)),
        ("nest", 0, "k"),
    ),
    "State-in-tuple-del": (
        _state_in_tuple,
        lambda m: m.nest[0].__delitem__("k"),
        ("nest", 0, "inner", "p"),
    ),
    "nested-State-setitem": (
        _state_in_tuple,
        lambda m: m.nest[0]["inner"].__setitem__("q", nnx.Param(jnp.ones(3))),
        ("nest", 0, "inner", "q"),
    ),
}


@pytest.mark.parametrize("name", list(UNTRACKED))
def test_untracked_container_mutation_is_seen(name: str) -> None:
    """Plain lists/dicts that are not converted to nnx.List/nnx.Dict (under nnx.data, inside
    a tuple) are mutated without a stamp, and States held in the graph take one only when
    they change; the cache must notice both."""
    build, mutate, path = UNTRACKED[name]
    model = build()
    warm(model)
    mutate(model)
    assert_matches_fresh(model)
    assert _has_path(nnx.state(model).flat_state().paths, path)


def test_data_marking_an_array_attribute_is_structural() -> None:
    model = Tree()
    warm(model)
    model.arr = nnx.data(jnp.ones(3))  # the marking goes into the GraphDef
    assert_matches_fresh(model)


# -- raw leaves in plain pytrees: read and written per attribute -------------------------
class MLP(nnx.Module):
    def __init__(self) -> None:
        self.layers = [nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1))]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


class OptState(nnx.Pytree):
    """An optax state held as data, as a user writes it without nnx.Optimizer."""

    def __init__(self, model: MLP, tx: Any, pure: bool):
        self.tx = tx
        params = nnx.state(model, nnx.Param)
        self.state = nnx.data(tx.init(params.to_pure_dict() if pure else params))


@pytest.mark.parametrize("pure", [False, True], ids=["state-of-params", "dicts-of-arrays"])
def test_optax_state_under_data_through_many_jitted_steps(pure: bool) -> None:
    """An adam state under nnx.data (a namedtuple holding States of Params, or with `pure`
    plain dicts of raw arrays) is read and written back by nnx.jit on every step: after many
    steps, params and optimizer state equal plain jax.jit + optax on the same numbers."""
    tx = optax.adam(0.05)
    model = MLP()
    opt = OptState(model, tx, pure)
    x = jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)
    y = jnp.linspace(0.0, 1.0, 10).reshape(5, 2)

    def loss(m: MLP) -> jax.Array:
        return jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(m: MLP, o: OptState) -> None:
        grads = nnx.grad(loss)(m)
        params = nnx.state(m, nnx.Param)
        if pure:
            grads, params = grads.to_pure_dict(), params.to_pure_dict()
        updates, o.state = o.tx.update(grads, o.state, params)
        nnx.update(m, optax.apply_updates(params, updates))

    graphdef, ref_params = nnx.split(model, nnx.Param)
    ref_params = ref_params.to_pure_dict()
    ref_opt = tx.init(ref_params)

    @jax.jit
    def ref_step(params: Any, opt_state: Any) -> tuple[Any, Any]:
        def ref_loss(p: Any) -> jax.Array:
            return loss(nnx.merge(graphdef, p))

        updates, opt_state = tx.update(jax.grad(ref_loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(25):
        step(model, opt)
        ref_params, ref_opt = ref_step(ref_params, ref_opt)

    def close(a: Any, b: Any) -> None:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    jax.tree.map(close, nnx.state(model, nnx.Param).to_pure_dict(), ref_params)
    assert int(opt.state[0].count) == int(ref_opt[0].count) == 25
    for moment in ("mu", "nu"):
        got = getattr(opt.state[0], moment)
        jax.tree.map(close, got if pure else got.to_pure_dict(), getattr(ref_opt[0], moment))
    assert_matches_fresh(opt)


@jax.tree_util.register_dataclass
@dataclass
class Box:
    """A registered mutable pytree: walked by position, rebuilt on write."""

    a: Any
    b: Any


def test_raw_leaves_in_every_container_kind_written_back() -> None:
    """Raw arrays in plain lists and dicts (written in place), States, tuples, namedtuples and
    registered pytrees (rebuilt) survive jitted steps and nnx.update; the entry stays valid
    through nnx.update, and later mutations of the containers are still seen."""
    pair = collections.namedtuple("pair", "left right")
    model = nnx.Module()
    model.nest = nnx.data(
        {
            "list": [jnp.zeros(2), (jnp.zeros(1), pair(jnp.zeros(3), jnp.zeros(2)))],
            "box": Box(jnp.zeros(2), [jnp.zeros(1)]),
            "state": nnx.State({"s": jnp.zeros(2), "t": {"u": jnp.zeros(1)}}),
        }
    )

    @nnx.jit
    def bump(m: nnx.Module) -> None:
        m.nest = jax.tree.map(lambda a: a + 1.0, m.nest)

    @nnx.jit
    def inc(m: nnx.Module) -> None:
        flat, treedef = jax.tree.flatten(m.nest)
        new = treedef.unflatten([a + 1.0 for a in flat])
        m.nest["list"][0] = new["list"][0]
        m.nest["list"][1] = new["list"][1]
        m.nest["box"].a = new["box"].a
        m.nest["box"].b[0] = new["box"].b[0]
        m.nest["state"]["s"] = new["state"]["s"]
        m.nest["state"]["t"]["u"] = new["state"]["t"]["u"]

    bump(model)  # a new nest: a structural change
    for _ in range(5):
        inc(model)  # only values change: written back into the containers
    leaves = jax.tree.leaves(model.nest)
    assert len(leaves) == 8
    for leaf in leaves:
        np.testing.assert_array_equal(leaf, np.full(leaf.shape, 6.0))
    assert model.nest["list"][1][1].__class__ is pair
    assert_matches_fresh(model)
    # nnx.update writes them all at once and keeps the entry.
    entry = warm(model)
    state = nnx.state(model)
    state = jax.tree.map(lambda a: a * 2.0, state)
    nnx.update(model, state)
    assert cache_of(model) is entry and entry.valid()
    for leaf in jax.tree.leaves(model.nest):
        np.testing.assert_array_equal(leaf, np.full(leaf.shape, 12.0))
    assert_matches_fresh(model)
    # The plain containers were written in place; mutating them later is still seen.
    nest = model.nest
    nest["list"].append(jnp.ones(4))
    nest["state"]["v"] = jnp.ones(5)
    nest["box"].b.append(jnp.ones(6))
    paths = nnx.state(model).flat_state().paths
    assert ("nest", "list", 2) in paths and ("nest", "state", "v") in paths
    assert ("nest", "box", "b", 1) in paths
    assert_matches_fresh(model)


def test_jit_raw_write_back_then_container_mutation_is_seen() -> None:
    """A jitted step writes a raw array back into a plain dict under nnx.data; adding a key
    to that dict afterwards must show in the next jitted call and in nnx.state."""
    model = nnx.Module()
    model.d = nnx.data({"a": jnp.zeros(2)})
    d = model.d

    @nnx.jit
    def step(m: nnx.Module) -> jax.Array:
        m.d["a"] = m.d["a"] + 1.0
        return jnp.asarray(len(m.d))

    assert int(step(model)) == 1 and int(step(model)) == 1
    assert model.d is d  # written in place, as the same code would do outside jit
    np.testing.assert_array_equal(d["a"], np.full((2,), 2.0))
    d["b"] = jnp.ones(1)
    assert int(step(model)) == 2
    assert sorted(nnx.state(model)["d"]) == ["a", "b"]
    np.testing.assert_array_equal(d["a"], np.full((2,), 3.0))


def test_jit_sees_a_state_under_data_changed_between_calls() -> None:
    """A State held in the graph takes a stamp when it changes: the jit memo must not replay
    the old structure after a key is added, and must read a replaced array."""
    model = nnx.Module()
    model.s = nnx.data(nnx.State({"a": jnp.zeros(2)}))

    @nnx.jit
    def total(m: nnx.Module) -> jax.Array:
        return sum(jnp.sum(v) for v in jax.tree.leaves(m.s))

    assert float(total(model)) == 0.0 and float(total(model)) == 0.0
    model.s["b"] = jnp.ones(3)
    assert float(total(model)) == 3.0
    model.s["a"] = jnp.full((2,), 2.0)
    assert float(total(model)) == 7.0
    del model.s["b"]
    assert float(total(model)) == 4.0


def test_a_state_not_in_any_graph_takes_no_stamp() -> None:
    """Setting items on an ordinary State (gradients, a state read with nnx.state) does not
    move the structure clock: the flatten caches of all models stay valid."""
    from nnx import _version

    s = nnx.State({"a": jnp.zeros(2)})
    before = _version.now()
    s["b"] = jnp.ones(1)
    del s["a"]
    assert _version.now() == before


def test_jitted_raw_writes_keep_the_cache_entry():
    """nnx.jit writes raw leaves of plain containers in place: no re-flatten next call."""
    m = nnx.Module()
    m.d = nnx.data({"a": jnp.zeros(2), "b": [jnp.zeros(1)]})

    @nnx.jit
    def step(m):
        m.d["a"] = m.d["a"] + 1.0
        m.d["b"][0] = m.d["b"][0] + 1.0

    step(m)
    step(m)
    entry = flatten_cached((m,))
    step(m)
    assert flatten_cached((m,)) is entry
    np.testing.assert_allclose(m.d["a"], 3.0 * np.ones(2))
    np.testing.assert_allclose(m.d["b"][0], 3.0 * np.ones(1))
