"""The structure cache through module-level operations and transforms: train/eval toggles,
sow and pop, RNG draws, and nnx.jit steps that change values (the entry is kept) or
structure (the change propagates and the entry is rebuilt).

See the module docstrings of ``nnx/_flatten.py`` (the flatten and its cache) and
``nnx/_version.py`` (the structure clock).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnx
from nnx._flatten import flatten_cached
from tests._structure_cache_helpers import (
    Leaf,
    Tree,
    assert_matches_fresh,
    cache_of,
    warm,
)


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
    assert flatten_cached(model) is entry
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
