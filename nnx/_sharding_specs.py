"""Shardings of Variables and States: annotations turned into ``PartitionSpec``s and
``NamedSharding``s, and abstract values given their shardings.

Floor: just above ``state.py`` (it imports ``variables``, ``pytreelib``, ``state`` and the
ground-floor ``nnx._sharding_meta``, never ``graph`` or anything higher), so ``nnx.eval_shape``
in ``transforms/`` uses it without reaching up to ``nnx.spmd``. The public names
(:func:`get_partition_spec`, :func:`get_named_sharding`, :func:`get_var_pspec`) are re-exported
by ``nnx.spmd`` and ``nnx``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jax
from jax.sharding import NamedSharding, PartitionSpec

from ._sharding_meta import check_spec_fits, context_mesh, partition_spec_of, sharding_annotation
from .errors import ShardingError, format_path
from .pytreelib import Pytree
from .state import State
from .variablelib import Variable

__all__ = ["get_named_sharding", "get_partition_spec", "get_var_pspec"]

T = TypeVar("T")


def get_var_pspec(v: Variable) -> PartitionSpec | None:
    """The PartitionSpec of one Variable: from its annotation, ``P()`` (replicated) for an
    unannotated array, None for a value that is not an array."""
    spec = partition_spec_of(v.get_metadata())
    if spec is not None:
        return spec
    return PartitionSpec() if hasattr(v.value, "shape") else None


_NO_MESH_MESSAGE = (
    "nnx.as_abstract: {what} is annotated {key}={names!r}, but no mesh is known to build its "
    "sharding from.\nFix: call it under `with jax.set_mesh(mesh):`, or annotate with a mesh, "
    "nnx.with_partitioning(init, names, mesh=mesh)."
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


# -- State -> PartitionSpec / NamedSharding --------------------------------------------------


def is_variable(x: Any) -> bool:
    return isinstance(x, Variable)


def _checked_spec(tree: Any, path: tuple, v: Variable, mesh: Any) -> PartitionSpec | None:
    meta = v.get_metadata()
    spec = get_var_pspec(v)
    if spec is not None:
        check_spec_fits(spec, meta, getattr(v.value, "shape", None), mesh, _at(tree, path, v))
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

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=is_variable)


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

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=is_variable)


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
    check_spec_fits(spec, meta, value.shape, mesh, what)
    return NamedSharding(mesh, spec)


def _is_abstract(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def shard_abstract(tree: Any, *, annotated_only: bool = False, root: str | None = None) -> None:
    """Gives the abstract (``ShapeDtypeStruct``) Variables of `tree` their shardings, in
    place: each on its ``mesh`` metadata, else on the mesh of ``jax.set_mesh``.

    What ``nnx.eval_shape`` applies to its output (every Variable, ``P()`` for an
    unannotated one, as in flax); with `annotated_only`, only annotated ones.
    """
    context = context_mesh()
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
    for path, v in leaves:
        if not isinstance(v, Variable) or not _is_abstract(v.value):
            continue
        meta = v.get_metadata()
        if annotated_only and sharding_annotation(meta)[0] is None:
            continue
        mesh = meta.get("mesh")
        if mesh is None:
            mesh = context
        what = _at(tree, path, v, root)
        if mesh is None:
            if annotated_only:
                key, names = sharding_annotation(meta)
                raise ShardingError(_NO_MESH_MESSAGE.format(what=what(), key=key, names=names))
            continue
        sharding = _abstract_sharding(v, mesh, what)
        if sharding is not None:
            value = v.value
            v.value = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
