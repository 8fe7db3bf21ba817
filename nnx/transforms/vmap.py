"""``nnx.vmap``: vectorising over graph objects, e.g. to build ensembles or stacked layers.

``in_axes`` gives, per argument, an int (that axis of every leaf), ``None`` (broadcast), or
a :class:`StateAxes` ``{filter: axis}`` choosing per leaf. State the function changes comes
back with the axis it went in with; graph objects *created* inside and returned (an ensemble)
come out with ``out_axes``.

Structure may change inside, as in flax: Variables or sub-modules created on a graph argument
(e.g. a decoding cache, ``nnx.vmap(lambda b: b.attn.init_cache(shape))(stacked_blocks)``)
come out batched along the axis that argument's in_axes gives them (for a StateAxes, the
entry their type and path match), attributes may be deleted or replaced, static attributes
changed, and the caller's objects are updated in place. What cannot be batched raises a
:class:`~nnx.errors.TraceContextError` naming the leaf, and leaves the caller's objects as
they were: a broadcast (axis None) Variable, new or old, given a value that differs per
batch element, or a new Variable that no StateAxes entry matches.

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
  >>> def add_cache(m):  # a new Variable on every member: batched along in_axes
  ...   m.cache = nnx.Cache(jnp.zeros(4))
  >>> nnx.vmap(add_cache)(ensemble)
  >>> ensemble.cache.value.shape
  (5, 4)
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

import jax

from .._build import replace_metadata
from .._graph_mode import graph_mode, iter_paths
from .._graph_mode import graph_updates as graph_updates_default
from .._meta import Meta
from .._sharding_meta import PARTITION_NAME, stacked_metadata, unstacked_metadata
from ..errors import TraceContextError, TransformError, format_path
from ..graph import clone
from ..variablelib import Variable
from ._lift import (
    FilterMap,
    Traced,
    after,
    contains_graph,
    follow,
    match_leaves,
    restore,
    split_args,
    traced_call,
)
from ._modes import Mode, check_call, check_trace, resolve

__all__ = ["PARTITION_NAME", "StateAxes", "transform_metadata", "vmap"]


class StateAxes(FilterMap):
    """Per-filter axes for a graph argument: ``StateAxes({nnx.Param: 0, ...: None})``."""

    def __init__(self, filter_axes: Any = (), /):
        super().__init__(filter_axes)


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
_NONE = _Placeholder(-1)  # a Variable holding None, while it passes through jax.vmap


class _VmapOut:
    """Static part of a vmapped call's output: the joint (inputs, output objects) graph, which
    of its nodes are the caller's, each leaf's metadata and group (its index among the
    call's possible axes), and the leaves created inside (partition metadata goes there)."""

    __slots__ = ("fresh", "graphdef", "groups", "metas", "reuse")

    def __init__(self, graphdef: Any, reuse: tuple, metas: tuple, groups: tuple, fresh: tuple):
        self.graphdef = graphdef
        self.reuse = reuse
        self.metas = metas
        self.groups = groups
        self.fresh = fresh

    def _key(self) -> tuple:
        return (self.graphdef, self.reuse, self.metas, self.groups, self.fresh)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _VmapOut) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


jax.tree_util.register_pytree_node(_VmapOut, lambda o: ((), o), lambda o, _: o)


def _is_graph_obj(x: Any) -> bool:
    from ._lift import GRAPH_TYPES

    return isinstance(x, GRAPH_TYPES)


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


def _axis_choices(arg_axes: Sequence[Any], out_axes: Any) -> tuple:
    """Every axis a graph leaf can come out with: the values of the graph arguments' in_axes
    (StateAxes values included), and those of out_axes (graph objects created inside)."""
    found: list[Any] = []
    for ax in arg_axes:
        found.extend(ax.values if isinstance(ax, FilterMap) else (ax,))
    found.extend(jax.tree_util.tree_leaves(out_axes, is_leaf=lambda x: x is None))
    choices: list[Any] = []
    for ax in found:
        if (ax is None or type(ax) is int) and ax not in choices:
            choices.append(ax)
    return tuple(choices)


def _arg_leaf_axes(
    t: Traced, leaf_axes: list[Any], post: Any, axes: Sequence[Any]
) -> tuple[list[Any], list[int]]:
    """After a structural change: the axis of each leaf of the arguments, and the positions of
    the leaves created inside.

    A leaf that continues an input leaf (see ``match_leaves``) keeps its axis. A new one
    takes the axis its argument's in_axes gives it: an int, None, or the value of the first
    StateAxes entry its type and path match, as in flax.
    """
    out: list[Any] = []
    fresh: list[int] = []
    spec = t.spec
    origin = match_leaves(t, post)
    for j, (leaf, path, i) in enumerate(zip(post.leaves, post.paths, origin, strict=True)):
        if i is not None:
            out.append(leaf_axes[i])
            continue
        ax = axes[spec.positions[path[0]]]
        if isinstance(ax, FilterMap):
            try:
                ax = ax.resolve([leaf], [path[1:]], "nnx.vmap")[0]
            except TransformError:
                kind = f"a {type(leaf).__name__}" if isinstance(leaf, Variable) else "an array"
                raise TraceContextError(
                    _NO_AXIS.format(
                        where=_where(path, spec.positions, False),
                        kind=kind,
                        axes=ax,
                        pos=spec.positions[path[0]],
                        example=_example_filter(leaf, path),
                    )
                ) from None
        out.append(ax)
        fresh.append(j)
    return out, fresh


_BROADCAST_BATCHED = (
    "nnx.vmap: {where} has axis None (broadcast: one value shared by every batch element), "
    "but the function {did} a value that differs per batch element, which one broadcast "
    "value cannot hold.\n"
    "Fix: (1) give it a batch axis: {fix}; or (2) compute it from broadcast values only."
)
_NO_AXIS = (
    "nnx.vmap: {where} ({kind} created inside the function) matches no entry of {axes} given "
    "as in_axes[{pos}], so it has no axis to come out with.\n"
    "Fix: add an entry for it (e.g. `{example}: 0`), or end the StateAxes with a catch-all "
    "entry (`...: 0` to batch, `...: None` to broadcast)."
)
# The graph leaves go first in the vmapped function's output, with no None among them (jax
# counts None subtrees when it names the offending leaf), so this path points at one.
_OUT_AXES_NONE = re.compile(r"out_axes\[0\]\[(\d+)\]\[(\d+)\]\D*got axis spec None")


def _example_filter(leaf: Any, path: tuple) -> str:
    """A filter a user could write for this leaf: its Variable type, else its name."""
    if isinstance(leaf, Variable):
        cls = type(leaf)
        prefix = "nnx." if cls.__module__.startswith("nnx") else ""
        return prefix + cls.__name__
    return f"nnx.PathContains({path[-1]!r})" if path else "..."


def _where(path: tuple, positions: tuple, is_output: bool) -> str:
    """``args[0].attn.cache`` for a leaf of an argument (`path` starts with the argument's
    index among the graph arguments), ``obj.w (graph object 1 of the output)`` for a leaf
    of a returned graph object (`path` starts with that object's index)."""
    if is_output:
        return format_path(path[1:], "obj") + f" (graph object {path[0]} of the output)"
    return format_path(path[1:], f"args[{positions[path[0]]}]")


def _broadcast_error(err: ValueError, where: list[Any]) -> TraceContextError | None:
    """jax's error for a batched value at out_axes None, retold with the leaf's path; None
    when the error is about something else."""
    match = _OUT_AXES_NONE.search(str(err))
    if not match or not where:
        return None
    joint, members, fresh, n_in, positions = where[0]
    try:
        j = members[int(match[1])][int(match[2])]
    except IndexError:
        return None
    leaf, path = joint.leaves[j], joint.paths[j]
    is_output = j >= n_in
    if is_output:
        fix = "out_axes=0 for that output"
    else:
        fix = (
            f"in_axes=0 for args[{positions[path[1]]}], or a StateAxes entry for it, e.g. "
            f"nnx.StateAxes({{{_example_filter(leaf, path)}: 0, ...: None}})"
        )
    did = "created it with" if is_output or j in fresh else "assigned it"
    where_ = _where(path[1:], positions, is_output)
    return TraceContextError(_BROADCAST_BATCHED.format(where=where_, did=did, fix=fix))


def vmap(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    transform_metadata: Mapping[str, Any] = MappingProxyType({}),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.vmap`` over functions of graph objects (see the module docstring).

    Args:
      in_axes: per positional argument: an int, None, or (graph arguments) a StateAxes; a
        single value applies to every argument.
      out_axes: for the output; graph objects created inside take an int or None.
      transform_metadata: ``{nnx.PARTITION_NAME: 'layers'}`` inserts that name into the
        sharding annotation (``out_sharding`` metadata, see ``nnx.spmd``) of Variables created
        inside, at their out axis.
      graph: False refuses arguments sharing Variables or sub-objects (flax's tree mode).
      graph_updates: False refuses returning input Variables and structural changes inside
        (flax drops those silently). None (both): the ``nnx.set_graph_mode`` /
        ``nnx.set_graph_updates`` default in force when the transform is applied.
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
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    stack_meta = dict(transform_metadata or {})
    mode = resolve("vmap", graph, graph_updates)

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
        if mode is not None:
            check_call(mode, args, kwargs)
        spec, flat, values = split_args(args, {})
        leaf_axes = _leaf_axes(spec, flat, axes, "nnx.vmap")
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos else a for i, a in enumerate(args)]
        dyn_axes = [None if i in graph_pos else ax for i, ax in enumerate(axes)]
        # Graph leaves come back grouped by axis, so the number of leaves (and the axis of
        # each) may change inside: new Variables, deleted ones, new sub-modules.
        positions = cast("tuple[int, ...]", spec.positions)  # no keyword arguments: all ints
        choices = _axis_choices([axes[p] for p in positions], out_axes)
        group_of = {ax: g for g, ax in enumerate(choices)}
        where: list[Any] = []  # filled inside, read only to explain a broadcast error

        def pure(values: list, dyn: list, kwargs: dict) -> Any:
            with traced_call(spec, values, f, dyn, kwargs) as t:
                if mode is not None:
                    check_trace(mode, t, t.out)
                post = after(t)
                fresh: list[int]
                if post.graphdef == spec.graphdef:
                    post_axes, fresh = leaf_axes, []
                else:
                    post_axes, fresh = _arg_leaf_axes(t, leaf_axes, post, axes)
                out_plain, objs = _split_out(t.out)
                obj_axes = _graph_out_axes(t.out, out_axes, len(objs), "nnx.vmap")
                joint = follow(t, (t.roots, tuple(objs)))
                n_in = len(post.leaves)
                # Axis of each output-graph leaf: that of the graph object it belongs to.
                # (an output path starts (1, index of the object in objs, ...))
                all_axes = [
                    *post_axes,
                    *(obj_axes[cast(int, p[1])] for p in joint.flat.paths[n_in:]),
                ]
                groups: tuple[list[Any], ...] = tuple([] for _ in choices)
                members: tuple[list[int], ...] = tuple([] for _ in choices)
                leaf_groups = []
                for j, (value, ax) in enumerate(zip(joint.values, all_axes, strict=True)):
                    g = group_of.get(ax)
                    if g is None:
                        raise TransformError(
                            f"nnx.vmap: axis {ax!r} for a graph leaf; use an int or None."
                        )
                    groups[g].append(_NONE if value is None else value)
                    members[g].append(j)
                    leaf_groups.append(g)
                where[:] = [(joint.flat, members, set(fresh), n_in, spec.positions)]
                fresh_all = (*fresh, *range(n_in, len(joint.values)))
                info = _VmapOut(
                    joint.flat.graphdef,
                    joint.reuse,
                    tuple(joint.metas),
                    tuple(leaf_groups),
                    fresh_all,
                )
                return groups, info, out_plain

        plain_axes = out_axes if not isinstance(out_axes, list) else tuple(out_axes)
        vmapped = jax.vmap(
            pure,
            in_axes=(leaf_axes, dyn_axes, 0),
            out_axes=(choices, None, plain_axes),
            axis_name=axis_name,
            axis_size=axis_size,
            spmd_axis_name=spmd_axis_name,
        )
        try:
            groups, info, out_plain = vmapped(values, dyn, kwargs)
        except ValueError as err:
            retold = _broadcast_error(err, where)
            if retold is None:
                raise
            raise retold from err
        iters = [iter(g) for g in groups]
        leaves = [next(iters[g]) for g in info.groups]
        leaves = [None if isinstance(v, _Placeholder) else v for v in leaves]
        metas = list(info.metas)
        if stack_meta:
            for j in info.fresh:
                axis = choices[info.groups[j]]
                if metas[j] is not None and axis is not None:
                    metas[j] = Meta(stacked_metadata(metas[j], axis, stack_meta))
        _, objs = restore(flat, info.graphdef, leaves, metas, info.reuse)
        if not objs:
            return out_plain
        return jax.tree_util.tree_map(
            lambda x: objs[x.j] if isinstance(x, _Placeholder) else x,
            out_plain,
            is_leaf=lambda x: isinstance(x, _Placeholder),
        )

    return wrapper


def _edit_axes(tree: Any, axes: Any, edit: Callable[[Variable, int], None]) -> None:
    """Calls ``edit(variable, axis)`` for every Variable of `tree` under an int of `axes` (a
    pytree prefix of `tree`: an int for all, None to skip, or a tuple per element)."""
    if axes is None:
        return
    if isinstance(axes, int):
        for _, obj in iter_paths(tree):
            if isinstance(obj, Variable):
                edit(obj, axes)
        return
    if isinstance(axes, tuple | list) and isinstance(tree, tuple | list):
        if len(axes) != len(tree):
            raise TransformError(
                f"nnx.transform_metadata: axes {axes!r} has {len(axes)} entries for "
                f"{len(tree)} values. Fix: one int or None per value, or one int for all."
            )
        for sub, ax in zip(tree, axes, strict=True):
            _edit_axes(sub, ax, edit)
        return
    raise TransformError(
        f"nnx.transform_metadata: axes must be an int, None or a tuple of those, got {axes!r}."
    )


def transform_metadata(
    f: Callable | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    partition: str | None,
    graph: bool | None = None,
) -> Any:
    """Keeps the sharding metadata of stacked Variables right around `f`, for transforms that
    do not edit metadata themselves (``jax.vmap``, or flax code run in tree mode).

    Inside `f`, the Variables of the arguments (copies) lack the axis named `partition` at
    their `in_axes` position in their sharding annotation (``out_sharding``), as one slice of
    a stacked Variable; afterwards the axis is put back on them and added, at `out_axes`, to
    the Variables `f` returns. Values `f` assigns to the copies are written to the caller's
    Variables; their metadata is left as it was. ``graph=False`` refuses arguments sharing
    Variables or sub-objects (None: the ``nnx.set_graph_mode`` default).

    Example:
      >>> stacked = nnx.Param(jnp.ones((3, 4)), out_sharding=('layers', None))
      >>> @nnx.transform_metadata(in_axes=0, partition='layers')
      ... def inside(v):
      ...   return v.get_metadata('out_sharding')
      >>> inside(stacked), stacked.get_metadata('out_sharding')
      ((None,), ('layers', None))
    """
    if f is None:
        return functools.partial(
            transform_metadata,
            in_axes=in_axes,
            out_axes=out_axes,
            partition=partition,
            graph=graph,
        )
    names = {PARTITION_NAME: partition}
    tree = not graph_mode(graph)

    def remove(v: Variable, axis: int) -> None:
        replace_metadata(v, Meta(unstacked_metadata(v._meta, axis, names)))
        v.remove_axis(axis, partition)

    def add(v: Variable, axis: int) -> None:
        replace_metadata(v, Meta(stacked_metadata(v._meta, axis, names)))
        v.add_axis(axis, partition)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            bound = inspect.signature(f).bind(*args, **kwargs)
            args = tuple(bound.args)
            kwargs = dict(bound.kwargs)
        if tree:
            check_call(Mode("transform_metadata", True), args, kwargs)
        originals = [obj for _, obj in iter_paths(args) if isinstance(obj, Variable)]
        copies = clone(args)
        inner = [obj for _, obj in iter_paths(copies) if isinstance(obj, Variable)]
        _edit_axes(copies, in_axes if isinstance(in_axes, int | None) else tuple(in_axes), remove)
        before = [v._value for v in inner]
        out = f(*copies, **kwargs)
        _edit_axes(copies, in_axes if isinstance(in_axes, int | None) else tuple(in_axes), add)
        _edit_axes(out, out_axes, add)
        for orig, copy_, old in zip(originals, inner, before, strict=True):
            if copy_._value is not old:
                orig.value = copy_._value
        return out

    return wrapper
