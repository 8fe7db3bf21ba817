"""The models and the reference check shared by the structure-cache tests
(``tests/test_structure_cache_*.py``).

The structure cache never changes a result: after every supported structural mutation,
``graphdef``/``state``/``split``/``merge``/``update`` give what a fresh, uncached flatten
(``nnx._flatten.flatten_full``) gives, and the cached entry was actually rebuilt; after a value
change the very same entry is reused and still shows the new values. ``assert_matches_fresh``
checks the first half, ``warm`` and ``cache_of`` the second.

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

import nnx
from nnx._flatten import flatten_cached, flatten_full


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
    fresh = flatten_full(root)
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
    fresh_copy = flatten_full(copy_)
    assert fresh_copy.graphdef == fresh.graphdef
    for got, ref in zip(fresh_copy.leaves, fresh.leaves, strict=True):
        assert got is not ref or not isinstance(ref, nnx.Variable)
        _values_match(got, ref)
    # The entry the cache now holds refers to the graph's current Variables, in order.
    entry = flatten_cached(root)
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


def _has_path(paths: Any, prefix: tuple) -> bool:
    return any(p[: len(prefix)] == prefix for p in paths)
