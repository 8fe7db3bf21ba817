"""nnx.map, recursive_map, as_pure/pure, set_metadata, filter_state, map_state, split_state:
flax parity on the same programs, errors, and properties on random graphs."""

from __future__ import annotations

import inspect
import warnings

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings

import nnx
from tests.strategies import build_graph, graph_recipes, walk

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
NAMES = ["map", "recursive_map", "as_pure", "pure", "set_metadata", "filter_state", "map_state"]


def _params(fn):
    return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in
            inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", [*NAMES, "split_state"])
def test_signatures_match_flax(name):
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _params(getattr(nnx, name)) == _params(getattr(flax_nnx, name))


def _model(lib):
    class M(lib.Module):
        def __init__(self):
            self.w = lib.Param(jnp.ones(2))
            self.n = 3
            self.stat = lib.BatchStat(jnp.zeros(1))
            self.sub = lib.Linear(1, 2, rngs=lib.Rngs(0))

    return M()


def _map_program(lib):
    m = _model(lib)
    new = lib.map(lambda p, v: v.replace(v[...] * 2) if isinstance(v, lib.Variable) else v, m)
    same = lib.map(lambda p, v: v, m, recreate_variables=False)
    fresh = lib.map(lambda p, v: v, m)
    var = lib.map(lambda p, v: v, lib.Param(jnp.ones(1)))
    raw = lib.map(lambda p, v: v[...], m, recreate_variables=False)
    wrapped = lib.map(lambda p, v: v[...], m)
    return (
        type(new).__name__,
        new.w[...].tolist(),
        m.w[...].tolist(),
        new.n,
        same.w is m.w,
        fresh.w is m.w,
        type(var).__name__,
        type(raw.w).__name__,
        type(wrapped.w).__name__,
    )


def test_map_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _map_program(nnx) == _map_program(flax_nnx)


def _recursive_program(lib):
    m = _model(lib)
    shared = lib.Linear(1, 1, rngs=lib.Rngs(1))
    m.pair = lib.List([shared, shared])
    seen = []

    def f(path, x):
        if isinstance(x, lib.Module | lib.Variable | lib.List):
            seen.append((path, type(x).__name__))
        if isinstance(x, lib.Linear) and path[-1:] == ("sub",):
            return lib.Linear(1, 3, rngs=lib.Rngs(2))
        return x

    out = lib.recursive_map(f, m)
    keep = [(p, t) for p, t in seen if not any(str(k).startswith("_") for k in p)]
    return keep, out is m, out.w is m.w, out.sub.out_features, out.pair[0] is out.pair[1]


def test_recursive_map_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _recursive_program(nnx) == _recursive_program(flax_nnx)


def test_recursive_map_cycle_raises():
    m = _model(nnx)
    m.sub.back = m
    with pytest.raises(nnx.errors.ArgumentError, match="recursive_map found a cycle"):
        nnx.recursive_map(lambda p, x: x, m)


def test_graph_false_refuses_sharing():
    shared = nnx.Param(jnp.ones(1))
    pair = nnx.List([shared, shared])
    for fn in (nnx.map, nnx.recursive_map):
        with pytest.raises(nnx.errors.ArgumentError, match="graph=False"):
            fn(lambda p, x: x, pair, graph=False)
        fn(lambda p, x: x, pair)  # graph semantics: fine


def _pure_program(lib):
    state = lib.state(lib.Linear(2, 3, rngs=lib.Rngs(0)))
    pure = lib.as_pure(state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = lib.pure({"a": lib.Param(1)})
    return (
        jax.tree.map(jnp.shape, dict(pure)),
        old,
        [w.category for w in caught],
        lib.as_pure([lib.Param(lib.Param(2))]),
    )


def test_as_pure_and_pure_match_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _pure_program(nnx) == _pure_program(flax_nnx)


def _metadata_program(lib):
    m = _model(lib)
    lib.set_metadata(m, only=lib.Param, frozen=True)
    lib.set_metadata(m, tag="all")
    return [
        m.w.get_metadata("frozen"),
        m.stat.get_metadata().get("frozen"),
        m.stat.get_metadata("tag"),
        m.sub.kernel.get_metadata("frozen"),
    ]


def test_set_metadata_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _metadata_program(nnx) == _metadata_program(flax_nnx)


def _state_program(lib):
    s = lib.state(_model(lib))
    params = lib.filter_state(s, lib.Param)
    two = lib.filter_state(s, lib.Param, lib.BatchStat)
    split = lib.split_state(s, lib.Param, ...)
    mapped = lib.map_state(lambda p, v: p, s)
    def flat(st):
        return sorted(tuple(map(str, p)) for p, _ in st.flat_state())

    return (
        flat(params),
        [flat(x) for x in two],
        [flat(x) for x in split],
        sorted(jax.tree.leaves(dict(mapped), is_leaf=lambda x: isinstance(x, tuple))),
    )


def test_state_helpers_match_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _state_program(nnx) == _state_program(flax_nnx)


def test_split_state_requires_coverage_like_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    for lib, error in ((nnx, nnx.errors.FilterError), (flax_nnx, ValueError)):
        with pytest.raises(error):
            lib.split_state(lib.state(_model(lib)), lib.BatchStat)


@SETTINGS
@given(graph_recipes(max_nodes=10))
def test_map_identity_is_a_clone(recipe):
    model = build_graph(recipe)
    assert walk(nnx.map(lambda p, v: v, model)).entries == walk(model).entries


@SETTINGS
@given(graph_recipes(max_nodes=10, cycles=False))
def test_recursive_map_identity_preserves_graph(recipe):
    model = build_graph(recipe)
    out = nnx.recursive_map(lambda p, x: x, model)
    info, new = walk(model), walk(out)
    assert new.entries == info.entries
    old_vars = info.of_type(nnx.Variable)
    assert all(a is b for a, b in zip(new.of_type(nnx.Variable), old_vars, strict=True))
