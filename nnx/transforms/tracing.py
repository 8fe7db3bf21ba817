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
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import checkify as _checkify

from .._graph_mode import check_tree, graph_mode
from .._graph_mode import graph_updates as graph_updates_default
from .._sharding_specs import get_named_sharding, shard_abstract
from ..graph import GraphDef, is_node, split
from ..state import State
from ..variablelib import Variable
from ._lift import call_transformed, split_args, traced_call
from ._modes import check_call, check_trace, resolve

__all__ = ["checkify", "eval_shape", "get_abstract_model", "make_jaxpr"]


def eval_shape(
    f: Callable,
    *args: Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    **kwargs: Any,
) -> Any:
    """The output of ``f(*args, **kwargs)`` with ShapeDtypeStructs in place of arrays.

    Graph objects in the output (e.g. a Module built inside `f`) come back as abstract
    objects; graph arguments are not modified. As in flax, when a mesh is known (its
    Variable's ``mesh`` metadata, or ``jax.set_mesh``) each abstract Variable gets a
    ``NamedSharding``: the one its sharding annotation asks for, ``P()`` (replicated) without
    one. ``graph=False`` refuses arguments sharing Variables or sub-objects (flax's tree
    mode); ``graph_updates=False`` refuses returning input Variables and structural changes
    of the arguments (None: the current ``nnx.set_graph_mode`` / ``set_graph_updates``).

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
    mode = resolve("eval_shape", graph, graph_updates)
    if mode is not None:
        check_call(mode, args, kwargs)
    out = call_transformed(
        f,
        args,
        kwargs,
        lambda pure: functools.partial(jax.eval_shape, pure),
        write=False,
        what="nnx.eval_shape",
        check=None if mode is None else functools.partial(check_trace, mode),
    )
    shard_abstract(out)
    return out


def get_abstract_model(
    init_fn: Callable[[], Any], mesh: jax.sharding.Mesh, *, graph: bool | None = None
) -> tuple[GraphDef, State]:
    """The GraphDef and abstract State of the model `init_fn` builds, sharded on `mesh`.

    Runs ``init_fn`` under :func:`eval_shape` with `mesh` set; every leaf of the State is a
    ``jax.ShapeDtypeStruct`` with the ``NamedSharding`` its Variable's annotation asks for
    (``P()`` without one): a checkpoint restore target, or the ``out_shardings`` of the real
    initialisation. ``graph=False`` refuses a model with shared references (flax's tree
    mode; None: the current ``nnx.set_graph_mode`` default).

    Example:
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'model'))
      >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('data', 'model'))
      >>> graphdef, state = nnx.get_abstract_model(
      ...     lambda: nnx.Linear(8, 16, kernel_init=init, rngs=nnx.Rngs(0)), mesh)
      >>> state['kernel'].value.sharding.spec
      P('data', 'model')
    """
    with jax.set_mesh(mesh):
        abstract = eval_shape(init_fn)
        if not graph_mode(graph):
            check_tree(abstract, "get_abstract_model")
        graphdef, state = split(abstract)
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


def make_jaxpr(
    f: Callable | None = None,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    static_argnums: int | Sequence[int] = (),
) -> Callable[..., Any]:
    """``jax.make_jaxpr`` for functions of graph objects: the jaxpr of the state-in,
    state-out function nnx traces.

    Arguments at `static_argnums` are Python values baked into the jaxpr, not inputs.
    ``graph=False`` refuses arguments sharing Variables or sub-objects (flax's tree mode);
    ``graph_updates=False`` refuses returning input Variables and structural changes (None:
    the ``nnx.set_graph_mode`` / ``set_graph_updates`` default when it is applied).

    Example:
      >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> jaxpr = nnx.make_jaxpr(lambda m, x, n: m(x) * n, static_argnums=2)(
      ...     m, jnp.ones((1, 2)), 2.0)
      >>> len(jaxpr.jaxpr.invars)   # kernel, bias, x: n is static
      3
    """
    if f is None:
        return functools.partial(
            make_jaxpr,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
            static_argnums=static_argnums,
        )
    mode = resolve("make_jaxpr", graph, graph_updates)
    static = frozenset((static_argnums,) if isinstance(static_argnums, int) else static_argnums)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if mode is not None:
            check_call(mode, args, kwargs)
        fixed = frozenset(i % len(args) for i in static if -len(args) <= i < len(args))
        spec, _, values = split_args(args, kwargs, fixed)
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos or i in fixed else a for i, a in enumerate(args)]

        def pure(values: list, dyn: list) -> Any:
            call = [args[i] if i in fixed else a for i, a in enumerate(dyn)]
            with traced_call(spec, values, f, call, kwargs) as t:
                if mode is not None:
                    check_trace(mode, t, t.out)
                return _arrays(t.out)

        return jax.make_jaxpr(pure)(values, dyn)

    return wrapper


def checkify(
    f: Callable,
    errors: Any = _checkify.user_checks,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable[..., Any]:
    """``jax.experimental.checkify.checkify`` over graph objects: returns ``(error, out)``
    and writes state changes back. `graph` / `graph_updates` as in :func:`make_jaxpr`."""
    mode = resolve("checkify", graph, graph_updates)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if mode is not None:
            check_call(mode, args, kwargs)
        return call_transformed(
            f,
            args,
            kwargs,
            lambda pure: _checkify.checkify(pure, errors=errors),
            what="nnx.checkify",
            finish=lambda res: (*res[1], res[0]),
            check=None if mode is None else functools.partial(check_trace, mode),
        )

    return wrapper
