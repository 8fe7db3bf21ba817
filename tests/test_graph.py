"""Graph behaviour at the edges: abstract models (``nnx.eval_shape``) keep their raw array
leaves, and empty or data-free plain containers split, merge and give a State like flax.nnx."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.pytreelib import is_array


class RawArrays(nnx.Module):
    """A model whose state includes raw arrays: an attribute, inside a tuple, inside a list."""

    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (2, 3)))
        self.u = jnp.ones(3)
        self.pair = (jnp.zeros(2, jnp.int32), 7)
        self.stack = [jnp.full((4,), 2.0)]
        self.name = "raw"


def paths(state):
    return sorted(state.flat_state().paths, key=repr)


# -- abstract models --------------------------------------------------------------------------
def test_shape_dtype_struct_is_an_array_leaf():
    assert is_array(jax.ShapeDtypeStruct((2,), jnp.float32))
    assert not is_array((2,))


def test_abstract_model_keeps_raw_array_leaves_in_its_state():
    concrete = RawArrays(nnx.Rngs(0))
    abstract = nnx.eval_shape(lambda: RawArrays(nnx.Rngs(0)))
    assert isinstance(abstract.u, jax.ShapeDtypeStruct)
    graphdef, state = nnx.split(concrete)
    a_graphdef, a_state = nnx.split(abstract)
    assert a_graphdef == graphdef
    assert paths(a_state) == paths(state) == [("pair", 0), ("stack", 0), ("u",), ("w",)]
    for (_, a), (_, c) in zip(a_state.flat_state(), state.flat_state(), strict=True):
        a = a.value if isinstance(a, nnx.Variable) else a
        c = c.value if isinstance(c, nnx.Variable) else c
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (c.shape, c.dtype)
    assert paths(nnx.state(abstract)) == paths(state)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)


def test_concrete_state_fills_an_abstract_model():
    concrete = RawArrays(nnx.Rngs(0))
    abstract = nnx.eval_shape(lambda: RawArrays(nnx.Rngs(1)))
    graphdef = nnx.graphdef(abstract)
    merged = nnx.merge(graphdef, nnx.state(concrete))
    np.testing.assert_array_equal(merged.u, concrete.u)
    nnx.update(abstract, nnx.state(concrete))
    for name in ("u", "stack"):
        assert jax.tree.all(
            jax.tree.map(np.array_equal, getattr(abstract, name), getattr(concrete, name))
        )
    np.testing.assert_array_equal(abstract.pair[0], concrete.pair[0])
    np.testing.assert_array_equal(abstract.w.value, concrete.w.value)
    assert nnx.graphdef(abstract) == nnx.graphdef(concrete)


def test_checkpoint_restores_raw_arrays_into_an_abstract_model(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    model = RawArrays(nnx.Rngs(0))
    model.u = jnp.arange(3.0)
    with nnx.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, model=model)
        abstract = nnx.eval_shape(lambda: RawArrays(nnx.Rngs(1)))
        ckpt.restore(model=abstract)
    np.testing.assert_array_equal(abstract.u, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(abstract.pair[0], model.pair[0])
    np.testing.assert_array_equal(abstract.stack[0], model.stack[0])
    np.testing.assert_array_equal(abstract.w.value, model.w.value)


def test_a_static_shape_dtype_struct_stays_static():
    class Spec(nnx.Module):
        def __init__(self):
            self.spec = nnx.static(jax.ShapeDtypeStruct((2,), jnp.float32))

    graphdef, state = nnx.split(Spec())
    assert len(state) == 0
    assert nnx.merge(graphdef, state).spec == jax.ShapeDtypeStruct((2,), jnp.float32)


# -- empty and data-free plain containers -----------------------------------------------------
CONTAINERS = {
    "empty-dict": {},
    "empty-list": [],
    "nested-empty-dict": {"a": {}},
    "nested-empty-list": {"a": []},
    "deep-empty": {"a": {"b": {}}},
    "list-of-empty": [{}],
    "empty-beside-array": {"a": {}, "b": np.ones(1, np.float32)},
    "static-values": {"a": 1, "b": "x", "c": None},
    "tuple-with-empty-list": (np.zeros(2, np.float32), []),
}


@pytest.mark.parametrize("value", CONTAINERS.values(), ids=CONTAINERS.keys())
def test_plain_containers_split_and_merge(value):
    graphdef, state = nnx.split(value)
    assert nnx.graphdef(value) == graphdef
    assert paths(nnx.state(value)) == paths(state)
    rebuilt = nnx.merge(graphdef, state)
    assert type(rebuilt) is type(value)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(value)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(value), strict=True):
        np.testing.assert_array_equal(a, b)
    if not isinstance(value, tuple):  # arrays directly in a tuple cannot be updated in place
        nnx.update(value, state)


@pytest.mark.parametrize("value", CONTAINERS.values(), ids=CONTAINERS.keys())
def test_plain_container_states_match_flax(value):
    fnnx = pytest.importorskip("flax.nnx")
    theirs = sorted((tuple(p) for p, _ in fnnx.to_flat_state(fnnx.state(value))), key=repr)
    assert paths(nnx.state(value)) == theirs


def test_update_writes_raw_arrays_into_a_plain_root_in_place():
    value = {"b": np.ones(1), "c": (np.ones(2), 3), "l": [np.ones(1)]}
    inner = value["l"]
    nnx.update(value, jax.tree.map(lambda x: x * 0, nnx.state(value)))
    np.testing.assert_array_equal(value["b"], [0.0])
    np.testing.assert_array_equal(value["c"][0], [0.0, 0.0])
    assert value["c"][1] == 3 and value["l"] is inner
    np.testing.assert_array_equal(inner[0], [0.0])


def test_update_of_an_array_in_a_root_tuple_raises_and_changes_nothing():
    value = (np.ones(1), [np.ones(1)])
    zeros = jax.tree.map(lambda x: x * 0, nnx.state(value))
    with pytest.raises(
        nnx.errors.UpdateError,
        match=r"(?s)nothing was changed.*model\[0\]: an array in a tuple, which cannot change "
        r"in place",
    ):
        nnx.update(value, zeros)
    np.testing.assert_array_equal(value[1][0], [1.0])


def test_empty_state_of_empty_containers():
    assert nnx.state({}) == nnx.State({})
    assert nnx.state([]) == nnx.State({})
    assert nnx.state({"a": {}}) == nnx.State({})
    assert nnx.graphdef({}) != nnx.graphdef([])
    assert nnx.merge(*nnx.split({"a": {}})) == {"a": {}}


def test_empty_container_inside_a_tuple_attribute_is_structure():
    class M(nnx.Module):
        def __init__(self):
            self.t = (jnp.ones(1), {}, [])

    m = M()
    graphdef, state = nnx.split(m)
    assert paths(state) == [("t", 0)]
    assert nnx.merge(graphdef, state).t[1:] == ({}, [])
    m.t[2].append(jnp.zeros(2))  # a plain list: the structure cache still notices
    assert paths(nnx.state(m)) == [("t", 0), ("t", 2, 0)]


def test_unhashable_non_pytree_value_in_a_plain_container_explains_itself():
    with pytest.raises(
        nnx.errors.StaticAttributeError,
        match=r"(?s)^The value at model\.a is an unhashable set\. It is not a pytree.*"
        r"Fix.*nnx\.Variable\(value\)",
    ):
        nnx.split({"a": {1, 2}})
    with pytest.raises(
        nnx.errors.StaticAttributeError,
        match=r"^The value at model\.layers\[0\] \(in a List\) is an unhashable set",
    ):
        nnx.split(nnx.Dict(layers=nnx.List([{1}])))


def test_graphdef_repr_names_the_root():
    assert repr(nnx.graphdef({})) == "GraphDef({})"
    assert repr(nnx.graphdef(nnx.Param(1))) == "GraphDef(Param)"
    assert repr(nnx.graphdef(jnp.ones(1))) == "GraphDef(array)"
