"""The misuse catalogue: every bad call raises an ``nnx.errors`` exception (an ``NNXError``)
whose message names the path in the model and gives the fix, and leaves the model (and any
state passed in) exactly as it was."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import errors
from nnx.errors import format_path


class Block(nnx.Module):
    def __init__(self, n: int = 2):
        self.w = nnx.Param(jnp.full((n, n), 1.0))
        self.stat = nnx.BatchStat(jnp.zeros(n))


class Model(nnx.Module):
    def __init__(self, n: int = 2):
        self.blocks = [Block(n), Block(n)]
        self.head = nnx.Param(jnp.arange(float(n)))
        self.rngs = nnx.Rngs(params=0)


def to_numpy(x):
    """A numpy copy of a leaf (the raw data of a PRNG key)."""
    if jnp.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.array(x)


def snapshot(obj):
    """GraphDef plus the values as nested numpy pure dicts (copies, so later changes show)."""
    return nnx.graphdef(obj), jax.tree.map(to_numpy, nnx.state(obj).to_pure_dict())


def assert_unchanged(obj, before):
    graphdef, values = snapshot(obj)
    assert graphdef == before[0], "the model's structure changed"
    assert jax.tree.structure(values) == jax.tree.structure(before[1])
    for a, b in zip(jax.tree.leaves(values), jax.tree.leaves(before[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def state_values(state):
    return jax.tree.map(to_numpy, state.to_pure_dict())


def assert_same_values(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


ALL_ERRORS = [
    errors.ArgumentError,
    errors.AttributeNotFoundError,
    errors.KeyNotFoundError,
    errors.FilterError,
    errors.UpdateError,
    errors.MergeError,
    errors.GraphDefMismatchError,
    errors.StaticAttributeError,
    errors.RngStreamError,
    errors.TraceContextError,
    errors.TransformError,
    errors.ShapeError,
    errors.ShardingError,
    errors.ConfigError,
    errors.VariableInPlaceError,
]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_an_nnx_error_and_a_builtin_error(cls):
    assert issubclass(cls, errors.NNXError)
    builtin = (ValueError, TypeError, KeyError, AttributeError, RuntimeError)
    assert issubclass(cls, builtin)
    assert cls.__name__ in errors.__all__


def test_format_path():
    assert format_path(("blocks", 1, "w")) == "model.blocks[1].w"
    assert format_path(("table", "not an id", 0), "state") == "state.table['not an id'][0]"
    assert format_path(()) == "model"


# -- split ----------------------------------------------------------------------------------
def test_split_with_non_exhaustive_filters():
    model = Model()
    before = snapshot(model)
    with pytest.raises(
        errors.FilterError,
        match=r"(?s)do not cover the whole state.*state\.blocks\[0\]\.stat.*"
        r"state\.blocks\[1\]\.stat.*state\.rngs\.params\.count.*Fix: add a catch-all `...`",
    ) as info:
        nnx.split(model, nnx.Param)
    assert "state.head" not in str(info.value)  # only the unmatched paths are listed
    assert_unchanged(model, before)


def test_split_with_everything_not_last():
    model = Model()
    before = snapshot(model)
    with pytest.raises(errors.FilterError, match=r"not the last filter.*Fix: put `...` last"):
        nnx.split(model, ..., nnx.Param)
    assert_unchanged(model, before)


def test_long_lists_of_unmatched_paths_are_shortened():
    layers = nnx.List([nnx.BatchStat(jnp.zeros(1)) for _ in range(25)])
    with pytest.raises(errors.FilterError, match=r"(?s)25 leaves.*and 15 more") as info:
        nnx.split(layers, nnx.Param)
    assert str(info.value).count("state[") == 10


# -- update ---------------------------------------------------------------------------------
def test_update_with_an_unknown_path():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][1]["extra"] = nnx.Param(jnp.ones(2))
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)does not fit Model; nothing was changed.*"
        r"model\.blocks\[1\]\.extra: no such Variable in the model.*Fix:",
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_with_a_wrong_shape():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][1]["w"] = nnx.Param(jnp.ones((3, 3)))
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)model\.blocks\[1\]\.w: shape \(3, 3\) in the state, "
        r"\(2, 2\) in the model.*Fix:",
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_with_a_wrong_shape_as_a_raw_array():
    model = Model()
    before = snapshot(model)
    with pytest.raises(errors.UpdateError, match=r"model\.head: shape \(5,\) in the state"):
        nnx.update(model, {"head": jnp.zeros(5)})
    assert_unchanged(model, before)


def test_update_with_the_wrong_variable_type():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][0]["stat"] = nnx.Param(jnp.ones(2))
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)model\.blocks\[0\]\.stat: the model has a BatchStat, the state a Param.*Fix:",
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_lists_every_problem_and_applies_nothing():
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["head"] = nnx.Param(jnp.full(2, 99.0))  # valid: must NOT be applied
    bad["blocks"][0]["w"] = nnx.Param(jnp.full((2, 2), 99.0))  # valid too
    bad["blocks"][1]["w"] = nnx.Param(jnp.ones((4, 4)))  # wrong shape
    bad["blocks"][0]["stat"] = nnx.Param(jnp.ones(2))  # wrong type
    bad["ghost"] = nnx.Param(jnp.ones(1))  # unknown path
    with pytest.raises(errors.UpdateError) as info:
        nnx.update(model, bad)
    message = str(info.value)
    assert "model.blocks[1].w: shape (4, 4)" in message
    assert "model.blocks[0].stat: the model has a BatchStat" in message
    assert "model.ghost: no such Variable" in message
    assert "model.head" not in message and "model.blocks[0].w" not in message
    assert "nothing was changed" in message and "Fix:" in message
    assert_unchanged(model, before)
    assert float(model.head.value[0]) == 0.0


def test_update_across_several_states_checks_all_before_writing():
    model = Model()
    before = snapshot(model)
    good = nnx.State({"head": nnx.Param(jnp.full(2, 5.0))})
    bad = nnx.State({"blocks": {0: {"nope": nnx.Param(jnp.ones(1))}}})
    with pytest.raises(errors.UpdateError, match=r"model\.blocks\[0\]\.nope"):
        nnx.update(model, good, bad)
    assert_unchanged(model, before)


def test_update_after_a_failed_update_still_works():
    model = Model()
    bad = nnx.state(model)
    bad["ghost"] = nnx.Param(jnp.ones(1))
    with pytest.raises(errors.UpdateError):
        nnx.update(model, bad)
    del bad["ghost"]
    bad["head"] = nnx.Param(jnp.full(2, 7.0))
    nnx.update(model, bad)
    np.testing.assert_array_equal(model.head.value, [7.0, 7.0])


# -- variables -----------------------------------------------------------------------------
def test_augmented_assignment_on_a_variable_attribute():
    model = Model()
    before = snapshot(model)
    with pytest.raises(
        errors.VariableInPlaceError,
        match=r"(?s)`BatchStat \+= x` would replace the BatchStat by a plain array.*"
        r"Fix: .*v\[\.\.\.\] \+= x",
    ):
        model.blocks[0].stat += 1
    assert type(model.blocks[0].stat) is nnx.BatchStat
    assert_unchanged(model, before)
    model.blocks[0].stat[...] += 1
    np.testing.assert_array_equal(model.blocks[0].stat.value, [1.0, 1.0])


# -- static attributes ---------------------------------------------------------------------
@dataclasses.dataclass
class Config:  # eq=True, not frozen: unhashable
    depth: int


@pytest.mark.parametrize(
    "value, type_name", [({1, 2}, "set"), (Config(3), "Config")], ids=["set", "dataclass"]
)
def test_unhashable_static_attribute(value, type_name):
    model = Model()
    model.blocks[1].options = value
    with pytest.raises(
        errors.StaticAttributeError,
        match=rf"(?s)Block at model\.blocks\[1\] has a static attribute 'options' holding an "
        rf"unhashable {type_name} \(model\.blocks\[1\]\.options\).*Fix.*"
        r"self\.options = nnx\.data\(value\)",
    ):
        nnx.split(model)
    with pytest.raises(errors.StaticAttributeError):
        nnx.graphdef(model)
    with pytest.raises(errors.StaticAttributeError):
        nnx.state(model)
    # the model itself is untouched and usable once the attribute is fixed
    assert model.blocks[1].options == value
    model.blocks[1].options = (1, 2)
    assert nnx.merge(*nnx.split(model)).blocks[1].options == (1, 2)


def test_a_plain_list_attribute_is_not_a_static_error():
    model = Model()
    model.blocks[1].options = [1.0, 2.0]  # becomes a tracked List, not a static value
    assert nnx.merge(*nnx.split(model)).blocks[1].options == [1.0, 2.0]


def test_unhashable_static_on_the_root():
    model = Model()
    model.tags = {"a"}
    with pytest.raises(
        errors.StaticAttributeError, match=r"Model at model has a static attribute 'tags'"
    ):
        nnx.split(model)


def test_static_attribute_made_data_works():
    model = Model()
    model.cfg = nnx.data(Config(3))
    graphdef, state = nnx.split(model)
    assert nnx.merge(graphdef, state).cfg == Config(3)


# -- rngs ----------------------------------------------------------------------------------
def test_missing_rng_stream():
    model = Model()
    before = snapshot(model)
    with pytest.raises(
        errors.RngStreamError,
        match=r"(?s)no stream 'dropout' and no 'default' stream.*available streams: "
        r"\['params'\].*Fix: .*nnx\.Rngs\(dropout=0",
    ):
        model.rngs.dropout()
    assert_unchanged(model, before)

    class Layer(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jax.random.normal(rngs.weights(), (2,)))

    rngs = nnx.Rngs(params=0)
    with pytest.raises(errors.RngStreamError, match="no stream 'weights'"):
        Layer(rngs)
    assert int(rngs.params.count.value) == 0


# -- merge ---------------------------------------------------------------------------------
def test_merge_with_the_wrong_graphdef_lists_missing_and_extra_paths():
    big, small = Model(), Model()
    big.blocks.append(Block())
    small.blocks[0].other = nnx.Param(jnp.ones(1))
    graphdef, _ = nnx.split(big)
    before_big, before_small = snapshot(big), snapshot(small)
    _, state = nnx.split(small)
    state_before = state_values(state)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)merge: the state does not fit the GraphDef.*"
        r"2 paths of the GraphDef are missing from the state:.*model\.blocks\[2\]\.stat.*"
        r"model\.blocks\[2\]\.w.*1 paths of the state are not in the GraphDef:.*"
        r"model\.blocks\[0\]\.other.*Fix: merge a state with the GraphDef",
    ):
        nnx.merge(graphdef, state)
    assert_unchanged(big, before_big)
    assert_unchanged(small, before_small)
    assert_same_values(state_values(state), state_before)


def test_merge_with_a_missing_split_state():
    model = Model()
    graphdef, params, _rest = nnx.split(model, nnx.Param, ...)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)missing from the state.*model\.blocks\[0\]\.stat.*"
        r"pass every state that split returned",
    ):
        nnx.merge(graphdef, params)


def test_merge_with_a_non_graphdef():
    model = Model()
    before = snapshot(model)
    _, state = nnx.split(model)
    with pytest.raises(
        errors.MergeError,
        match=r"merge expects a GraphDef first, got State\. Fix: graphdef, state = nnx\.split",
    ):
        nnx.merge(state, state)
    with pytest.raises(errors.MergeError, match="got Model"):
        nnx.merge(model, state)
    assert_unchanged(model, before)


def test_merge_with_a_wrong_variable_type():
    model = Model()
    before = snapshot(model)
    graphdef, state = nnx.split(model)
    state["head"] = nnx.BatchStat(state["head"].value)
    state["blocks"][1]["stat"] = nnx.Param(state["blocks"][1]["stat"].value)
    state_before = state_values(state)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)Variable types differ:.*"
        r"model\.blocks\[1\]\.stat: state has Param, GraphDef expects BatchStat.*"
        r"model\.head: state has BatchStat, GraphDef expects Param.*Fix:",
    ):
        nnx.merge(graphdef, state)
    assert_unchanged(model, before)
    assert_same_values(state_values(state), state_before)
    assert type(state["head"]) is nnx.BatchStat


def test_unflatten_with_the_wrong_number_of_leaves():
    graphdef, state = nnx.split(Model())
    leaves = list(state.flat_state().leaves)
    with pytest.raises(errors.GraphDefMismatchError, match=r"got \d+ leaves but the GraphDef"):
        nnx.unflatten(graphdef, leaves[:-1])


def test_errors_carry_the_model_class_in_update_and_the_graphdef_in_merge():
    model = Model()
    with pytest.raises(errors.UpdateError, match="does not fit Model"):
        nnx.update(model, {"nope": jnp.ones(1)})
    graphdef, state = nnx.split(model)
    del state["head"]
    with pytest.raises(errors.GraphDefMismatchError, match=r"GraphDef\(Model, nodes="):
        nnx.merge(graphdef, state)
