"""The structure cache never changes a result: after every supported structural mutation,
``graphdef``/``state``/``split``/``merge``/``update`` give what a fresh, uncached flatten
(``nnx.graph._flatten_full``) gives, and the cached entry was actually rebuilt; after a value
change the very same entry is reused and still shows the new values.

See "The structure cache" in DESIGN.md and ``nnx/_version.py``.
"""

from __future__ import annotations

import collections
import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx import _version
from nnx.graph import _flatten_cached, _flatten_full


# -- models -----------------------------------------------------------------------------------
class Leaf(nnx.Module):
    def __init__(self, v: float = 1.0):
        self.w = nnx.Param(jnp.full((2,), v), tag="w")
        self.s = nnx.BatchStat(jnp.zeros(2))
        self.size = 2


class Tree(nnx.Module):
    """A bit of everything: submodules, tracked List/Dict, raw arrays (alone and in a tuple),
    statics, a data-marked scalar, a Variable with metadata."""

    def __init__(self):
        self.a = Leaf(1.0)
        self.b = Leaf(2.0)
        self.layers = nnx.List([Leaf(3.0), Leaf(4.0)])
        self.table = nnx.Dict({"x": Leaf(5.0), "y": nnx.Param(jnp.ones(3))})
        self.arr = jnp.arange(3.0)
        self.pair = (jnp.ones(2), jnp.zeros(2))
        self.rate = 3
        self.count = nnx.data(0)


class Parent(nnx.Module):
    def __init__(self, child: Leaf):
        self.child = child
        self.own = nnx.Param(jnp.ones(1))


def cache_of(root: Any) -> Any:
    """The root's cached flatten (None when it has none)."""
    if isinstance(root, nnx.Pytree):
        return root.__dict__.get("_nnx_cache")
    return getattr(root, "_nnx_cache", None)


# -- the reference check ------------------------------------------------------------------
def _values_match(got: Any, ref: Any) -> None:
    """`got` (from a State or a merged copy) holds the very value `ref` (a fresh flatten's leaf)
    holds: neither states nor merge copy arrays."""
    if isinstance(ref, nnx.Variable):
        assert type(got) is type(ref)
        assert got.get_metadata() == ref.get_metadata()
        assert got.get_value() is ref.get_value()
    else:
        assert got is ref


def _state_matches(state: Any, fresh: Any) -> None:
    got = dict(state.flat_state())
    assert list(got) == list(fresh.paths)
    for path, ref in zip(fresh.paths, fresh.leaves, strict=True):
        leaf = got[path]
        if isinstance(ref, nnx.Variable):
            assert leaf is not ref, f"{path}: a State must hold a snapshot, not the Variable"
        _values_match(leaf, ref)


def assert_matches_fresh(root: Any) -> None:
    """graphdef/state/split/merge and the cache entry agree with an uncached flatten."""
    fresh = _flatten_full(root)
    graphdef = nnx.graphdef(root)
    assert graphdef == fresh.graphdef
    assert hash(graphdef) == hash(fresh.graphdef)
    assert graphdef.leaf_paths == fresh.graphdef.leaf_paths
    assert graphdef.leaf_types == fresh.graphdef.leaf_types
    _state_matches(nnx.state(root), fresh)
    graphdef2, state = nnx.split(root)
    assert graphdef2 == fresh.graphdef
    _state_matches(state, fresh)
    copy_ = nnx.merge(graphdef2, state)
    fresh_copy = _flatten_full(copy_)
    assert fresh_copy.graphdef == fresh.graphdef
    for got, ref in zip(fresh_copy.leaves, fresh.leaves, strict=True):
        assert got is not ref or not isinstance(ref, nnx.Variable)
        _values_match(got, ref)
    # The entry the cache now holds refers to the graph's current Variables, in order.
    entry = _flatten_cached(root)
    assert entry.paths == fresh.paths
    assert len(entry.leaves) == len(fresh.leaves)
    for got, ref in zip(entry.leaves, fresh.leaves, strict=True):
        assert got is ref


def warm(root: Any) -> Any:
    """Builds the cache through every entry point; returns the entry."""
    nnx.graphdef(root)
    nnx.state(root)
    nnx.split(root)
    entry = cache_of(root)
    assert entry is not None
    assert nnx.split(root) and cache_of(root) is entry  # a second call reuses it
    return entry


FIRST_CALLS: dict[str, Callable[[Any], Any]] = {
    "graphdef": nnx.graphdef,
    "state": nnx.state,
    "split": nnx.split,
    "update": lambda m: nnx.update(m, {}),
}


# -- structural mutations -----------------------------------------------------------------
@dataclass(frozen=True)
class Mutation:
    name: str
    mutate: Callable[[Tree], None]
    # A path that must appear in / disappear from the state after the mutation.
    added: tuple = ()
    removed: tuple = ()
    graphdef_changes: bool = True


def _set(path: str, value: Callable[[], Any]) -> Callable[[Tree], None]:
    def mutate(m: Tree) -> None:
        *owners, name = path.split(".")
        obj = m
        for o in owners:
            obj = obj[int(o)] if o.isdigit() else getattr(obj, o)
        setattr(obj, name, value())

    return mutate


def _replace_w_same(m: Tree) -> None:
    m.a.w = nnx.Param(jnp.full((2,), 9.0), tag="w")


def _replace_w_other(m: Tree) -> None:
    m.a.w = nnx.BatchStat(jnp.full((2,), 9.0))


def _attr_metadata(m: Tree) -> None:
    m.a.w.note = "attribute-style"


def _remark_static(m: Tree) -> None:
    m.count = nnx.static(0)


def _remark_data(m: Tree) -> None:
    m.rate = nnx.data(3)


def _list_slice(m: Tree) -> None:
    m.layers[0:1] = [Leaf(7.0), Leaf(8.0)]


MUTATIONS = [
    Mutation("new-param", _set("extra", lambda: nnx.Param(jnp.ones(4))), added=("extra",)),
    Mutation("new-submodule", _set("extra", lambda: Leaf(7.0)), added=("extra", "w")),
    Mutation("new-static", _set("label", lambda: "hello")),
    Mutation("new-list", _set("more", lambda: [Leaf(7.0)]), added=("more", 0, "w")),
    Mutation("static-int-change", _set("rate", lambda: 4)),
    Mutation("nested-static-change", _set("a.size", lambda: 5)),
    Mutation("del-param", lambda m: delattr(m.a, "w"), removed=("a", "w")),
    Mutation("del-submodule", lambda m: delattr(m, "b"), removed=("b", "w")),
    Mutation("del-static", lambda m: delattr(m, "rate")),
    Mutation("del-raw-array", lambda m: delattr(m, "arr"), removed=("arr",)),
    Mutation("raw-array-to-static", _set("arr", lambda: None), removed=("arr",)),
    Mutation("tuple-shorter", _set("pair", lambda: (jnp.ones(2),)), removed=("pair", 1)),
    Mutation("replace-variable-same-type", _replace_w_same, graphdef_changes=False),
    Mutation("replace-variable-other-type", _replace_w_other),
    Mutation("set-metadata", lambda m: m.a.w.set_metadata(tag="new"), graphdef_changes=False),
    Mutation("set-metadata-attribute", _attr_metadata, graphdef_changes=False),
    Mutation("del-metadata", lambda m: delattr(m.a.w, "tag"), graphdef_changes=False),
    Mutation("list-append", lambda m: m.layers.append(Leaf(7.0)), added=("layers", 2, "w")),
    Mutation("list-insert", lambda m: m.layers.insert(0, Leaf(7.0)), added=("layers", 2, "w")),
    Mutation("list-pop", lambda m: m.layers.pop(), removed=("layers", 1, "w")),
    Mutation("list-pop-front", lambda m: m.layers.pop(0), removed=("layers", 1, "w")),
    Mutation(
        "list-setitem-module",
        lambda m: m.layers.__setitem__(0, Parent(Leaf())),
        added=("layers", 0, "own"),
    ),
    Mutation(
        "list-setitem-variable",
        lambda m: m.layers.__setitem__(1, nnx.Param(jnp.ones(1))),
        removed=("layers", 1, "w"),
    ),
    Mutation("list-setitem-slice", _list_slice, added=("layers", 2, "w")),
    Mutation("list-del", lambda m: m.layers.__delitem__(0), removed=("layers", 1, "w")),
    Mutation("list-extend", lambda m: m.layers.extend([Leaf()]), added=("layers", 2, "w")),
    Mutation("list-reverse", lambda m: m.layers.reverse(), graphdef_changes=False),
    Mutation("list-clear", lambda m: m.layers.clear(), removed=("layers", 0, "w")),
    Mutation("dict-setitem-new", lambda m: m.table.__setitem__("z", Leaf()), added=("table", "z")),
    Mutation(
        "dict-setitem-replace",
        lambda m: m.table.__setitem__("x", nnx.BatchStat(jnp.ones(1))),
        removed=("table", "x", "w"),
    ),
    Mutation("dict-attribute-set", _set("table.q", lambda: Leaf()), added=("table", "q", "w")),
    Mutation("dict-del", lambda m: m.table.__delitem__("x"), removed=("table", "x", "w")),
    Mutation(
        "dict-update",
        lambda m: m.table.update({"y": Leaf(), "z": nnx.Param(jnp.ones(1))}),
        added=("table", "z"),
    ),
    Mutation("dict-pop", lambda m: m.table.pop("y"), removed=("table", "y")),
    Mutation("dict-clear", lambda m: m.table.clear(), removed=("table", "y")),
    Mutation("nested-new-param", _set("layers.1.extra", lambda: nnx.Param(jnp.ones(1)))),
    Mutation("nested-in-dict", _set("table.x.extra", lambda: nnx.Param(jnp.ones(1)))),
    Mutation("nested-del", lambda m: delattr(m.layers[0], "s"), removed=("layers", 0, "s")),
    Mutation("remark-data-as-static", _remark_static, removed=("count",)),
    Mutation("remark-static-as-data", _remark_data, added=("rate",)),
    Mutation("share-existing-submodule", _set("alias", lambda: None)),  # replaced below
]


def _share(m: Tree) -> None:
    m.alias = m.layers[0]  # a second reference: a _REF in the graphdef, no new leaves


MUTATIONS[-1] = Mutation("share-existing-submodule", _share)


def _has_path(paths: Any, prefix: tuple) -> bool:
    return any(p[: len(prefix)] == prefix for p in paths)


@pytest.mark.parametrize("first", list(FIRST_CALLS))
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda mu: mu.name)
def test_structural_change_rebuilds_and_matches_fresh(mutation: Mutation, first: str) -> None:
    model = Tree()
    before = warm(model)
    graphdef_before = nnx.graphdef(model)
    clock = _version.now()
    mutation.mutate(model)
    assert _version.now() > clock, "a structural change must move the structure clock"
    FIRST_CALLS[first](model)  # the first call after the change rebuilds the entry
    after = cache_of(model)
    assert after is not None and after is not before
    assert_matches_fresh(model)
    paths = nnx.state(model).flat_state().paths
    if mutation.added:
        assert _has_path(paths, mutation.added)
        assert not _has_path(before.paths, mutation.added)
    if mutation.removed:
        assert _has_path(before.paths, mutation.removed)
        assert not _has_path(paths, mutation.removed)
    assert (nnx.graphdef(model) != graphdef_before) == mutation.graphdef_changes


def test_replacing_a_variable_swaps_the_cached_leaf() -> None:
    model = Tree()
    warm(model)
    old = model.a.w
    model.a.w = nnx.Param(jnp.zeros(2), tag="w")
    entry = _flatten_cached(model)
    assert any(leaf is model.a.w for leaf in entry.leaves)
    assert all(leaf is not old for leaf in entry.leaves)


def test_metadata_change_shows_in_state() -> None:
    model = Tree()
    warm(model)
    model.a.w.set_metadata(tag="new", extra=1)
    assert nnx.state(model)["a"]["w"].get_metadata() == {"tag": "new", "extra": 1}
    model.a.w.extra = 2
    assert nnx.state(model)["a"]["w"].get_metadata() == {"tag": "new", "extra": 2}
    del model.a.w.extra
    assert nnx.state(model)["a"]["w"].get_metadata() == {"tag": "new"}


# -- shared submodules and cycles ---------------------------------------------------------
def test_shared_submodule_mutated_through_the_other_parent() -> None:
    shared = Leaf()
    first, second = Parent(shared), Parent(shared)
    entry_first = warm(first)
    entry_shared = warm(shared)  # the shared module as a root of its own
    second.child.extra = nnx.Param(jnp.ones(3))  # the change goes through `second`
    assert_matches_fresh(first)
    assert cache_of(first) is not entry_first
    assert ("child", "extra") in nnx.state(first).flat_state().paths
    assert_matches_fresh(shared)
    assert cache_of(shared) is not entry_shared
    assert_matches_fresh(second)


def test_shared_submodule_twice_in_one_model() -> None:
    model = Tree()
    model.alias = model.b  # `b` is seen first (sorted order), `alias` first actually
    entry = warm(model)
    model.b.extra = nnx.Param(jnp.ones(1))
    assert_matches_fresh(model)
    assert cache_of(model) is not entry
    paths = nnx.state(model).flat_state().paths
    assert ("alias", "extra") in paths and ("b", "extra") not in paths


def test_tied_variable_replaced_in_one_place() -> None:
    model = Tree()
    model.b.w = model.a.w  # tied
    entry = warm(model)
    assert ("b", "w") not in entry.paths
    model.b.w = nnx.Param(jnp.zeros(2))  # untie
    assert_matches_fresh(model)
    assert ("b", "w") in nnx.state(model).flat_state().paths


def test_mutation_inside_a_cycle() -> None:
    model = Tree()
    model.a.parent = model  # cycle: model -> a -> model
    model.layers.append(model.layers)  # cycle through a List
    entry = warm(model)
    model.a.parent.b.extra = nnx.Param(jnp.ones(1))  # reached through the cycle
    assert_matches_fresh(model)
    assert cache_of(model) is not entry
    entry = cache_of(model)
    model.layers[2][0].gone = Leaf()  # the List reached through itself
    assert_matches_fresh(model)
    assert cache_of(model) is not entry
    del model.a.parent
    assert_matches_fresh(model)


# -- value changes never rebuild ----------------------------------------------------------
def _value(m: Tree) -> None:
    m.a.w.value = jnp.full((2,), 5.0)


def _setitem_ellipsis(m: Tree) -> None:
    m.a.w[...] = jnp.full((2,), 5.0)


def _setitem_index(m: Tree) -> None:
    m.a.w[0] = 5.0


def _set_value(m: Tree) -> None:
    m.a.w.set_value(jnp.full((2,), 5.0))


def _list_item_value(m: Tree) -> None:
    m.layers[1].w.value = jnp.full((2,), 5.0)


def _raw_array(m: Tree) -> None:
    m.arr = jnp.full((3,), 5.0)


def _raw_array_new_shape(m: Tree) -> None:
    m.arr = jnp.zeros((7, 7))


def _raw_array_numpy(m: Tree) -> None:
    m.arr = np.full((3,), 5.0, np.float32)


def _update_tuple_leaf(m: Tree) -> None:
    nnx.update(m, {"pair": {1: jnp.full((2,), 5.0)}})


def _update_raw_leaf(m: Tree) -> None:
    nnx.update(m, {"arr": jnp.full((3,), 5.0)})


def _update_variables(m: Tree) -> None:
    state = nnx.state(m)
    state["a"]["w"].value = jnp.full((2,), 5.0)
    nnx.update(m, state)


VALUE_CHANGES = {
    "value": (_value, lambda m: m.a.w.value),
    "setitem-ellipsis": (_setitem_ellipsis, lambda m: m.a.w.value),
    "setitem-index": (_setitem_index, lambda m: m.a.w.value[0]),
    "set_value": (_set_value, lambda m: m.a.w.value),
    "list-item-value": (_list_item_value, lambda m: m.layers[1].w.value),
    "raw-array": (_raw_array, lambda m: m.arr),
    "raw-array-new-shape": (_raw_array_new_shape, lambda m: m.arr),
    "raw-array-numpy": (_raw_array_numpy, lambda m: m.arr),
    "update-tuple-leaf": (_update_tuple_leaf, lambda m: m.pair[1]),
    "update-raw-leaf": (_update_raw_leaf, lambda m: m.arr),
    "update-variables": (_update_variables, lambda m: m.a.w.value),
}


@pytest.mark.parametrize("name", list(VALUE_CHANGES))
def test_value_change_keeps_the_cache(name: str) -> None:
    change, read = VALUE_CHANGES[name]
    model = Tree()
    entry = warm(model)
    graphdef = nnx.graphdef(model)
    clock = _version.now()
    change(model)
    assert _version.now() == clock, "a value change must not move the structure clock"
    assert cache_of(model) is entry
    assert nnx.graphdef(model) is graphdef
    assert_matches_fresh(model)  # the state shows the new values...
    assert cache_of(model) is entry  # ...from the very same entry
    assert _version.now() == clock
    new = np.asarray(read(model))
    assert np.all(new == 5.0) or name == "raw-array-new-shape"


def test_raw_array_in_a_tuple_shows_in_state() -> None:
    model = Tree()
    entry = warm(model)
    nnx.update(model, {"pair": {0: jnp.full((2,), 7.0)}})
    state = nnx.state(model)
    assert cache_of(model) is entry
    np.testing.assert_array_equal(state["pair"][0], np.full((2,), 7.0))
    # Replacing the whole tuple is a structural change (rebuild), and still correct.
    model.pair = (jnp.full((2,), 8.0), jnp.full((2,), 9.0))
    assert_matches_fresh(model)
    np.testing.assert_array_equal(nnx.state(model)["pair"][1], np.full((2,), 9.0))


def test_unrelated_structural_change_keeps_the_entry() -> None:
    model, other = Tree(), Tree()
    entry = warm(model)
    other.extra = nnx.Param(jnp.ones(1))
    other.layers.append(Leaf())
    assert _flatten_cached(model) is entry
    assert_matches_fresh(model)
    assert cache_of(model) is entry


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


# -- containers as roots ------------------------------------------------------------------
def test_list_and_dict_roots() -> None:
    layers = nnx.List([Leaf(), Leaf()])
    table = nnx.Dict({"a": Leaf()})
    list_entry, dict_entry = warm(layers), warm(table)
    layers[0].w.value = jnp.zeros(2)
    table["a"].w[...] = jnp.zeros(2)
    assert _flatten_cached(layers) is list_entry and _flatten_cached(table) is dict_entry
    layers.append(Leaf())
    table["b"] = nnx.Param(jnp.ones(1))
    assert_matches_fresh(layers)
    assert_matches_fresh(table)
    assert cache_of(layers) is not list_entry and cache_of(table) is not dict_entry


# -- the multi-root (tuple) path ----------------------------------------------------------
def test_multi_root_entry_is_reused_and_invalidated() -> None:
    first, second, unrelated = Tree(), Tree(), Tree()
    entry = _flatten_cached((first, second))
    assert _flatten_cached((first, second)) is entry
    assert entry.graphdef == _flatten_full((first, second)).graphdef
    # value changes and unrelated structural changes: the same entry
    second.a.w.value = jnp.zeros(2)
    second.arr = jnp.zeros(3)
    unrelated.extra = Leaf()
    assert _flatten_cached((first, second)) is entry
    np.testing.assert_array_equal(entry.leaves[entry.paths.index((1, "arr"))], np.zeros(3))
    # the order of the roots is part of the key
    swapped = _flatten_cached((second, first))
    assert swapped is not entry
    assert swapped.paths == _flatten_full((second, first)).paths
    # a structural change in the second root invalidates
    second.b.extra = nnx.Param(jnp.ones(1))
    rebuilt = _flatten_cached((first, second))
    assert rebuilt is not entry
    fresh = _flatten_full((first, second))
    assert rebuilt.graphdef == fresh.graphdef and rebuilt.paths == fresh.paths
    assert all(a is b for a, b in zip(rebuilt.leaves, fresh.leaves, strict=True))
    assert (1, "b", "extra") in rebuilt.paths


def test_multi_root_with_a_module_shared_between_roots() -> None:
    shared = Leaf()
    first, second = Parent(shared), Parent(shared)
    entry = _flatten_cached((first, second))
    assert (1, "child", "w") not in entry.paths  # a reference to the first root's child
    shared.extra = nnx.Param(jnp.ones(1))  # mutated directly, not through either root
    rebuilt = _flatten_cached((first, second))
    assert rebuilt is not entry
    assert rebuilt.graphdef == _flatten_full((first, second)).graphdef
    assert (0, "child", "extra") in rebuilt.paths
    graphdef, state = nnx.split((first, second))
    a, b = nnx.merge(graphdef, state)
    assert a.child is b.child and hasattr(a.child, "extra")


def test_multi_root_split_and_update() -> None:
    first, second = Tree(), Tree()
    graphdef, _ = nnx.split((first, second))
    second.layers.append(Leaf(7.0))
    graphdef2, state2 = nnx.split((first, second))
    assert graphdef2 != graphdef
    state2[1]["layers"][2]["w"].value = jnp.full((2,), 42.0)
    nnx.update((first, second), state2)
    np.testing.assert_array_equal(second.layers[2].w.value, np.full((2,), 42.0))


# -- copies never share an entry ----------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_do_not_share_the_cache(how: str) -> None:
    model = Tree()
    entry = warm(model)
    _flatten_cached((model, model.a))  # a multi-root entry on `model` as well
    duplicate = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert cache_of(duplicate) is None
    assert "_nnx_multi" not in duplicate.__dict__
    assert cache_of(duplicate.layers) is None
    dup_entry = _flatten_cached(duplicate)
    assert dup_entry is not entry
    assert not {id(v) for v in dup_entry.leaves if isinstance(v, nnx.Variable)} & {
        id(v) for v in entry.leaves
    }
    assert_matches_fresh(duplicate)
    # Changing the copy leaves the original's entry valid (and vice versa).
    duplicate.extra = Leaf()
    assert _flatten_cached(model) is entry
    assert_matches_fresh(model)
    dup_entry = _flatten_cached(duplicate)
    model.extra2 = Leaf()
    assert _flatten_cached(duplicate) is dup_entry
    assert_matches_fresh(duplicate)


def test_deepcopy_of_a_cached_list_root() -> None:
    layers = nnx.List([Leaf(), Leaf()])
    entry = warm(layers)
    duplicate = copy.deepcopy(layers)
    assert cache_of(duplicate) is None
    assert _flatten_cached(duplicate) is not entry
    assert_matches_fresh(duplicate)


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


# -- module-level operations --------------------------------------------------------------
class Drop(nnx.Module):
    def __init__(self):
        self.deterministic = False
        self.rngs = nnx.Rngs(0)
        self.w = nnx.Param(jnp.ones(2))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sow(nnx.Intermediate, "seen", x)
        return x * self.w + jax.random.uniform(self.rngs.dropout(), (2,))


def test_train_eval_toggle_rebuilds() -> None:
    model = nnx.List([Drop(), Drop()])
    entry = warm(model)
    model[0].rngs.dropout()  # an RNG draw is a value change
    assert _flatten_cached(model) is entry
    nnx.Module.eval(model[1])
    assert_matches_fresh(model)
    assert cache_of(model) is not entry
    assert model[1].deterministic is True
    outer = nnx.Module()
    outer.body = model
    entry = warm(outer)
    outer.train()
    assert_matches_fresh(outer)
    assert cache_of(outer) is not entry and model[1].deterministic is False


def test_sow_and_pop() -> None:
    model = Drop()
    entry = warm(model)
    model(jnp.ones(2))  # the first sow creates a Variable: structural
    assert_matches_fresh(model)
    assert cache_of(model) is not entry
    entry = cache_of(model)
    model(jnp.ones(2))  # the second one only grows its value
    assert cache_of(model) is entry
    assert_matches_fresh(model)
    assert len(nnx.state(model)["seen"].value) == 2
    popped = nnx.pop(model, nnx.Intermediate)
    assert len(popped["seen"].value) == 2
    assert_matches_fresh(model)
    assert ("seen",) not in nnx.state(model).flat_state().paths


# -- transforms ---------------------------------------------------------------------------
def test_jit_value_updates_keep_the_entry_structural_ones_propagate() -> None:
    model = Tree()

    @nnx.jit
    def bump(m: Tree) -> None:
        m.a.w.value = m.a.w.value + 1.0

    bump(model)
    entry = warm(model)
    bump(model)
    assert cache_of(model) is entry
    assert_matches_fresh(model)
    np.testing.assert_array_equal(model.a.w.value, np.full((2,), 3.0))

    @nnx.jit
    def grow(m: Tree) -> None:
        m.grown = nnx.Param(jnp.zeros(2))
        m.layers.append(Leaf(7.0))

    grow(model)
    assert_matches_fresh(model)
    assert cache_of(model) is not entry
    paths = nnx.state(model).flat_state().paths
    assert ("grown",) in paths and ("layers", 2, "w") in paths


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
    assert _flatten_full(copy_).graphdef == graphdef
    pure["layers"]["1"]["w"] = nnx.Param(jnp.full((2,), 6.0), tag="w")
    nnx.update(model, pure)
    np.testing.assert_array_equal(model.layers[1].w.value, np.full((2,), 6.0))


def test_merge_of_filtered_states_and_of_a_reordered_state() -> None:
    model = Tree()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert _flatten_full(nnx.merge(graphdef, params, rest)).graphdef == graphdef
    flat = list(nnx.state(model).flat_state())
    reordered = nnx.State.from_flat_path(list(reversed(flat)))
    copy_ = nnx.merge(graphdef, reordered)
    for got, ref in zip(_flatten_full(copy_).leaves, _flatten_full(model).leaves, strict=True):
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
        for leaf in _flatten_full(model).leaves
    ]
    with pytest.raises(nnx.errors.UpdateError) as info:
        nnx.update(model, state)
    message = str(info.value)
    assert "a.w" in message and "b.w" in message and "nope" in message
    assert "shape (5,)" in message
    after = [
        leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        for leaf in _flatten_full(model).leaves
    ]
    assert all(x is y for x, y in zip(before, after, strict=True))


def test_graphdef_plans_survive_pickle_and_do_not_change_equality() -> None:
    model = Tree()
    graphdef, state = nnx.split(model)
    nnx.merge(graphdef, state)  # builds the GraphDef's cached plan and index
    again = pickle.loads(pickle.dumps(graphdef))
    assert again == graphdef and hash(again) == hash(graphdef)
    assert _flatten_full(nnx.merge(again, state)).graphdef == graphdef
    assert nnx.graphdef(Tree()) == graphdef  # a fresh GraphDef, without plans, is equal


def test_state_from_the_entry_plan_equals_from_flat_state() -> None:
    model = Tree()
    model.alias = model.layers  # a shared List: a path only under its first sighting
    flat = _flatten_cached(model)
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
    entry = _flatten_cached((m,))
    step(m)
    assert _flatten_cached((m,)) is entry
    np.testing.assert_allclose(m.d["a"], 3.0 * np.ones(2))
    np.testing.assert_allclose(m.d["b"][0], 3.0 * np.ones(1))
