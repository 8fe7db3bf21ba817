"""Explicit parallelism over graph objects: ``shard_map`` and ``pmap``.

For a graph argument, ``in_specs`` (``in_axes`` for pmap) may be one PartitionSpec (axis)
for every leaf, or a ``{filter: spec}`` mapping (:class:`nnx.StateSharding` /
:class:`nnx.StateAxes`) choosing per leaf. State changed inside comes back with the spec it
went in with. The structure of the arguments must not change inside.

Example:
  >>> import numpy as np
  >>> from jax.sharding import Mesh, PartitionSpec as P
  >>> mesh = Mesh(np.array(jax.devices()[:4]), ('x',))
  >>> class Count(nnx.Module):
  ...   def __init__(self):
  ...     self.n = nnx.BatchStat(jnp.zeros(4))
  >>> c = Count()
  >>> def f(c, x):
  ...   c.n.value += 1
  ...   return x * 2
  >>> y = nnx.shard_map(f, mesh=mesh, in_specs=(P('x'), P('x')), out_specs=P('x'))(c, jnp.ones(8))
  >>> y.shape, c.n.value.tolist()
  ((8,), [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax

from .._graph_mode import graph_mode
from .._graph_mode import graph_updates as graph_updates_default
from ..errors import TransformError
from ._lift import FilterMap, Out, apply, collect, split_args, traced_call
from ._modes import Mode, check_call, check_trace, resolve

__all__ = ["pmap", "shard_map"]


def _per_leaf(spec: Any, flat: Any, per_arg: tuple, what: str) -> list[Any]:
    out: list[Any] = []
    for k, p in enumerate(spec.positions):
        a, b = spec.slices[k]
        s = per_arg[p]
        if isinstance(s, FilterMap):
            out.extend(s.resolve(flat.leaves[a:b], spec.paths[a:b], what))
        else:
            out.extend([s] * (b - a))
    return out


def _pure(f: Callable, spec: Any, what: str, found: list, mode: Mode | None) -> Callable:
    """The mapped function: every leaf comes back (with its axis); the structure is fixed.
    The traced call's Out lands in `found`."""

    def pure(values: list, dyn: list) -> Any:
        with traced_call(spec, values, f, dyn) as t:
            if mode is not None:
                check_trace(mode, t, t.out)
            out, new, info = collect(t, t.out, force=True, allow_structure_change=False, what=what)
            found[:] = [info]
            return out, new

    return pure


def _per_arg(specs: Any, n: int, what: str) -> tuple:
    if isinstance(specs, tuple | list):
        if len(specs) != n:
            raise TransformError(
                f"{what}: {len(specs)} specs for {n} positional arguments. Fix: one per argument."
            )
        return tuple(specs)
    return (specs,) * n


def shard_map(
    f: Callable | None = None,
    *,
    mesh: Any,
    in_specs: Any,
    out_specs: Any,
    axis_names: Any = frozenset(),
    check_vma: bool = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.shard_map`` over functions of graph objects (see the module docstring).

    ``graph=False`` refuses arguments sharing Variables or sub-objects (flax's tree mode);
    ``graph_updates=False`` refuses returning input Variables. None: the
    ``nnx.set_graph_mode`` / ``nnx.set_graph_updates`` default when it is applied.
    """
    if f is None:
        return functools.partial(
            shard_map,
            mesh=mesh,
            in_specs=in_specs,
            out_specs=out_specs,
            check_vma=check_vma,
            axis_names=axis_names,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    mode = resolve("shard_map", graph, graph_updates)

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        if mode is not None:
            check_call(mode, args)
        per_arg = _per_arg(in_specs, len(args), "nnx.shard_map")
        spec, flat, values = split_args(args, {})
        leaf_specs = _per_leaf(spec, flat, per_arg, "nnx.shard_map")
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos else a for i, a in enumerate(args)]
        dyn_specs = [None if i in graph_pos else s for i, s in enumerate(per_arg)]
        found: list[Out] = []
        mapped = jax.shard_map(
            _pure(f, spec, "nnx.shard_map", found, mode),
            mesh=mesh,
            in_specs=(leaf_specs, dyn_specs),
            out_specs=(out_specs, leaf_specs),
            check_vma=check_vma,
            axis_names=axis_names,
        )
        out, new = mapped(values, dyn)
        return apply(flat, out, new, found[0])

    return wrapper


def pmap(
    f: Callable | None = None,
    *,
    axis_name: Any = None,
    in_axes: Any = 0,
    out_axes: Any = 0,
    static_broadcasted_argnums: tuple[int, ...] = (),
    devices: Any = None,
    backend: str | None = None,
    axis_size: int | None = None,
    donate_argnums: tuple[int, ...] = (),
    transform_metadata: Mapping[str, Any] = MappingProxyType({}),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.pmap`` over functions of graph objects: per-device state (in_axes 0) or
    replicated state (None) is written back with its axis. `transform_metadata` is accepted
    for flax compatibility and must be empty (nnx.pmap adds no metadata); `graph` and
    `graph_updates` are as in :func:`shard_map`."""
    if f is None:
        return functools.partial(
            pmap,
            axis_name=axis_name,
            in_axes=in_axes,
            out_axes=out_axes,
            static_broadcasted_argnums=static_broadcasted_argnums,
            devices=devices,
            backend=backend,
            axis_size=axis_size,
            donate_argnums=donate_argnums,
            transform_metadata=transform_metadata,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    if transform_metadata:
        raise TransformError(
            f"nnx.pmap(transform_metadata={dict(transform_metadata)!r}): nnx.pmap does not "
            "edit Variable metadata. Fix: drop transform_metadata (use nnx.vmap or nnx.scan "
            "for stacked layers with partition metadata)."
        )
    mode = resolve("pmap", graph, graph_updates)
    if static_broadcasted_argnums or donate_argnums:
        raise TransformError(
            "nnx.pmap does not support static_broadcasted_argnums or donate_argnums; use "
            "nnx.jit with shardings (or nnx.shard_map) for new code."
        )

    @functools.wraps(f)
    def wrapper(*args: Any) -> Any:
        if mode is not None:
            check_call(mode, args)
        per_arg = _per_arg(in_axes, len(args), "nnx.pmap")
        spec, flat, values = split_args(args, {})
        leaf_axes = _per_leaf(spec, flat, per_arg, "nnx.pmap")
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos else a for i, a in enumerate(args)]
        dyn_axes = [None if i in graph_pos else ax for i, ax in enumerate(per_arg)]
        found: list[Out] = []
        mapped = jax.pmap(
            _pure(f, spec, "nnx.pmap", found, mode),
            axis_name=axis_name,
            in_axes=(leaf_axes, dyn_axes),
            out_axes=(out_axes, leaf_axes),
            devices=devices,
            backend=backend,
            axis_size=axis_size,
        )
        out, new = mapped(values, dyn)
        return apply(flat, out, new, found[0])

    return wrapper
