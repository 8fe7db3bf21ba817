"""The one lift mechanism: split the graph arguments of a call, rebuild them inside a traced
function, collect what changed, and write it back onto the caller's objects.

Every nnx transform goes through here; an adapter only maps its own arguments (axes,
argnums, shardings) onto the flat list of leaves.

Outside the trace (every call, so it must be cheap):
  1. :func:`split_args` flattens the graph arguments (Modules, Variables, Rngs, and pytrees
     holding them) together, through the graph's structure cache, and returns a
     :class:`CallSpec` (static, hashable, cached per structure) plus the raw leaf values.
  2. The adapter calls the JAX transform on a pure function of those values.
  3. :func:`apply` writes the returned values back into the original Variables.

Inside the trace:
  * :func:`traced_call` -- the one rebuild-and-call sequence -- makes fresh objects around
    the traced values (a transform frame tracks them so that state mutated through a closure
    is caught, see ``variables.FRAMES``), calls the user function on them and hands back a
    :class:`Traced` record while the frame is still open;
  * :func:`collect` flattens them again after the user function ran. When the structure is
    unchanged and the output holds no graph objects (the common case) only the changed
    values are returned; otherwise the whole joint graph of (inputs, output) is returned with
    a map from its nodes to the input nodes, and :func:`apply` updates the caller's objects
    in place (new attributes, new sub-modules, replaced Variables);
  * :func:`follow` (loops and scan) flattens the objects a step hands to the next one -- the
    returned carry, which may be the input objects mutated in place, new objects, or both --
    and records which of them are the caller's.

Outside again, :func:`restore` builds the objects a call returned, updating the caller's
objects in place where they continue them. These four are the only places that rebuild,
collect or write back; no transform has a private path.

The rule for what comes out, the same for every transform: objects returned are returned (a
returned input object is the caller's very object, a new object is new); objects passed in
and mutated are updated in place; both at once works.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from .._build import build, replace_metadata
from .._encoding import summary
from .._flatten import Flat, flatten_cached, flatten_full, write_raw_leaves
from .._graphdef import GraphDef
from .._variable_trace import FRAMES, JaxTracer, TraceFrame, check_frame
from ..pytreelib import Dict, List, Pytree
from ..variablelib import Variable

__all__ = [
    "CARRY_STRUCTURE",
    "CallSpec",
    "Continuation",
    "Out",
    "Traced",
    "after",
    "apply",
    "check_dropped",
    "collect",
    "contains_graph",
    "follow",
    "match_leaves",
    "restore",
    "roots_of",
    "split_args",
    "structure",
    "traced_call",
]

GRAPH_TYPES = (Pytree, List, Dict, Variable)
_PLAIN_TYPES = (jax.Array, np.ndarray, int, float, bool, complex, str, type(None))
# Exact types known to be plain, for one set lookup; jax's array class joins on first sight
# (creating an array here would start JAX's backend at import, before a user's
# jax.distributed.initialize).
_PLAIN_EXACT = set(_PLAIN_TYPES[1:])


def _is_graph_leaf(x: Any) -> bool:
    return isinstance(x, GRAPH_TYPES)


def contains_graph(x: Any) -> bool:
    """True if `x` is, or is a pytree holding, a Module/Variable/Rngs/List/Dict."""
    if type(x) in _PLAIN_EXACT:  # the common non-graph argument (a batch), no ABC checks
        return False
    if isinstance(x, GRAPH_TYPES):
        return True
    if isinstance(x, _PLAIN_TYPES):
        if isinstance(x, jax.Array):
            _PLAIN_EXACT.add(type(x))
        return False
    return any(
        _is_graph_leaf(leaf) for leaf in jax.tree_util.tree_leaves(x, is_leaf=_is_graph_leaf)
    )


class CallSpec:
    """Static description of one call's graph arguments: hashable, cached per structure.

    Attributes:
      graphdef: the GraphDef of the tuple of graph arguments.
      metas: each leaf's Variable metadata (None for raw array leaves).
      positions: where the graph arguments sit: ints for positional, strs for keywords.
      slices: (start, stop) of each graph argument's leaves in the flat leaf list.
      paths: each leaf's path inside its own argument.
    """

    __slots__ = ("_hash", "graphdef", "metas", "paths", "positions", "root_of", "slices")

    def __init__(self, flat: Flat, positions: tuple[int | str, ...]):
        self.graphdef: GraphDef = flat.graphdef
        self.metas = tuple(
            leaf._meta if slot is None else None
            for leaf, slot in zip(flat.leaves, flat.slots, strict=True)
        )
        self.positions = positions
        self.root_of = tuple(p[0] for p in flat.paths)
        self.paths = tuple(p[1:] for p in flat.paths)
        slices = []
        start = 0
        for k in range(len(positions)):
            stop = start
            while stop < len(self.root_of) and self.root_of[stop] == k:
                stop += 1
            slices.append((start, stop))
            start = stop
        self.slices = tuple(slices)
        self._hash = hash((self.graphdef, self.metas, positions))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (
            isinstance(other, CallSpec)
            and self._hash == other._hash
            and self.positions == other.positions
            and self.graphdef == other.graphdef
            and self.metas == other.metas
        )

    def __repr__(self) -> str:
        return f"CallSpec({summary(self.graphdef)}, positions={self.positions})"


def split_args(
    args: Sequence[Any],
    kwargs: dict[str, Any],
    skip: frozenset[int] = frozenset(),
    skip_names: frozenset[str] = frozenset(),
) -> tuple[CallSpec, Flat, list[Any]]:
    """Flattens the graph arguments of a call; returns its spec, the flatten, and the values."""
    positions: list[int | str] = [
        i for i, a in enumerate(args) if i not in skip and contains_graph(a)
    ]
    positions += [k for k, v in kwargs.items() if k not in skip_names and contains_graph(v)]
    flat = flatten_cached(_roots(positions, args, kwargs))
    key = tuple(positions)
    spec = flat.extra.get(key)
    if spec is None:
        spec = flat.extra[key] = CallSpec(flat, key)
    return spec, flat, leaf_values(flat)


_get_value = operator.attrgetter("_value")


def leaf_values(flat: Flat) -> list[Any]:
    """The values a compiled call takes for a flatten's leaves: each Variable's value, and
    raw array leaves as they are (read fresh by the flatten's cache hit or refresh)."""
    if flat.has_raw:
        return [
            leaf._value if slot is None else leaf
            for leaf, slot in zip(flat.leaves, flat.slots, strict=True)
        ]
    return list(map(_get_value, flat.leaves))


def _roots(positions: Sequence[int | str], args: Sequence[Any], kwargs: dict[str, Any]) -> tuple:
    return tuple(args[p] if isinstance(p, int) else kwargs[p] for p in positions)


def roots_of(spec: CallSpec, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> tuple:
    """The graph arguments of a call, in ``spec.positions`` order."""
    return _roots(spec.positions, args, kwargs or {})


def replace_graph_args(
    args: Sequence[Any], kwargs: dict[str, Any], spec: CallSpec, parts: Sequence[Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Puts parts[k] in place of the k-th graph argument."""
    new_args = list(args)
    new_kwargs = dict(kwargs)
    for k, p in enumerate(spec.positions):
        if isinstance(p, int):
            new_args[p] = parts[k]
        else:
            new_kwargs[p] = parts[k]
    return new_args, new_kwargs


# -- inside the trace ---------------------------------------------------------------------
class Frame:
    """Context manager marking a transform's trace: Variables rebuilt or created inside it may
    take traced values; any other Variable that does raises TraceContextError."""

    def __enter__(self) -> Frame:
        FRAMES.append(TraceFrame())
        return self

    def __exit__(self, *exc: Any) -> None:
        FRAMES.pop().close()


def rebuild(spec: CallSpec, values: Sequence[Any]) -> tuple[tuple[Any, ...], list[Any]]:
    """Fresh graph objects around `values` (inside a trace); returns (roots, node table)."""
    nodes: list[Any] = []
    roots = build(spec.graphdef, list(values), False, metas=list(spec.metas), nodes_out=nodes)
    return roots, nodes


class Traced(NamedTuple):
    """One call of the user's function inside a trace, as :func:`traced_call` left it.

    Attributes:
      spec: the call's :class:`CallSpec`.
      values: the (traced) leaf values the graph arguments were rebuilt around.
      roots: the rebuilt graph arguments, in ``spec.positions`` order.
      nodes: the node table of the rebuild (index-aligned with the caller's flatten).
      out: what the function returned.
    """

    spec: CallSpec
    values: Sequence[Any]
    roots: tuple[Any, ...]
    nodes: list[Any]
    out: Any


@contextlib.contextmanager
def traced_call(
    spec: CallSpec,
    values: Sequence[Any],
    fun: Callable,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
) -> Iterator[Traced]:
    """Inside a trace: rebuilds the graph arguments around `values`, puts them in place of
    the graph arguments of `args`/`kwargs`, calls `fun`, and yields the :class:`Traced`
    record while the transform frame is still open (collect inside the ``with``)."""
    with Frame():
        roots, nodes = rebuild(spec, values)
        new_args, new_kwargs = replace_graph_args(args, kwargs or {}, spec, roots)
        yield Traced(spec, values, roots, nodes, fun(*new_args, **new_kwargs))


class Continuation(NamedTuple):
    """The graph objects a traced step hands on (a loop's or scan's next carry), flattened.

    Attributes:
      flat: their flatten (``flat.graphdef`` is the structure the next step sees).
      values: each leaf's value (a Variable's value, or the raw array).
      metas: each leaf's Variable metadata (None for raw leaves).
      reuse: (node index in `flat`, node index of the inputs) for each node that IS one of
        the step's input objects; :func:`restore` writes those into the caller's objects.
    """

    flat: Flat
    values: list[Any]
    metas: list[Any]
    reuse: tuple[tuple[int, int], ...]


def _leaf_value(leaf: Any) -> Any:
    return leaf._value if isinstance(leaf, Variable) else leaf


def _leaf_meta(leaf: Any) -> Any:
    return leaf._meta if isinstance(leaf, Variable) else None


def _reuse_pairs(nodes: Sequence[Any], inputs: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    index_of = {id(n): i for i, n in enumerate(inputs)}
    return tuple((j, index_of[id(n)]) for j, n in enumerate(nodes) if id(n) in index_of)


def after(t: Traced) -> Flat:
    """Inside the trace: the flatten of the graph arguments as the call left them."""
    return flatten_full(t.roots)


def follow(t: Traced, roots: Sequence[Any]) -> Continuation:
    """Inside a trace, after a loop body or scan step: flattens `roots`, the objects the step
    hands on (the graph arguments with the returned carry in place of the carried one), and
    records which of their nodes are the step's input objects (mutated in place) and which
    are new."""
    post = flatten_full(tuple(roots))
    values = list(map(_leaf_value, post.leaves))
    metas = list(map(_leaf_meta, post.leaves))
    return Continuation(post, values, metas, _reuse_pairs(post.nodes, t.nodes))


def structure(objs: Sequence[Any]) -> GraphDef:
    """The GraphDef of `objs` flattened together (to compare a loop carry's structure)."""
    return flatten_full(tuple(objs)).graphdef


CARRY_STRUCTURE = (
    "{what}: the {step} changed the structure of {where}, which is carried from step to step "
    "({before!r} before, {after!r} after); a loop carry keeps its structure.\n"
    "Fix: return objects of the same structure (the same objects mutated in place, or new "
    "ones built alike), and create attributes and references before the loop."
)

_DROPPED = (
    "{what}: the {step} changed Variables of the objects it received:\n{paths}\nbut handed "
    "on other objects in their place (e.g. a copy), so the change would apply on the first "
    "step only and then be lost.\n"
    "Fix: return the objects you mutate (nnx carries them in place), or leave the objects "
    "you replace unchanged and build the new ones from their values."
)


def check_dropped(
    t: Traced, nxt: Continuation, name: Callable[[tuple], str], what: str, step: str
) -> None:
    """Raises TraceContextError when a loop step changed input Variables it did not hand on
    in `nxt` (it returned other objects in their place): a loop would apply such a change
    on its first step only. `name` formats a path (graph-argument index first)."""
    left = after(t)
    if left.graphdef != t.spec.graphdef:
        return  # a structure change: the loop's structure checks report it
    kept = {id(n) for n in nxt.flat.nodes}
    dropped = [
        path
        for leaf, path, old in zip(left.leaves, left.paths, t.values, strict=True)
        if isinstance(leaf, Variable) and id(leaf) not in kept and leaf._value is not old
    ]
    if dropped:
        from ..errors import TraceContextError, short_list

        paths = short_list([name(p) for p in dropped])
        raise TraceContextError(_DROPPED.format(what=what, step=step, paths=paths))


def restore(
    flat: Flat,
    graphdef: GraphDef,
    values: Sequence[Any],
    metas: Sequence[Any],
    reuse: Sequence[tuple[int, int]],
    *,
    write: bool = True,
) -> Any:
    """Outside the trace: builds the objects of `graphdef` around `values`; a node that
    `reuse` pairs with a node of the caller's flatten `flat` is that caller's object,
    updated in place (values, metadata, attributes). With ``write=False`` everything is new
    and the caller's objects are left alone."""
    nodes = {j: flat.nodes[i] for j, i in reuse} if write else None
    if nodes:
        _check_writes(nodes.values(), values)
    return build(graphdef, list(values), False, metas=list(metas), reuse=nodes)


def _check_writes(targets: Any, values: Sequence[Any]) -> None:
    """Before a write-back: when the values are tracers (an nnx transform called inside a
    raw JAX transform), every target Variable must belong to the running trace, else
    TraceContextError and nothing is written. One ``isinstance`` when they are not."""
    tracer = next((v for v in values if isinstance(v, JaxTracer)), None)
    if tracer is not None:
        for var in targets:
            if isinstance(var, Variable):
                check_frame(var, tracer)


def match_leaves(t: Traced, post: Flat) -> list[int | None]:
    """After the structure of the arguments changed inside a trace (`post` is their flatten,
    `t` the call): for each leaf of `post`, the input leaf it
    continues, or None for one created inside. A Variable continues itself wherever it sits
    now; else a leaf continues the unclaimed input leaf at its path if that was of the same
    type (a Variable replaced by one of its type, a raw array reassigned)."""
    spec = t.spec
    types = spec.graphdef.leaf_types
    var_slots = [i for i, typ in enumerate(types) if typ is not None]
    var_nodes = [n for n in t.nodes if isinstance(n, Variable)]
    by_id = {id(v): i for v, i in zip(var_nodes, var_slots, strict=True)}
    origin = [by_id.get(id(leaf)) if isinstance(leaf, Variable) else None for leaf in post.leaves]
    claimed = set(origin)
    by_path = {(spec.root_of[i], *spec.paths[i]): i for i in range(len(types))}
    for j, leaf in enumerate(post.leaves):
        if origin[j] is None:
            i = by_path.get(post.paths[j])
            kind = type(leaf) if isinstance(leaf, Variable) else None
            if i is not None and i not in claimed and types[i] is kind:
                origin[j] = i
                claimed.add(i)
    return origin


class Out:
    """Static part of a lifted function's output (a pytree with no leaves): tells
    :func:`apply` how to read the returned values.

    mode 'fast': `indices` are the leaves whose values come back (in order), `metas` the
    (index, metadata) pairs that changed. mode 'full': the joint (inputs, output) graph
    `graphdef`, and `reuse`, pairs (joint node index, input node index).
    """

    __slots__ = ("graphdef", "indices", "metas", "mode", "reuse")

    def __init__(self, mode: str, indices=(), metas=(), graphdef=None, reuse=()):
        self.mode = mode
        self.indices = indices
        self.metas = metas
        self.graphdef = graphdef
        self.reuse = reuse

    def _key(self) -> tuple:
        return (self.mode, self.indices, self.metas, self.graphdef, self.reuse)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Out) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


jax.tree_util.register_pytree_node(Out, lambda o: ((), o), lambda o, _: o)


def collect(
    t: Traced,
    out: Any,
    *,
    force: Callable[[int], bool] | bool = False,
    allow_structure_change: bool = True,
    what: str = "this transform",
) -> tuple[Any, list[Any], Out]:
    """After the user function ran: returns (output, values to send out, Out).

    Args:
      t: the call, from :func:`traced_call`.
      out: what to return of it (``t.out``, or the part of it that is not a loss).
      force: leaves to return even when unchanged (donated buffers, control-flow carries);
        True for all.
      allow_structure_change: when False, a structural change raises TraceContextError.
    """
    spec, in_values = t.spec, t.values
    post = after(t)
    same = post.graphdef == spec.graphdef
    if same and not contains_graph(out):
        indices, values, metas = [], [], []
        for i, leaf in enumerate(post.leaves):
            is_var = isinstance(leaf, Variable)
            value = leaf._value if is_var else leaf
            if force is True or value is not in_values[i] or (force and force(i)):
                indices.append(i)
                values.append(value)
            if is_var and leaf._meta is not spec.metas[i] and leaf._meta != spec.metas[i]:
                metas.append((i, leaf._meta))
        return out, values, Out("fast", tuple(indices), tuple(metas))
    if not same and not allow_structure_change:
        from ..errors import TraceContextError

        raise TraceContextError(
            f"The structure of the arguments changed inside {what} (an attribute or "
            "Variable was added, removed or replaced), which it cannot carry out: "
            f"before {summary(spec.graphdef)}, after {summary(post.graphdef)}.\n"
            "Fix: create new attributes and sub-modules before the transform (e.g. run "
            "the model once eagerly, or use nnx.eval_shape / lazy initialisation first)."
        )
    joint = flatten_full((t.roots, out))
    values = list(map(_leaf_value, joint.leaves))
    all_metas = tuple(map(_leaf_meta, joint.leaves))
    reuse = _reuse_pairs(joint.nodes, t.nodes)
    return None, values, Out("full", metas=all_metas, graphdef=joint.graphdef, reuse=reuse)


# -- outside the trace --------------------------------------------------------------------
_VALUE_SLOT = Variable.__dict__["_value"]  # the slot descriptor behind every ``_value``
_PLANS = object()  # key of the write plans in ``Flat.extra``
_MAX_PLANS = 8


class WritePlan(NamedTuple):
    """Where a compiled call's values go, cached on the flatten per Out object (a compiled
    function returns the same Out object on every call)."""

    info: Out
    targets: list[Variable]  # the Variables written
    var_pos: list[int] | None  # their positions among the values (None: all of them)
    raw: tuple[tuple[int, int, Any], ...]  # raw leaves: (position, leaf index, slot)
    plain: bool  # every target's ``_value`` is the plain slot (set in C)


def _write_plan(flat: Flat, info: Out) -> WritePlan:
    plans = flat.extra.get(_PLANS)
    if plans is None:
        plans = flat.extra[_PLANS] = {}
    plan = plans.get(id(info))
    if plan is not None and plan.info is info:
        return plan
    leaves, slots, indices = flat.leaves, flat.slots, info.indices
    var_pos = [k for k, i in enumerate(indices) if slots[i] is None]
    targets = [leaves[indices[k]] for k in var_pos]
    raw = tuple((k, i, slots[i]) for k, i in enumerate(indices) if slots[i] is not None)
    plain = all(type(v)._value is _VALUE_SLOT for v in targets)
    plan = WritePlan(info, targets, None if len(var_pos) == len(indices) else var_pos, raw, plain)
    if len(plans) >= _MAX_PLANS:
        plans.pop(next(iter(plans)))
    plans[id(info)] = plan
    return plan


def apply(
    flat: Flat,
    out: Any,
    values: Sequence[Any],
    info: Out,
    *,
    write: bool = True,
    cache: bool = False,
) -> Any:
    """Writes `values` back into the caller's objects as `info` says; returns the output.

    With ``write=False`` (eval_shape) the caller's objects are left alone and any graph
    objects in the output are built fresh. With ``cache=True`` (a compiled function, whose
    Out object is the same on every call) the write targets are resolved once per
    (flatten, Out) and reused.
    """
    if info.mode == "fast":
        if write and values and isinstance(values[0], JaxTracer):
            _check_writes([flat.leaves[i] for i in info.indices], values)
        if write and cache and info.indices:
            _, targets, var_pos, raw, plain = _write_plan(flat, info)
            vals = values if var_pos is None else [values[k] for k in var_pos]
            if len(vals) != len(targets):
                raise ValueError("internal: values do not match the write plan")
            if plain:
                any(map(_VALUE_SLOT.__set__, targets, vals))  # __set__ returns None
            else:
                for var, value in zip(targets, vals, strict=True):
                    object.__setattr__(var, "_value", value)
            if raw:
                write_raw_leaves(flat, [(i, values[k]) for k, i, _ in raw])
            for i, meta in info.metas:
                replace_metadata(flat.leaves[i], meta)
        elif write:
            leaves = flat.leaves
            slots = flat.slots
            raw_pairs: list[tuple[int, Any]] = []
            for i, value in zip(info.indices, values, strict=True):
                if slots[i] is None:
                    object.__setattr__(leaves[i], "_value", value)
                else:
                    raw_pairs.append((i, value))
            if raw_pairs:
                write_raw_leaves(flat, raw_pairs)
            for i, meta in info.metas:
                replace_metadata(leaves[i], meta)
        return out
    _, result = restore(flat, info.graphdef, values, info.metas, info.reuse, write=write)
    return result


class FilterMap:
    """An ordered ``{filter: value}`` mapping that assigns a value to each leaf of a graph
    argument: the value of the first filter that matches the leaf (base of StateAxes and
    StateSharding)."""

    def __init__(self, mapping: Any = (), /):
        items = mapping.items() if isinstance(mapping, dict) else mapping
        self.filters = tuple(f for f, _ in items)
        self.values = tuple(v for _, v in items)
        from ..filters import to_predicate

        self._predicates = tuple(to_predicate(f) for f in self.filters)

    def items(self):
        return zip(self.filters, self.values, strict=True)

    def resolve(self, leaves: Sequence[Any], paths: Sequence[tuple], what: str) -> list[Any]:
        """One value per leaf; raises TransformError naming the leaves no filter matches."""
        from ..errors import TransformError, format_path, short_list

        out, unmatched = [], []
        for leaf, path in zip(leaves, paths, strict=True):
            for pred, value in zip(self._predicates, self.values, strict=True):
                if pred(path, leaf):
                    out.append(value)
                    break
            else:
                unmatched.append(format_path(path, "arg"))
        if unmatched:
            raise TransformError(
                f"{type(self).__name__}({dict(self.items())!r}) given to {what} does not "
                f"cover {len(unmatched)} leaves:\n{short_list(unmatched)}\n"
                "Fix: add a catch-all entry `...: value` as the last filter."
            )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (self.filters, self.values) == (
            other.filters,
            other.values,
        )

    def __hash__(self) -> int:
        return hash((type(self), self.filters, self.values))


def _as_jax(x: Any) -> Any:
    return jax.numpy.asarray(x) if isinstance(x, np.ndarray) else x


def call_transformed(
    fun: Callable,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    wrap: Callable[[Callable], Callable],
    *,
    static: frozenset[int] = frozenset(),
    write: bool = True,
    what: str = "this transform",
    finish: Callable[[Any], tuple[Any, list, Out, Any]] | None = None,
    check: Callable[[Traced, Any], None] | None = None,
) -> Any:
    """Runs ``wrap(pure)(values, dyn_args, dyn_kwargs)`` for transforms that trace once per
    call (checkpoint, eval_shape, checkify...), then writes back.

    `pure` rebuilds the graph arguments, calls `fun`, and returns ``collect``'s triple.
    Positions in `static` are closed over as Python values instead of being traced.
    `finish` unpacks a wrapped result that is not the plain triple (e.g. checkify's
    ``(error, triple)``) into ``(out, values, info, extra)``; the call then returns
    ``(extra, out)``. `check` runs on the call and its output inside the trace, before
    anything is collected (``graph_updates=False``, see ``_modes.check_trace``).
    """
    spec, flat, values = split_args(args, kwargs, static)
    graph_pos = set(spec.positions)
    dyn_args = [None if (i in static or i in graph_pos) else a for i, a in enumerate(args)]
    dyn_kwargs = {k: (None if k in graph_pos else v) for k, v in kwargs.items()}

    def pure(values: list, dyn_args: list, dyn_kwargs: dict) -> Any:
        full = [args[i] if i in static else a for i, a in enumerate(dyn_args)]
        with traced_call(spec, values, fun, full, dyn_kwargs) as t:
            if check is not None:
                check(t, t.out)
            return collect(t, t.out, what=what)

    # Outside jit, jax.checkpoint hands constants back as numpy-backed literals: make them
    # jax arrays, as the eager function returned them, before they reach Variables.
    result = jax.tree_util.tree_map(_as_jax, wrap(pure)(values, dyn_args, dyn_kwargs))
    if finish is None:
        out, new_values, info = result
        return apply(flat, out, new_values, info, write=write)
    out, new_values, info, extra = finish(result)
    return extra, apply(flat, out, new_values, info, write=write)
