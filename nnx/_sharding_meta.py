"""Sharding metadata of Variables: the floor below ``variablelib.py`` that ``nnx.spmd`` builds on.

Floor: ground, next to ``errors.py``. It imports only jax, numpy and ``nnx.errors``, never a
Variable, Pytree or State, so ``variablelib.py`` can import it (``Variable.__init__`` calls
:func:`place_new_value`) and ``transforms/`` and ``nn/`` reach it without reaching up to
``nnx.spmd``. What is here works on plain metadata mappings:

- reading an annotation (``out_sharding``, or its older names ``sharding_names``/``sharding``)
  and resolving logical names into a ``PartitionSpec`` (:func:`logical_axis_rules`);
- the eager-sharding setting (:class:`use_eager_sharding`, :func:`using_eager_sharding`);
- :func:`place_new_value`, which places the value of a new annotated Variable on the mesh;
- the rank, mesh-axis and divisibility checks with their messages;
- ``transform_metadata`` stacking (``PARTITION_NAME``, :func:`stacked_metadata`,
  :func:`unstacked_metadata`) for ``nnx.vmap`` and ``nnx.scan``.

The State/Variable side (``get_partition_spec``, ``get_named_sharding``, abstract shardings)
is one floor up, in ``nnx._sharding_specs``; the public face of both is ``nnx.spmd``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from .errors import ArgumentError, ShardingError

__all__ = [
    "PARTITION_NAME",
    "logical_axis_rules",
    "use_eager_sharding",
    "using_eager_sharding",
]

T = TypeVar("T")

PARTITION_NAME = "partition_name"
"""Key of ``transform_metadata`` (``nnx.vmap``) naming the axis that stacking adds."""

# The metadata keys that hold a sharding annotation, in the order they are looked up: flax.nnx
# 0.12 writes `out_sharding`; `sharding_names` and `sharding` are its older names.
_KEYS = ("out_sharding", "sharding_names", "sharding")


# -- annotations ----------------------------------------------------------------------------


def sharding_annotation(meta: Mapping[str, Any]) -> tuple[str | None, Any]:
    """The key holding the sharding annotation (or None) and its value."""
    for key in _KEYS:
        names = meta.get(key)
        if names is not None and not (isinstance(names, tuple | list) and not names):
            return key, names
    return None, None


def _names(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, NamedSharding):
        return tuple(annotation.spec)
    if isinstance(annotation, str):
        return (annotation,)
    return tuple(annotation)


# -- logical axis rules ---------------------------------------------------------------------


class _Context(threading.local):
    def __init__(self) -> None:
        self.rules: tuple[tuple[str, Any], ...] = ()
        self.eager = True


_CONTEXT = _Context()


def _check_rules(rules: Any, what: str) -> tuple[tuple[str, Any], ...]:
    try:
        pairs = tuple((alias, target) for alias, target in rules)
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or not all(isinstance(alias, str) for alias, _ in pairs):
        raise ArgumentError(
            f"{what} must be a sequence of (logical name, mesh axis) pairs, got {rules!r}.\n"
            "Fix: e.g. (('batch', 'data'), ('embed', None), ('mlp', 'model'))."
        )
    return pairs


@contextlib.contextmanager
def logical_axis_rules(rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Within the block, annotations name logical axes that `rules` map onto mesh axes.

    Args:
      rules: ``(logical name, mesh axis)`` pairs; the mesh axis is a name, a tuple of names,
        or None (not split). A Variable's ``sharding_rules`` metadata adds rules of its own.

    Example:
      >>> v = nnx.Param(jnp.zeros((4, 8)), out_sharding=('embed', 'mlp'))
      >>> with nnx.logical_axis_rules([('embed', None), ('mlp', 'model')]):
      ...   nnx.get_partition_spec(v).value
      P(None, 'model')
    """
    previous = _CONTEXT.rules
    _CONTEXT.rules = _check_rules(rules, "nnx.logical_axis_rules")
    try:
        yield
    finally:
        _CONTEXT.rules = previous


def _rules(meta: Mapping[str, Any]) -> dict[str, Any]:
    rules = dict(_CONTEXT.rules)
    local = meta.get("sharding_rules")
    if local:
        for alias, target in _check_rules(local, "The sharding_rules metadata"):
            if alias in rules and rules[alias] != target:
                raise ShardingError(
                    f"Logical axis {alias!r} maps to {rules[alias]!r} in nnx.logical_axis_rules "
                    f"but to {target!r} in a Variable's sharding_rules metadata: one logical "
                    "axis cannot go to two places.\nFix: drop one of the two rules, or "
                    "rename the logical axis of the Variable."
                )
            rules[alias] = target
    return rules


def _apply_rules(name: Any, rules: Mapping[str, Any]) -> Any:
    if isinstance(name, str):
        return rules.get(name, name)
    if isinstance(name, tuple):
        out: list[Any] = []
        for part in name:
            mapped = _apply_rules(part, rules)
            if mapped is not None:
                out.extend(mapped if isinstance(mapped, tuple) else (mapped,))
        return tuple(out) or None
    return name


def partition_spec_of(meta: Mapping[str, Any]) -> PartitionSpec | None:
    """The PartitionSpec a Variable's metadata asks for, logical names resolved (or None)."""
    _, annotation = sharding_annotation(meta)
    if annotation is None:
        return None
    names = _names(annotation)
    rules = _rules(meta)
    if rules:
        names = tuple(_apply_rules(n, rules) for n in names)
    return PartitionSpec(*names)


# -- checks and messages --------------------------------------------------------------------

_RANK_MESSAGE = (
    "{what} has shape {shape} (rank {rank}) but its sharding annotation {key}={names!r} has "
    "{n} entries: a PartitionSpec has at most one entry per array axis.\n"
    "Fix: give one entry per axis, None for an axis that is not split, e.g. "
    "nnx.with_partitioning(init, {example!r}) or kernel_metadata={{'out_sharding': "
    "{example!r}}}."
)
_AXIS_MESSAGE = (
    "{what} is annotated {key}={names!r}, which shards over mesh axis {axis!r}, but the mesh "
    "has axes {mesh_axes}: the spec can only name axes of the mesh.\n"
    "Fix: (1) use a mesh with an axis named {axis!r}; (2) map the name onto a mesh axis, "
    "`with nnx.logical_axis_rules([({axis!r}, 'data')]):` (None: not split); or (3) change "
    "the annotation."
)


def _mesh_axes(spec: PartitionSpec) -> Iterator[str]:
    for entry in spec:
        if isinstance(entry, tuple):
            yield from (e for e in entry if isinstance(e, str))
        elif isinstance(entry, str):
            yield entry


def check_spec_fits(
    spec: PartitionSpec, meta: Mapping[str, Any], shape: Any, mesh: Any, what: Callable[[], str]
) -> None:
    """ShardingError unless `spec` fits an array of `shape` (and the axes of `mesh`)."""
    key, annotation = sharding_annotation(meta)
    if key is None:
        return
    if shape is not None and len(spec) > len(shape):
        names = _names(annotation)
        raise ShardingError(
            _RANK_MESSAGE.format(
                what=what(),
                shape=tuple(shape),
                rank=len(shape),
                key=key,
                names=annotation,
                n=len(names),
                example=names[: len(shape)] if len(shape) else (),
            )
        )
    if mesh is not None:
        for axis in _mesh_axes(spec):
            if axis not in mesh.axis_names:
                raise ShardingError(
                    _AXIS_MESSAGE.format(
                        what=what(),
                        key=key,
                        names=annotation,
                        axis=axis,
                        mesh_axes=tuple(mesh.axis_names),
                    )
                )


_DIVIDE_MESSAGE = (
    "{what} has shape {shape}, and its annotation {key}={names!r} splits axis {axis} (size "
    "{size}) over {parts} devices (mesh axes {axes}), which does not divide it: a value is "
    "placed in equal shards.\n"
    "Fix: make axis {axis} a multiple of {parts}, or split it over fewer devices (None: not "
    "split)."
)


def _check_divisible(
    spec: PartitionSpec, meta: Mapping[str, Any], shape: Any, mesh: Any, what: Callable[[], str]
) -> None:
    """ShardingError unless every split axis of `shape` divides evenly on `mesh`."""
    for axis, entry in enumerate(spec):
        axes = entry if isinstance(entry, tuple) else (entry,)
        axes = tuple(a for a in axes if isinstance(a, str))
        parts = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if shape[axis] % parts:
            key, names = sharding_annotation(meta)
            raise ShardingError(
                _DIVIDE_MESSAGE.format(
                    what=what(),
                    shape=tuple(shape),
                    key=key,
                    names=names,
                    axis=axis,
                    size=shape[axis],
                    parts=parts,
                    axes=axes,
                )
            )


def _is_pytree(obj: Any) -> bool:
    # This floor sits below pytreelib, so the Pytree base (Module, Rngs) is recognised by its
    # qualified name rather than imported.
    return any(
        c.__name__ == "Pytree" and c.__module__ == "nnx.pytreelib" for c in type(obj).__mro__
    )


def _creation_site(cls: type) -> Callable[[], str]:
    def where() -> str:
        # On the error path only: name the Module whose code is creating the Variable.
        frame: types.FrameType | None = sys._getframe(1)
        for _ in range(32):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if owner is not None and _is_pytree(owner):
                return f"A new {cls.__name__} created by {type(owner).__name__}"
            frame = frame.f_back
        return f"A new {cls.__name__}"

    return where


# -- meshes and placement -------------------------------------------------------------------


def context_mesh() -> Any:
    """The mesh of ``jax.set_mesh``: concrete where known, abstract inside ``jax.jit``."""
    abstract = jax.sharding.get_abstract_mesh()
    if abstract.empty:
        return None
    try:
        concrete = jax.sharding.get_mesh()
    except ValueError:  # inside jax.jit only the abstract mesh is known
        return abstract
    return abstract if concrete.empty else concrete


class use_eager_sharding:
    """Sets whether annotated Variables are placed on the mesh when created (default True).

    Takes effect when called; used as a context manager, the previous setting comes back at
    the end of the block. Also usable as a decorator. A Variable created with
    ``eager_sharding=False`` metadata is never placed.

    Args:
      value: True to place new annotated Variables, False to only annotate them.

    Example:
      >>> with nnx.use_eager_sharding(False):
      ...   nnx.using_eager_sharding()
      False
      >>> nnx.using_eager_sharding()
      True
    """

    def __init__(self, value: bool, /):
        self._value = bool(value)
        self._previous = _CONTEXT.eager
        _CONTEXT.eager = self._value

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        _CONTEXT.eager = self._previous

    def __call__(self, f: Callable[..., T]) -> Callable[..., T]:
        _CONTEXT.eager = self._previous  # as a decorator, only the calls use the setting

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            previous = _CONTEXT.eager
            _CONTEXT.eager = self._value
            try:
                return f(*args, **kwargs)
            finally:
                _CONTEXT.eager = previous

        return wrapper

    def __repr__(self) -> str:
        return f"use_eager_sharding({self._value})"


def using_eager_sharding() -> bool:
    """Whether annotated Variables are placed on the mesh when created (see
    :class:`use_eager_sharding`)."""
    return _CONTEXT.eager


def place_new_value(cls: type, value: Any, meta: Mapping[str, Any]) -> Any:
    """Installed into ``Variable.__init__``: shards the value of a new annotated Variable
    when a mesh is known; any other value passes through."""
    key, annotation = sharding_annotation(meta)
    if key is None or not _CONTEXT.eager or meta.get("eager_sharding") is False:
        return value
    if not isinstance(value, jax.Array | np.ndarray):
        return value
    mesh = meta.get("mesh")
    if isinstance(annotation, NamedSharding):
        mesh = annotation.mesh
    if mesh is None:
        mesh = context_mesh()
        if mesh is None:
            return value
    spec = partition_spec_of(meta)
    assert spec is not None
    check_spec_fits(spec, meta, value.shape, mesh, _creation_site(cls))
    sharding = NamedSharding(mesh, spec)
    if isinstance(value, jax.core.Tracer) or isinstance(mesh, jax.sharding.AbstractMesh):
        if mesh.are_all_axes_explicit:
            return jax.sharding.reshard(value, sharding)
        return jax.lax.with_sharding_constraint(value, sharding)
    _check_divisible(spec, meta, value.shape, mesh, _creation_site(cls))
    return jax.device_put(value, sharding)


# -- stacking (nnx.vmap transform_metadata) -------------------------------------------------


def _insert(names: Any, index: int, name: Any) -> Any:
    entries = list(_names(names))
    if index < 0:
        index = max(index + len(entries) + 1, 0)
    entries.extend([None] * (index - len(entries)))
    entries.insert(index, name)
    return _like(names, entries)


def _like(names: Any, entries: list) -> Any:
    """`entries` in the form `names` had: a PartitionSpec, a NamedSharding, or a tuple."""
    if isinstance(names, PartitionSpec):
        return PartitionSpec(*entries)
    if isinstance(names, NamedSharding):
        return NamedSharding(names.mesh, PartitionSpec(*entries))
    return tuple(entries)


def stacked_metadata(
    meta: Mapping[str, Any], index: int, transform_metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The metadata of a Variable stacked along a new axis at `index` (``nnx.vmap`` out_axes).

    ``transform_metadata[PARTITION_NAME]`` goes into the sharding annotation at `index`; any
    other entry ``{key: name}`` goes into the tuple metadata ``key`` the same way, as in flax.
    """
    return _edit_axis_names(meta, index, transform_metadata, _insert)


def _edit_axis_names(
    meta: Mapping[str, Any],
    index: int,
    transform_metadata: Mapping[str, Any],
    edit: Callable[[Any, int, Any], Any],
) -> dict[str, Any]:
    """`meta` with ``edit(names, index, name)`` applied to the sharding annotation (for
    ``PARTITION_NAME``) and to each other tuple metadata named in `transform_metadata`."""
    out = dict(meta)
    partition = transform_metadata.get(PARTITION_NAME)
    key, names = sharding_annotation(meta)
    if partition is not None and key is not None:
        out[key] = edit(names, index, partition)
    for other, name in transform_metadata.items():
        if other != PARTITION_NAME and isinstance(meta.get(other), tuple):
            out[other] = edit(meta[other], index, name)
    return out


def _remove(names: Any, index: int, name: Any) -> Any:
    entries = list(_names(names))
    if index < 0:
        index += len(entries)
    if not 0 <= index < len(entries) or entries[index] != name:
        return names  # not stacked along this axis under this name: left as it is
    del entries[index]
    return _like(names, entries)


def unstacked_metadata(
    meta: Mapping[str, Any], index: int, transform_metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The metadata of one slice of a Variable stacked along axis `index` (inside
    ``nnx.scan``): the inverse of :func:`stacked_metadata`."""
    return _edit_axis_names(meta, index, transform_metadata, _remove)
