"""Property-based tests of the graph core (split/merge/state/update/clone and the structure
cache) on random object graphs with shared submodules, tied Variables and cycles.

Each property runs 300 examples by default and 5,000 in its ``slow`` variant
(``pytest -m slow``). The graphs come from ``tests/strategies.py``; ``walk`` there is an
independent traversal, so every check compares nnx against code that does not use nnx's own
flatten.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import nnx
from nnx._build import build
from nnx._flatten import flatten_full
from nnx.errors import format_path
from tests.strategies import (
    GraphRecipe,
    Node,
    apply_mutation,
    build_graph,
    describe_pairs,
    filter_matches,
    filter_sets,
    graph_recipes,
    identity_partition,
    make_filter,
    mutation_ops,
    perturb,
    stringify_int_keys,
    walk,
    zeros_like,
)

EXAMPLES = [
    pytest.param(300, id="300"),
    pytest.param(5000, id="5k", marks=pytest.mark.slow),
]


def _run(n: int, check: Callable[..., None], *strategies: st.SearchStrategy) -> None:
    """Runs `check` as a hypothesis test with `n` examples."""
    test = given(*strategies)(check)
    settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(test)()


def _variables(root: Any) -> list[nnx.Variable]:
    return walk(root).of_type(nnx.Variable)


def _stamps(objects: list) -> list[int]:
    return [getattr(o, "_nnx_stamp", 0) for o in objects]


def _state_desc(state: Any) -> list[tuple]:
    return describe_pairs(state.flat_state())


# -- 1. merge(*split(m)) is m ---------------------------------------------------------------
def _check_roundtrip(recipe: GraphRecipe) -> None:
    model = build_graph(recipe)
    info = walk(model)
    graphdef, state = nnx.split(model)
    assert list(state.flat_state().paths) == info.leaf_paths
    copy = nnx.merge(graphdef, state)
    copy_info = walk(copy)
    # Structure, values, metadata, sharing and cycles in one comparison.
    assert copy_info.entries == info.entries
    assert identity_partition(copy) == identity_partition(model)
    assert nnx.graphdef(copy) == graphdef == nnx.graphdef(model)
    assert hash(nnx.graphdef(copy)) == hash(graphdef)
    # A new graph: split took a snapshot, so nothing of the model is reused; as in flax, the
    # merged graph adopts the state's own Variables.
    ids = {id(o) for o in info.objects}
    assert ids.isdisjoint(id(o) for o in copy_info.objects)
    assert ids.isdisjoint(id(v) for v in state.flat_state().leaves)
    state_vars = {id(v) for v in state.flat_state().leaves if isinstance(v, nnx.Variable)}
    merged_vars = {id(o) for o in copy_info.objects if isinstance(o, nnx.Variable)}
    assert merged_vars == state_vars
    # merge(copy=True) builds a graph independent of the first merge and of the state.
    again = walk(nnx.merge(graphdef, state, copy=True))
    assert again.entries == info.entries
    assert {id(o) for o in copy_info.objects}.isdisjoint(id(o) for o in again.objects)
    # unflatten from the State, or from the leaves in GraphDef order, builds the same graph.
    assert walk(nnx.unflatten(graphdef, state)).entries == info.entries
    _, pairs = nnx.flatten(model)
    assert [p for p, _ in pairs] == info.leaf_paths
    assert walk(nnx.unflatten(graphdef, [leaf for _, leaf in pairs])).entries == info.entries
    # iter_graph reports every identity object once, at its first path.
    for root, root_info in ((model, info), (copy, copy_info)):
        seen = {
            (path, id(v))
            for path, v in nnx.iter_graph(root)
            if isinstance(v, nnx.Variable | nnx.Pytree | nnx.List | nnx.Dict)
        }
        assert seen == {
            (p, id(o)) for p, o in zip(root_info.first_paths, root_info.objects, strict=True)
        }


@pytest.mark.parametrize("n", EXAMPLES)
def test_merge_of_split_is_equivalent(n: int) -> None:
    _run(n, _check_roundtrip, graph_recipes())


# -- 2. filters partition the state -------------------------------------------------------
def _check_filters(recipe: GraphRecipe, filter_set: tuple) -> None:
    specs, catch_all = filter_set
    all_specs = [*specs, catch_all] if catch_all else list(specs)
    filters = [make_filter(s) for s in all_specs]
    model = build_graph(recipe)
    info = walk(model)
    assert list(nnx.state(model).flat_state().paths) == info.leaf_paths

    expected: list[list] = [[] for _ in filters]
    leftover = []
    for path, leaf in zip(info.leaf_paths, info.leaves, strict=True):
        for i, spec in enumerate(all_specs):
            if filter_matches(spec, path, leaf):
                expected[i].append(path)
                break
        else:
            leftover.append(path)
    note(f"expected={expected} leftover={leftover}")

    if filters:
        # Non-exhaustive selection never raises and drops the leftovers.
        selected = nnx.state(model, *filters)
        selected = (selected,) if len(filters) == 1 else selected
        assert [list(s.flat_state().paths) for s in selected] == expected
        # `...` anywhere but last is an error.
        with pytest.raises(nnx.errors.FilterError):
            nnx.split(model, ..., *filters)

    if leftover or not filters:
        if not filters:
            return
        with pytest.raises(nnx.errors.FilterError) as excinfo:
            nnx.split(model, *filters)
        assert isinstance(excinfo.value, nnx.NNXError)
        assert format_path(leftover[0], "state") in str(excinfo.value)
        assert walk(model).entries == info.entries  # a failed split changes nothing
        return

    graphdef, *states = nnx.split(model, *filters)
    got = [list(s.flat_state().paths) for s in states]
    assert got == expected
    flat = [p for paths in got for p in paths]
    assert len(flat) == len(set(flat))  # nothing duplicated, pieces pairwise disjoint
    assert set(flat) == set(info.leaf_paths)  # nothing lost
    assert graphdef == nnx.graphdef(model)
    for pieces in (states, states[::-1]):
        assert walk(nnx.merge(graphdef, *pieces)).entries == info.entries


@pytest.mark.parametrize("n", EXAMPLES)
def test_filters_partition_the_state(n: int) -> None:
    _run(n, _check_filters, graph_recipes(), filter_sets())


# -- 3. update(m, state(m)) is the identity ---------------------------------------------------
def _check_update_identity(recipe: GraphRecipe) -> None:
    model = build_graph(recipe)
    info = walk(model)
    graphdef = nnx.graphdef(model)
    stamps = _stamps(info.objects)
    nnx.update(model, nnx.state(model))
    after = walk(model)
    assert after.entries == info.entries
    assert len(after.objects) == len(info.objects)
    assert all(a is b for a, b in zip(after.objects, info.objects, strict=True))
    assert nnx.graphdef(model) == graphdef
    assert flatten_full(model).graphdef == graphdef
    # A value-only update is no structural change: nothing is re-stamped.
    assert _stamps(after.objects) == stamps


@pytest.mark.parametrize("n", EXAMPLES)
def test_update_with_own_state_is_identity(n: int) -> None:
    _run(n, _check_update_identity, graph_recipes())


# -- 4. flatten order is deterministic ----------------------------------------------------
def _check_deterministic(recipe: GraphRecipe) -> None:
    # The second construction sets attributes and dict keys in the reverse order.
    first, second = build_graph(recipe), build_graph(recipe, reverse=True)
    g1, s1 = nnx.split(first)
    g2, s2 = nnx.split(second)
    assert g1 == g2
    assert hash(g1) == hash(g2)
    assert list(s1.flat_state().paths) == list(s2.flat_state().paths) == walk(first).leaf_paths
    assert _state_desc(s1) == _state_desc(s2)
    assert walk(first).entries == walk(second).entries
    # Stable across calls, cached or not, and after unrelated structural changes elsewhere.
    h = hash(nnx.graphdef(first))
    assert hash(nnx.graphdef(first)) == h
    Unrelated = type(first) if isinstance(first, nnx.Module) else nnx.Module
    Unrelated().x = 1  # moves the structure clock
    assert nnx.graphdef(first) == g1
    assert hash(nnx.graphdef(first)) == h
    full = flatten_full(first).graphdef
    assert full == g1
    assert hash(full) == h


@pytest.mark.parametrize("n", EXAMPLES)
def test_flatten_is_deterministic(n: int) -> None:
    _run(n, _check_deterministic, graph_recipes())


# -- 5. clone is independent ----------------------------------------------------------------
def _check_clone(recipe: GraphRecipe) -> None:
    model = build_graph(recipe)
    before = walk(model).entries
    copy = nnx.clone(model)
    assert walk(copy).entries == before
    assert identity_partition(copy) == identity_partition(model)
    for v in _variables(copy):
        v.value = perturb(v.value)
    assert walk(model).entries == before
    copy_entries = walk(copy).entries
    assert identity_partition(copy) == identity_partition(model)
    for v in _variables(model):
        v.value = perturb(v.value)
    assert walk(copy).entries == copy_entries


@pytest.mark.parametrize("n", EXAMPLES)
def test_clone_is_independent(n: int) -> None:
    _run(n, _check_clone, graph_recipes())


# -- 6. pure-dict round trip ---------------------------------------------------------------
def _zeroed(state: nnx.State) -> nnx.State:
    return state.map(
        lambda _, leaf: (
            leaf.replace(zeros_like(leaf.value))
            if isinstance(leaf, nnx.Variable)
            else zeros_like(leaf)
        )
    )


def _check_pure_dict(recipe: GraphRecipe) -> None:
    model = build_graph(recipe)
    expected = walk(model).entries
    graphdef = nnx.graphdef(model)
    pure = nnx.state(model).to_pure_dict()
    for name, restored in (("int keys", pure), ("str keys", stringify_int_keys(pure))):
        note(name)
        zeroed = _zeroed(nnx.state(model))
        target = nnx.merge(graphdef, zeroed)
        zeroed.replace_by_pure_dict(restored)
        nnx.update(target, zeroed)
        assert walk(target).entries == expected
        # update also takes the pure dict directly.
        target = nnx.merge(graphdef, _zeroed(nnx.state(model)))
        nnx.update(target, restored)
        assert walk(target).entries == expected
    assert walk(model).entries == expected


@pytest.mark.parametrize("n", EXAMPLES)
def test_pure_dict_round_trip(n: int) -> None:
    _run(n, _check_pure_dict, graph_recipes())


# -- 7. a state is a snapshot --------------------------------------------------------------
def _check_snapshot(recipe: GraphRecipe, metadata_changes: list[int]) -> None:
    model = build_graph(recipe)
    before = walk(model)
    snapshot = nnx.state(model)
    snapshot_desc = _state_desc(snapshot)
    variables = before.of_type(nnx.Variable)
    for v in variables:
        v.value = perturb(v.value)
    for i in metadata_changes:
        if variables:
            variables[i % len(variables)].set_metadata(note=f"changed {i}")
    for owner, key, value in before.edges:
        if isinstance(value, jax.Array) and isinstance(owner, nnx.Module | nnx.List | nnx.Dict):
            if isinstance(owner, nnx.Module):
                setattr(owner, key, perturb(value))
            else:
                owner[key] = perturb(value)
    assert _state_desc(snapshot) == snapshot_desc
    mutated = walk(model)
    assert _state_desc(nnx.state(model)) == describe_pairs(
        zip(mutated.leaf_paths, mutated.leaves, strict=True)
    )
    nnx.update(model, snapshot)
    assert walk(model).entries == before.entries
    assert _state_desc(snapshot) == snapshot_desc


@pytest.mark.parametrize("n", EXAMPLES)
def test_state_is_a_snapshot(n: int) -> None:
    _run(n, _check_snapshot, graph_recipes(), st.lists(st.integers(0, 15), max_size=3))


# -- 8. the structure cache agrees with a fresh flatten -------------------------------------
def _check_cache_consistent(root: Any) -> None:
    full = flatten_full(root)
    graphdef = nnx.graphdef(root)
    assert graphdef == full.graphdef
    assert hash(graphdef) == hash(full.graphdef)
    state = nnx.state(root)
    assert _state_desc(state) == describe_pairs(zip(full.paths, full.leaves, strict=True))
    assert list(state.flat_state().paths) == walk(root).leaf_paths
    g, s = nnx.split(root)
    assert g == full.graphdef
    assert walk(nnx.merge(g, s)).entries == walk(root).entries


def _check_cache(recipe: GraphRecipe, ops: list[tuple]) -> None:
    model = build_graph(recipe)
    nnx.graphdef(model)
    nnx.state(model)  # warm the cache
    # A shared submodule used as a root of its own gets a cache of its own.
    modules = walk(model).of_type(nnx.Module)
    sub = modules[len(modules) // 2]
    nnx.graphdef(sub)
    for op in ops:
        note(apply_mutation(model, op))
        if op[4]:
            _check_cache_consistent(model)
    _check_cache_consistent(model)
    _check_cache_consistent(sub)


@pytest.mark.parametrize("n", EXAMPLES)
def test_structure_cache_matches_fresh_flatten(n: int) -> None:
    _run(n, _check_cache, graph_recipes(), mutation_ops())


# -- 8b. building into existing objects is the same build ----------------------------------
def _check_build_into(recipe: GraphRecipe, ops: list[tuple]) -> None:
    """One build plan serves both: filling existing objects (how a transform writes a
    structural change back into the caller's objects) gives the graph a fresh build gives,
    and the existing objects of the recorded types are the ones in it."""
    callers = build_graph(recipe)
    result = build_graph(recipe)
    for op in ops:
        note(apply_mutation(result, op))
    flat = flatten_full(result)
    graphdef, leaves = flat.graphdef, list(flat.leaves)
    fresh = build(graphdef, leaves, copy=True)
    expected = walk(fresh).entries
    assert expected == walk(result).entries
    caller_nodes = flatten_full(callers).nodes
    reuse = dict(enumerate(caller_nodes[: graphdef.num_nodes]))
    table: list = []
    built = build(graphdef, leaves, copy=True, reuse=reuse, nodes_out=table)
    assert walk(built).entries == expected
    assert identity_partition(built) == identity_partition(fresh)
    for i, obj in reuse.items():
        assert (table[i] is obj) == (type(obj) is type(table[i])), (i, type(obj))
    assert flatten_full(built).graphdef == graphdef


@pytest.mark.parametrize("n", [pytest.param(300, id="300"), *EXAMPLES[1:]])
def test_build_into_existing_objects_equals_a_fresh_build(n: int) -> None:
    _run(n, _check_build_into, graph_recipes(), mutation_ops())


# -- 9. deepcopy keeps the graph (and drops the flatten caches) -----------------------------
def _check_deepcopy(recipe: GraphRecipe) -> None:
    model = build_graph(recipe)
    info = walk(model)
    graphdef = nnx.graphdef(model)  # warm the caches, which a copy must not carry
    duplicate = copy.deepcopy(model)
    dup_info = walk(duplicate)
    assert dup_info.entries == info.entries
    assert identity_partition(duplicate) == identity_partition(model)
    assert {id(o) for o in info.objects}.isdisjoint(id(o) for o in dup_info.objects)
    for obj in dup_info.of_type(nnx.Pytree):
        assert not {"_nnx_cache", "_nnx_multi"} & set(obj.__dict__)
    assert nnx.graphdef(duplicate) == graphdef


@pytest.mark.parametrize("n", EXAMPLES)
def test_deepcopy_preserves_the_graph(n: int) -> None:
    _run(n, _check_deepcopy, graph_recipes())


# -- regressions found by the properties above ----------------------------------------------
def test_update_drops_metadata_added_after_the_snapshot() -> None:
    model = Node()
    model.w = nnx.Param(jnp.ones(2), tag="a")
    saved = nnx.state(model)
    model.w.set_metadata(note="new")
    nnx.update(model, saved)
    assert model.w.get_metadata() == {"tag": "a"}
    assert flatten_full(model).graphdef == nnx.graphdef(model)


def test_jit_write_back_drops_deleted_metadata() -> None:
    model = Node()
    model.w = nnx.Param(jnp.ones(2), tag="a", note="x")

    @nnx.jit
    def forget(m: Node) -> None:
        m.w.del_metadata("note")

    forget(model)
    assert model.w.get_metadata() == {"tag": "a"}


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deepcopy_keeps_a_cycle_through_a_container(kind: str) -> None:
    container = nnx.List() if kind == "list" else nnx.Dict()
    module = Node()
    module.back = container
    if kind == "list":
        container.append(module)
    else:
        container["k"] = module
    duplicate = copy.deepcopy(container)
    inner = duplicate[0] if kind == "list" else duplicate["k"]
    assert inner.back is duplicate


def test_copies_do_not_carry_the_multi_root_cache() -> None:
    first, second = Node(), Node()
    first.w, second.w = nnx.Param(jnp.ones(2)), nnx.Param(jnp.zeros(1))
    nnx.split((first, second))  # caches the pair on `first`
    assert "_nnx_multi" not in copy.deepcopy(first).__dict__
    assert "_nnx_multi" not in pickle.loads(pickle.dumps(first)).__dict__


def test_pop_of_a_variable_inside_a_tuple_raises_and_changes_nothing() -> None:
    # A tuple cannot lose an element in place: pop must refuse before removing anything.
    model = Node()
    model.t = (nnx.Intermediate(jnp.ones(1)), 3)
    model.s = nnx.Intermediate(jnp.zeros(1))
    before = nnx.graphdef(model)
    with pytest.raises(
        nnx.NNXError, match=r"(?s)inside tuples.*model\.t\[0\].*Nothing was removed"
    ):
        nnx.pop(model, nnx.Intermediate)
    assert nnx.graphdef(model) == before
    assert hasattr(model, "s")
