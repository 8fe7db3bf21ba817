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

from collections.abc import Callable
from typing import Any, TypeVar

import jax

from ._graph_mode import check_tree_mode

# The machinery lives one and two floors down, so that variablelib.py, transforms/ and nn/
# reach it without reaching up here; nnx.spmd is its public face (and keeps the private
# names other modules used to import from it).
from ._sharding_meta import PARTITION_NAME as PARTITION_NAME
from ._sharding_meta import logical_axis_rules as logical_axis_rules
from ._sharding_meta import place_new_value as place_new_value
from ._sharding_meta import stacked_metadata as stacked_metadata
from ._sharding_meta import unstacked_metadata as unstacked_metadata
from ._sharding_meta import use_eager_sharding as use_eager_sharding
from ._sharding_meta import using_eager_sharding as using_eager_sharding
from ._sharding_specs import get_named_sharding as get_named_sharding
from ._sharding_specs import get_partition_spec as get_partition_spec
from ._sharding_specs import get_var_pspec as get_var_pspec
from ._sharding_specs import is_variable, shard_abstract
from .graph import is_node, merge, split
from .variablelib import with_metadata

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


# -- abstract values ------------------------------------------------------------------------


def as_abstract(tree: T, graph: bool | None = None) -> T:
    """A copy of `tree` whose abstract, annotated Variables carry their shardings.

    For abstract models built without a mesh in sight: each annotated Variable holding a
    ``jax.ShapeDtypeStruct`` without a sharding gets a ``NamedSharding`` from its ``mesh``
    metadata or the mesh of ``jax.set_mesh``. (``nnx.eval_shape`` already does this when a
    mesh is known.)

    Args:
      tree: a model, a State, or any pytree of Variables.
      graph: ``False`` refuses a model with shared references (flax's tree mode).

    Raises:
      ShardingError: an annotated Variable has no mesh and none is set.
      ArgumentError: ``graph=False`` and `tree` shares references.

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
    check_tree_mode(graph, tree, "as_abstract")
    if is_node(tree):
        graphdef, state = split(tree)
        shard_abstract(state, annotated_only=True, root=type(tree).__name__)
        return merge(graphdef, state)
    copy = jax.tree_util.tree_map(
        lambda x: x.copy() if is_variable(x) else x, tree, is_leaf=is_variable
    )
    shard_abstract(copy, annotated_only=True)
    return copy


abstract_with_sharding = as_abstract  # flax.nnx's older name
