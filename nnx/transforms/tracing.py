"""Abstract evaluation and introspection: ``eval_shape``, ``make_jaxpr``, ``checkify``.

``nnx.eval_shape`` builds abstract models: every array becomes a ``jax.ShapeDtypeStruct``
and nothing is allocated, which is how a checkpoint is restored without paying for a
random initialisation first. When a mesh is known (``jax.set_mesh``, or a Variable's
``mesh`` metadata), the abstract Variables carry the shardings their annotations ask for
(see ``nnx.spmd``), so the restore lands on the mesh; :func:`get_abstract_model` does this
for a given mesh.

Example:
  >>> class Big(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.w = nnx.Param(jax.random.normal(rngs.params(), (4096, 4096)))
  >>> abstract = nnx.eval_shape(lambda: Big(nnx.Rngs(0)))
  >>> abstract.w.value
  ShapeDtypeStruct(shape=(4096, 4096), dtype=float32)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import checkify as _checkify

from .._sharding_specs import _shard_abstract, get_named_sharding
from ..graph import GraphDef, is_node, split
from ..state import State
from ..variablelib import Variable
from ._lift import call_transformed, split_args, traced_call

__all__ = ["checkify", "eval_shape", "get_abstract_model", "make_jaxpr"]


def eval_shape(f: Callable, *args: Any, **kwargs: Any) -> Any:
    """The output of ``f(*args, **kwargs)`` with ShapeDtypeStructs in place of arrays.

    Graph objects in the output (e.g. a Module built inside `f`) come back as abstract
    objects; graph arguments are not modified. As in flax, when a mesh is known (its
    Variable's ``mesh`` metadata, or ``jax.set_mesh``) each abstract Variable gets a
    ``NamedSharding``: the one its sharding annotation asks for, ``P()`` (replicated) without
    one.

    Raises:
      ShardingError: an annotation does not fit its Variable's rank or the mesh.

    Example:
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
      >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, 'model'))
      >>> with jax.set_mesh(mesh):
      ...   abstract = nnx.eval_shape(lambda: nnx.Linear(8, 16, kernel_init=init,
      ...                                                rngs=nnx.Rngs(0)))
      >>> abstract.kernel.value.sharding.spec, abstract.bias.value.sharding.spec
      (P(None, 'model'), P())
    """
    out = call_transformed(
        f,
        args,
        kwargs,
        lambda pure: functools.partial(jax.eval_shape, pure),
        write=False,
        what="nnx.eval_shape",
    )
    _shard_abstract(out)
    return out


def get_abstract_model(
    init_fn: Callable[[], Any], mesh: jax.sharding.Mesh
) -> tuple[GraphDef, State]:
    """The GraphDef and abstract State of the model `init_fn` builds, sharded on `mesh`.

    Runs ``init_fn`` under :func:`eval_shape` with `mesh` set; every leaf of the State is a
    ``jax.ShapeDtypeStruct`` with the ``NamedSharding`` its Variable's annotation asks for
    (``P()`` without one): a checkpoint restore target, or the ``out_shardings`` of the real
    initialisation.

    Example:
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
      >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('data', 'model'))
      >>> graphdef, state = nnx.get_abstract_model(
      ...     lambda: nnx.Linear(8, 16, kernel_init=init, rngs=nnx.Rngs(0)), mesh)
      >>> state['kernel'].value.sharding.spec
      P('data', 'model')
    """
    with jax.set_mesh(mesh):
        graphdef, state = split(eval_shape(init_fn))
        shardings = get_named_sharding(state, mesh)
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
        )
    return graphdef, state


def _arrays(out: Any) -> Any:
    """What a traced function returned, as arrays: a Variable's value, a graph object's (or a
    State's) pure dict of values, so ``jax.make_jaxpr`` can take it as an output."""

    def leaf(x: Any) -> Any:
        if isinstance(x, Variable):
            return x._value
        if isinstance(x, State) or is_node(x):
            state = x if isinstance(x, State) else split(x)[1]
            return state.to_pure_dict()
        return x

    return jax.tree.map(leaf, out, is_leaf=lambda x: isinstance(x, Variable | State) or is_node(x))


def make_jaxpr(f: Callable, **jaxpr_kwargs: Any) -> Callable[..., Any]:
    """``jax.make_jaxpr`` for functions of graph objects: the jaxpr of the state-in,
    state-out function nnx traces."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        spec, _, values = split_args(args, kwargs)
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos else a for i, a in enumerate(args)]

        def pure(values: list, dyn: list) -> Any:
            with traced_call(spec, values, f, dyn, kwargs) as t:
                return _arrays(t.out)

        return jax.make_jaxpr(pure, **jaxpr_kwargs)(values, dyn)

    return wrapper


def checkify(f: Callable, errors: Any = _checkify.user_checks) -> Callable[..., Any]:
    """``jax.experimental.checkify.checkify`` over graph objects: returns ``(error, out)``
    and writes state changes back."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call_transformed(
            f,
            args,
            kwargs,
            lambda pure: _checkify.checkify(pure, errors=errors),
            what="nnx.checkify",
            finish=lambda res: (*res[1], res[0]),
        )

    return wrapper
