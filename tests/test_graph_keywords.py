"""flax.nnx 0.12.8's keywords on the graph core, State and Module: signatures equal flax's,
and the keywords do what flax's do (``graph=``, ``clone(variables=, arrays=)``,
``flatten(with_paths=)``, ``unflatten(copy_variables=, recreate_variables=)``, GraphState,
``to_pure_dict(extract_fn=)``, ``restore_int_paths``, ``find_duplicates``...).

Each comparison runs the same program on nnx and on flax (skipped without flax).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import nnx
from nnx._graph_mode import set_graph_mode
from nnx.errors import ArgumentError, GraphDefMismatchError, MergeError, format_path
from tests.strategies import build_graph, describe_pairs, graph_recipes, walk

# -- signatures ------------------------------------------------------------------------------
FUNCTIONS = [
    "split",
    "merge",
    "state",
    "variables",
    "graphdef",
    "iter_children",
    "iter_graph",
    "iter_modules",
    "iter_module_children",
    "clone",
    "flatten",
    "unflatten",
    "pop",
    "update",
    "abstract_with_sharding",
    "as_abstract",
    "merge_state",
    "from_flat_state",
    "to_pure_dict",
    "find_duplicates",
    "unpack",
]
METHODS = ["sow", "perturb", "iter_modules", "iter_children", "set_attributes", "train", "eval"]


def _shape(fn: Any) -> list[tuple]:
    """Parameter names, kinds and defaults (classes by name, callables by kind only)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        d = p.default
        if isinstance(d, type):
            d = d.__name__
        elif callable(d):
            d = "<callable>"
        out.append((p.name, p.kind, d))
    return out


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_signature_equals_flax(name):
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _shape(getattr(nnx, name)) == _shape(getattr(flax_nnx, name))


@pytest.mark.parametrize("name", METHODS)
def test_module_method_signature_equals_flax(name):
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _shape(getattr(nnx.Module, name)) == _shape(getattr(flax_nnx.Module, name))


def test_state_classes_signatures():
    flax_nnx = pytest.importorskip("flax.nnx")
    assert _shape(nnx.State) == [
        ("mapping", inspect.Parameter.POSITIONAL_ONLY, ()),
        ("_copy", inspect.Parameter.KEYWORD_ONLY, True),
    ]
    assert [p[:2] for p in _shape(nnx.State)] == [p[:2] for p in _shape(flax_nnx.State)]
    # FlatState: same names and kinds; nnx gives both a default (deliberate, see FlatState).
    assert [p[:2] for p in _shape(nnx.FlatState)] == [p[:2] for p in _shape(flax_nnx.FlatState)]
    # restore_int_paths: flax's one argument, plus nnx's optional reference.
    assert _shape(nnx.restore_int_paths)[0][:2] == _shape(flax_nnx.restore_int_paths)[0][:2]


# -- graph=False -----------------------------------------------------------------------------
def _shared_program(lib: Any) -> Any:
    """One program, run on nnx or flax: a shared layer, a tied weight, a cycle, List/Dict."""
    shared = lib.Linear(2, 2, rngs=lib.Rngs(0))

    class Model(lib.Module):
        def __init__(self):
            self.a = shared
            self.b = shared
            self.layers = lib.List([shared, lib.Param(jnp.ones(1))])
            self.d = lib.Dict(x=shared.kernel, y=lib.Linear(1, 1, rngs=lib.Rngs(1)))
            self.tied = self.d["y"].bias

    model = Model()
    model.d["self"] = model
    return model


class _TreeModel(nnx.Module):
    def __init__(self):
        self.a = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        self.layers = nnx.List([nnx.Linear(3, 3, rngs=nnx.Rngs(1))])
        self.bn = nnx.BatchNorm(3, rngs=nnx.Rngs(2))
        self.drop = nnx.Dropout(0.5)


def _tree_program(lib: Any) -> Any:
    return _TreeModel()


def test_find_duplicates_equals_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    ours, theirs = _shared_program(nnx), _shared_program(flax_nnx)
    expected = [
        [(), ("d", "self")],
        [("a",), ("b",), ("layers", 0)],
        [("a", "kernel"), ("d", "x")],
        [("d", "y", "bias"), ("tied",)],
    ]
    assert nnx.find_duplicates(ours) == flax_nnx.find_duplicates(theirs) == expected
    assert nnx.find_duplicates(ours, only=nnx.Param) == flax_nnx.find_duplicates(
        theirs, only=flax_nnx.Param
    )
    assert nnx.find_duplicates(_tree_program(nnx)) == []


GRAPH_CALLS = {
    "split": lambda m, g: nnx.split(m, graph=g),
    "state": lambda m, g: nnx.state(m, graph=g),
    "variables": lambda m, g: nnx.variables(m, graph=g),
    "graphdef": lambda m, g: nnx.graphdef(m, graph=g),
    "clone": lambda m, g: nnx.clone(m, graph=g),
    "flatten": lambda m, g: nnx.flatten(m, graph=g),
    "iter_graph": lambda m, g: list(nnx.iter_graph(m, graph=g)),
    "iter_children": lambda m, g: list(nnx.iter_children(m, graph=g)),
    "iter_module_children": lambda m, g: list(nnx.iter_module_children(m, graph=g)),
    "iter_modules": lambda m, g: list(nnx.iter_modules(m, graph=g)),
    "as_abstract": lambda m, g: nnx.as_abstract(m, graph=g),
    "set_attributes": lambda m, g: m.set_attributes(
        graph=g, raise_if_not_found=False, deterministic=True
    ),
}


@pytest.mark.parametrize("fn", list(GRAPH_CALLS))
def test_graph_false_refuses_sharing_and_names_the_paths(fn):
    model = _shared_program(nnx)
    before = walk(model).entries
    with pytest.raises(ArgumentError, match=r"(?s)graph=False\) found shared references.*Fix"):
        GRAPH_CALLS[fn](model, False)
    with pytest.raises(ArgumentError, match=r"model\.a = model\.b = model\.layers\[0\]"):
        GRAPH_CALLS[fn](model, False)
    assert walk(model).entries == before  # refused before anything changed
    GRAPH_CALLS[fn](model, None)  # graph mode (the default) takes it
    GRAPH_CALLS[fn](model, True)


def test_graph_false_refused_by_flax_too():
    flax_nnx = pytest.importorskip("flax.nnx")
    with pytest.raises(ValueError):
        flax_nnx.split(_shared_program(flax_nnx), graph=False)
    with pytest.raises(ValueError):
        nnx.split(_shared_program(nnx), graph=False)


def test_set_graph_mode_default_applies():
    model = _shared_program(nnx)
    with set_graph_mode(False):  # nnx.set_graph_mode once exported
        with pytest.raises(ArgumentError, match=r"nnx\.state\(graph=False\)"):
            nnx.state(model)
        nnx.state(model, graph=True)  # an explicit True wins over the default
    nnx.state(model)


@pytest.mark.parametrize("fn", list(GRAPH_CALLS))
def test_graph_false_equals_default_on_a_tree(fn):
    a, b = _tree_program(nnx), _tree_program(nnx)
    out_false, out_default = GRAPH_CALLS[fn](a, False), GRAPH_CALLS[fn](b, None)
    assert _describe(out_false) == _describe(out_default)


def _describe(out: Any) -> Any:
    """A comparable description of any result above (graphs, states, lists of pairs)."""
    if isinstance(out, nnx.GraphDef):
        return out
    if nnx.is_node(out):
        return walk(out).entries
    if isinstance(out, nnx.State):
        return describe_pairs(out.flat_state())
    if isinstance(out, nnx.FlatState):
        return describe_pairs(list(out))
    if isinstance(out, tuple):
        return tuple(_describe(x) for x in out)
    if isinstance(out, list):
        return [(p, type(v).__name__) for p, v in out]
    if out is None:
        return None
    return walk(out).entries


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(graph_recipes(max_nodes=8))
def test_property_graph_false(recipe):
    """Without sharing, graph=False gives what the default gives; with sharing it raises,
    naming each duplicate's paths, and the model is unchanged."""
    model = build_graph(recipe)
    duplicates = nnx.find_duplicates(model)
    calls = {
        "split": lambda m, g: nnx.split(m, graph=g),
        "state": lambda m, g: nnx.state(m, graph=g),
        "graphdef": lambda m, g: nnx.graphdef(m, graph=g),
        "flatten": lambda m, g: nnx.flatten(m, graph=g),
        "iter_graph": lambda m, g: list(nnx.iter_graph(m, graph=g)),
        "iter_modules": lambda m, g: list(nnx.iter_modules(m, graph=g)),
        "clone": lambda m, g: nnx.clone(m, graph=g),
    }
    if not duplicates:
        for name, call in calls.items():
            twin = build_graph(recipe)
            assert _describe(call(model, False)) == _describe(call(twin, None)), name
        return
    before = walk(model).entries
    first = duplicates[0]
    expected = " = ".join(format_path(p) or "<root>" for p in first)
    for name, call in calls.items():
        with pytest.raises(ArgumentError) as info:
            call(model, False)
        assert f"nnx.{name}(graph=False)" in str(info.value)
        assert expected in str(info.value), name
        assert walk(model).entries == before


# -- clone -----------------------------------------------------------------------------------
def test_clone_variables_and_arrays_equal_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    for lib in (nnx, flax_nnx):
        m = lib.Linear(2, 3, rngs=lib.Rngs(0))
        plain = lib.clone(m)
        assert plain.kernel is not m.kernel and plain.kernel.get_value() is m.kernel.get_value()
        copied = lib.clone(m, arrays=True)
        assert copied.kernel is not m.kernel
        assert copied.kernel.get_value() is not m.kernel.get_value()
        np.testing.assert_array_equal(copied.kernel.get_value(), m.kernel.get_value())
        shared = lib.clone(m, variables=False)
        assert shared is not m and shared.kernel is m.kernel
        with pytest.raises(ValueError):
            lib.clone(m, False, arrays=True)


def test_clone_arrays_error_message_and_sharing_kept():
    m = _shared_program(nnx)
    with pytest.raises(ArgumentError, match=r"(?s)variables=False, arrays=True.*Fix"):
        nnx.clone(m, variables=False, arrays=True)
    copy = nnx.clone(m, arrays=True)
    assert copy.a is copy.b and copy.d["self"] is copy and copy.tied is copy.d["y"].bias
    assert copy.a.kernel is not m.a.kernel


# -- flatten / unflatten / merge -------------------------------------------------------------
def test_flatten_with_paths_equals_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    ours, theirs = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), flax_nnx.Linear(2, 3, rngs=flax_nnx.Rngs(0))
    (_, flat), (_, fflat) = nnx.flatten(ours), flax_nnx.graphlib.flatten(theirs)
    assert isinstance(flat, nnx.FlatState)
    assert list(flat.paths) == list(fflat.paths)
    assert all(v is getattr(ours, p[0]) for p, v in flat)
    (_, leaves), (_, fleaves) = (
        nnx.flatten(ours, with_paths=False),
        flax_nnx.graphlib.flatten(theirs, with_paths=False),
    )
    assert [type(x) for x in leaves] == [type(x) for x in fleaves]
    for a, b in zip(leaves, fleaves, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unflatten_keywords_equal_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    for lib, unflatten, flatten in (
        (nnx, nnx.unflatten, nnx.flatten),
        (flax_nnx, flax_nnx.graphlib.unflatten, flax_nnx.graphlib.flatten),
    ):
        m = lib.Linear(2, 3, rngs=lib.Rngs(0))
        graphdef, flat = flatten(m)
        assert unflatten(graphdef, flat).kernel is m.kernel
        assert unflatten(graphdef, flat, copy_variables=True).kernel is not m.kernel
        _, raw = flatten(m, with_paths=False)
        assert type(unflatten(graphdef, raw).kernel) is lib.Param
        bare = unflatten(graphdef, raw, recreate_variables=False)
        assert not isinstance(bare.kernel, lib.Variable)
        assert bare.kernel is raw[1]


def test_unflatten_refuses_index_maps():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ArgumentError, match=r"(?s)ref_index=\{\}.*Fix: drop ref_index"):
        nnx.flatten(m, ref_index={})
    with pytest.raises(ArgumentError, match=r"ref_outer_index"):
        nnx.flatten(m, ref_outer_index={})
    graphdef, leaves = nnx.flatten(m, with_paths=False)
    with pytest.raises(ArgumentError, match=r"(?s)index_ref=\{\}.*Fix"):
        nnx.unflatten(graphdef, leaves, index_ref={})
    with pytest.raises(ArgumentError, match=r"outer_index_outer_ref"):
        nnx.unflatten(graphdef, leaves, outer_index_outer_ref={})
    with pytest.raises(GraphDefMismatchError, match=r"got 1 leaves.*has 2"):
        nnx.unflatten(graphdef, leaves[:1])


def test_merge_graph_state_and_keywords_equal_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    for lib in (nnx, flax_nnx):
        m = lib.BatchNorm(2, rngs=lib.Rngs(0))
        params, stats = lib.unpack(m, lib.Param, lib.BatchStat)
        assert isinstance(params, lib.GraphState)
        assert sorted(stats) == ["mean", "var"]
        back = lib.merge(params, stats)
        assert type(back) is lib.BatchNorm
        mapped = jax.tree.map(lambda x: x + 1, params)
        assert isinstance(mapped, lib.GraphState)
        np.testing.assert_array_equal(lib.merge(mapped, stats).scale.get_value(), 2 * jnp.ones(2))
        graphdef, state = lib.split(m)
        assert type(lib.merge(graphdef, state, copy=True).mean) is lib.BatchStat
        with pytest.raises((TypeError, ValueError)):
            lib.merge(graphdef)
        with pytest.raises((TypeError, ValueError)):
            lib.merge(state, state)
        with pytest.raises((TypeError, ValueError)):
            lib.merge(params, state)


def test_merge_error_messages():
    m = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    params = nnx.unpack(m)
    with pytest.raises(MergeError, match=r"(?s)but no state.*Fix"):
        nnx.merge(graphdef)
    with pytest.raises(MergeError, match=r"(?s)GraphState first.*Fix"):
        nnx.merge(params, state)
    _, leaves = nnx.flatten(m, with_paths=False)
    assert type(nnx.merge(graphdef, leaves).mean) is nnx.BatchStat
    with pytest.raises(MergeError, match=r"(?s)list must be the only state.*Fix"):
        nnx.merge(graphdef, leaves, state)
    bare = nnx.merge(graphdef, leaves, recreate_variables=False)
    assert bare.mean is leaves[1]


def test_graphdef_subscript():
    alias = nnx.GraphDef[nnx.Linear]
    assert alias.__origin__ is nnx.GraphDef and alias.__args__ == (nnx.Linear,)

    def fn(g: nnx.GraphDef[nnx.Linear]) -> nnx.GraphDef[nnx.Linear]:
        return g

    assert isinstance(fn(nnx.graphdef(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))), nnx.GraphDef)


def test_update_and_pop_parameter_kinds():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError):
        nnx.update(m)  # flax: the state is required
    saved = nnx.state(m)
    m.kernel.value = m.kernel.value + 1
    nnx.update(m, saved)
    np.testing.assert_array_equal(m.kernel.value, saved["kernel"].value)
    assert list(nnx.state(node=m)) == ["bias", "kernel"]  # node by keyword, as in flax


# -- State -----------------------------------------------------------------------------------
def test_state_copy_flag():
    data = {"a": nnx.Param(1), "b": {"c": 2}}
    adopted = nnx.State(data, _copy=False)
    adopted["d"] = 3
    assert "d" in data  # the dict is the State's storage
    copied = nnx.State(data)
    copied["e"] = 4
    assert "e" not in data
    assert nnx.State(iter([("x", 1)]))["x"] == 1


def test_flat_state_sort_equals_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    items = [(("b",), 1), (("a", "y"), 2), (("a", "x"), 3)]
    ours = nnx.FlatState(items, sort=True)
    theirs = flax_nnx.FlatState(items, sort=True)
    assert list(ours.paths) == list(theirs.paths)
    assert list(nnx.FlatState(items, sort=False).paths) == [p for p, _ in items]


def test_merge_state_and_from_flat_state_cls():
    class MyState(nnx.State):
        pass

    merged = nnx.merge_state({"a": 1}, {"b": {"c": 2}}, cls=MyState)
    assert type(merged) is MyState and type(merged["b"]) is MyState
    built = nnx.from_flat_state([(("a", 0), 1)], cls=MyState)
    assert type(built) is MyState and built["a"][0] == 1
    assert nnx.from_flat_state(flat_state={("a",): 1})["a"] == 1


def test_to_pure_dict_extract_fn_equals_flax():
    flax_nnx = pytest.importorskip("flax.nnx")

    def extract(v: Any) -> Any:
        return type(v).__name__

    ours = nnx.to_pure_dict(nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), extract)
    theirs = flax_nnx.to_pure_dict(
        flax_nnx.state(flax_nnx.Linear(2, 3, rngs=flax_nnx.Rngs(0))), extract
    )
    assert ours == theirs == {"bias": "Param", "kernel": "Param"}
    state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    assert state.to_pure_dict(lambda v: v.value.shape) == {"bias": (3,), "kernel": (2, 3)}


def test_restore_int_paths_equals_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    pure = {"0": {"kernel": 1, "1": 2}, "head": {"-1": 3}, "x": 4}
    assert nnx.restore_int_paths(pure) == flax_nnx.restore_int_paths(pure)
    assert nnx.restore_int_paths(pure) == {0: {"kernel": 1, 1: 2}, "head": {-1: 3}, "x": 4}
    # nnx's optional reference converts only where the reference has the int key
    assert nnx.restore_int_paths({"0": 1, "1": 2}, {0: None, "1": None}) == {0: 1, "1": 2}


# -- iter_module_children / Module methods ---------------------------------------------------
def test_iter_module_children_equals_flax():
    flax_nnx = pytest.importorskip("flax.nnx")

    def program(lib: Any) -> Any:
        class M(lib.Module):
            def __init__(self):
                self.lin = lib.Linear(2, 2, rngs=lib.Rngs(0))
                self.rngs = lib.Rngs(1)
                self.layers = lib.List([lib.Linear(1, 1, rngs=lib.Rngs(0))])
                self.d = lib.Dict(a=1)
                self.p = lib.Param(jnp.ones(1))

        return M()

    def names(pairs: Any) -> list:
        return [(k, type(v).__name__) for k, v in pairs]

    ours, theirs = program(nnx), program(flax_nnx)
    assert names(nnx.iter_module_children(ours)) == names(flax_nnx.iter_module_children(theirs))
    assert names(nnx.iter_children(ours)) == names(flax_nnx.iter_children(theirs))
    with pytest.raises(ArgumentError, match=r"(?s)iter_module_children expects a node.*Fix"):
        list(nnx.iter_module_children([1, 2]))


def _sow_program(lib: Any, vtype: Any, held: Any) -> Any:
    class M(lib.Module):
        def __init__(self):
            if held is not None:
                self.h = held

    return M()


@pytest.mark.parametrize("case", ["int", "param", "subclass", "same"])
def test_sow_into_an_existing_attribute_like_flax(case):
    flax_nnx = pytest.importorskip("flax.nnx")
    outcomes = []
    for lib in (nnx, flax_nnx):

        class Sub(lib.Intermediate):
            pass

        held = {
            "int": 3,
            "param": lib.Param(jnp.ones(1)),
            "subclass": Sub((1,)),
            "same": lib.Intermediate((1,)),
        }[case]
        m = _sow_program(lib, lib.Intermediate, held)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                result = m.sow(lib.Intermediate, "h", 2)
            outcomes.append(("ok", result, m.h.get_value()))
        except ValueError:
            outcomes.append(("refused",))
    assert outcomes[0] == outcomes[1]


def test_sow_conflict_message_and_model_unchanged():
    m = nnx.Module()
    m.h = nnx.Param(jnp.ones(1))
    with pytest.raises(ArgumentError, match=r"(?s)Module\.sow\(Intermediate, 'h'.*Param.*Fix"):
        m.sow(nnx.Intermediate, "h", 1)
    assert type(m.h) is nnx.Param
    assert m.sow("intermediates", "seen", 1) is True


def test_perturb_variable_type_by_name_and_conflict():
    m = nnx.Module()
    out = m.perturb("h", jnp.ones(2), "perturbations")
    assert type(m.h) is nnx.Perturbation
    np.testing.assert_array_equal(out, jnp.ones(2))
    m.p = nnx.Param(jnp.ones(2))
    with pytest.raises(ArgumentError, match=r"(?s)perturb\(Perturbation, 'p'.*Fix"):
        m.perturb("p", jnp.ones(2))
