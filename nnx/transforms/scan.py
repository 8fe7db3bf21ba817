"""``nnx.scan``: ``jax.lax.scan`` over functions of graph objects (scan over layers, RNNs).

``in_axes`` says, per positional argument, what the scan does with it: :data:`Carry` (the
loop carry; at most one argument), an int (sliced along that axis, one slice per step), or
``None`` (the same value every step). A graph argument may use a :class:`StateAxes` to choose
per leaf. ``out_axes`` describes the output the same way: ``Carry`` marks the new carry,
ints the stacked per-step outputs.

Graph state that is not sliced (Carry or None) is carried from step to step, so RNG counters
and statistics keep counting; sliced state comes back stacked.

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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import TraceContextError, TransformError
from ..graph import _build, _flatten_full
from ..spmd import _stacked_metadata, _unstacked_metadata
from ..variables import Variable, _Meta
from ._lift import (
    FilterMap,
    Frame,
    apply,
    contains_graph,
    match_leaves,
    rebuild,
    replace_graph_args,
    split_args,
)
from ._lift import Out as _Out

__all__ = ["Carry", "scan"]


class _CarryType:
    """Marker for the loop carry in ``in_axes``/``out_axes`` (``nnx.Carry``)."""

    def __repr__(self) -> str:
        return "nnx.Carry"


Carry = _CarryType()


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


def _example_filter(cls: type | None) -> str:
    """A filter naming a leaf's Variable type (a catch-all for raw arrays)."""
    return f"nnx.{cls.__name__}" if cls is not None else "..."


def _restructure(
    spec: Any, nodes: list[Any], post: Any, axes: tuple, leaf_axes: list[Any], carried: list
) -> tuple:
    """Inside the step, after the structure of the arguments changed: checks the change can
    be carried out and returns (post GraphDef, reuse pairs (post node, input node), the post
    position of each carried input leaf, the post positions of the scanned leaves, the axis
    of each post leaf, and the input leaf each post leaf continues or None, see
    :func:`match_leaves`).

    Scanned state (an int axis) may be created or removed: each step makes its own slice, and
    the new leaves come out stacked along the axis their argument's in_axes gives them, as in
    flax. Carried (Carry or None) state must keep its leaves: a loop carry has one structure.
    """
    from ..errors import format_path

    def where(path: tuple) -> str:
        return format_path(path[1:], f"args[{spec.positions[path[0]]}]")

    origin = match_leaves(spec, nodes, post)
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
    index_of = {id(x): i for i, x in enumerate(nodes)}
    reuse = tuple((j, index_of[id(x)]) for j, x in enumerate(post.nodes) if id(x) in index_of)
    at = tuple(post_of[i] for i in carried)
    scan_js = tuple(j for j, ax in enumerate(roles) if isinstance(ax, int))
    return post.graphdef, reuse, at, scan_js, tuple(roles), origin


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
            meta = _unstacked_metadata(metas[i], leaf_axes[i], names)
            if meta != metas[i]:
                metas[i] = _Meta(meta)
                sliced.add(i)
    body = copy.copy(spec)
    body.metas = tuple(metas)
    return body, frozenset(sliced)


def _restack(metas: list, scanned: list[int], axes: list, names: dict, restack: Any) -> tuple:
    """The body's metadata as seen outside: the names put back at the scanned axes of the
    leaves ``restack(i)`` selects (those sliced on the way in, and those created inside)."""
    if names:
        for i in scanned:
            if metas[i] is not None and restack(i):
                metas[i] = _Meta(_stacked_metadata(metas[i], axes[i], names))
    return tuple(metas)


def scan(
    f: Callable | None = None,
    *,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    transform_metadata: dict[str, Any] | None = None,
) -> Any:
    """Scans `f` over the sliced arguments (see the module docstring).

    Args:
      length: number of steps, needed when nothing is sliced.
      reverse, unroll: as in ``jax.lax.scan``.
      in_axes: per positional argument: ``nnx.Carry``, an int, None, or a StateAxes.
      out_axes: ``nnx.Carry``, an int, or a tuple of those matching `f`'s output tuple.
      transform_metadata: ``{nnx.PARTITION_NAME: 'layers'}``: inside `f`, a scanned
        Variable's sharding annotation (and any other tuple metadata named here) lacks that
        name at its scanned axis, as one slice of the stacked Variable; outside it is back.
    """
    if f is None:
        return functools.partial(
            scan,
            length=length,
            reverse=reverse,
            unroll=unroll,
            in_axes=in_axes,
            out_axes=out_axes,
            transform_metadata=transform_metadata,
        )

    meta_names = dict(transform_metadata or {})

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        n = len(args)
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * n
        if len(axes) != n:
            raise TransformError(
                f"nnx.scan: in_axes has {len(axes)} entries for {n} arguments. Fix: one of "
                "nnx.Carry, an int, None or a StateAxes per positional argument."
            )
        # A graph argument whose StateAxes carries some of its state is the carry too.
        carry_pos = [
            i
            for i, ax in enumerate(axes)
            if ax is Carry or (isinstance(ax, FilterMap) and any(v is Carry for v in ax.values))
        ]
        if len(carry_pos) > 1:
            raise TransformError("nnx.scan: at most one argument can be nnx.Carry in in_axes.")
        spec, flat, values = split_args(args, {})
        leaf_axes = _axis_list(spec, flat, axes)
        graph_pos = set(spec.positions)
        for ax in leaf_axes:
            if not (ax is None or ax is Carry or isinstance(ax, int)):
                raise TransformError(f"nnx.scan: unsupported axis {ax!r} for a graph leaf.")
        scanned = [i for i, ax in enumerate(leaf_axes) if isinstance(ax, int)]
        carried = [i for i, ax in enumerate(leaf_axes) if not isinstance(ax, int)]
        body_spec, sliced = _sliced_spec(spec, scanned, leaf_axes, meta_names)
        plain_carry_pos = carry_pos[0] if carry_pos and carry_pos[0] not in graph_pos else None
        xs_plain = {
            i: a
            for i, (a, ax) in enumerate(zip(args, axes, strict=True))
            if i not in graph_pos and isinstance(ax, int)
        }
        bcast_plain = {
            i: a
            for i, (a, ax) in enumerate(zip(args, axes, strict=True))
            if i not in graph_pos and ax is None
        }
        init = (
            [values[i] for i in carried],
            args[plain_carry_pos] if plain_carry_pos is not None else None,
        )
        xs = (
            [jnp.moveaxis(values[i], leaf_axes[i], 0) for i in scanned],
            {i: jnp.moveaxis(a, axes[i], 0) if axes[i] else a for i, a in xs_plain.items()},
        )
        out_spec = out_axes if isinstance(out_axes, tuple) else (out_axes,)
        out_is_tuple = isinstance(out_axes, tuple)
        carry_out_idx = [j for j, ax in enumerate(out_spec) if ax is Carry]
        if carry_pos and not carry_out_idx:
            raise TransformError(
                "nnx.scan: in_axes has nnx.Carry but out_axes does not. Fix: mark where the "
                "function returns the new carry, e.g. out_axes=(nnx.Carry, 0)."
            )
        static_box: list[Any] = []

        def body(carry: tuple, x: tuple) -> tuple:
            carry_vals, plain_carry = carry
            scan_vals, plain_xs = x
            vals = list(values)
            for i, v in zip(carried, carry_vals, strict=True):
                vals[i] = v
            for i, v in zip(scanned, scan_vals, strict=True):
                vals[i] = v
            call = list(args)
            for i, a in plain_xs.items():
                call[i] = a
            for i, a in bcast_plain.items():
                call[i] = a
            if plain_carry_pos is not None:
                call[plain_carry_pos] = plain_carry
            with Frame():
                roots, nodes = rebuild(body_spec, vals)
                new_args, _ = replace_graph_args(call, {}, spec, roots)
                out = f(*new_args)
                post = _flatten_full(roots)
                new = [leaf._value if isinstance(leaf, Variable) else leaf for leaf in post.leaves]
                metas = [leaf._meta if isinstance(leaf, Variable) else None for leaf in post.leaves]
                if post.graphdef == spec.graphdef:
                    metas = _restack(metas, scanned, leaf_axes, meta_names, sliced.__contains__)
                    static_box[:] = [(metas, None)]
                    carry_new = [new[i] for i in carried]
                    scan_new = [new[i] for i in scanned]
                else:
                    change = _restructure(spec, nodes, post, axes, leaf_axes, carried)
                    roles, origin = change[4], change[5]
                    joint_scanned = [j for j, ax in enumerate(roles) if isinstance(ax, int)]
                    metas = _restack(
                        metas,
                        joint_scanned,
                        roles,
                        meta_names,
                        lambda j: origin[j] is None or origin[j] in sliced,
                    )
                    static_box[:] = [(metas, change)]
                    _, _, at, scan_js, _, _ = change
                    carry_new = [new[j] for j in at]
                    scan_new = [new[j] for j in scan_js]
                outs = out if out_is_tuple else (out,)
                if not isinstance(outs, tuple) or len(outs) != len(out_spec):
                    raise TransformError(
                        f"nnx.scan: out_axes={out_axes!r} describes {len(out_spec)} outputs but "
                        f"the function returned {type(out).__name__}."
                    )
                new_plain_carry = plain_carry
                ys = []
                for j, (o, ax) in enumerate(zip(outs, out_spec, strict=True)):
                    if ax is Carry:
                        if plain_carry_pos is not None:
                            new_plain_carry = o
                    else:
                        if contains_graph(o):
                            raise TransformError(
                                f"nnx.scan: output {j} holds graph objects; only the carry "
                                "may. Fix: return arrays per step, or mark it nnx.Carry."
                            )
                        ys.append(o)
                return (carry_new, new_plain_carry), (scan_new, ys)

        (carry_vals, plain_carry), (scan_vals, ys) = jax.lax.scan(
            body, init, xs, length=length, reverse=reverse, unroll=unroll
        )
        metas, change = static_box[0] if static_box else (spec.metas, None)
        if change is None:
            final = list(values)
            for i, v in zip(carried, carry_vals, strict=True):
                final[i] = v
            for i, v in zip(scanned, scan_vals, strict=True):
                final[i] = jnp.moveaxis(v, 0, leaf_axes[i])
            changed_metas = tuple(
                (i, m) for i, m in enumerate(metas) if m is not None and m != spec.metas[i]
            )
            apply(flat, None, final, _Out("fast", tuple(range(len(final))), changed_metas))
        else:
            # The structure changed inside (state created on or removed from a scanned
            # argument, a static attribute): rebuild the caller's objects in place.
            graphdef, reuse, at, scan_js, roles, _ = change
            final = [None] * len(roles)
            for j, v in zip(at, carry_vals, strict=True):
                final[j] = v
            for j, v in zip(scan_js, scan_vals, strict=True):
                final[j] = jnp.moveaxis(v, 0, roles[j])
            nodes = {j: flat.nodes[i] for j, i in reuse}
            _build(graphdef, final, False, metas=list(metas), reuse=nodes)
        results = []
        y_iter = iter(ys)
        for ax in out_spec:
            if ax is Carry:
                if plain_carry_pos is not None:
                    results.append(plain_carry)
                elif carry_pos:
                    results.append(args[carry_pos[0]])
                else:
                    results.append(None)
            else:
                y = next(y_iter)
                if isinstance(ax, int) and ax != 0:
                    y = jax.tree.map(lambda a, ax=ax: jnp.moveaxis(a, 0, ax), y)
                results.append(y)
        return tuple(results) if out_is_tuple else results[0]

    return wrapper
