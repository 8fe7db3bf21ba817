"""The misuse catalogue of the core: every bad call raises an ``nnx.errors`` exception (an
``NNXError``) whose message says what went wrong, where (the module class and the path in the
model) and how to fix it, and leaves the model (and any state passed in) exactly as it was.

Misuse of transforms has its own catalogue in ``tests/transforms/test_transform_errors.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


Snapshot = tuple[nnx.GraphDef, Any]


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy of a leaf (the raw data of a PRNG key)."""
    if jnp.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.array(x)


def state_values(state: nnx.State) -> Any:
    """The values of a State as nested numpy pure dicts (copies, so later changes show)."""
    return jax.tree.map(to_numpy, state.to_pure_dict())


def snapshot(obj: Any) -> Snapshot:
    """GraphDef plus the values of the object's state."""
    return nnx.graphdef(obj), state_values(nnx.state(obj))


def assert_same_values(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_unchanged(obj: Any, before: Snapshot) -> None:
    graphdef, values = snapshot(obj)
    assert graphdef == before[0], "the model's structure changed"
    assert_same_values(values, before[1])


# -- the error classes and paths ------------------------------------------------------------
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
def test_every_error_is_an_nnx_error_and_a_builtin_error(cls: type[Exception]) -> None:
    assert issubclass(cls, errors.NNXError)
    builtin = (ValueError, TypeError, KeyError, AttributeError, RuntimeError)
    assert issubclass(cls, builtin)
    assert cls.__name__ in errors.__all__


def test_format_path() -> None:
    assert format_path(("blocks", 1, "w")) == "model.blocks[1].w"
    assert format_path(("table", "not an id", 0), "state") == "state.table['not an id'][0]"
    assert format_path(()) == "model"


# -- split and filters ------------------------------------------------------------------------
def test_split_with_non_exhaustive_filters() -> None:
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


def test_split_with_everything_not_last() -> None:
    model = Model()
    before = snapshot(model)
    with pytest.raises(errors.FilterError, match=r"not the last filter.*Fix: put `...` last"):
        nnx.split(model, ..., nnx.Param)
    assert_unchanged(model, before)


def test_long_lists_of_unmatched_paths_are_shortened() -> None:
    layers = nnx.List([nnx.BatchStat(jnp.zeros(1)) for _ in range(25)])
    before = snapshot(layers)
    with pytest.raises(
        errors.FilterError, match=r"(?s)25 leaves.*and 15 more.*Fix: add a catch-all"
    ) as info:
        nnx.split(layers, nnx.Param)
    assert str(info.value).count("state[") == 10
    assert_unchanged(layers, before)


# -- update -----------------------------------------------------------------------------------
def test_update_with_an_unknown_path() -> None:
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][1]["extra"] = nnx.Param(jnp.ones(2))
    bad["head"] = nnx.Param(jnp.full(2, 7.0))  # a valid entry in the same call: not applied
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)does not fit Model; nothing was changed.*"
        r"model\.blocks\[1\]\.extra: no such Variable in the model.*Fix:",
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_with_a_wrong_shape() -> None:
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][1]["w"] = nnx.Param(jnp.ones((3, 3)))
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)does not fit Model.*model\.blocks\[1\]\.w: shape \(3, 3\) in the state, "
        r"\(2, 2\) in the model.*Fix:",
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_with_a_wrong_shape_as_a_raw_array() -> None:
    model = Model()
    before = snapshot(model)
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)does not fit Model.*model\.head: shape \(5,\) in the state, "
        r"\(2,\) in the model.*Fix:",
    ):
        nnx.update(model, {"head": jnp.zeros(5)})
    assert_unchanged(model, before)


def test_update_with_the_wrong_variable_type() -> None:
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["blocks"][0]["stat"] = nnx.Param(jnp.ones(2))
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)does not fit Model.*"
        r"model\.blocks\[0\]\.stat: the model has a BatchStat, the state a Param.*Fix:",
    ):
        nnx.update(model, bad)
    assert_unchanged(model, before)


def test_update_lists_every_problem_and_applies_nothing() -> None:
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


def test_update_across_several_states_checks_all_before_writing() -> None:
    model = Model()
    before = snapshot(model)
    good = nnx.State({"head": nnx.Param(jnp.full(2, 5.0))})
    bad = nnx.State({"blocks": {0: {"nope": nnx.Param(jnp.ones(1))}}})
    with pytest.raises(
        errors.UpdateError,
        match=r"(?s)nothing was changed.*model\.blocks\[0\]\.nope: no such Variable.*Fix:",
    ):
        nnx.update(model, good, bad)
    assert_unchanged(model, before)


def test_update_after_a_failed_update_still_works() -> None:
    model = Model()
    before = snapshot(model)
    bad = nnx.state(model)
    bad["ghost"] = nnx.Param(jnp.ones(1))
    with pytest.raises(errors.UpdateError, match=r"model\.ghost: no such Variable"):
        nnx.update(model, bad)
    assert_unchanged(model, before)
    del bad["ghost"]
    bad["head"] = nnx.Param(jnp.full(2, 7.0))
    nnx.update(model, bad)
    np.testing.assert_array_equal(model.head.value, [7.0, 7.0])


# -- assignment to Variables ------------------------------------------------------------------
def test_augmented_assignment_on_a_variable_attribute() -> None:
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


# -- static attributes ------------------------------------------------------------------------
@dataclasses.dataclass
class Config:  # eq=True, not frozen: unhashable
    depth: int


@pytest.mark.parametrize(
    "value, type_name", [({1, 2}, "set"), (Config(3), "Config")], ids=["set", "dataclass"]
)
def test_unhashable_static_attribute(value: Any, type_name: str) -> None:
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


def test_a_plain_list_attribute_is_not_a_static_error() -> None:
    model = Model()
    model.blocks[1].options = [1.0, 2.0]  # becomes a tracked List, not a static value
    assert nnx.merge(*nnx.split(model)).blocks[1].options == [1.0, 2.0]


def test_unhashable_static_on_the_root() -> None:
    model = Model()
    model.tags = {"a"}
    with pytest.raises(
        errors.StaticAttributeError,
        match=r"(?s)Model at model has a static attribute 'tags'.*Fix.*nnx\.data",
    ):
        nnx.split(model)
    assert model.tags == {"a"}


def test_static_attribute_made_data_works() -> None:
    model = Model()
    model.cfg = nnx.data(Config(3))
    graphdef, state = nnx.split(model)
    assert nnx.merge(graphdef, state).cfg == Config(3)


# -- rngs -------------------------------------------------------------------------------------
def test_missing_rng_stream() -> None:
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
        def __init__(self, rngs: nnx.Rngs):
            self.w = nnx.Param(jax.random.normal(rngs.weights(), (2,)))

    rngs = nnx.Rngs(params=0)
    with pytest.raises(errors.RngStreamError, match=r"(?s)no stream 'weights'.*Fix:"):
        Layer(rngs)
    assert int(rngs.params.count.value) == 0


# -- merge and unflatten ----------------------------------------------------------------------
def test_merge_with_the_wrong_graphdef_lists_missing_and_extra_paths() -> None:
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


def test_merge_with_a_missing_split_state() -> None:
    model = Model()
    before = snapshot(model)
    graphdef, params, _rest = nnx.split(model, nnx.Param, ...)
    params_before = state_values(params)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)missing from the state.*model\.blocks\[0\]\.stat.*"
        r"pass every state that split returned",
    ):
        nnx.merge(graphdef, params)
    assert_unchanged(model, before)
    assert_same_values(state_values(params), params_before)


def test_merge_with_a_non_graphdef() -> None:
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


def test_merge_with_a_wrong_variable_type() -> None:
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


def test_merge_with_extra_paths_and_wrong_types_reports_both() -> None:
    model = Model()
    before = snapshot(model)
    graphdef, state = nnx.split(model)
    state["bogus"] = nnx.Param(jnp.ones(1))
    state["head"] = nnx.BatchStat(state["head"].value)
    state_before = state_values(state)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)does not fit the GraphDef.*Fix: merge a state with the GraphDef",
    ) as info:
        nnx.merge(graphdef, state)
    message = str(info.value)
    assert "model.bogus" in message and "not in the GraphDef" in message
    assert "model.head: state has BatchStat, GraphDef expects Param" in message
    assert_unchanged(model, before)
    assert_same_values(state_values(state), state_before)


def test_unflatten_with_the_wrong_number_of_leaves() -> None:
    model = Model()
    before = snapshot(model)
    graphdef, state = nnx.split(model)
    leaves = list(state.flat_state().leaves)
    with pytest.raises(
        errors.GraphDefMismatchError,
        match=r"(?s)unflatten got 6 leaves but the GraphDef has 7.*Fix: pass the leaves",
    ):
        nnx.unflatten(graphdef, leaves[:-1])
    assert_unchanged(model, before)


def test_errors_carry_the_model_class_in_update_and_the_graphdef_in_merge() -> None:
    model = Model()
    before = snapshot(model)
    with pytest.raises(errors.UpdateError, match="does not fit Model"):
        nnx.update(model, {"nope": jnp.ones(1)})
    graphdef, state = nnx.split(model)
    del state["head"]
    with pytest.raises(errors.GraphDefMismatchError, match=r"GraphDef\(Model, nodes="):
        nnx.merge(graphdef, state)
    assert_unchanged(model, before)
