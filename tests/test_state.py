"""State: access, the flat view, filter/split/merge, map, pure dicts, and pytree behaviour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import errors


def make_state():
    return nnx.State(
        {
            "layers": {
                0: {"w": nnx.Param(jnp.ones(2)), "m": nnx.BatchStat(jnp.zeros(2))},
                1: {"w": nnx.Param(jnp.full(2, 2.0)), "m": nnx.BatchStat(jnp.ones(2))},
            },
            "head": nnx.Param(jnp.arange(3.0), tag="out"),
            "count": nnx.BatchStat(jnp.array(0)),
        }
    )


class Block(nnx.Module):
    def __init__(self, v):
        self.w = nnx.Param(jnp.full(2, float(v)))
        self.m = nnx.BatchStat(jnp.zeros(2))


class Model(nnx.Module):
    def __init__(self):
        self.layers = [Block(1), Block(2)]
        self.head = nnx.Param(jnp.arange(3.0))


def values(state):
    return jax.tree.map(np.asarray, state.to_pure_dict())


# -- access -------------------------------------------------------------------------------
def test_attribute_and_item_access():
    s = make_state()
    assert s.head is s["head"]
    assert s.layers[0].w is s["layers"][0]["w"]
    assert isinstance(s.layers, nnx.State)
    assert isinstance(s.layers[1], nnx.State)
    np.testing.assert_array_equal(s.layers[1].w.value, [2, 2])
    assert "head" in s and "nope" not in s
    assert len(s) == 3
    with pytest.raises(AttributeError, match="State has no key 'nope'"):
        _ = s.nope
    with pytest.raises(nnx.errors.AttributeNotFoundError, match=r"(?s)'nope'.*Fix"):
        _ = s.nope
    with pytest.raises(KeyError):
        _ = s["nope"]


def test_int_keys_stay_ints():
    s = make_state()
    assert list(s.layers) == [0, 1]
    assert all(type(k) is int for k in s.layers)
    assert s.layers["0"] is s.layers[0]  # stringified lookup is a convenience only
    _, state = nnx.split(Model())
    assert list(state["layers"]) == [0, 1]
    assert ("layers", 0, "w") in state.flat_state().paths


def test_setting_and_deleting():
    s = make_state()
    s.extra = {"a": nnx.Param(jnp.ones(1))}
    assert isinstance(s.extra, nnx.State)
    s["other"] = nnx.Cache(jnp.zeros(1))
    assert ("other",) in s.flat_state().paths
    del s.extra
    del s["other"]
    assert set(s) == {"layers", "head", "count"}


def test_nested_mappings_become_states():
    s = nnx.State({"a": {"b": {"c": nnx.Param(1.0)}}})
    assert type(s.a) is nnx.State and type(s.a.b) is nnx.State
    s2 = nnx.State([("x", nnx.Param(1.0))])
    assert list(s2) == ["x"]


def test_equality():
    s = make_state()
    assert s == nnx.from_flat_state(s.flat_state())
    assert s != nnx.State({"head": s.head})
    with pytest.raises(TypeError):
        hash(s)


# -- flat view ----------------------------------------------------------------------------
EXPECTED_PATHS = (
    ("count",),
    ("head",),
    ("layers", 0, "m"),
    ("layers", 0, "w"),
    ("layers", 1, "m"),
    ("layers", 1, "w"),
)


def test_flat_state_order_and_contents():
    s = make_state()
    flat = s.flat_state()
    assert isinstance(flat, nnx.FlatState)
    assert flat.paths == EXPECTED_PATHS
    assert flat.leaves[1] is s.head
    assert len(flat) == 6
    path, leaf = flat[3]
    assert path == ("layers", 0, "w") and leaf is s.layers[0].w
    assert nnx.to_flat_state(s).paths == EXPECTED_PATHS


def test_flat_round_trip():
    s = make_state()
    for flat in (
        s.flat_state(),
        nnx.to_flat_state(s),
        list(s.flat_state()),
        dict(s.flat_state()),
    ):
        back = nnx.from_flat_state(flat)
        assert back == s
        assert list(back.layers) == [0, 1]
    assert nnx.State.from_flat_path(s.flat_state()) == s
    assert s.flat_state().to_nested_state() == s


def test_flat_state_filter():
    flat = make_state().flat_state()
    params = flat.filter(nnx.Param)
    assert params.paths == (("head",), ("layers", 0, "w"), ("layers", 1, "w"))
    params, stats = flat.filter(nnx.Param, nnx.BatchStat)
    assert len(params) == 3 and len(stats) == 3


# -- filter / split / merge ---------------------------------------------------------------
def test_filter_is_not_exhaustive():
    s = make_state()
    params = s.filter(nnx.Param)
    assert params.flat_state().paths == (("head",), ("layers", 0, "w"), ("layers", 1, "w"))
    assert params.head is s.head
    heads, counts = s.filter("head", "count")
    assert list(heads) == ["head"] and list(counts) == ["count"]
    assert len(s.filter(nnx.Cache)) == 0


def test_split_is_exhaustive():
    s = make_state()
    params, stats = s.split(nnx.Param, nnx.BatchStat)
    assert len(params.flat_state()) == 3 and len(stats.flat_state()) == 3
    assert nnx.merge_state(params, stats) == s
    only = s.split(...)
    assert only == s
    params, rest = nnx.statelib.split_state(s, nnx.Param, ...)
    assert len(rest.flat_state()) == 3


def test_split_reports_every_unmatched_path():
    s = make_state()
    with pytest.raises(
        errors.FilterError,
        match=r"(?s)3 leaves matched none.*state\.count.*state\.layers\[0\]\.m.*"
        r"state\.layers\[1\]\.m.*Fix: add a catch-all `...`",
    ):
        s.split(nnx.Param)
    with pytest.raises(errors.FilterError):
        s.split(nnx.Param, nnx.Cache)


def test_split_first_filter_wins():
    s = make_state()
    heads, params = s.split("head", nnx.Param, ...)[:2]
    assert list(heads) == ["head"]
    assert ("head",) not in params.flat_state().paths


def test_merge_and_or_later_wins():
    s = make_state()
    params, stats = s.split(nnx.Param, nnx.BatchStat)
    merged = params | stats
    assert merged == s
    assert nnx.State.merge(params, stats) == s
    assert nnx.merge_state(params, stats) == s
    override = nnx.State({"head": nnx.Param(jnp.zeros(3))})
    out = s | override
    np.testing.assert_array_equal(out.head.value, [0, 0, 0])
    out = override | s
    np.testing.assert_array_equal(out.head.value, [0, 1, 2])
    assert out.layers[1].w is s.layers[1].w
    # merging does not touch the inputs
    np.testing.assert_array_equal(s.head.value, [0, 1, 2])
    assert len(params.flat_state()) == 3


def test_merge_three_states_nested():
    a = nnx.State({"x": {"y": nnx.Param(1.0)}})
    b = nnx.State({"x": {"z": nnx.Param(2.0)}})
    c = nnx.State({"x": {"y": nnx.Param(3.0)}})
    m = nnx.merge_state(a, b, c)
    assert m.x.y.value == 3.0 and m.x.z.value == 2.0


def test_map():
    s = make_state()
    seen = []

    def fn(path, leaf):
        seen.append(path)
        return leaf.replace(leaf.value * 0 + len(path))

    out = s.map(fn)
    assert tuple(seen) == EXPECTED_PATHS
    assert type(out.head) is nnx.Param and out.head.tag == "out"
    np.testing.assert_array_equal(out.layers[0].w.value, [3, 3])
    np.testing.assert_array_equal(s.layers[0].w.value, [1, 1])


# -- pure dicts ---------------------------------------------------------------------------
def test_to_pure_dict():
    s = make_state()
    pure = s.to_pure_dict()
    assert type(pure) is dict and type(pure["layers"]) is dict
    assert list(pure["layers"]) == [0, 1]
    assert not any(isinstance(x, nnx.Variable) for x in jax.tree.leaves(pure))
    np.testing.assert_array_equal(pure["head"], [0, 1, 2])
    assert nnx.to_pure_dict(s).keys() == pure.keys()


def test_replace_by_pure_dict_in_place():
    s = make_state()
    head = s.head
    s.replace_by_pure_dict({"head": jnp.full(3, 9.0), "layers": {1: {"w": jnp.zeros(2)}}})
    assert s.head is head and head.tag == "out"
    np.testing.assert_array_equal(head.value, [9, 9, 9])
    np.testing.assert_array_equal(s.layers[1].w.value, [0, 0])
    np.testing.assert_array_equal(s.layers[0].w.value, [1, 1])


def test_replace_by_pure_dict_with_stringified_int_keys():
    model = Model()
    graphdef, state = nnx.split(model)
    pure = state.to_pure_dict()
    # what a checkpoint library hands back: int keys as strings, new values
    loaded = {
        "layers": {
            str(i): {k: v + 10 for k, v in sub.items()} for i, sub in pure["layers"].items()
        },
        "head": pure["head"] + 10,
    }
    state.replace_by_pure_dict(loaded)
    assert list(state["layers"]) == [0, 1]
    restored = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(restored.layers[1].w.value, [12, 12])
    np.testing.assert_array_equal(restored.head.value, [10, 11, 12])
    np.testing.assert_array_equal(model.layers[1].w.value, [2, 2])
    nnx.replace_by_pure_dict(state, {"layers": {"0": {"m": jnp.ones(2)}}})
    np.testing.assert_array_equal(state["layers"][0]["m"].value, [1, 1])


def test_replace_by_pure_dict_with_replace_fn():
    s = make_state()
    s.replace_by_pure_dict({"head": jnp.ones(3)}, replace_fn=lambda leaf, v: leaf.replace(v * 4))
    np.testing.assert_array_equal(s.head.value, [4, 4, 4])
    assert s.head.tag == "out"


def test_replace_by_pure_dict_unknown_path_writes_nothing():
    s = make_state()
    with pytest.raises(KeyError, match=r"(?s)state\.nope.*Fix"):
        s.replace_by_pure_dict({"head": jnp.zeros(3), "nope": jnp.zeros(1)})
    np.testing.assert_array_equal(s.head.value, [0, 1, 2])


def test_replace_by_pure_dict_unknown_path_error_is_an_nnx_error():
    s = make_state()
    # KeyError as before, ValueError as flax.nnx raises, and no repr() quotes around it
    for caught in (nnx.errors.KeyNotFoundError, KeyError, ValueError):
        with pytest.raises(
            caught,
            match=r"(?s)^replace_by_pure_dict got paths that are not in the state:\n  state\.nope"
            r".*Fix: build the pure dict from this state's structure",
        ):
            s.replace_by_pure_dict({"nope": jnp.zeros(1)})


# -- pytree -------------------------------------------------------------------------------
def test_tree_map_keeps_variables():
    s = make_state()
    out = jax.tree.map(lambda x: x + 1, s)
    assert type(out) is nnx.State
    assert type(out.head) is nnx.Param and out.head.tag == "out"
    assert type(out.layers[0].m) is nnx.BatchStat
    assert out.head is not s.head
    np.testing.assert_array_equal(out.head.value, [1, 2, 3])
    np.testing.assert_array_equal(s.head.value, [0, 1, 2])
    assert list(out.layers) == [0, 1]


def test_tree_leaves_are_arrays_in_flat_order():
    s = make_state()
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 6
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert leaves[1] is s.head.value


def test_key_paths():
    s = make_state()
    keys = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(s)[0]]
    assert keys[0] == "['count'].value"
    assert "['layers'][0]['w'].value" in keys
    assert len(keys) == 6


def test_jit_and_grad_over_a_state():
    s = make_state().filter(nnx.Param)

    def loss(s):
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(s))

    g = jax.jit(jax.grad(loss))(s)
    assert type(g) is nnx.State and type(g.head) is nnx.Param
    np.testing.assert_allclose(g.head.value, [0, 2, 4])
    np.testing.assert_allclose(g.layers[1].w.value, [4, 4])


def test_repr_readable():
    text = repr(make_state())
    assert text.startswith("State({")
    assert "'head': Param(value=Array(shape=(3,), dtype=float32), tag='out')" in text
    assert "'layers': State({" in text and "0: State({" in text
    assert "'count': BatchStat" in text
    assert repr(nnx.State({})) == "State({})"
    assert repr(nnx.State({"x": 1})) == "State({'x': 1})"
