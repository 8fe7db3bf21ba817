"""The structure cache for other roots: nnx.List/nnx.Dict roots, tuples of roots (the
multi-root entry, with modules shared between roots), and copies (deepcopy, pickle), which
never share an entry with the original.

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

import copy
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx._flatten import flatten_cached, flatten_full
from tests._structure_cache_helpers import (
    Leaf,
    Parent,
    Tree,
    assert_matches_fresh,
    cache_of,
    warm,
)


# -- containers as roots ------------------------------------------------------------------
def test_list_and_dict_roots() -> None:
    layers = nnx.List([Leaf(), Leaf()])
    table = nnx.Dict({"a": Leaf()})
    list_entry, dict_entry = warm(layers), warm(table)
    layers[0].w.value = jnp.zeros(2)
    table["a"].w[...] = jnp.zeros(2)
    assert flatten_cached(layers) is list_entry and flatten_cached(table) is dict_entry
    layers.append(Leaf())
    table["b"] = nnx.Param(jnp.ones(1))
    assert_matches_fresh(layers)
    assert_matches_fresh(table)
    assert cache_of(layers) is not list_entry and cache_of(table) is not dict_entry


# -- the multi-root (tuple) path ----------------------------------------------------------
def test_multi_root_entry_is_reused_and_invalidated() -> None:
    first, second, unrelated = Tree(), Tree(), Tree()
    entry = flatten_cached((first, second))
    assert flatten_cached((first, second)) is entry
    assert entry.graphdef == flatten_full((first, second)).graphdef
    # value changes and unrelated structural changes: the same entry
    second.a.w.value = jnp.zeros(2)
    second.arr = jnp.zeros(3)
    unrelated.extra = Leaf()
    assert flatten_cached((first, second)) is entry
    np.testing.assert_array_equal(entry.leaves[entry.paths.index((1, "arr"))], np.zeros(3))
    # the order of the roots is part of the key
    swapped = flatten_cached((second, first))
    assert swapped is not entry
    assert swapped.paths == flatten_full((second, first)).paths
    # a structural change in the second root invalidates
    second.b.extra = nnx.Param(jnp.ones(1))
    rebuilt = flatten_cached((first, second))
    assert rebuilt is not entry
    fresh = flatten_full((first, second))
    assert rebuilt.graphdef == fresh.graphdef and rebuilt.paths == fresh.paths
    assert all(a is b for a, b in zip(rebuilt.leaves, fresh.leaves, strict=True))
    assert (1, "b", "extra") in rebuilt.paths


def test_multi_root_with_a_module_shared_between_roots() -> None:
    shared = Leaf()
    first, second = Parent(shared), Parent(shared)
    entry = flatten_cached((first, second))
    assert (1, "child", "w") not in entry.paths  # a reference to the first root's child
    shared.extra = nnx.Param(jnp.ones(1))  # mutated directly, not through either root
    rebuilt = flatten_cached((first, second))
    assert rebuilt is not entry
    assert rebuilt.graphdef == flatten_full((first, second)).graphdef
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
    flatten_cached((model, model.a))  # a multi-root entry on `model` as well
    duplicate = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert cache_of(duplicate) is None
    assert "_nnx_multi" not in duplicate.__dict__
    assert cache_of(duplicate.layers) is None
    dup_entry = flatten_cached(duplicate)
    assert dup_entry is not entry
    assert not {id(v) for v in dup_entry.leaves if isinstance(v, nnx.Variable)} & {
        id(v) for v in entry.leaves
    }
    assert_matches_fresh(duplicate)
    # Changing the copy leaves the original's entry valid (and vice versa).
    duplicate.extra = Leaf()
    assert flatten_cached(model) is entry
    assert_matches_fresh(model)
    dup_entry = flatten_cached(duplicate)
    model.extra2 = Leaf()
    assert flatten_cached(duplicate) is dup_entry
    assert_matches_fresh(duplicate)


def test_deepcopy_of_a_cached_list_root() -> None:
    layers = nnx.List([Leaf(), Leaf()])
    entry = warm(layers)
    duplicate = copy.deepcopy(layers)
    assert cache_of(duplicate) is None
    assert flatten_cached(duplicate) is not entry
    assert_matches_fresh(duplicate)
