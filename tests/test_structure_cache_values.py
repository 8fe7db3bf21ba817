"""The structure cache after value changes: assigning a Variable's value (every form), a raw
array or writing through ``nnx.update`` does not move the structure clock and keeps the very
same cache entry, which still shows the new values; a structural change elsewhere keeps it
too.

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import _version
from nnx._flatten import flatten_cached
from tests._structure_cache_helpers import Leaf, Tree, assert_matches_fresh, cache_of, warm


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
    assert flatten_cached(model) is entry
    assert_matches_fresh(model)
    assert cache_of(model) is entry
