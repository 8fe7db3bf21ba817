"""The graph core: split any object graph into a GraphDef and a State, and merge them back.

flatten walks the graph depth first, attributes in sorted order. Every object with identity
(a Pytree such as a Module or Rngs, a tracked List/Dict, a Variable) gets an index the first
time it is seen; seeing it again emits a reference, which is how shared layers, tied weights
and cycles survive a round trip. Tuples and other JAX pytrees are walked as plain structure.

The result of a flatten is cached on the root object and reused while nothing structural
changed anywhere in the graph (see ``_version.py``): a repeated ``split``/``state``/``update``
of an unchanged model only touches its Variables.

The core lives in three files:

* ``_graphdef.py``: the GraphDef encoding and class, a State's leaves in GraphDef order, and
  building new graphs from a GraphDef and its leaves (``_build``);
* ``_flatten.py``: flatten (``_Flat``, ``_flatten_full``), raw-leaf slots and the structure
  cache (``_flatten_cached``);
* ``graph.py`` (this file): the public API: ``split``, ``merge``, ``state``, ``update``,
  ``pop``, ``clone``, ``graphdef``, ``flatten``/``unflatten``, ``iter_graph``,
  ``iter_children``, ``iter_module_children``, ``unpack``/``GraphState``, ``call``,
  ``is_node``.

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

from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from ._flatten import (
    _Flat,
    _flatten_cached,
    _get_child,
    _is_pytree_with_data,
    _mutable_parent,
    _plain_key,
    _write_raw_leaves,
)
from ._flatten import _flatten_full as _flatten_full  # used by the transforms and nn.lazy
from ._flatten import _write_slot as _write_slot  # used by the transforms
from ._graph_mode import check_tree_mode
from ._graph_mode import find_duplicates as find_duplicates
from ._graphdef import (
    _OBJ,
    GraphDef,
    Path,
    _build,
    _items,
    _kind,
    _leaves_for,
    _normalize,
    _replace_metadata,
    _state_pairs,
)
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
from .pytreelib import Dict, List, Pytree, is_array
from .state import (
    FlatState,
    State,
    _flat_pairs,
    _from_plan,
    _iter_pairs,
    _locate,
    _split_pairs,
    from_flat_state,
)
from .state import _flatten as _state_flatten
from .state import _flatten_with_keys as _state_flatten_with_keys
from .state import _unflatten as _state_unflatten
from .variablelib import Variable, _check_frame, _Tracer

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
PureState = tuple[GraphDef[Node], State]


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
    flat = _flatten_cached(node)
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
            leaves = _leaves_for(graphdef, [from_flat_state(state)])
    elif isinstance(state, Mapping):
        leaves = _leaves_for(graphdef, [state])
    else:
        leaves = list(state)
        if len(leaves) != len(graphdef.leaf_paths):
            raise GraphDefMismatchError(
                f"unflatten got {len(leaves)} leaves but the GraphDef has "
                f"{len(graphdef.leaf_paths)}.\nFix: pass the leaves that nnx.flatten(model, "
                "with_paths=False) returned, all of them, in their order."
            )
    return _build(graphdef, leaves, copy_variables, recreate=recreate_variables)


# -- public API: split / merge / state / update -------------------------------------------
def graphdef(node: Any, /, *, graph: bool | None = None) -> GraphDef:
    """The GraphDef of an object graph (``graph=False``: refuse shared references)."""
    check_tree_mode(graph, node, "graphdef")
    return _flatten_cached(node).graphdef


def _snapshot_pairs(flat: _Flat) -> list[tuple[Path, Any]]:
    return [
        (p, leaf.copy() if slot is None else leaf)
        for p, leaf, slot in zip(flat.paths, flat.leaves, flat.slots, strict=True)
    ]


def _snapshot_state(flat: _Flat) -> State:
    """``from_flat_state(_snapshot_pairs(flat))``, nesting by a plan kept on the cache entry."""
    plan = flat.plan()
    if plan is None:
        return from_flat_state(_snapshot_pairs(flat))
    if flat.has_raw:
        leaves = [
            leaf.copy() if slot is None else leaf
            for leaf, slot in zip(flat.leaves, flat.slots, strict=True)
        ]
    else:
        leaves = [leaf.copy() for leaf in flat.leaves]
    return _from_plan(plan, leaves)


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
    flat = _flatten_cached(node)
    if not filters:
        return flat.graphdef, _snapshot_state(flat)
    pairs = _snapshot_pairs(flat)
    return (flat.graphdef, *_split_pairs(pairs, filters, exhaustive=True))


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
            f"merge got a GraphDef ({graphdef_._summary()}) but no state.\nFix: pass every "
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
    leaves = _leaves_for(graphdef_, list(states))
    return _build(graphdef_, leaves, copy, recreate=recreate_variables)


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
    flat = _flatten_cached(node)
    if not filters:
        return _snapshot_state(flat)
    pairs = _snapshot_pairs(flat)
    states = _split_pairs(pairs, filters, exhaustive=False)
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
    flat = _flatten_cached(node)
    pairs = list(zip(flat.paths, flat.leaves, strict=True))
    if not filters:
        return from_flat_state(pairs)
    states = _split_pairs(pairs, filters, exhaustive=False)
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
    states = (state, *states)
    flat = _flatten_cached(node)
    index = flat.index()
    fast = _update_plan_fast(flat, index, states)
    # Anything the fast plan does not cover (stringified int keys, errors) goes the full way,
    # which checks every pair in sorted order and reports all problems.
    plan: list[tuple[int, Any]] = fast if fast is not None else []
    problems: list[str] = []
    for path, leaf in _state_pairs(states) if fast is None else ():
        path = _normalize(path, index)
        i = index.get(path)
        if i is None:
            problems.append(f"{format_path(path)}: no such Variable in the model")
            continue
        target = flat.leaves[i]
        if isinstance(leaf, Variable) and isinstance(target, Variable):
            if type(leaf) is not type(target):
                problems.append(
                    f"{format_path(path)}: the model has a {type(target).__name__}, the state a "
                    f"{type(leaf).__name__}"
                )
                continue
            value = leaf._value
        elif isinstance(leaf, Variable):
            value = leaf._value
        else:
            value = leaf
        old = target._value if isinstance(target, Variable) else target
        old_shape, new_shape = getattr(old, "shape", None), getattr(value, "shape", None)
        if old_shape is not None and new_shape is not None and tuple(old_shape) != tuple(new_shape):
            problems.append(
                f"{format_path(path)}: shape {tuple(new_shape)} in the state, "
                f"{tuple(old_shape)} in the model"
            )
            continue
        plan.append((i, leaf))
    if flat.has_raw:  # raw leaves of a plain root: only plain lists and dicts take writes
        problems += [
            f"{format_path(flat.paths[i])}: an array in a {type(node).__name__}, which "
            "cannot change in place (hold it in a list, a dict or a Module)"
            for i, _ in plan
            if flat.slots[i] is not None
            and flat.slots[i][0] is None
            and _mutable_parent(node, flat.slots[i][2]) is None
        ]
    if problems:
        raise UpdateError(
            f"update: the state does not fit {type(node).__name__}; nothing was changed.\n"
            + short_list(problems)
            + "\nFix: update with a state taken from this model (nnx.state(model)), or "
            "rebuild the model with the matching configuration."
        )
    # Inside a raw JAX transform, a tracer must not land in a Variable of another trace:
    # check every target before writing any (a refused update changes nothing).
    for i, leaf in plan:
        value = leaf._value if isinstance(leaf, Variable) else leaf
        target = flat.leaves[i]
        if isinstance(value, _Tracer) and isinstance(target, Variable):
            _check_frame(target, value)
    raw: list[tuple[int, Any]] = []
    for i, leaf in plan:
        target = flat.leaves[i]
        if isinstance(target, Variable):
            if isinstance(leaf, Variable):
                object.__setattr__(target, "_value", leaf._value)
                if leaf._meta is not target._meta and leaf._meta != target._meta:
                    _replace_metadata(target, leaf._meta)
            else:
                object.__setattr__(target, "_value", leaf)
        else:
            raw.append((i, leaf._value if isinstance(leaf, Variable) else leaf))
    _write_raw_leaves(flat, raw, node)


def _update_plan_fast(
    flat: _Flat, index: Mapping[Path, int], states: tuple[Mapping, ...]
) -> list[tuple[int, Any]] | None:
    """The (leaf position, new leaf) plan of :func:`update` when every path is found as is and
    fits (type, shape); None as soon as one does not."""
    leaves = flat.leaves
    state_plan = flat.plan()
    located: list[tuple[int, Any]] = []
    for s in states:
        data = s._mapping if isinstance(s, State) else s
        if state_plan is not None and type(data) is dict:
            if not _locate(state_plan, data, located):
                return None
            continue
        pairs: list[tuple[Path, Any]] = []
        _iter_pairs(s, (), pairs)
        for path, leaf in pairs:
            i = index.get(path)
            if i is None:
                return None
            located.append((i, leaf))
    plan: list[tuple[int, Any]] = []
    for i, leaf in located:
        target = leaves[i]
        target_is_var = isinstance(target, Variable)
        if isinstance(leaf, Variable):
            if target_is_var and type(leaf) is not type(target):
                return None
            value = leaf._value
        else:
            value = leaf
        old = target._value if target_is_var else target
        if value is not old:
            old_shape = getattr(old, "shape", None)
            if old_shape is not None:
                new_shape = getattr(value, "shape", None)
                if (
                    new_shape is not None
                    and old_shape != new_shape
                    and tuple(old_shape) != tuple(new_shape)
                ):
                    return None
        plan.append((i, leaf))
    return plan


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
    flat = _flatten_cached(node)
    pairs = [
        (p, leaf)
        for p, leaf, s in zip(flat.paths, flat.leaves, flat.slots, strict=False)
        if s is None
    ]
    states = _split_pairs(pairs, filters, exhaustive=False)
    chosen = {id(leaf) for s in states for _, leaf in _flat_pairs(s)}
    removals: list[tuple[Any, Any]] = []
    for owner, key, value in _edges(node):
        if isinstance(value, Variable) and id(value) in chosen:
            removals.append((owner, key))
    removable = {id(_get_child(owner, key)) for owner, key in removals}
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


def _edges(root: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(owner, key, child) for each attribute/item of every identity node, each node once."""
    seen: set[int] = set()
    stack = [root] if is_node(root) else [v for v in _tree_children(root) if is_node(v)]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = _kind(node)
        for k, v in _items(node, kind):  # type: ignore[arg-type]
            yield node, k, v
            if is_node(v):
                stack.append(v)
            elif not isinstance(v, Variable) and not is_array(v):
                stack.extend(c for c in _tree_children(v) if is_node(c))


def _tree_children(value: Any) -> list[Any]:
    if value is None or isinstance(value, str | int | float | bool):
        return []
    return jax.tree_util.tree_leaves(value, is_leaf=lambda x: is_node(x) or isinstance(x, Variable))


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
    flat = _flatten_cached(node)
    if not variables:
        return _build(flat.graphdef, list(flat.leaves), False)
    if arrays:  # tree_map rebuilds each Variable: new objects around the copied arrays
        leaves = jax.tree_util.tree_map(_copy_array, list(flat.leaves))
    else:
        leaves = [
            leaf.copy() if slot is None else leaf
            for leaf, slot in zip(flat.leaves, flat.slots, strict=True)
        ]
    return _build(flat.graphdef, leaves, False)


def _copy_array(x: Any) -> Any:
    return jnp.copy(x) if isinstance(x, jax.Array) else x


def iter_graph(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Any]]:
    """Yields ``(path, value)`` for every node, Variable and array leaf, each once, children
    before their parent (the root comes last, with path ``()``).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      >>> [(p, type(v).__name__) for p, v in nnx.iter_graph([M()])]
      [((0, 'w'), 'Param'), ((0,), 'M')]
    """
    check_tree_mode(graph, node, "iter_graph")
    return _iter_graph(node)


def _iter_graph(node: Any) -> Iterator[tuple[Path, Any]]:
    seen: set[int] = set()

    def walk(value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
        if isinstance(value, Variable):
            if id(value) not in seen:
                seen.add(id(value))
                yield path, value
            return
        kind = _kind(value)
        if kind is not None:
            if id(value) in seen:
                return
            seen.add(id(value))
            for k, v in _items(value, kind):
                if kind == _OBJ and not value._nnx_is_data(k, v):
                    continue
                yield from walk(v, (*path, k))
            yield path, value
            return
        if is_array(value):
            yield path, value
            return
        if isinstance(value, list | tuple | dict) or _is_pytree_with_data(value):
            pairs, _ = jax.tree_util.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
            for keypath, child in pairs:
                yield from walk(child, (*path, _plain_key(keypath[0])))

    yield from walk(node, ())


def iter_children(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Hashable, Any]]:
    """Yields ``(key, child)`` for the direct children of a node that are nodes themselves
    (Modules, Rngs, Lists, Dicts) or Variables, in key order; arrays and static attributes
    are skipped, and nothing deeper is visited (see :func:`iter_graph`).

    Raises:
      ArgumentError: `node` is not a node (a Pytree such as a Module, a List or a Dict), or
        ``graph=False`` and the graph under it shares references.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.layers = [nnx.Module()]
      ...     self.size = 2
      >>> [(k, type(v).__name__) for k, v in nnx.iter_children(M())]
      [('layers', 'List'), ('w', 'Param')]
    """
    return _iter_children(_checked_kind(node, "iter_children", graph), node, False)


def iter_module_children(
    node: Any, /, *, graph: bool | None = None
) -> Iterator[tuple[Hashable, Any]]:
    """Like :func:`iter_children`, without the Variables: yields ``(key, child)`` for the
    direct children that are nodes (Modules, Rngs, Lists, Dicts), in key order.

    Raises:
      ArgumentError: as :func:`iter_children`.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.layers = [nnx.Linear(2, 2, rngs=nnx.Rngs(0))]
      >>> [(k, type(v).__name__) for k, v in nnx.iter_module_children(M())]
      [('layers', 'List')]
    """
    return _iter_children(_checked_kind(node, "iter_module_children", graph), node, True)


def _checked_kind(node: Any, fn_name: str, graph: bool | None) -> int:
    kind = _kind(node)
    if kind is None:
        raise ArgumentError(
            f"{fn_name} expects a node (a Module or other nnx.Pytree, an nnx.List or "
            f"nnx.Dict), got a {type(node).__name__}.\nFix: for a plain pytree iterate it "
            "directly, or use nnx.iter_graph(value) to walk every node inside it."
        )
    check_tree_mode(graph, node, fn_name)
    return kind


def _iter_children(kind: int, node: Any, nodes_only: bool) -> Iterator[tuple[Hashable, Any]]:
    for k, v in _items(node, kind):
        if is_node(v) or (not nodes_only and isinstance(v, Variable)):
            yield k, v


# -- GraphState: a State that carries its GraphDef -----------------------------------------
class GraphState(MutableMapping):
    """A State bundled with the GraphDef it belongs to, as :func:`unpack` returns it.

    It reads like its State (keys, attributes, pytree leaves) and ``nnx.merge`` takes it
    without a separate GraphDef. The GraphDef is static pytree data.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> params = nnx.unpack(model)
      >>> params.kernel.shape
      (2, 3)
      >>> type(nnx.merge(params)).__name__
      'Linear'
    """

    __slots__ = ("_graphdef", "_state")

    def __init__(self, graphdef: GraphDef, state: State, /):
        if not isinstance(state, State):
            raise ArgumentError(
                f"GraphState holds a State, got a {type(state).__name__}.\nFix: build it "
                "with nnx.unpack(model), or GraphState(graphdef, nnx.State(mapping))."
            )
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in GraphState.__slots__:
            raise AttributeError(name)
        return getattr(self._state, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._state, name, value)

    def __getitem__(self, key: Hashable) -> Any:
        return self._state[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._state[key] = value

    def __delitem__(self, key: Hashable) -> None:
        del self._state[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return f"GraphState({self._graphdef!r}, {self._state!r})"


def _graph_state_flatten_with_keys(gs: GraphState) -> tuple[list, tuple]:
    children, keys = _state_flatten_with_keys(gs._state)
    return children, (gs._graphdef, keys)


def _graph_state_flatten(gs: GraphState) -> tuple[list, tuple]:
    children, keys = _state_flatten(gs._state)
    return children, (gs._graphdef, keys)


def _graph_state_unflatten(aux: tuple, children: Any) -> GraphState:
    return GraphState(aux[0], _state_unflatten(aux[1], children))


jax.tree_util.register_pytree_with_keys(
    GraphState, _graph_state_flatten_with_keys, _graph_state_unflatten, _graph_state_flatten
)


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


# -- functional calls ---------------------------------------------------------------------
class _CallProxy:
    """``proxy(*args)`` or ``proxy.method(*args)`` merges, calls, splits, and returns
    ``(output, (graphdef, state))``."""

    def __init__(self, graphdef: GraphDef, states: tuple[Mapping, ...], names: tuple[str, ...]):
        self._graphdef = graphdef
        self._states = states
        self._names = names

    def __getattr__(self, name: str) -> _CallProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return _CallProxy(self._graphdef, self._states, (*self._names, name))

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[GraphDef, State]]:
        obj = merge(self._graphdef, *self._states, copy=True)  # functional: inputs untouched
        fn: Callable = obj
        for name in self._names:
            fn = getattr(fn, name)
        out = fn(*args, **kwargs)
        new_graphdef, new_state = split(obj)
        return out, (new_graphdef, new_state)


def call(graphdef_state: Any, /, *states: Mapping) -> _CallProxy:
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
        return _CallProxy(graphdef_state, states, ())
    graphdef_, *rest = graphdef_state
    return _CallProxy(graphdef_, (*rest, *states), ())
