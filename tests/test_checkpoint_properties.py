"""Restored equals saved, for random object graphs (a hypothesis property).

Random models from ``tests/strategies.py`` (nested modules, every Variable kind, Rngs keys,
shared submodules, tied Variables, cycles) are saved with ``nnx.Checkpointer``; a second
model built from the same recipe, with every Variable changed, is restored from it (the
checksums verified) and must then equal the saved one exactly: values, metadata, sharing.
Saving and restoring go through real orbax files in a temporary directory, so each example
costs ~0.1 s: 30 examples by default, 200 in the slow run.
"""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings

import nnx
from tests.strategies import GraphRecipe, build_graph, graph_recipes, perturb, walk


def _variables(root) -> list[nnx.Variable]:
    return walk(root).of_type(nnx.Variable)


def _check(recipe: GraphRecipe) -> None:
    saved = build_graph(recipe)
    if not _variables(saved):  # nothing to save: refused with CheckpointError (lifecycle test)
        return
    target = build_graph(recipe)
    for v in _variables(target):
        v.value = perturb(v.value)
    with tempfile.TemporaryDirectory() as directory, nnx.Checkpointer(directory) as ckpt:
        ckpt.save(1, model=saved)
        ckpt.restore(model=target)
    assert walk(target).entries == walk(saved).entries


@pytest.mark.parametrize(
    "n", [pytest.param(30, id="30"), pytest.param(200, id="200", marks=pytest.mark.slow)]
)
def test_restore_into_a_changed_copy_gives_back_what_was_saved(n):
    settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(graph_recipes(max_nodes=8, roots=("module",)))(_check))()
