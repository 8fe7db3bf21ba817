"""The filter language: every form the filters.py docstring lists, the combinators, and the
errors for filters that cannot work."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import pytest

import nnx
from nnx import errors
from nnx.filters import filters_to_predicates, to_predicate


class Tagged(nnx.Variable):
    pass


class Leaf(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.ones(2))
        self.bias = nnx.Param(jnp.zeros(2), tag="b")
        self.mean = nnx.BatchStat(jnp.zeros(2))


class Model(nnx.Module):
    def __init__(self):
        self.linear = Leaf()
        self.other = Leaf()
        self.cache = nnx.Cache(jnp.zeros(1), tag="kv")
        self.extra = Tagged(jnp.zeros(1))


def paths(model, flt):
    return sorted(nnx.state(model, flt).flat_state().paths, key=repr)


ALL_PATHS = sorted(
    [
        ("cache",),
        ("extra",),
        ("linear", "bias"),
        ("linear", "kernel"),
        ("linear", "mean"),
        ("other", "bias"),
        ("other", "kernel"),
        ("other", "mean"),
    ],
    key=repr,
)


def p(*ps):
    return sorted(ps, key=repr)


def _param_id(x):
    """Stable test ids (the same in every xdist worker: no memory addresses)."""
    if isinstance(x, list) and all(isinstance(p, tuple) for p in x):
        return None  # the expected paths: pytest numbers them
    if isinstance(x, type):
        return x.__name__
    if inspect.isfunction(x):
        return "callable"
    return repr(x)[:40]


@pytest.mark.parametrize(
    "flt, expected",
    [
        # a Variable type / any class
        (nnx.Param, p(*[(m, n) for m in ("linear", "other") for n in ("bias", "kernel")])),
        (nnx.BatchStat, p(("linear", "mean"), ("other", "mean"))),
        (nnx.Variable, ALL_PATHS),
        (Tagged, p(("extra",))),
        # everything / nothing
        (..., ALL_PATHS),
        (True, ALL_PATHS),
        (False, []),
        (None, []),
        # a string: a path part or a tag
        ("bias", p(("linear", "bias"), ("other", "bias"))),
        ("linear", p(("linear", "bias"), ("linear", "kernel"), ("linear", "mean"))),
        ("kv", p(("cache",))),
        ("b", p(("linear", "bias"), ("other", "bias"))),
        # a callable (path, value) -> bool
        (lambda path, v: path[-1] == "mean", p(("linear", "mean"), ("other", "mean"))),
        # list / tuple: any of them
        ((nnx.BatchStat, nnx.Cache), p(("cache",), ("linear", "mean"), ("other", "mean"))),
        ([nnx.Cache, "extra"], p(("cache",), ("extra",))),
        # combinators
        (nnx.OfType(nnx.Cache), p(("cache",))),
        (nnx.PathContains("other"), p(("other", "bias"), ("other", "kernel"), ("other", "mean"))),
        (nnx.PathContains("ker", exact=False), p(("linear", "kernel"), ("other", "kernel"))),
        (nnx.PathContains("ker"), []),
        (nnx.WithTag("kv"), p(("cache",))),
        (nnx.WithTag("bias"), []),
        (nnx.Everything(), ALL_PATHS),
        (nnx.Nothing(), []),
        (nnx.All(nnx.Param, "linear"), p(("linear", "bias"), ("linear", "kernel"))),
        (nnx.Any(nnx.Cache, Tagged), p(("cache",), ("extra",))),
        (
            nnx.Not(nnx.Param),
            p(("cache",), ("extra",), ("linear", "mean"), ("other", "mean")),
        ),
    ],
    ids=lambda x: _param_id(x),
)
def test_every_filter_form(flt, expected):
    assert paths(Model(), flt) == expected


def test_filters_are_exported_under_flax_names():
    assert nnx.filterlib.to_predicate is to_predicate
    assert nnx.All is nnx.filterlib.All and nnx.Not is nnx.filterlib.Not


def test_composition():
    m = Model()
    flt = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("bias")))
    assert paths(m, flt) == p(("linear", "kernel"), ("other", "kernel"))
    nested = nnx.Any(nnx.All(nnx.Param, "other"), nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat)))
    assert paths(m, nested) == p(("cache",), ("extra",), ("other", "bias"), ("other", "kernel"))
    assert paths(m, nnx.Not(nnx.Not(nnx.Cache))) == p(("cache",))
    assert paths(m, nnx.All()) == ALL_PATHS  # all of nothing: vacuously true
    assert paths(m, nnx.Any()) == []


def test_predicates_direct():
    is_param = to_predicate(nnx.Param)
    assert is_param(("w",), nnx.Param(1.0))
    assert not is_param(("w",), nnx.BatchStat(1.0))
    assert to_predicate("w")(("a", "w"), 1.0)
    assert not to_predicate("w")(("a", "ww"), 1.0)
    assert to_predicate(...)((), object())
    assert not to_predicate(None)((), object())


def test_oftype_matches_objects_describing_a_variable_type():
    class Described:
        type = nnx.BatchStat

    assert to_predicate(nnx.BatchStat)(("x",), Described())
    assert to_predicate(nnx.Variable)(("x",), Described())
    assert not to_predicate(nnx.Param)(("x",), Described())


def test_filters_are_hashable_and_comparable():
    a = nnx.All(nnx.Param, nnx.Not("bias"))
    b = nnx.All(nnx.Param, nnx.Not("bias"))
    assert a == b and hash(a) == hash(b)
    assert nnx.Any(nnx.Param) != nnx.All(nnx.Param)
    assert nnx.Not(nnx.Param) != nnx.Not(nnx.BatchStat)
    assert nnx.PathContains("a") == nnx.PathContains("a")
    assert nnx.Everything() == nnx.Everything() and nnx.Nothing() == nnx.Nothing()
    assert len({a, b, nnx.Everything(), nnx.Everything()}) == 2


def test_filter_reprs_are_readable():
    assert repr(nnx.OfType(nnx.Param)) == "OfType(Param)"
    assert repr(nnx.All(nnx.Param, nnx.Not("bias"))) == "All(OfType(Param), Not('bias'))"
    assert repr(nnx.Any(nnx.Cache)) == "Any(OfType(Cache))"


def test_first_match_wins_in_split():
    m = Model()
    _, biases, params, rest = nnx.split(m, "bias", nnx.Param, ...)
    assert sorted(biases.flat_state().paths) == [("linear", "bias"), ("other", "bias")]
    assert sorted(params.flat_state().paths) == [("linear", "kernel"), ("other", "kernel")]
    assert len(rest.flat_state()) == 4


@pytest.mark.parametrize("everything", [..., True, nnx.Everything()], ids=repr)
def test_everything_not_last_raises(everything):
    with pytest.raises(errors.FilterError, match=r"Filter #0 is `...`.*Fix: put `...` last"):
        filters_to_predicates((everything, nnx.Param))
    with pytest.raises(errors.FilterError, match="not the last filter"):
        nnx.split(Model(), nnx.Cache, everything, nnx.Param)


def test_everything_last_is_fine():
    assert len(filters_to_predicates((nnx.Param, ...))) == 2


@pytest.mark.parametrize(
    "bad", [1, 2.5, object(), b"bytes"], ids=["int", "float", "object", "bytes"]
)
def test_a_non_filter_raises_type_error(bad):
    with pytest.raises(nnx.errors.ArgumentError, match="is not a filter"):
        to_predicate(bad)
    with pytest.raises(TypeError, match="is not a filter"):
        nnx.state(Model(), bad)


def test_non_filter_nested_in_a_combinator_raises():
    with pytest.raises(TypeError, match="is not a filter"):
        nnx.All(nnx.Param, 3)
    with pytest.raises(TypeError, match="is not a filter"):
        nnx.Not(4.0)
    with pytest.raises(TypeError, match="is not a filter"):
        to_predicate((nnx.Param, 5))
