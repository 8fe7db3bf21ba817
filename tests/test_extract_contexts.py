"""split_context / merge_context / update_context and nnx.extract (to_tree, from_tree,
prefix, NodeStates): flax parity on the same programs, error messages, and round-trip
properties on random graphs with shared references and cycles."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnx
from tests.strategies import build_graph, graph_recipes, walk

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _params(fn):
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(
    "name",
    ["split_context", "merge_context", "update_context", "current_update_context", "prefix"],
)
def test_signatures_match_flax(name):
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _params(getattr(nnx, name)) == _params(getattr(flax_nnx, name))


@pytest.mark.parametrize("name", ["to_tree", "from_tree", "prefix"])
def test_extract_signatures_match_flax(name):
    pytest.importorskip("flax.nnx")
    from flax.nnx import extract as flax_extract

    assert _params(getattr(nnx.extract, name)) == _params(getattr(flax_extract, name))


# -- split_context / merge_context ------------------------------------------------------------
def _shared_program(lib):
    shared = lib.Linear(2, 2, rngs=lib.Rngs(0))
    pair = lib.List([shared, lib.Linear(2, 2, rngs=lib.Rngs(1))])
    with lib.split_context() as ctx:
        parts = [ctx.split(pair), ctx.split(shared), ctx.split(pair[1].kernel)]
    sizes = [len(jax.tree.leaves(s)) for _, s in parts]
    with lib.merge_context() as ctx:
        objs = [ctx.merge(g, s) for g, s in parts]
    return sizes, objs[0][0] is objs[1], objs[0][1].kernel is objs[2], objs[0] is not pair


def test_split_merge_context_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _shared_program(nnx) == _shared_program(flax_nnx)


def test_first_split_of_a_context_is_nnx_split():
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with nnx.split_context() as ctx:
        graphdef, state = ctx.split(model, nnx.Param)
    assert graphdef == nnx.graphdef(model)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, state, nnx.state(model)))
    assert state["kernel"] is not model.kernel  # a snapshot, as nnx.split


def test_split_context_refs_and_filters():
    m = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    with nnx.split_context() as ctx:
        gd, params, stats = ctx.split(m, nnx.Param, nnx.BatchStat)
        assert m in ctx.ref_index and ctx.ref_index[m] == 0
    assert sorted(params) == ["bias", "scale"] and sorted(stats) == ["mean", "var"]
    with nnx.merge_context() as ctx:
        new = ctx.merge(gd, params, stats)
        assert ctx.index_ref[0] is new
    assert isinstance(new, nnx.BatchNorm) and new.mean is not m.mean


def test_merge_context_out_of_order_raises():
    shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    with nnx.split_context() as ctx:
        first = ctx.split(nnx.List([shared]))
        second = ctx.split(shared)
    del first
    with (
        pytest.raises(nnx.errors.MergeError, match="no earlier merge of this context"),
        nnx.merge_context() as ctx,
    ):
        ctx.merge(*second)


def test_flatten_unflatten_methods():
    shared = nnx.Param(jnp.ones(2))
    with nnx.split_context() as ctx:
        gd1, flat1 = ctx.flatten({"a": shared})
        gd2, leaves2 = ctx.flatten([shared, nnx.Param(jnp.zeros(1))], with_paths=False)
    assert list(flat1.paths) == [("a",)] and len(leaves2) == 1
    with nnx.merge_context() as ctx:
        a = ctx.unflatten(gd1, flat1)
        b = ctx.unflatten(gd2, leaves2)
    assert a["a"] is b[0]


# -- update_context --------------------------------------------------------------------------
class Foo(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones(2))


def _update_program(lib, foo_cls):
    m1 = foo_cls()

    @jax.jit
    def f(graphdef, state):
        with lib.merge_context("t", inner=True) as ctx:
            m2 = ctx.merge(graphdef, state)
        m2.a = 1
        m2.ref = m2
        m2.w[...] = m2.w[...] * 3
        m2.new = lib.Param(jnp.zeros(1))
        with lib.split_context("t") as ctx:
            return ctx.split(m2)

    @lib.update_context("t")
    def g(m):
        with lib.split_context("t") as ctx:
            graphdef, state = ctx.split(m)
        out = f(graphdef, state)
        with lib.merge_context("t", inner=False) as ctx:
            return ctx.merge(*out)

    w = m1.w
    results = []
    for _ in range(2):  # the second call hits jit's cache: no trace, same result
        m3 = g(m1)
        results.append((m3 is m1, m1.a, m1.ref is m1, m1.w is w, m1.w[...].tolist()))
        results.append((type(m1.new).__name__, m1.new[...].shape))
    return results


def test_update_context_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")

    class FlaxFoo(flax_nnx.Module):
        def __init__(self):
            self.w = flax_nnx.Param(jnp.ones(2))

    assert _update_program(nnx, Foo) == _update_program(flax_nnx, FlaxFoo)


def test_update_context_errors():
    with pytest.raises(nnx.errors.ArgumentError, match="No update context with tag 'x'"):
        nnx.current_update_context("x")
    with (
        nnx.update_context("x"),
        pytest.raises(nnx.errors.ArgumentError, match="needs inner=True"),
        nnx.merge_context("x"),
    ):
        pass
    with pytest.raises(nnx.errors.ArgumentError):
        nnx.current_update_context("x")  # popped on exit


# -- extract ---------------------------------------------------------------------------------
def _tree_program(lib, extract):
    shared = lib.Linear(2, 2, rngs=lib.Rngs(0))
    tree = {"a": shared, "b": [shared, lib.Param(jnp.ones(3))], "x": 1.0}
    t = extract.to_tree(tree)
    kinds = jax.tree.map(
        lambda x: type(x).__name__, t, is_leaf=lambda x: isinstance(x, extract.NodeStates)
    )
    t = jax.jit(lambda t: t)(t)
    out = extract.from_tree(t)
    return kinds, out["a"] is out["b"][0], out["a"] is shared, out["x"], len(jax.tree.leaves(t))


def test_to_tree_from_tree_match_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    from flax.nnx import extract as flax_extract

    assert _tree_program(nnx, nnx.extract) == _tree_program(flax_nnx, flax_extract)


def test_to_tree_with_prefix_checks_aliasing():
    v = nnx.Param(jnp.ones(2))
    seen = []

    def split_fn(ctx, path, prefix, leaf):
        seen.append(prefix)
        return nnx.NodeStates.from_split(*ctx.split(leaf), metadata=prefix)

    t = nnx.to_tree(({"v": v}, [v]), prefix=(0, 0), split_fn=split_fn)
    assert seen == [0, 0] and t[0]["v"].metadata == 0
    with pytest.raises(nnx.errors.ArgumentError, match="Inconsistent aliasing"):
        nnx.to_tree(({"v": v}, [v]), prefix=(0, 1))
    nnx.to_tree(({"v": v}, [v]), prefix=(0, 1), check_aliasing=False)


def _prefix_program(lib):
    d = {"a": lib.Param(jnp.array(2)), "b": lib.BatchStat(jnp.arange(5))}
    m = lib.Linear(2, 3, rngs=lib.Rngs(0))
    tree_mode = lib.prefix(d, lambda path, x: 0 if "b" in path else None, graph=False)
    graph_mode = lib.prefix(d, {lib.Param: None, lib.BatchStat: 0}, graph=True)
    pair = lib.prefix((m, m), {lib.Param: 0}, graph=True)
    return (
        tree_mode,
        jax.tree.leaves(graph_mode),
        jax.tree.leaves(pair),
        # our Modules keep int attributes out of their pytree leaves, so read the attributes
        [getattr(lib.prefix(m, {lib.Param: 1}, graph=False), k) for k in ("bias", "kernel")],
    )


def test_prefix_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _prefix_program(nnx) == _prefix_program(flax_nnx)


def test_prefix_errors():
    with pytest.raises(nnx.errors.ArgumentError, match="no filter of"):
        nnx.prefix({"a": nnx.Param(1.0)}, {nnx.BatchStat: 0})
    shared = nnx.Param(1.0)
    with pytest.raises(nnx.errors.ArgumentError, match=r"prefix\(graph=False\)"):
        nnx.prefix([shared, shared], lambda p, x: 0, graph=False)


def test_node_states_accessors():
    ns = nnx.NodeStates.from_states(nnx.State({}), nnx.State({}))
    with pytest.raises(nnx.errors.ArgumentError, match="no GraphDef"):
        _ = ns.graphdef
    with pytest.raises(nnx.errors.ArgumentError, match="exactly one State"):
        _ = ns.state
    assert nnx.NodeStates.from_prefixes([0, None], metadata="m").states == (0, None)


# -- properties ------------------------------------------------------------------------------
def _parts(draw, model):
    objects = walk(model).objects
    picks = draw(st.lists(st.integers(0, len(objects) - 1), max_size=4)) if objects else []
    return [model, *(objects[i] for i in picks)], [None, *picks]


@st.composite
def graphs_with_parts(draw):
    model = build_graph(draw(graph_recipes(max_nodes=10)))
    parts, picks = _parts(draw, model)
    return model, parts, picks


def _check_same_sharing(model, picks, merged):
    info = walk(model)
    new_info = walk(merged[0])
    assert new_info.entries == info.entries
    for obj, pick in zip(merged[1:], picks[1:], strict=True):
        assert obj is new_info.objects[pick]


@SETTINGS
@given(graphs_with_parts())
def test_split_merge_context_roundtrip_preserves_sharing(case):
    model, parts, picks = case
    with nnx.split_context() as ctx:
        split = [ctx.split(p) for p in parts]
    with nnx.merge_context() as ctx:
        merged = [ctx.merge(*s) for s in split]
    _check_same_sharing(model, picks, merged)


@SETTINGS
@given(graphs_with_parts())
def test_to_tree_from_tree_roundtrip_preserves_sharing(case):
    model, parts, picks = case
    tree = nnx.to_tree({"parts": parts})
    tree = jax.tree.map(lambda x: x, tree)  # through the pytree machinery
    merged = nnx.from_tree(tree)["parts"]
    _check_same_sharing(model, picks, merged)
