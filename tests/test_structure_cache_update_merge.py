"""``nnx.update`` and ``nnx.merge`` through the structure cache: update after a structural
change writes the right Variables, and the plans kept on cache entries and GraphDefs (pure,
filtered, reordered and stringified-key states; errors; pickled GraphDefs) agree with the
full paths.

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

import pickle
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx._flatten import flatten_cached, flatten_full
from tests._structure_cache_helpers import (
    Leaf,
    Tree,
    _values_match,
    assert_matches_fresh,
    cache_of,
    warm,
)


# -- update after a structural change -----------------------------------------------------
def test_update_after_replacing_a_variable_writes_the_new_one() -> None:
    model = Tree()
    warm(model)
    saved = nnx.state(model)
    old = model.a.w
    old.value = jnp.full((2,), 100.0)
    model.a.w = nnx.Param(jnp.full((2,), 9.0), tag="w")
    new = model.a.w
    nnx.update(model, saved)
    assert model.a.w is new
    np.testing.assert_array_equal(new.value, np.full((2,), 1.0))
    np.testing.assert_array_equal(old.value, np.full((2,), 100.0))  # the detached one: untouched
    assert_matches_fresh(model)


def test_update_after_list_mutations_targets_the_right_items() -> None:
    model = Tree()
    warm(model)
    model.layers.insert(0, Leaf(7.0))  # every old index shifts by one
    state = nnx.state(model)
    for i in range(3):
        state["layers"][i]["w"].value = jnp.full((2,), 10.0 + i)
    nnx.update(model, state)
    for i in range(3):
        np.testing.assert_array_equal(model.layers[i].w.value, np.full((2,), 10.0 + i))
    assert_matches_fresh(model)


def test_update_after_dict_and_tuple_changes() -> None:
    model = Tree()
    warm(model)
    model.table["x"] = Leaf(0.0)
    model.pair = (jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    nnx.update(model, {"table": {"x": {"w": jnp.full((2,), 3.0)}}, "pair": {2: jnp.ones(2)}})
    np.testing.assert_array_equal(model.table["x"].w.value, np.full((2,), 3.0))
    np.testing.assert_array_equal(model.pair[2], np.ones(2))
    assert_matches_fresh(model)


def test_update_of_a_removed_path_fails_and_changes_nothing() -> None:
    model = Tree()
    saved = nnx.state(model)
    del model.b
    w_before = model.a.w.value
    with pytest.raises(nnx.errors.UpdateError):
        nnx.update(model, saved)
    assert model.a.w.value is w_before
    assert_matches_fresh(model)


def test_update_with_other_metadata_rebuilds() -> None:
    model = Tree()
    saved = nnx.state(model)
    model.a.w.set_metadata(tag="changed")
    entry = warm(model)
    nnx.update(model, saved)  # rolls the metadata back: a structural change
    assert model.a.w.get_metadata() == {"tag": "w"}
    assert_matches_fresh(model)
    assert cache_of(model) is not entry


# -- the plans kept on cache entries and GraphDefs agree with the full paths ---------------
def _stringify(state: Any) -> dict:
    return {
        str(k): _stringify(v) if isinstance(v, nnx.State | dict) else v for k, v in state.items()
    }


def test_merge_and_update_accept_stringified_int_keys() -> None:
    model = Tree()
    graphdef, state = nnx.split(model)
    pure = _stringify(state)  # '0' for 0, as orbax returns them
    copy_ = nnx.merge(graphdef, pure)
    assert flatten_full(copy_).graphdef == graphdef
    pure["layers"]["1"]["w"] = nnx.Param(jnp.full((2,), 6.0), tag="w")
    nnx.update(model, pure)
    np.testing.assert_array_equal(model.layers[1].w.value, np.full((2,), 6.0))


def test_merge_of_filtered_states_and_of_a_reordered_state() -> None:
    model = Tree()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert flatten_full(nnx.merge(graphdef, params, rest)).graphdef == graphdef
    flat = list(nnx.state(model).flat_state())
    reordered = nnx.State.from_flat_path(list(reversed(flat)))
    copy_ = nnx.merge(graphdef, reordered)
    for got, ref in zip(flatten_full(copy_).leaves, flatten_full(model).leaves, strict=True):
        _values_match(got, ref)


def test_merge_errors_are_unchanged_by_the_fast_path() -> None:
    model = Tree()
    graphdef = nnx.graphdef(model)
    missing = nnx.state(model)
    del missing["a"]["w"]
    with pytest.raises(nnx.errors.GraphDefMismatchError, match=r"1 paths of the GraphDef"):
        nnx.merge(graphdef, missing)
    extra = nnx.state(model)
    extra["a"]["zzz"] = nnx.Param(jnp.ones(1))
    with pytest.raises(nnx.errors.GraphDefMismatchError, match=r"1 paths of the state"):
        nnx.merge(graphdef, extra)
    wrong = nnx.state(model)
    wrong["a"]["w"] = nnx.BatchStat(jnp.ones(2))
    with pytest.raises(nnx.errors.GraphDefMismatchError, match="Variable types differ"):
        nnx.merge(graphdef, wrong)
    nested = nnx.state(model)
    nested["a"]["w"] = {"deeper": nnx.Param(jnp.ones(2))}  # a mapping where a leaf belongs
    with pytest.raises(nnx.errors.GraphDefMismatchError):
        nnx.merge(graphdef, nested)


def test_update_errors_list_every_problem_and_change_nothing() -> None:
    model = Tree()
    state = nnx.state(model)
    state["a"]["w"] = nnx.BatchStat(jnp.ones(2))
    state["b"]["w"] = nnx.Param(jnp.ones(5), tag="w")
    state["nope"] = nnx.Param(jnp.ones(1))
    state["layers"][0]["s"] = nnx.BatchStat(jnp.full((2,), 9.0))  # fine, but not written
    before = [
        leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        for leaf in flatten_full(model).leaves
    ]
    with pytest.raises(nnx.errors.UpdateError) as info:
        nnx.update(model, state)
    message = str(info.value)
    assert "a.w" in message and "b.w" in message and "nope" in message
    assert "shape (5,)" in message
    after = [
        leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        for leaf in flatten_full(model).leaves
    ]
    assert all(x is y for x, y in zip(before, after, strict=True))


def test_graphdef_plans_survive_pickle_and_do_not_change_equality() -> None:
    model = Tree()
    graphdef, state = nnx.split(model)
    nnx.merge(graphdef, state)  # builds the GraphDef's cached plan and index
    again = pickle.loads(pickle.dumps(graphdef))
    assert again == graphdef and hash(again) == hash(graphdef)
    assert flatten_full(nnx.merge(again, state)).graphdef == graphdef
    assert nnx.graphdef(Tree()) == graphdef  # a fresh GraphDef, without plans, is equal


def test_state_from_the_entry_plan_equals_from_flat_state() -> None:
    model = Tree()
    model.alias = model.layers  # a shared List: a path only under its first sighting
    flat = flatten_cached(model)
    planned = nnx.state(model)
    reference = nnx.from_flat_state(
        [(p, leaf) for p, leaf in zip(flat.paths, planned.flat_state().leaves, strict=True)]
    )
    assert planned == reference
    assert list(planned) == list(reference)  # the same key order at the top...
    assert "layers" not in planned  # the List is seen first as `alias`
    assert type(planned["alias"][0]) is nnx.State  # ...and States all the way down


def test_update_with_partial_filtered_and_pure_states() -> None:
    model = Tree()
    warm(model)
    params, rest = nnx.state(model, nnx.Param, ...)
    params["a"]["w"].value = jnp.full((2,), 11.0)
    rest["a"]["s"].value = jnp.full((2,), 12.0)
    nnx.update(model, params)  # only some of the leaves
    np.testing.assert_array_equal(model.a.w.value, np.full((2,), 11.0))
    assert not np.any(np.asarray(model.a.s.value) == 12.0)
    nnx.update(model, params, rest)
    np.testing.assert_array_equal(model.a.s.value, np.full((2,), 12.0))
    pure = nnx.state(model).to_pure_dict()
    pure["table"]["x"]["w"] = jnp.full((2,), 13.0)
    pure["pair"][0] = jnp.full((2,), 14.0)
    nnx.update(model, pure)
    np.testing.assert_array_equal(model.table["x"].w.value, np.full((2,), 13.0))
    np.testing.assert_array_equal(model.pair[0], np.full((2,), 14.0))
    nested = nnx.state(model)
    nested["a"]["w"] = {"deeper": jnp.ones(2)}  # a mapping where a leaf belongs
    with pytest.raises(nnx.errors.UpdateError):
        nnx.update(model, nested)
    assert_matches_fresh(model)
