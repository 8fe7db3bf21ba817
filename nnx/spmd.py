"""Sharding annotations: which mesh axes each axis of a Variable is split over.

A Variable is annotated with metadata: ``out_sharding`` (flax.nnx 0.12's key; the older
``sharding_names`` and ``sharding`` are read too) gives one entry per array axis, a mesh axis
name, a tuple of names, or None (not split); an optional ``mesh`` names the mesh. Then:

- :func:`with_partitioning` wraps an initializer so that the Variables it fills are annotated;
- :func:`get_partition_spec` and :func:`get_named_sharding` turn a State (or a model) into the
  same structure of ``PartitionSpec`` / ``NamedSharding``, for ``nnx.jit(in_shardings=...)``,
  ``jax.device_put`` and checkpoint targets;
- a Variable created while a mesh is known (its ``mesh`` metadata, or ``jax.set_mesh``) is
  placed at once: sharded in place under ``nnx.jit``, put on the devices eagerly. Turn this off
  with :func:`use_eager_sharding` (``False``);
- ``nnx.eval_shape`` gives the abstract leaves those shardings (see :func:`as_abstract`), so a
  checkpoint restores straight onto the mesh;
- :func:`logical_axis_rules` maps logical names (``'embed'``, ``'mlp'``) onto mesh axes.

Unlike flax.nnx, creating an annotated Variable while no mesh is known is not an error: the
annotation is kept, and used once a mesh is given (``get_named_sharding(state, mesh)``).

Example:
  >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
  >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('data', 'model'))
  >>> with jax.set_mesh(mesh):
  ...   layer = nnx.Linear(8, 16, kernel_init=init, rngs=nnx.Rngs(0))
  >>> layer.kernel.out_sharding
  ('data', 'model')
  >>> layer.kernel.value.sharding.spec, layer.kernel.value.addressable_shards[0].data.shape
  (P('data', 'model'), (4, 4))
  >>> nnx.get_partition_spec(nnx.state(layer))['kernel'].value
  P('data', 'model')
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from . import variables as _variables
from .errors import ArgumentError, ShardingError, format_path
from .graph import is_node, merge, split
from .pytreelib import Pytree
from .state import State
from .variables import Variable, with_metadata

__all__ = [
    "PARTITION_NAME",
    "as_abstract",
    "abstract_with_sharding",
    "get_named_sharding",
    "get_partition_spec",
    "get_var_pspec",
    "logical_axis_rules",
    "use_eager_sharding",
    "using_eager_sharding",
    "with_partitioning",
]

T = TypeVar("T")

PARTITION_NAME = "partition_name"
"""Key of ``transform_metadata`` (``nnx.vmap``) naming the axis that stacking adds."""

# The metadata keys that hold a sharding annotation, in the order they are looked up: flax.nnx
# 0.12 writes `out_sharding`; `sharding_names` and `sharding` are its older names.
_KEYS = ("out_sharding", "sharding_names", "sharding")


# -- annotations ----------------------------------------------------------------------------


def with_partitioning(
    initializer: Callable[..., Any],
    sharding: Any,
    mesh: jax.sharding.Mesh | None = None,
    **metadata: Any,
) -> Callable[..., Any]:
    """Wraps an initializer so the Variable it fills is annotated with `sharding`.

    Args:
      initializer: a function ``(key, shape, dtype) -> array``.
      sharding: one entry per array axis: a mesh axis name (or logical name, see
        :func:`logical_axis_rules`), a tuple of names, or None; or a ``PartitionSpec``.
      mesh: the mesh the Variable is placed on when created; without one, the mesh of
        ``jax.set_mesh`` if any (otherwise the Variable is only annotated).
      **metadata: more Variable metadata (e.g. ``sharding_rules``).

    Returns:
      An initializer whose result carries ``out_sharding=sharding`` and ``mesh=mesh``.

    Example:
      >>> init = nnx.with_partitioning(nnx.initializers.zeros, (None, 'model'))
      >>> layer = nnx.Linear(2, 4, kernel_init=init, rngs=nnx.Rngs(0))
      >>> layer.kernel.out_sharding, layer.kernel.mesh
      ((None, 'model'), None)
    """
    return with_metadata(initializer, out_sharding=sharding, mesh=mesh, **metadata)


def _annotation(meta: Mapping[str, Any]) -> tuple[str | None, Any]:
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


def _spec(meta: Mapping[str, Any]) -> PartitionSpec | None:
    """The PartitionSpec a Variable's metadata asks for, logical names resolved (or None)."""
    _, annotation = _annotation(meta)
    if annotation is None:
        return None
    names = _names(annotation)
    rules = _rules(meta)
    if rules:
        names = tuple(_apply_rules(n, rules) for n in names)
    return PartitionSpec(*names)


def get_var_pspec(v: Variable) -> PartitionSpec | None:
    """The PartitionSpec of one Variable: from its annotation, ``P()`` (replicated) for an
    unannotated array, None for a value that is not an array."""
    spec = _spec(v.get_metadata())
    if spec is not None:
        return spec
    return PartitionSpec() if hasattr(v.value, "shape") else None


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
_NO_MESH_MESSAGE = (
    "nnx.as_abstract: {what} is annotated {key}={names!r}, but no mesh is known to build its "
    "sharding from.\nFix: call it under `with jax.set_mesh(mesh):`, or annotate with a mesh, "
    "nnx.with_partitioning(init, names, mesh=mesh)."
)


def _mesh_axes(spec: PartitionSpec) -> Iterator[str]:
    for entry in spec:
        if isinstance(entry, tuple):
            yield from (e for e in entry if isinstance(e, str))
        elif isinstance(entry, str):
            yield entry


def _check(
    spec: PartitionSpec, meta: Mapping[str, Any], shape: Any, mesh: Any, what: Callable[[], str]
) -> None:
    """ShardingError unless `spec` fits an array of `shape` (and the axes of `mesh`)."""
    key, annotation = _annotation(meta)
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
            key, names = _annotation(meta)
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


def _key_name(key: Any) -> Hashable:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _at(tree: Any, path: tuple, v: Variable, root: str | None = None) -> Callable[[], str]:
    """Describes `v` by its path in `tree` (rooted at `root`, else named after the tree)."""
    if root is None:
        if isinstance(tree, State):
            root = "state"
        else:
            root = type(tree).__name__ if isinstance(tree, Pytree) else "tree"
    keys = tuple(_key_name(k) for k in path)
    return lambda: f"{type(v).__name__} at {format_path(keys, root)}"


def _creation_site(cls: type) -> Callable[[], str]:
    def where() -> str:
        # On the error path only: name the Module whose code is creating the Variable.
        frame = sys._getframe(1)
        for _ in range(32):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, Pytree):
                return f"A new {cls.__name__} created by {type(owner).__name__}"
            frame = frame.f_back
        return f"A new {cls.__name__}"

    return where


# -- State -> PartitionSpec / NamedSharding --------------------------------------------------


def _is_var(x: Any) -> bool:
    return isinstance(x, Variable)


def _checked_spec(tree: Any, path: tuple, v: Variable, mesh: Any) -> PartitionSpec | None:
    meta = v.get_metadata()
    spec = get_var_pspec(v)
    if spec is not None:
        _check(spec, meta, getattr(v.value, "shape", None), mesh, _at(tree, path, v))
    return spec


def get_partition_spec(tree: T) -> T:
    """The same structure, each Variable holding its ``PartitionSpec`` instead of its value.

    Args:
      tree: a State (``nnx.state(model)``), a Module, a Variable, or any pytree of them and
        arrays. An unannotated array gets ``P()`` (replicated); a non-array, None.

    Returns:
      The same structure; Variables keep their type and metadata.

    Raises:
      ShardingError: an annotation has more entries than its array has axes (path named).

    Example:
      >>> state = nnx.State({'w': nnx.Param(jnp.ones((4, 2)), out_sharding=('model', None)),
      ...                    'b': nnx.Param(jnp.ones(2))})
      >>> specs = nnx.get_partition_spec(state)
      >>> specs['w'].value, specs['b'].value
      (P('model', None), P())
    """

    def one(path: tuple, x: Any) -> Any:
        if isinstance(x, Variable):
            return x.replace(_checked_spec(tree, path, x, None))
        return PartitionSpec() if hasattr(x, "shape") else None

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


def get_named_sharding(tree: T, mesh: jax.sharding.Mesh) -> T:
    """The same structure, each Variable holding its ``NamedSharding`` on `mesh`.

    Use it as ``nnx.jit`` ``in_shardings``/``out_shardings``, with ``jax.device_put(state,
    shardings)``, or to build a sharded checkpoint target.

    Args:
      tree: as for :func:`get_partition_spec`.
      mesh: the mesh every annotation refers to.

    Raises:
      ShardingError: an annotation does not fit its array's rank, or names an axis the mesh
        does not have (path named).

    Example:
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
      >>> state = nnx.State({'w': nnx.Param(jnp.ones((8, 4)), out_sharding=('data', 'model'))})
      >>> shardings = nnx.get_named_sharding(state, mesh)
      >>> w = jax.device_put(state, shardings)['w'].value
      >>> w.sharding.spec, w.addressable_shards[0].data.shape
      (P('data', 'model'), (4, 1))
    """

    def one(path: tuple, x: Any) -> Any:
        if isinstance(x, Variable):
            spec = _checked_spec(tree, path, x, mesh)
            return x.replace(None if spec is None else NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec()) if hasattr(x, "shape") else None

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


# -- meshes and placement -------------------------------------------------------------------


def _context_mesh() -> Any:
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


def _place_new_value(cls: type, value: Any, meta: Mapping[str, Any]) -> Any:
    """Installed into ``Variable.__init__``: shards the value of a new annotated Variable
    when a mesh is known; any other value passes through."""
    key, annotation = _annotation(meta)
    if key is None or not _CONTEXT.eager or meta.get("eager_sharding") is False:
        return value
    if not isinstance(value, jax.Array | np.ndarray):
        return value
    mesh = meta.get("mesh")
    if isinstance(annotation, NamedSharding):
        mesh = annotation.mesh
    if mesh is None:
        mesh = _context_mesh()
        if mesh is None:
            return value
    spec = _spec(meta)
    assert spec is not None
    _check(spec, meta, value.shape, mesh, _creation_site(cls))
    sharding = NamedSharding(mesh, spec)
    if isinstance(value, jax.core.Tracer) or isinstance(mesh, jax.sharding.AbstractMesh):
        if mesh.are_all_axes_explicit:
            return jax.sharding.reshard(value, sharding)
        return jax.lax.with_sharding_constraint(value, sharding)
    _check_divisible(spec, meta, value.shape, mesh, _creation_site(cls))
    return jax.device_put(value, sharding)


_variables._place_new_value = _place_new_value


# -- abstract values ------------------------------------------------------------------------


def _abstract_sharding(v: Variable, mesh: Any, what: Callable[[], str]) -> Any:
    """The sharding an abstract value of `v` gets on `mesh` (or None to leave it)."""
    value = v.value
    current = getattr(value, "sharding", None)
    if current is not None:
        # An abstract mesh (explicit axes under jax.eval_shape) becomes the concrete one.
        if (
            isinstance(current, NamedSharding)
            and isinstance(current.mesh, jax.sharding.AbstractMesh)
            and isinstance(mesh, jax.sharding.Mesh)
            and mesh.abstract_mesh == current.mesh
        ):
            return NamedSharding(mesh, current.spec)
        return None
    meta = v.get_metadata()
    spec = get_var_pspec(v)
    if spec is None:
        return None
    _check(spec, meta, value.shape, mesh, what)
    return NamedSharding(mesh, spec)


def _is_abstract(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _shard_abstract(tree: Any, *, annotated_only: bool = False, root: str | None = None) -> None:
    """Gives the abstract (``ShapeDtypeStruct``) Variables of `tree` their shardings, in
    place: each on its ``mesh`` metadata, else on the mesh of ``jax.set_mesh``.

    What ``nnx.eval_shape`` applies to its output (every Variable, ``P()`` for an
    unannotated one, as in flax); with `annotated_only`, only annotated ones.
    """
    context = _context_mesh()
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_var)[0]
    for path, v in leaves:
        if not isinstance(v, Variable) or not _is_abstract(v.value):
            continue
        meta = v.get_metadata()
        if annotated_only and _annotation(meta)[0] is None:
            continue
        mesh = meta.get("mesh")
        if mesh is None:
            mesh = context
        what = _at(tree, path, v, root)
        if mesh is None:
            if annotated_only:
                key, names = _annotation(meta)
                raise ShardingError(_NO_MESH_MESSAGE.format(what=what(), key=key, names=names))
            continue
        sharding = _abstract_sharding(v, mesh, what)
        if sharding is not None:
            value = v.value
            v.value = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)


def as_abstract(tree: T) -> T:
    """A copy of `tree` whose abstract, annotated Variables carry their shardings.

    For abstract models built without a mesh in sight: each annotated Variable holding a
    ``jax.ShapeDtypeStruct`` without a sharding gets a ``NamedSharding`` from its ``mesh``
    metadata or the mesh of ``jax.set_mesh``. (``nnx.eval_shape`` already does this when a
    mesh is known.)

    Raises:
      ShardingError: an annotated Variable has no mesh and none is set.

    Example:
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
      >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('data', 'model'))
      >>> abstract = nnx.eval_shape(lambda: nnx.Linear(8, 16, kernel_init=init,
      ...                                              rngs=nnx.Rngs(0)))
      >>> abstract.kernel.value.sharding is None
      True
      >>> with jax.set_mesh(mesh):
      ...   abstract = nnx.as_abstract(abstract)
      >>> abstract.kernel.value.sharding.spec
      P('data', 'model')
    """
    if is_node(tree):
        graphdef, state = split(tree)
        _shard_abstract(state, annotated_only=True, root=type(tree).__name__)
        return merge(graphdef, state)
    copy = jax.tree_util.tree_map(lambda x: x.copy() if _is_var(x) else x, tree, is_leaf=_is_var)
    _shard_abstract(copy, annotated_only=True)
    return copy


abstract_with_sharding = as_abstract  # flax.nnx's older name


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


def _stacked_metadata(
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
    key, names = _annotation(meta)
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


def _unstacked_metadata(
    meta: Mapping[str, Any], index: int, transform_metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The metadata of one slice of a Variable stacked along axis `index` (inside
    ``nnx.scan``): the inverse of :func:`_stacked_metadata`."""
    return _edit_axis_names(meta, index, transform_metadata, _remove)
