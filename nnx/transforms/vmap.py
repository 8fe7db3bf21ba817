"""``nnx.vmap``: vectorising over graph objects, e.g. to build ensembles or stacked layers.

``in_axes`` gives, per argument, an int (that axis of every leaf), ``None`` (broadcast), or
a :class:`StateAxes` ``{filter: axis}`` choosing per leaf. State the function changes comes
back with the axis it went in with; graph objects *created* inside (an ensemble) come out
with ``out_axes``. The structure of the arguments must not change inside: a new attribute
cannot be batched.

Example:
  >>> class Lin(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.w = nnx.Param(jax.random.normal(rngs.params(), (3,)))
  ...   def __call__(self, x):
  ...     return x @ self.w
  >>> rngs = nnx.Rngs(0)
  >>> with nnx.split_rngs(rngs, splits=5):
  ...   ensemble = nnx.vmap(lambda r: Lin(r), in_axes=0, out_axes=0)(rngs)
  >>> ensemble.w.value.shape
  (5, 3)
  >>> nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ensemble, jnp.ones(3)).shape
  (5,)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import TraceContextError, TransformError
from ..graph import _build, _flatten_full
from ..variables import Variable
from ._lift import FilterMap, Frame, contains_graph, rebuild, replace_graph_args, split_args

__all__ = ["PARTITION_NAME", "StateAxes", "vmap"]

PARTITION_NAME = "partition_name"


class StateAxes(FilterMap):
    """Per-filter axes for a graph argument: ``StateAxes({nnx.Param: 0, ...: None})``."""


class _Placeholder:
    """Stands for the j-th graph object of an output (a pytree with no leaves)."""

    __slots__ = ("j",)

    def __init__(self, j: int):
        self.j = j

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Placeholder) and other.j == self.j

    def __hash__(self) -> int:
        return hash(("_Placeholder", self.j))


jax.tree_util.register_pytree_node(_Placeholder, lambda p: ((), p.j), lambda j, _: _Placeholder(j))


class _VmapOut:
    """Static part of a vmapped call's output (see vmap's implementation)."""

    __slots__ = ("axes", "graphdef", "metas", "n_in", "reuse")

    def __init__(self, graphdef: Any, reuse: tuple, metas: tuple, n_in: int, axes: tuple):
        self.graphdef = graphdef
        self.reuse = reuse
        self.metas = metas
        self.n_in = n_in
        self.axes = axes

    def _key(self) -> tuple:
        return (self.graphdef, self.reuse, self.metas, self.n_in, self.axes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _VmapOut) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


jax.tree_util.register_pytree_node(_VmapOut, lambda o: ((), o), lambda o, _: o)


def _is_graph_obj(x: Any) -> bool:
    from ._lift import _GRAPH_TYPES

    return isinstance(x, _GRAPH_TYPES)


def _split_out(out: Any) -> tuple[Any, list[Any]]:
    """Replaces the graph objects of `out` by placeholders; returns them in order."""
    objs: list[Any] = []

    def sub(x: Any) -> Any:
        if _is_graph_obj(x):
            objs.append(x)
            return _Placeholder(len(objs) - 1)
        return x

    return jax.tree_util.tree_map(sub, out, is_leaf=_is_graph_obj), objs


def _graph_out_axes(out: Any, out_axes: Any, n: int, what: str) -> list[Any]:
    """The axis for each of the n graph objects found in `out`."""
    if out_axes is None or isinstance(out_axes, int):
        return [out_axes] * n
    axes: list[Any] = []
    if isinstance(out, tuple) and isinstance(out_axes, tuple) and len(out) == len(out_axes):
        for element, ax in zip(out, out_axes, strict=True):
            count = len(_split_out(element)[1])
            if count and not (ax is None or isinstance(ax, int)):
                break
            axes.extend([ax] * count)
        else:
            return axes
    raise TransformError(
        f"{what}: the output holds graph objects (Modules, Variables), so out_axes must be "
        f"an int or None, or a tuple of those matching a tuple output; got {out_axes!r}."
    )


def _leaf_axes(spec: Any, flat: Any, in_axes: Sequence[Any], what: str) -> list[Any]:
    axes: list[Any] = []
    for k, p in enumerate(spec.positions):
        a, b = spec.slices[k]
        ax = in_axes[p]
        if isinstance(ax, FilterMap):
            axes.extend(ax.resolve(flat.leaves[a:b], spec.paths[a:b], what))
        elif ax is None or isinstance(ax, int):
            axes.extend([ax] * (b - a))
        else:
            raise TransformError(
                f"{what}: in_axes[{p}] for a graph argument must be an int, None or a "
                f"StateAxes, got {ax!r}."
            )
    return axes


def _insert_partition(meta: Any, axis: int | None, name: Any) -> Any:
    if meta is None or axis is None or name is None:
        return meta
    for key in ("sharding_names", "sharding"):
        names = meta.get(key) if hasattr(meta, "get") else None
        if isinstance(names, tuple):
            from ..variables import _Meta

            new = list(names)
            new.insert(axis, name)
            return _Meta({**meta, key: tuple(new)})
    return meta


def vmap(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    transform_metadata: dict[str, Any] | None = None,
) -> Any:
    """``jax.vmap`` over functions of graph objects (see the module docstring).

    Args:
      in_axes: per positional argument: an int, None, or (graph arguments) a StateAxes; a
        single value applies to every argument.
      out_axes: for the output; graph objects created inside take an int or None.
      transform_metadata: ``{nnx.PARTITION_NAME: 'layers'}`` inserts that name into the
        ``sharding_names`` metadata of Variables created inside, at their out axis.
    """
    if f is None:
        return functools.partial(
            vmap,
            in_axes=in_axes,
            out_axes=out_axes,
            axis_name=axis_name,
            axis_size=axis_size,
            spmd_axis_name=spmd_axis_name,
            transform_metadata=transform_metadata,
        )
    partition = (transform_metadata or {}).get(PARTITION_NAME)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs and contains_graph(kwargs):
            raise TransformError(
                "nnx.vmap: pass graph objects (Modules, Rngs...) positionally so in_axes "
                "can describe them."
            )
        n = len(args)
        axes = in_axes if isinstance(in_axes, tuple | list) else (in_axes,) * n
        if len(axes) != n:
            raise TransformError(
                f"nnx.vmap: in_axes has {len(axes)} entries for {n} arguments. Fix: give one "
                "axis (int, None or StateAxes) per positional argument."
            )
        spec, flat, values = split_args(args, {})
        leaf_axes = _leaf_axes(spec, flat, axes, "nnx.vmap")
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos else a for i, a in enumerate(args)]
        dyn_axes = [None if i in graph_pos else ax for i, ax in enumerate(axes)]

        def pure(values: list, dyn: list, kwargs: dict) -> Any:
            with Frame():
                roots, nodes = rebuild(spec, values)
                new_args, _ = replace_graph_args(dyn, {}, spec, roots)
                out = f(*new_args, **kwargs)
                post = _flatten_full(roots)
                if post.graphdef != spec.graphdef:
                    raise TraceContextError(
                        "The structure of the arguments changed inside nnx.vmap (an attribute "
                        "or Variable was added, removed or replaced); a structural change "
                        "cannot be batched.\nFix: create the attribute outside the vmap, or "
                        "return the new object as an output (out_axes batches it)."
                    )
                out_plain, objs = _split_out(out)
                obj_axes = _graph_out_axes(out, out_axes, len(objs), "nnx.vmap")
                joint = _flatten_full((roots, tuple(objs)))
                n_in = len(post.leaves)
                index_of = {id(x): i for i, x in enumerate(nodes)}
                reuse = tuple(
                    (j, index_of[id(x)]) for j, x in enumerate(joint.nodes) if id(x) in index_of
                )
                vals = [
                    leaf._value if isinstance(leaf, Variable) else leaf for leaf in joint.leaves
                ]
                metas = tuple(
                    leaf._meta if isinstance(leaf, Variable) else None for leaf in joint.leaves
                )
                # Axis of each output-graph leaf: that of the graph object it belongs to.
                owner = [p[1] for p in joint.paths[n_in:]]
                out_leaf_axes = tuple(obj_axes[o] for o in owner)
                info = _VmapOut(joint.graphdef, reuse, metas, n_in, out_leaf_axes)
                return out_plain, vals[:n_in], vals[n_in:], info

        plain_axes = out_axes if not isinstance(out_axes, list) else tuple(out_axes)
        vmapped = jax.vmap(
            pure,
            in_axes=(leaf_axes, dyn_axes, 0),
            out_axes=(plain_axes, leaf_axes, 0, None),
            axis_name=axis_name,
            axis_size=axis_size,
            spmd_axis_name=spmd_axis_name,
        )
        out_plain, in_vals, out_vals, info = vmapped(values, dyn, kwargs)
        fixed = []
        for v, ax in zip(out_vals, info.axes, strict=True):
            if ax is None:
                fixed.append(v[0])
            elif ax != 0:
                fixed.append(jnp.moveaxis(v, 0, ax))
            else:
                fixed.append(v)
        metas = list(info.metas)
        if partition is not None:
            for j, ax in enumerate(info.axes):
                metas[info.n_in + j] = _insert_partition(metas[info.n_in + j], ax, partition)
        reuse = {j: flat.nodes[i] for j, i in info.reuse}
        _, objs = _build(info.graphdef, [*in_vals, *fixed], False, metas=metas, reuse=reuse)
        if not objs:
            return out_plain
        return jax.tree_util.tree_map(
            lambda x: objs[x.j] if isinstance(x, _Placeholder) else x,
            out_plain,
            is_leaf=lambda x: isinstance(x, _Placeholder),
        )

    return wrapper
