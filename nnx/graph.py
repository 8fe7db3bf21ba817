"""The graph core: split any object graph into a GraphDef and a State, and merge them back.

flatten walks the graph depth first, attributes in sorted order. Every object with identity
(a Pytree such as a Module or Rngs, a tracked List/Dict, a Variable) gets an index the first
time it is seen; seeing it again emits a reference, which is how shared layers, tied weights
and cycles survive a round trip. Tuples and other JAX pytrees are walked as plain structure.

The result of a flatten is cached on the root object and reused while nothing structural
changed anywhere in the graph (see ``_version.py``): a repeated ``split``/``state``/``update``
of an unchanged model only touches its Variables.

The core lives in five private files, lowest first:

* ``_encoding.py``: the records a GraphDef is made of (``NodeDef``, ``VarDef``...);
* ``_build.py``: the leaves of States in GraphDef order (``locate``) and building objects
  from a GraphDef (``build``, one compiled ``BuildPlan`` per GraphDef);
* ``_graphdef.py``: the ``GraphDef`` class and flatten (``flatten_full``, ``Flat``);
* ``_flatten.py``: the structure cache (``flatten_cached``) and the raw array leaves of a
  flatten, read and written in place;
* ``graph.py`` (this file): the public API: ``split``, ``merge``, ``state``, ``variables``,
  ``update``, ``pop``, ``clone``, ``graphdef``, ``flatten``/``unflatten``, ``unpack``,
  ``call``, ``is_node``; ``_graph_iter.py`` holds the walks (``iter_graph``...).

Example:
  >>> class Block(nnx.Module):
  ...   def __init__(self, shared):
  ...     self.shared = shared
  ...     self.w = nnx.Param(jnp.ones(2))
  >>> shared = nnx.Param(jnp.zeros(2))
  >>> model = nnx.List([Block(shared), Block(shared)])
  >>> graphdef, state = nnx.split(model)
  >>> sorted(state.flat_state().paths)
  [(0, 'shared'), (0, 'w'), (1, 'w')]
  >>> copy = nnx.merge(graphdef, state)
  >>> copy[0].shared is copy[1].shared
  True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from ._build import MISSING, build, leaves_for_merge, locate, replace_metadata
from ._encoding import Path, items_of, kind_of, summary
from ._flatten import flatten_cached, get_child, mutable_parent, write_raw_leaves
from ._graph_iter import iter_children as iter_children
from ._graph_iter import iter_graph as iter_graph
from ._graph_iter import iter_module_children as iter_module_children
from ._graph_mode import check_tree_mode
from ._graph_mode import find_duplicates as find_duplicates
from ._graphdef import CallProxy, Flat, GraphDef, snapshot_leaves, snapshot_state
from ._variable_trace import JaxTracer, check_frame
from .errors import (
    ArgumentError,
    GraphDefMismatchError,
    MergeError,
    NNXError,
    UpdateError,
    format_path,
    short_list,
)
from .filters import Filter
from .pytreelib import Dict, List, Pytree
from .state import FlatState, GraphState, State, flat_pairs, from_flat_state, split_pairs
from .variablelib import Variable

__all__ = [
    "GraphDef",
    "GraphState",
    "call",
    "clone",
    "find_duplicates",
    "flatten",
    "graphdef",
    "is_node",
    "iter_children",
    "iter_graph",
    "iter_module_children",
    "merge",
    "pop",
    "split",
    "state",
    "unflatten",
    "unpack",
    "update",
    "variables",
]


Node = TypeVar("Node")
# flax.nnx.PureState: what ``split`` returns without filters, for annotations.
PureState = tuple[GraphDef, State]


def is_node(value: Any) -> bool:
    """True for objects the graph walks with identity: Pytrees (Modules, Rngs), List, Dict."""
    return isinstance(value, Pytree | List | Dict)


# -- public API: flatten / unflatten ------------------------------------------------------
_INDEX_MAPS = (
    "nnx.{fn} got {name}={value!r}: flax.nnx's {name} passes its internal reference maps "
    "between calls, which nnx does not expose (its flatten keeps shared references by "
    "itself, across calls too).\nFix: drop {name} (leave it None); to flatten several "
    "objects that share references, flatten them together, e.g. nnx.flatten((a, b))."
)


def flatten(
    node: Any,
    /,
    *,
    with_paths: bool = True,
    ref_index: Any = None,
    ref_outer_index: Any = None,
    graph: bool | None = None,
) -> tuple[GraphDef, FlatState | list[Any]]:
    """Flattens an object graph into its GraphDef and its leaves.

    Args:
      node: the root of the graph.
      with_paths: return a :class:`FlatState` of ``(path, leaf)`` pairs whose leaves are the
        graph's own Variables (not copies; use :func:`split` for a snapshot); with ``False``,
        the plain list of the Variables' raw values, in GraphDef order.
      ref_index: must be None (see Raises).
      ref_outer_index: must be None (see Raises).
      graph: ``False`` refuses shared references and cycles, as flax's tree mode does.

    Raises:
      ArgumentError: `ref_index` or `ref_outer_index` is given (flax's internal reference
        maps are not part of nnx), or ``graph=False`` and the graph shares references.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> graphdef, flat = nnx.flatten(model)
      >>> flat.paths, flat[1][1] is model.kernel
      ((('bias',), ('kernel',)), True)
      >>> _, leaves = nnx.flatten(model, with_paths=False)
      >>> [x.shape for x in leaves]
      [(3,), (2, 3)]
    """
    if ref_index is not None or ref_outer_index is not None:
        name = "ref_index" if ref_index is not None else "ref_outer_index"
        value = ref_index if ref_index is not None else ref_outer_index
        raise ArgumentError(_INDEX_MAPS.format(fn="flatten", name=name, value=value))
    check_tree_mode(graph, node, "flatten")
    flat = flatten_cached(node)
    if not with_paths:
        return flat.graphdef, [
            leaf._value if isinstance(leaf, Variable) else leaf for leaf in flat.leaves
        ]
    return flat.graphdef, FlatState(zip(flat.paths, flat.leaves, strict=True), sort=False)


def unflatten(
    graphdef: GraphDef,
    state: Mapping | FlatState | list,
    /,
    *,
    index_ref: Any = None,
    outer_index_outer_ref: Any = None,
    copy_variables: bool = False,
    recreate_variables: bool = True,
) -> Any:
    """Rebuilds an object graph from a GraphDef and a State (or a list of leaves in order).

    Args:
      graphdef: the structure, from :func:`split` or :func:`graphdef`.
      state: a State (or FlatState) covering exactly the GraphDef's leaves, or the leaves as
        a list in GraphDef order.
      index_ref: must be None (flax's internal reference map; see :func:`flatten`).
      outer_index_outer_ref: must be None (as `index_ref`).
      copy_variables: copy Variables out of `state` so the new graph does not alias it (by
        default it adopts them, as :func:`merge` does).
      recreate_variables: wrap raw values in the Variable type the GraphDef records (the
        default); with ``False`` a raw value is set as it is, in place of the Variable.

    Raises:
      GraphDefMismatchError: the state's paths are not those of the GraphDef.
      ArgumentError: `index_ref` or `outer_index_outer_ref` is given.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> graphdef, leaves = nnx.flatten(model, with_paths=False)
      >>> type(nnx.unflatten(graphdef, leaves).kernel).__name__
      'Param'
      >>> type(nnx.unflatten(graphdef, leaves, recreate_variables=False).kernel).__name__
      'ArrayImpl'
    """
    if index_ref is not None or outer_index_outer_ref is not None:
        name = "index_ref" if index_ref is not None else "outer_index_outer_ref"
        value = index_ref if index_ref is not None else outer_index_outer_ref
        raise ArgumentError(_INDEX_MAPS.format(fn="unflatten", name=name, value=value))
    if isinstance(state, FlatState):
        if state.paths == graphdef.leaf_paths:
            leaves = list(state.leaves)
        else:
            leaves = leaves_for_merge(graphdef, [from_flat_state(state)])
    elif isinstance(state, Mapping):
        leaves = leaves_for_merge(graphdef, [state])
    else:
        leaves = list(state)
        if len(leaves) != len(graphdef.leaf_paths):
            raise GraphDefMismatchError(
                f"unflatten got {len(leaves)} leaves but the GraphDef has "
                f"{len(graphdef.leaf_paths)}.\nFix: pass the leaves that nnx.flatten(model, "
                "with_paths=False) returned, all of them, in their order."
            )
    return build(graphdef, leaves, copy_variables, recreate=recreate_variables)


# -- public API: split / merge / state / update -------------------------------------------
def graphdef(node: Any, /, *, graph: bool | None = None) -> GraphDef:
    """The GraphDef of an object graph (``graph=False``: refuse shared references)."""
    check_tree_mode(graph, node, "graphdef")
    return flatten_cached(node).graphdef


def _snapshot_pairs(flat: Flat) -> list[tuple[Path, Any]]:
    return list(zip(flat.paths, snapshot_leaves(flat), strict=True))


def split(node: Any, *filters: Filter, graph: bool | None = None) -> tuple[Any, ...]:
    """Splits an object graph into its GraphDef and State(s).

    With filters, one State per filter (each leaf goes to the first filter it matches); the
    filters must cover the whole state. The States hold copies of the Variables: later changes
    to the model do not change them (a saved State rolls the model back).

    ``graph=False`` (or ``nnx.set_graph_mode(False)``) adds flax's tree-mode check: a graph
    with shared references or cycles is refused, naming every duplicate path.

    Raises:
      FilterError: the filters leave some leaves unmatched.
      ArgumentError: ``graph=False`` and the graph shares references.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.n = nnx.BatchStat(jnp.zeros(2))
      >>> graphdef, params, rest = nnx.split(M(), nnx.Param, ...)
      >>> list(params), list(rest)
      (['w'], ['n'])
    """
    check_tree_mode(graph, node, "split")
    flat = flatten_cached(node)
    if not filters:
        return flat.graphdef, snapshot_state(flat)
    pairs = _snapshot_pairs(flat)
    return (flat.graphdef, *split_pairs(pairs, filters, exhaustive=True))


def merge(
    graphdef_or_graphstate: GraphDef | GraphState,
    /,
    *states: Any,
    copy: bool = False,
    recreate_variables: bool = True,
) -> Any:
    """Builds a new object graph from a GraphDef and the State(s) that :func:`split` returned.

    As in flax.nnx, the new graph adopts the states' Variable objects (no copies): changing
    the merged model's Variables changes the state's too. Pass ``copy=True`` for a graph that
    shares nothing with the state. (:func:`split` and :func:`state` already return
    snapshots, so merging them never aliases the model they came from.)

    Args:
      graphdef_or_graphstate: a GraphDef, followed by its State(s); or a :class:`GraphState`
        from :func:`unpack`, followed by the other GraphStates of the same unpack.
      *states: the States (one may also be the list of leaves in GraphDef order).
      copy: copy the Variables instead of adopting them.
      recreate_variables: wrap raw values in their Variable type (the default); with
        ``False`` they are set as they are.

    Raises:
      MergeError: the first argument is neither a GraphDef nor a GraphState, GraphStates are
        mixed with plain States, or no state is given.
      GraphDefMismatchError: the states' paths or Variable types do not fit the GraphDef.
    """
    if isinstance(graphdef_or_graphstate, GraphDef):
        graphdef_ = graphdef_or_graphstate
    elif isinstance(graphdef_or_graphstate, GraphState):
        graphdef_ = graphdef_or_graphstate._graphdef
        states = (graphdef_or_graphstate, *states)
        if any(
            not isinstance(s, GraphState) or s._graphdef != graphdef_ for s in states
        ):
            raise MergeError(
                "merge got a GraphState first, so every state must be a GraphState of the "
                "same nnx.unpack (same GraphDef).\nFix: nnx.merge(*nnx.unpack(model, "
                "filter1, filter2)), or nnx.merge(graphdef, *states) with plain States."
            )
        states = tuple(s._state for s in states)
    else:
        raise MergeError(
            f"merge expects a GraphDef first, got {type(graphdef_or_graphstate).__name__}. "
            "Fix: graphdef, state = nnx.split(model); nnx.merge(graphdef, state) (or "
            "nnx.merge(*nnx.unpack(model)) with GraphStates)."
        )
    if not states:
        raise MergeError(
            f"merge got a GraphDef ({summary(graphdef_)}) but no state.\nFix: pass every "
            "state that nnx.split returned: nnx.merge(graphdef, *states)."
        )
    if isinstance(states[0], list):
        if len(states) != 1:
            raise MergeError(
                "merge got a list of leaves and more states; a list must be the only state."
                "\nFix: nnx.merge(graphdef, leaves), with every leaf in GraphDef order."
            )
        return unflatten(
            graphdef_, states[0], copy_variables=copy, recreate_variables=recreate_variables
        )
    leaves = leaves_for_merge(graphdef_, states)
    return build(graphdef_, leaves, copy, recreate=recreate_variables)


def state(node: Any, *filters: Filter, graph: bool | None = None) -> Any:
    """A snapshot State of the graph's Variables; with filters, only what they select.

    ``graph=False`` refuses a graph with shared references, as in :func:`split`.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.n = nnx.BatchStat(jnp.zeros(2))
      >>> list(nnx.state(M(), nnx.BatchStat))
      ['n']
    """
    check_tree_mode(graph, node, "state")
    flat = flatten_cached(node)
    if not filters:
        return snapshot_state(flat)
    pairs = _snapshot_pairs(flat)
    states = split_pairs(pairs, filters, exhaustive=False)
    return states[0] if len(filters) == 1 else states


def variables(node: Any, *filters: Filter, graph: bool | None = None) -> Any:
    """A State of the graph's own Variable objects (not copies); with filters, only what
    they select.

    This is :func:`state` without the snapshot: writing through the result changes the
    model, as flax.nnx's ``nnx.variables`` does.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> params = nnx.variables(model, nnx.Param)
      >>> params['kernel'] is model.kernel
      True
      >>> params['bias'].value = jnp.ones(3)
      >>> model.bias.value
      Array([1., 1., 1.], dtype=float32)
    """
    check_tree_mode(graph, node, "variables")
    flat = flatten_cached(node)
    pairs = list(zip(flat.paths, flat.leaves, strict=True))
    if not filters:
        return from_flat_state(pairs)
    states = split_pairs(pairs, filters, exhaustive=False)
    return states[0] if len(filters) == 1 else states


def update(node: Any, state: Mapping, /, *states: Mapping) -> None:
    """Writes the values (and metadata) of `states` into the graph's Variables, in place.

    Every state path must exist in the graph, with the same Variable type and shape. Checked
    before anything is written, so a failed update leaves the graph exactly as it was.

    Raises:
      UpdateError: unknown paths, wrong Variable types or shapes (all of them are listed).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      >>> m = M()
      >>> saved = nnx.state(m)
      >>> m.w.value = m.w.value * 5
      >>> nnx.update(m, saved)
      >>> m.w.value.tolist()
      [1.0, 1.0]
    """
    flat = flatten_cached(node)
    leaves, extra, wrong_type = locate(flat.graphdef, (state, *states))
    problems = [f"{format_path(p)}: no such Variable in the model" for p in extra]
    problems += [
        f"{format_path(p)}: the model has a {want.__name__}, the state a {got.__name__}"
        for p, got, want in wrong_type
    ]
    plan: list[tuple[int, Any]] = []  # (leaf position, new leaf)
    targets = flat.leaves
    for i, leaf in enumerate(leaves):
        if leaf is MISSING:
            continue
        target = targets[i]
        value = leaf._value if isinstance(leaf, Variable) else leaf
        old = target._value if isinstance(target, Variable) else target
        if value is not old:
            old_shape, new_shape = getattr(old, "shape", None), getattr(value, "shape", None)
            if (
                old_shape is not None
                and new_shape is not None
                and old_shape != new_shape
                and tuple(old_shape) != tuple(new_shape)
            ):
                problems.append(
                    f"{format_path(flat.paths[i])}: shape {tuple(new_shape)} in the state, "
                    f"{tuple(old_shape)} in the model"
                )
                continue
        plan.append((i, leaf))
    if flat.has_raw:  # raw leaves of a plain root: only plain lists and dicts take writes
        for i, _ in plan:
            slot = flat.slots[i]
            if slot and slot.owner is None and mutable_parent(node, slot.subpath) is None:
                problems.append(
                    f"{format_path(flat.paths[i])}: an array in a {type(node).__name__}, which "
                    "cannot change in place (hold it in a list, a dict or a Module)"
                )
    if problems:
        raise UpdateError(
            f"update: the state does not fit {type(node).__name__}; nothing was changed.\n"
            + short_list(sorted(problems))
            + "\nFix: update with a state taken from this model (nnx.state(model)), or "
            "rebuild the model with the matching configuration."
        )
    # Inside a raw JAX transform, a tracer must not land in a Variable of another trace:
    # check every target before writing any (a refused update changes nothing).
    for i, leaf in plan:
        value = leaf._value if isinstance(leaf, Variable) else leaf
        target = targets[i]
        if isinstance(value, JaxTracer) and isinstance(target, Variable):
            check_frame(target, value)
    raw: list[tuple[int, Any]] = []
    for i, leaf in plan:
        target = targets[i]
        if isinstance(target, Variable):
            if isinstance(leaf, Variable):
                object.__setattr__(target, "_value", leaf._value)
                if leaf._meta is not target._meta and leaf._meta != target._meta:
                    replace_metadata(target, leaf._meta)
            else:
                object.__setattr__(target, "_value", leaf)
        else:
            raw.append((i, leaf._value if isinstance(leaf, Variable) else leaf))
    write_raw_leaves(flat, raw, node)


def pop(node: Any, *filters: Filter) -> Any:
    """Removes the Variables selected by `filters` from the graph and returns them.

    Returns one State per filter (a single State for one filter).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.seen = nnx.Intermediate((jnp.ones(1),))
      >>> m = M()
      >>> popped = nnx.pop(m, nnx.Intermediate)
      >>> list(popped), hasattr(m, 'seen')
      (['seen'], False)
    """
    if not filters:
        raise ArgumentError(
            f"nnx.pop({type(node).__name__}) got no filter: pop removes only the Variables "
            "a filter selects (popping everything would empty the model).\nFix: name what "
            "to remove, e.g. nnx.pop(model, nnx.Intermediate)."
        )
    flat = flatten_cached(node)
    pairs = [
        (p, leaf)
        for p, leaf, s in zip(flat.paths, flat.leaves, flat.slots, strict=False)
        if s is None
    ]
    states = split_pairs(pairs, filters, exhaustive=False)
    chosen = {id(leaf) for s in states for _, leaf in flat_pairs(s)}
    removals: list[tuple[Any, Any]] = []  # (owner, key) of every edge to a chosen Variable
    for owner in flat.nodes:
        kind = kind_of(owner)
        if kind is not None:
            for key, value in items_of(owner, kind):
                if isinstance(value, Variable) and id(value) in chosen:
                    removals.append((owner, key))
    removable = {id(get_child(owner, key)) for owner, key in removals}
    stuck = [p for p, leaf in pairs if id(leaf) in chosen and id(leaf) not in removable]
    if stuck:
        raise NNXError(
            "pop: these Variables sit inside tuples (or other immutable pytrees), from which "
            "they cannot be removed:\n"
            + short_list([format_path(p) for p in stuck])
            + "\nNothing was removed. Fix: hold them in a list or as attributes instead."
        )
    # Delete list items from the back so earlier indices stay valid.
    removals.sort(key=lambda ok: -ok[1] if isinstance(ok[0], List) else 0)
    for owner, key in removals:
        if isinstance(owner, Pytree):
            delattr(owner, key)
        elif isinstance(owner, List | Dict):
            del owner[key]
    return states[0] if len(filters) == 1 else states


def clone(
    node: Any, variables: bool = True, *, arrays: bool = False, graph: bool | None = None
) -> Any:
    """A copy of an object graph (sharing inside it is preserved).

    Args:
      node: the root of the graph.
      variables: new Variable objects (the default); with ``False`` the copy holds the very
        Variables of `node` (a new structure over the same state).
      arrays: also copy the arrays, so the copy owns its buffers (needed to donate both to
        ``jax.jit(donate_argnums=...)``); by default new Variables hold the same arrays,
        which is cheap and safe, since arrays are immutable.
      graph: ``False`` refuses a graph with shared references, as in :func:`split`.

    Raises:
      ArgumentError: ``arrays=True`` with ``variables=False``.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> copy = nnx.clone(model)
      >>> copy.kernel is model.kernel, copy.kernel.value is model.kernel.value
      (False, True)
      >>> nnx.clone(model, arrays=True).kernel.value is model.kernel.value
      False
      >>> nnx.clone(model, variables=False).kernel is model.kernel
      True
    """
    if arrays and not variables:
        raise ArgumentError(
            f"nnx.clone({type(node).__name__}, variables=False, arrays=True): copying the "
            "arrays needs new Variables to hold them.\nFix: drop variables=False, or drop "
            "arrays=True to share both Variables and arrays."
        )
    check_tree_mode(graph, node, "clone")
    flat = flatten_cached(node)
    if not variables:
        return build(flat.graphdef, list(flat.leaves), False)
    if arrays:  # tree_map rebuilds each Variable: new objects around the copied arrays
        leaves = jax.tree_util.tree_map(_copy_array, list(flat.leaves))
    else:
        leaves = snapshot_leaves(flat)
    return build(flat.graphdef, leaves, False)


def _copy_array(x: Any) -> Any:
    return jnp.copy(x) if isinstance(x, jax.Array) else x


def unpack(node: Any, *filters: Filter, graph: bool | None = None) -> Any:
    """:func:`split` with the GraphDef bundled into each State: one :class:`GraphState`
    (none or one filter) or a tuple of them (several filters); ``nnx.merge`` takes them back.

    Example:
      >>> model = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
      >>> params, stats = nnx.unpack(model, nnx.Param, nnx.BatchStat)
      >>> sorted(stats)
      ['mean', 'var']
      >>> type(nnx.merge(params, stats)).__name__
      'BatchNorm'
    """
    graphdef_, *states = split(node, *filters, graph=graph)
    packed = tuple(GraphState(graphdef_, s) for s in states)
    return packed[0] if len(packed) == 1 else packed


def call(graphdef_state: Any, /, *states: Mapping) -> CallProxy:
    """Functional call of a split model.

    Accepts ``call((graphdef, state))`` (flax's form) or ``call(graphdef, state)``.

    Example:
      >>> class Counter(nnx.Module):
      ...   def __init__(self):
      ...     self.n = nnx.BatchStat(jnp.array(0))
      ...   def __call__(self, x):
      ...     self.n.value += 1
      ...     return x * 2
      >>> graphdef, st = nnx.split(Counter())
      >>> y, (graphdef, st) = nnx.call((graphdef, st))(3)
      >>> y, int(st['n'].value)
      (6, 1)
    """
    if isinstance(graphdef_state, GraphDef):
        return CallProxy(graphdef_state, states, ())
    graphdef_, *rest = graphdef_state
    return CallProxy(graphdef_, (*rest, *states), ())
