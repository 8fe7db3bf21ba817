"""The structure cache after structural mutations: each supported mutation (attributes,
tracked List/Dict, metadata, static/data marks, sharing) moves the structure clock, the first
call after it rebuilds the entry, and the result equals a fresh flatten; shared submodules,
tied Variables and cycles included.

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import pytest

import nnx
from nnx import _version
from nnx._flatten import flatten_cached
from tests._structure_cache_helpers import (
    Leaf,
    Parent,
    Tree,
    _has_path,
    assert_matches_fresh,
    cache_of,
    warm,
)

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
    entry = flatten_cached(model)
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
