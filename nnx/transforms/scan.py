"""``nnx.scan``: ``jax.lax.scan`` over functions of graph objects (scan over layers, RNNs).

``in_axes`` says, per positional argument, what the scan does with it: :data:`Carry` (the
loop carry; at most one argument), an int (sliced along that axis, one slice per step), or
``None`` (the same value every step). A graph argument may use a :class:`StateAxes` to choose
per leaf. ``out_axes`` describes the output the same way: ``Carry`` marks the new carry,
ints the stacked per-step outputs.

Graph state that is not sliced (Carry or None) is carried from step to step, so RNG counters
and statistics keep counting; sliced state comes back stacked. Structure cannot change inside.

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

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import TraceContextError, TransformError
from ..graph import _flatten_full
from ..variables import Variable
from ._lift import FilterMap, Frame, apply, contains_graph, rebuild, replace_graph_args, split_args
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
                roots, _ = rebuild(spec, vals)
                new_args, _ = replace_graph_args(call, {}, spec, roots)
                out = f(*new_args)
                post = _flatten_full(roots)
                if post.graphdef != spec.graphdef:
                    raise TraceContextError(
                        "The structure of the arguments changed inside nnx.scan (an attribute "
                        "or Variable was added, removed or replaced); a scan step must keep "
                        "it.\nFix: create attributes before the scan."
                    )
                new = [leaf._value if isinstance(leaf, Variable) else leaf for leaf in post.leaves]
                metas = tuple(
                    leaf._meta if isinstance(leaf, Variable) else None for leaf in post.leaves
                )
                static_box[:] = [metas]
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
                return (
                    ([new[i] for i in carried], new_plain_carry),
                    ([new[i] for i in scanned], ys),
                )

        (carry_vals, plain_carry), (scan_vals, ys) = jax.lax.scan(
            body, init, xs, length=length, reverse=reverse, unroll=unroll
        )
        final = list(values)
        for i, v in zip(carried, carry_vals, strict=True):
            final[i] = v
        for i, v in zip(scanned, scan_vals, strict=True):
            final[i] = jnp.moveaxis(v, 0, leaf_axes[i])
        metas = static_box[0] if static_box else spec.metas
        changed_metas = tuple(
            (i, m) for i, m in enumerate(metas) if m is not None and m != spec.metas[i]
        )
        apply(flat, None, final, _Out("fast", tuple(range(len(final))), changed_metas))
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
