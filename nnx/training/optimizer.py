"""``nnx.Optimizer``: optax updates applied in place.

The optimizer holds the optax state as :class:`OptState` Variables (so it travels through
``nnx.jit`` and checkpoints), a ``step`` counter, and the model it trains. ``update``
applies gradients from ``nnx.grad`` to the model's ``wrt`` Variables in place.

Example:
  >>> class Lin(nnx.Module):
  ...   def __init__(self):
  ...     self.w = nnx.Param(jnp.array([1.0, 2.0]))
  ...   def __call__(self, x):
  ...     return x @ self.w
  >>> model = Lin()
  >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1))
  >>> @nnx.jit
  ... def step(model, optimizer, x):
  ...   grads = nnx.grad(lambda m: m(x) ** 2)(model)
  ...   optimizer.update(model, grads)
  >>> step(model, optimizer, jnp.array([1.0, 0.0]))
  >>> model.w.value.tolist(), int(optimizer.step.value)
  ([0.800000011920929, 2.0], 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ..errors import NNXError, format_path, short_list
from ..filters import Filter
from ..graph import _plain_key
from ..graph import state as _state
from ..graph import update as _update
from ..pytreelib import Dict, List, Pytree, data, static
from ..state import State, _flat_pairs, from_flat_state
from ..variables import Param, Variable

__all__ = ["OptArray", "OptState", "OptVariable", "Optimizer"]


class OptState(Variable):
    """Optimizer state (base type): ``nnx.state(optimizer, nnx.OptState)`` selects it."""

    __slots__ = ()


class OptArray(OptState):
    """An array of the optax state (moments, counts...)."""

    __slots__ = ()


class OptVariable(OptState):
    """Kept for flax compatibility: optax state derived from a Variable."""

    __slots__ = ()


def _is_var(x: Any) -> bool:
    return isinstance(x, Variable)


def _values(state: Mapping) -> State:
    return from_flat_state(
        [(p, v._value if isinstance(v, Variable) else v) for p, v in _flat_pairs(state)]
    )


def _pure(tree: Any) -> Any:
    return jax.tree.map(lambda v: v._value if isinstance(v, Variable) else v, tree, is_leaf=_is_var)


def _as_graph_data(tree: Any) -> Any:
    """Turns the mappings (dicts, States) and lists of an optax state into ``nnx.Dict`` and
    ``nnx.List``.

    Some optax states hold mappings without any array (``multi_transform`` over stateless
    transforms: ``{'a': MaskedState(EmptyState())}``, or masked moments
    ``State({'l1': {'kernel': MaskedNode()}})``); a container without data would be a
    static, unhashable attribute of the graph. Tracked containers are always data.
    """
    if isinstance(tree, Variable):
        return tree
    if isinstance(tree, Mapping):
        return Dict({k: _as_graph_data(v) for k, v in tree.items()})
    if type(tree) is list:
        return List([_as_graph_data(v) for v in tree])
    children, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # a leaf
        return tree
    return jax.tree_util.tree_unflatten(treedef, [_as_graph_data(c) for c in children])


def _opt_arrays(init: Any, trained: Mapping) -> Any:
    """The optax state with each array in an OptArray. An array that mirrors a trained
    Variable (a moment: the Variable's path ends its own path, same shape) takes that
    Variable's metadata, as in flax, so its sharding annotation (``out_sharding``) carries
    over: ``nnx.get_partition_spec(nnx.state(optimizer))`` shards moments like params."""
    metas = {path: (jnp.shape(v._value), v._meta) for path, v in _flat_pairs(trained)}
    depth = max((len(p) for p in metas), default=0)

    def wrap(keypath: tuple, leaf: Any) -> OptArray:
        path = tuple(_plain_key(k) for k in keypath)
        for start in range(max(0, len(path) - depth), len(path)):
            hit = metas.get(path[start:])
            if hit is not None and hit[0] == jnp.shape(leaf):
                return OptArray(leaf, **hit[1])
        return OptArray(leaf)

    return jax.tree_util.tree_map_with_path(wrap, init)


class Optimizer(Pytree):
    """Holds an optax transformation's state and applies its updates to a model in place.

    Args:
      model: the model whose Variables are trained.
      tx: an ``optax.GradientTransformation`` (chains, schedules, ``multi_transform``,
        ``MultiSteps`` all work).
      wrt: a filter choosing the trained Variables (default ``nnx.Param``; e.g.
        ``nnx.LoRAParam`` trains only adapters).

    Attributes:
      step: an ``OptState`` counter of applied updates.
      opt_state: the optax state, with its arrays held in ``OptArray`` Variables.
      model: the model (so the older ``optimizer.update(grads)`` spelling works).
    """

    def __init__(self, model: Any, tx: optax.GradientTransformation, *, wrt: Filter = Param):
        self.step = OptState(jnp.array(0, dtype=jnp.uint32))
        self.tx = tx
        self.wrt = wrt
        self.model = model
        trained = _state(model, wrt)
        init = tx.init(_values(trained))
        # optax gets its state back in the very structure it built (plain dicts), whatever
        # containers the graph keeps it in.
        self._opt_treedef = static(jax.tree.structure(init))
        self.opt_state = data(_as_graph_data(_opt_arrays(init, trained)))

    def update(self, model_or_grads: Any, grads: Any = None, /, **kwargs: Any) -> Any:
        """Applies one update: ``update(model, grads)`` (or ``update(grads)`` for the model
        given at construction). Extra keyword arguments go to ``tx.update`` (e.g. ``value=``
        for ``optax.contrib`` transforms that need the loss).

        Returns:
          The updates that were added to the trained Variables (a State of arrays), as
          flax's ``Optimizer.update`` does.

        Raises:
          NNXError: the gradients do not cover the trained Variables, or their shapes differ
            (paths listed); nothing is changed.
        """
        if grads is None:
            model, grads = self.model, model_or_grads
        else:
            model = model_or_grads
        params = _values(_state(model, self.wrt))
        param_pairs = _flat_pairs(params)
        grad_map = dict(_flat_pairs(_values(grads)))
        missing = [p for p, _ in param_pairs if p not in grad_map]
        if missing:
            raise NNXError(
                f"Optimizer.update: the gradients have no entry for {len(missing)} of the "
                f"trained Variables (wrt={self.wrt!r}):\n"
                + short_list([format_path(p) for p in missing])
                + "\nFix: differentiate the same Variables the optimizer trains, e.g. "
                "nnx.grad(loss)(model) for wrt=nnx.Param, or nnx.grad(loss, "
                "argnums=nnx.DiffState(0, wrt))."
            )
        bad = [
            f"{format_path(p)}: gradient {tuple(jnp.shape(grad_map[p]))}, "
            f"parameter {tuple(jnp.shape(v))}"
            for p, v in param_pairs
            if jnp.shape(grad_map[p]) != jnp.shape(v)
        ]
        if bad:
            raise NNXError(
                "Optimizer.update: gradient shapes differ from the trained Variables:\n"
                + short_list(bad)
                + "\nFix: compute the gradients on this model (nnx.grad(loss)(model))."
            )
        grad_state = from_flat_state([(p, grad_map[p]) for p, _ in param_pairs])
        opt_vars = jax.tree.leaves(self.opt_state, is_leaf=_is_var)
        opt_values = jax.tree.unflatten(self._opt_treedef, [v._value for v in opt_vars])
        updates, new_opt = self.tx.update(grad_state, opt_values, params, **_pure(kwargs))
        new_params = optax.apply_updates(params, updates)
        _update(model, new_params)
        for var, value in zip(opt_vars, jax.tree.leaves(new_opt), strict=True):
            var.value = value
        self.step.value = self.step.value + 1
        return updates
