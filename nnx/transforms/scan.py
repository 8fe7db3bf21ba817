"""``nnx.scan``: ``jax.lax.scan`` over functions of graph objects (scan over layers, RNNs).

``in_axes`` says, per positional argument, what the scan does with it: :data:`Carry` (the
loop carry; at most one argument), an int (sliced along that axis, one slice per step), or
``None`` (the same value every step). A graph argument may use a :class:`StateAxes` to choose
per leaf. ``out_axes`` describes the output the same way: ``Carry`` marks the new carry,
ints the stacked per-step outputs.

The carry is what the step returns at its ``Carry`` output: the next step receives it, and
the scan returns the last one. As in every nnx transform, objects returned are returned (an
object the step received and returns, mutated in place or not, is the caller's very object;
an object the step creates, e.g. ``nnx.Param(p + x)`` or a State built with
``jax.tree.map``, comes back new) and objects passed in and mutated are updated in place;
both at once works (``(model, gsum)`` with ``model`` mutated and ``gsum`` new). A carry may
mix graph objects with arrays and Python scalars (made arrays, as ``jax.lax.scan`` does).
Other graph state that is not sliced (None, or a StateAxes entry ``Carry``, as in flax's
``(StateAxes({...: Carry}), Carry, 0)`` for an RNN cell) is carried from step to step in
place, so RNG counters and statistics keep counting; sliced state comes back stacked.

Structure may change inside where each step owns its slice, as in flax: a step may create
Variables (or sub-modules holding them) on an argument sliced along an int axis, and they
come out stacked along the axis its in_axes (or StateAxes entry) gives them; it may delete
sliced state, or change static attributes. Carried and broadcast state (Carry or None) is a
loop carry, whose structure is fixed: creating, deleting or replacing a Variable there raises
a :class:`~nnx.errors.TraceContextError` naming it, and leaves the caller's objects as they
were.

Example (scan over stacked layers):
  >>> class Layer(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 4)) * 0.1)
  ...   def __call__(self, x):
  ...     return jnp.tanh(x @ self.w)
  >>> rngs = nnx.Rngs(0)
  >>> with nnx.split_rngs(rngs, splits=3):
  ...   layers = nnx.vmap(lambda r: Layer(r))(rngs)
  >>> @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
  ... def forward(layer, x):
  ...   return layer(x)
  >>> forward(layers, jnp.ones((2, 4))).shape
  (2, 4)
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from .._graph_mode import graph_mode
from .._graph_mode import graph_updates as graph_updates_default
from .._meta import Meta
from .._sharding_meta import stacked_metadata, unstacked_metadata
from ..errors import TraceContextError, TransformError
from ..variablelib import Variable
from ._lift import (
    CARRY_STRUCTURE,
    FilterMap,
    Traced,
    check_dropped,
    contains_graph,
    follow,
    match_leaves,
    restore,
    roots_of,
    split_args,
    structure,
    traced_call,
)
from ._modes import check_call, check_trace, resolve
from .control import as_array_carry

__all__ = ["Carry", "scan"]


class _CarryType:
    """Marker for the loop carry in ``in_axes``/``out_axes`` (``nnx.Carry``)."""

    def __repr__(self) -> str:
        return "nnx.Carry"


Carry = _CarryType()
"""Marks the carried argument in ``nnx.scan``'s ``in_axes``/``out_axes``: that argument is
handed from step to step (and returned), not sliced along the scanned axis."""


def _axis_list(spec: Any, flat: Any, in_axes: tuple) -> list[Any]:
    axes: list[Any] = []
    for k, p in enumerate(spec.positions):
        a, b = spec.slices[k]
        ax = in_axes[p]
        if isinstance(ax, FilterMap):
            axes.extend(ax.resolve(flat.leaves[a:b], spec.paths[a:b], "nnx.scan"))
        else:
            axes.extend([ax] * (b - a))
    return axes


_CARRY_REMOVED = (
    "nnx.scan: the step changed the structure of state carried from step to step: it "
    "removed or replaced {where} (in_axes {ax}), and a loop carry must hold the same "
    "Variables after every step.\n"
    "Fix: (1) delete or replace it before or after the scan; or (2) scan it instead: give it "
    "an int axis (e.g. in_axes=0, or a StateAxes entry `{example}: 0`), so each step has its "
    "own slice."
)
_CARRY_CREATED = (
    "nnx.scan: the step changed the structure of state carried from step to step: it "
    "created {where} ({kind}) on an argument whose in_axes ({ax}) carries it from step to "
    "step, and a loop carry cannot gain a Variable (it has no value before the first step).\n"
    "Fix: (1) create it before the scan (e.g. run the initialisation once outside it); or "
    "(2) create it on an argument scanned with an int axis (e.g. a StateAxes entry "
    "`{example}: 0`): it comes out stacked, one slice per step."
)


def _where(spec: Any, path: tuple) -> str:
    """``args[1].layer.w`` for a leaf path whose first entry is its graph argument's index."""
    from ..errors import format_path

    return format_path(path[1:], f"args[{spec.positions[path[0]]}]")


def _example_filter(cls: type | None) -> str:
    """A filter naming a leaf's Variable type (a catch-all for raw arrays)."""
    return f"nnx.{cls.__name__}" if cls is not None else "..."


class _Layout(NamedTuple):
    """Where the loop state sits among the leaves a step hands on.

    Attributes:
      at: the position of each carried input leaf (in the input order of ``carried``).
      scan_js: the positions of the scanned leaves (stacked on the way out).
      roles: each leaf's axis (an int for scanned, None or Carry for carried).
      origin: the input leaf each leaf continues, None for one created inside (None for
        the whole layout when the structure did not change).
    """

    at: tuple[int, ...]
    scan_js: tuple[int, ...]
    roles: tuple[Any, ...]
    origin: list[int | None] | None


def _restructure(t: Traced, post: Any, axes: tuple, leaf_axes: list[Any], carried: list) -> _Layout:
    """Inside the step, after the structure of the arguments changed: checks the change can
    be carried out and returns the new layout of the loop state.

    Scanned state (an int axis) may be created or removed: each step makes its own slice, and
    the new leaves come out stacked along the axis their argument's in_axes gives them, as in
    flax. Carried (Carry or None) state must keep its leaves: a loop carry has one structure.
    """
    spec = t.spec

    def where(path: tuple) -> str:
        return _where(spec, path)

    origin = match_leaves(t, post)
    types = spec.graphdef.leaf_types
    input_at = {(spec.root_of[i], *spec.paths[i]): types[i] for i in range(len(types))}
    roles: list[Any] = []
    for leaf, path, i in zip(post.leaves, post.paths, origin, strict=True):
        if i is not None:
            roles.append(leaf_axes[i])
            continue
        ax = axes[spec.positions[path[0]]]
        if isinstance(ax, FilterMap):
            ax = ax.resolve([leaf], [path[1:]], "nnx.scan (for state created inside it)")[0]
        if not isinstance(ax, int):
            kind = f"a {type(leaf).__name__}" if isinstance(leaf, Variable) else "an array"
            was = input_at.get(path)
            if was is not None:
                kind += f" in place of a {was.__name__}"
            raise TraceContextError(
                _CARRY_CREATED.format(
                    where=where(path),
                    kind=kind,
                    ax=ax,
                    example=_example_filter(type(leaf) if isinstance(leaf, Variable) else None),
                )
            )
        roles.append(ax)
    post_of = {i: j for j, i in enumerate(origin) if i is not None}
    for i in carried:
        if i not in post_of:
            path = (spec.root_of[i], *spec.paths[i])
            raise TraceContextError(
                _CARRY_REMOVED.format(
                    where=where(path),
                    ax=leaf_axes[i],
                    example=_example_filter(spec.graphdef.leaf_types[i]),
                )
            )
    at = tuple(post_of[i] for i in carried)
    scan_js = tuple(j for j, ax in enumerate(roles) if isinstance(ax, int))
    return _Layout(at, scan_js, tuple(roles), origin)


def _sliced_spec(
    spec: Any, scanned: list[int], leaf_axes: list, names: dict
) -> tuple[Any, frozenset[int]]:
    """`spec` with the metadata the body sees: a scanned Variable's annotation without the
    ``transform_metadata`` names at its scanned axis (one slice of a stacked Variable); and
    the leaves whose metadata that changed (only those get the names back afterwards)."""
    if not names or not scanned:
        return spec, frozenset()
    metas = list(spec.metas)
    sliced = set()
    for i in scanned:
        if metas[i] is not None:
            meta = unstacked_metadata(metas[i], leaf_axes[i], names)
            if meta != metas[i]:
                metas[i] = Meta(meta)
                sliced.add(i)
    body = copy.copy(spec)
    body.metas = tuple(metas)
    return body, frozenset(sliced)


def _restack(
    metas: list, scanned: list[int], axes: Sequence[Any], names: dict, restack: Any
) -> tuple:
    """The body's metadata as seen outside: the names put back at the scanned axes of the
    leaves ``restack(i)`` selects (those sliced on the way in, and those created inside)."""
    if names:
        for i in scanned:
            if metas[i] is not None and restack(i):
                metas[i] = Meta(stacked_metadata(metas[i], axes[i], names))
    return tuple(metas)


def scan(
    f: Callable | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    _split_transpose: bool = False,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    transform_metadata: Mapping[str, Any] = MappingProxyType({}),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Scans `f` over the sliced arguments (see the module docstring).

    Args:
      length: number of steps, needed when nothing is sliced.
      reverse, unroll, _split_transpose: as in ``jax.lax.scan``.
      in_axes: per positional argument: ``nnx.Carry``, an int, None, or a StateAxes.
      out_axes: ``nnx.Carry``, an int, or a tuple of those matching `f`'s output tuple.
      transform_metadata: ``{nnx.PARTITION_NAME: 'layers'}``: inside `f`, a scanned
        Variable's sharding annotation (and any other tuple metadata named here) lacks that
        name at its scanned axis, as one slice of the stacked Variable; outside it is back.
      graph: False refuses arguments sharing Variables or sub-objects (flax's tree mode).
      graph_updates: False refuses returning input Variables and structural changes inside
        (flax drops those silently). None (both): the ``nnx.set_graph_mode`` /
        ``nnx.set_graph_updates`` default in force when the transform is applied.
    """
    if f is None:
        return functools.partial(
            scan,
            length=length,
            reverse=reverse,
            unroll=unroll,
            in_axes=in_axes,
            out_axes=out_axes,
            _split_transpose=_split_transpose,
            transform_metadata=transform_metadata,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    mode = resolve("scan", graph, graph_updates)

    meta_names = dict(transform_metadata or {})

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        if mode is not None:
            check_call(mode, args)
        n = len(args)
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * n
        if len(axes) != n:
            raise TransformError(
                f"nnx.scan: in_axes has {len(axes)} entries for {n} arguments. Fix: one of "
                "nnx.Carry, an int, None or a StateAxes per positional argument."
            )
        carry_pos = _carry_position(axes)
        out_spec = out_axes if isinstance(out_axes, tuple) else (out_axes,)
        out_is_tuple = isinstance(out_axes, tuple)
        carry_out_idx = [j for j, ax in enumerate(out_spec) if ax is Carry]
        if len(carry_out_idx) > 1:
            raise TransformError(
                f"nnx.scan: out_axes={out_axes!r} marks {len(carry_out_idx)} outputs as "
                "nnx.Carry; the function returns one carry. Fix: return the carry as one "
                "output (a tuple carry is fine) and mark only it nnx.Carry."
            )
        if carry_pos is not None and not carry_out_idx:
            raise TransformError(
                "nnx.scan: in_axes has nnx.Carry but out_axes does not. Fix: mark where the "
                "function returns the new carry, e.g. out_axes=(nnx.Carry, 0)."
            )
        if carry_pos is None and carry_out_idx:
            raise TransformError(
                "nnx.scan: out_axes has nnx.Carry but in_axes does not. Fix: mark the "
                "argument the carry comes in as, e.g. in_axes=(nnx.Carry, 0)."
            )
        if carry_pos is not None:
            args = (*args[:carry_pos], as_array_carry(args[carry_pos]), *args[carry_pos + 1 :])
        spec, flat, values = split_args(args, {})
        leaf_axes = _axis_list(spec, flat, axes)
        graph_pos = set(spec.positions)
        for ax in leaf_axes:
            if not (ax is None or ax is Carry or isinstance(ax, int)):
                raise TransformError(f"nnx.scan: unsupported axis {ax!r} for a graph leaf.")
        scanned = [i for i, ax in enumerate(leaf_axes) if isinstance(ax, int)]
        carried = [i for i, ax in enumerate(leaf_axes) if not isinstance(ax, int)]
        body_spec, sliced = _sliced_spec(spec, scanned, leaf_axes, meta_names)
        # Graph arguments carried whole (no leaf sliced) keep their structure step to step.
        whole = [
            k
            for k in range(len(spec.positions))
            if not any(isinstance(leaf_axes[i], int) for i in range(*spec.slices[k]))
        ]
        # The carry argument: holding graph objects, its leaves are loop state and the
        # returned carry takes its place among the graph arguments; else a plain jax carry.
        graph_carry = spec.positions.index(carry_pos) if carry_pos in graph_pos else None
        plain_carry_pos = carry_pos if graph_carry is None else None
        xs_plain = {
            i: a
            for i, (a, ax) in enumerate(zip(args, axes, strict=True))
            if i not in graph_pos and isinstance(ax, int)
        }
        init = (
            [values[i] for i in carried],
            args[plain_carry_pos] if plain_carry_pos is not None else None,
        )
        xs = (
            [jnp.moveaxis(values[i], leaf_axes[i], 0) for i in scanned],
            {i: jnp.moveaxis(a, axes[i], 0) if axes[i] else a for i, a in xs_plain.items()},
        )
        found: list[Any] = []  # the traced step's (Continuation, _Layout)

        def body(
            carry: tuple, x: tuple
        ) -> tuple[tuple[list[Any], Any], tuple[list[Any], list[Any]]]:
            carry_vals, plain_carry = carry
            scan_vals, plain_xs = x
            vals = list(values)
            for i, v in zip(carried, carry_vals, strict=True):
                vals[i] = v
            for i, v in zip(scanned, scan_vals, strict=True):
                vals[i] = v
            call = [None if i in graph_pos else a for i, a in enumerate(args)]
            for i, a in plain_xs.items():
                call[i] = a
            if plain_carry_pos is not None:
                call[plain_carry_pos] = plain_carry
            with traced_call(body_spec, vals, f, call) as t:
                outs = t.out if out_is_tuple else (t.out,)
                if not isinstance(outs, tuple) or len(outs) != len(out_spec):
                    raise TransformError(
                        f"nnx.scan: out_axes={out_axes!r} describes {len(out_spec)} outputs but "
                        f"the function returned {type(t.out).__name__}."
                    )
                new_roots = list(t.roots)
                new_plain_carry = plain_carry
                if carry_out_idx:
                    if graph_carry is not None:
                        new_roots[graph_carry] = outs[carry_out_idx[0]]
                    else:
                        new_plain_carry = outs[carry_out_idx[0]]
                if mode is not None:
                    out_carry = outs[carry_out_idx[0]] if carry_out_idx else None
                    check_trace(mode, t, outs, carry=out_carry)
                nxt = follow(t, new_roots)
                check_dropped(t, nxt, lambda p: _where(spec, p), "nnx.scan", "step")
                restack: Callable[[int], bool]
                if nxt.flat.graphdef == spec.graphdef:
                    layout = _Layout(tuple(carried), tuple(scanned), tuple(leaf_axes), None)
                    restack = sliced.__contains__
                else:
                    layout = _restructure(t, nxt.flat, axes, leaf_axes, carried)
                    origin = cast("list[int | None]", layout.origin)  # _restructure sets it
                    restack = lambda j: origin[j] is None or origin[j] in sliced
                    for k in whole:  # (the caller's objects are as they were: compare)
                        before = structure((roots_of(spec, args)[k],))
                        now = structure((new_roots[k],))
                        if now != before:
                            raise TraceContextError(
                                CARRY_STRUCTURE.format(
                                    what="nnx.scan",
                                    step="step",
                                    where=f"args[{spec.positions[k]}]",
                                    before=before,
                                    after=now,
                                )
                            )
                scan_js = list(layout.scan_js)
                nxt.metas[:] = _restack(nxt.metas, scan_js, layout.roles, meta_names, restack)
                found[:] = [(nxt, layout)]
                ys: list[Any] = []
                for j, (o, ax) in enumerate(zip(outs, out_spec, strict=True)):
                    if ax is Carry:
                        continue
                    if contains_graph(o):
                        raise TransformError(
                            f"nnx.scan: output {j} holds graph objects; only the carry "
                            "may. Fix: return arrays per step, or mark it nnx.Carry."
                        )
                    ys.append(o)
                carry_new = [nxt.values[j] for j in layout.at]
                scan_new = [nxt.values[j] for j in layout.scan_js]
                return (carry_new, new_plain_carry), (scan_new, ys)

        (carry_vals, plain_carry), (scan_vals, ys) = jax.lax.scan(
            body,
            init,
            xs,
            length=length,
            reverse=reverse,
            unroll=unroll,
            _split_transpose=_split_transpose,
        )
        nxt, layout = found[0]
        final: list[Any] = [None] * len(layout.roles)
        for j, v in zip(layout.at, carry_vals, strict=True):
            final[j] = v
        for j, v in zip(layout.scan_js, scan_vals, strict=True):
            final[j] = jnp.moveaxis(v, 0, layout.roles[j])
        roots = restore(flat, nxt.flat.graphdef, final, nxt.metas, nxt.reuse)
        results = []
        y_iter = iter(ys)
        for ax in out_spec:
            if ax is Carry:
                results.append(roots[graph_carry] if graph_carry is not None else plain_carry)
            else:
                y = next(y_iter)
                if isinstance(ax, int) and ax != 0:
                    y = jax.tree.map(lambda a, ax=ax: jnp.moveaxis(a, 0, ax), y)
                results.append(y)
        return tuple(results) if out_is_tuple else results[0]

    return wrapper


def _carry_position(axes: tuple) -> int | None:
    """The argument the carry comes in as: the one whose in_axes is ``nnx.Carry`` (at most
    one); without one, a graph argument whose StateAxes carries some state (its objects are
    then the carry). Other StateAxes ``Carry`` entries carry state from step to step in
    place, as axis None does (flax's RNN: ``(StateAxes({...: Carry}), Carry, 0)``)."""
    plain = [i for i, ax in enumerate(axes) if ax is Carry]
    if len(plain) > 1:
        raise TransformError(
            f"nnx.scan: in_axes marks arguments {plain} as nnx.Carry; at most one argument "
            "can be the carry. Fix: pass the carried values as one argument (a tuple carry "
            "is fine)."
        )
    if plain:
        return plain[0]
    mixed = [i for i, ax in enumerate(axes) if isinstance(ax, FilterMap) and Carry in ax.values]
    if len(mixed) > 1:
        raise TransformError(
            f"nnx.scan: in_axes carries state of arguments {mixed} with StateAxes and marks "
            "none as nnx.Carry, so it is unclear which one the function returns as the "
            "carry. Fix: mark the carry argument nnx.Carry."
        )
    return mixed[0] if mixed else None
