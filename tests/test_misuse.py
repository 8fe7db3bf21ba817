"""The misuse catalogue of the core: each bad call raises an nnx error whose message names
the path and the fix, and leaves the model exactly as it was."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import errors


class Block(nnx.Module):
    def __init__(self, n: int = 2):
        self.w = nnx.Param(jnp.ones((n, n)))
        self.stat = nnx.BatchStat(jnp.zeros(n))


class Model(nnx.Module):
    def __init__(self, n: int = 2):
        self.blocks = [Block(n), Block(n)]
        self.head = nnx.Param(jnp.arange(float(n)))


def snapshot(model):
    return nnx.graphdef(model), jax_tree_np(nnx.state(model).to_pure_dict())


def jax_tree_np(tree):
    if isinstance(tree, dict):
        return {k: jax_tree_np(v) for k, v in tree.items()}
    return np.asarray(tree)


def assert_unchanged(model, before):
    graphdef, values = snapshot(model)
    assert graphdef == before[0]

    def eq(a, b):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                eq(a[k], b[k])
        else:
            np.testing.assert_array_equal(a, b)

    eq(values, before[1])


def test_split_with_non_exhaustive_filters_names_the_leftover_paths():
    model = Model()
    before = snapshot(model)
    with pytest.raises(
        errors.FilterError, match=r"(?s)state\.blocks\[0\]\.stat.*Fix: add a catch-all"
    ):
        nnx.split(model, nnx.Param)
    assert_unchanged(model, before)


def test_filter_everything_not_last():
    with pytest.raises(errors.FilterError, match="not the last filter"):
        nnx.split(Model(), ..., nnx.Param)


def test_update_with_unknown_path_changes_nothing():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][1]["extra"] = nnx.Param(jnp.ones(2))
    bad["head"] = nnx.Param(jnp.zeros(2))  # a valid entry in the same call must not be applied
    with pytest.raises(
        errors.UpdateError, match=r"(?s)model\.blocks\[1\]\.extra: no such Variable.*Fix:"
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_with_wrong_shape_changes_nothing():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][0]["w"] = nnx.Param(jnp.ones((3, 3)))
    with pytest.raises(
        errors.UpdateError, match=r"model\.blocks\[0\]\.w: shape \(3, 3\) in the state, \(2, 2\)"
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_with_wrong_variable_type_changes_nothing():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["head"] = nnx.BatchStat(jnp.zeros(2))
    with pytest.raises(
        errors.UpdateError, match=r"model\.head: the model has a Param, the state a BatchStat"
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_lists_every_problem_at_once():
    model = Model()
    bad = nnx.state(model)
    bad["head"] = nnx.BatchStat(jnp.zeros(2))
    bad["blocks"][0]["w"] = nnx.Param(jnp.ones((3, 3)))
    with pytest.raises(errors.UpdateError) as info:
        nnx.update(model, bad)
    assert "model.head" in str(info.value) and "model.blocks[0].w" in str(info.value)


def test_unhashable_static_attribute_names_class_and_attribute():
    @dataclasses.dataclass
    class Config:  # eq=True and not frozen: unhashable
        depth: int

    class Net(nnx.Module):
        def __init__(self):
            self.inner = Block()
            self.inner.config = Config(3)

    net = Net()
    with pytest.raises(
        errors.StaticAttributeError,
        match=r"(?s)Block at model\.inner has a static attribute 'config'.*nnx\.data",
    ):
        nnx.split(net)


def test_missing_rng_stream_names_available_streams():
    rngs = nnx.Rngs(params=0)
    with pytest.raises(errors.RngStreamError, match=r"(?s)no stream 'dropout'.*\['params'\].*Fix"):
        rngs.dropout()
    assert int(rngs.params.count.value) == 0


def test_merge_with_wrong_graphdef_lists_missing_and_extra_paths():
    small, big = Model(2), Model(2)
    big.blocks.append(Block(2))
    graphdef, _ = nnx.split(big)
    _, state = nnx.split(small)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)missing from the state.*model\.blocks\[2\]\.w.*Fix: merge",
    ):
        nnx.merge(graphdef, state)


def test_merge_with_extra_paths_and_wrong_types():
    graphdef, state = nnx.split(Model())
    state["bogus"] = nnx.Param(jnp.ones(1))
    state["head"] = nnx.BatchStat(state["head"].value)
    with pytest.raises(errors.GraphDefMismatchError) as info:
        nnx.merge(graphdef, state)
    message = str(info.value)
    assert "model.bogus" in message and "not in the GraphDef" in message
    assert "model.head: state has BatchStat, GraphDef expects Param" in message


def test_merge_with_something_that_is_not_a_graphdef():
    _, state = nnx.split(Model())
    with pytest.raises(errors.MergeError, match="expects a GraphDef first"):
        nnx.merge(state, state)
