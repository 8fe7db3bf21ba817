"""``nnx.Optimizer``: optax updates applied in place.

An optimizer's state is its ``step`` counter and the optax state, held as :class:`OptState`
Variables, so it travels through ``nnx.jit`` and checkpoints; it is *not* the model (as in
flax 0.12): saving or restoring an optimizer never touches the weights. ``update(model,
grads)`` applies gradients from ``nnx.grad`` to the model's ``wrt`` Variables in place.

The model given at construction is also kept as a plain reference outside the graph (an
``_nnx_`` field, which the graph walk skips), so the older ``optimizer.update(grads)`` works in
eager code. An optimizer rebuilt from its state (inside an nnx transform, by ``nnx.merge``,
``nnx.clone`` or a copy) has no such reference; there ``update(grads)`` raises and says to pass
the model. :class:`nnx.ModelAndOptimizer` holds the model in its state, for one object.

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
  >>> list(nnx.state(optimizer))  # sgd keeps no optax arrays; the model is not in here
  ['step']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._graph_mode import check_tree_mode
from .._graphdef import plain_key
from .._variable_trace import JaxTracer, check_frame
from ..errors import AttributeNotFoundError, NNXError, format_path, short_list
from ..filters import Filter
from ..graph import is_node
from ..graph import state as _state
from ..graph import update as _update
from ..pytreelib import Dict, List, Pytree, data, is_array, static
from ..state import State, flat_pairs, from_flat_state
from ..variablelib import Param, Variable
from ._messages import what

__all__ = ["OptArray", "OptState", "OptVariable", "Optimizer"]

_MISSING: Any = object()  # "no second argument" (None could be a mistaken value)


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
        [(p, v._value if isinstance(v, Variable) else v) for p, v in flat_pairs(state)]
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
    # a leaf (jaxlib ships no type stub for PyTreeDef yet)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:  # type: ignore[attr-defined, unused-ignore]
        return tree
    return jax.tree_util.tree_unflatten(treedef, [_as_graph_data(c) for c in children])


def _opt_arrays(init: Any, trained: Mapping) -> Any:
    """The optax state with each array in an OptArray. An array that mirrors a trained
    Variable (a moment: the Variable's path ends its own path, same shape) takes that
    Variable's metadata, as in flax, so its sharding annotation (``out_sharding``) carries
    over: ``nnx.get_partition_spec(nnx.state(optimizer))`` shards moments like params."""
    metas = {path: (jnp.shape(v._value), v._meta) for path, v in flat_pairs(trained)}
    depth = max((len(p) for p in metas), default=0)

    def wrap(keypath: tuple, leaf: Any) -> OptArray:
        path = tuple(plain_key(k) for k in keypath)
        for start in range(max(0, len(path) - depth), len(path)):
            hit = metas.get(path[start:])
            if hit is not None and hit[0] == jnp.shape(leaf):
                return OptArray(leaf, **hit[1])
        return OptArray(leaf)

    return jax.tree_util.tree_map_with_path(wrap, init)


def _graph_leaves(x: Any) -> list[Any]:
    return jax.tree.leaves(x, is_leaf=lambda v: is_node(v) or isinstance(v, Variable | State))


def _is_model(x: Any) -> bool:
    """Whether `x` can take an in-place update: a graph node, a Variable, or plain containers
    of those. A State is not one: it is a snapshot, whose Variables are copies."""
    if is_node(x) or isinstance(x, Variable):
        return True
    if isinstance(x, State) or type(x) not in (tuple, list, dict):
        return False
    leaves = _graph_leaves(x)
    return not any(isinstance(v, State) for v in leaves) and any(
        is_node(v) or isinstance(v, Variable) for v in leaves
    )


def _is_array_like(x: Any) -> bool:
    return is_array(x) or isinstance(x, int | float | complex | np.generic)


_GRADS_FORMS = (
    "a State (what nnx.grad returns), a nested dict of arrays, or a module of the model's "
    "structure whose Variables hold the gradients (what jax.grad returns for a module)"
)

_NO_MODEL = (
    "Optimizer.update(grads): this Optimizer holds no model to update. An Optimizer's state "
    "is its step and optax state only; the model given to nnx.Optimizer(model, tx) is kept as "
    "a plain reference outside that state, and this Optimizer was rebuilt from its state "
    "without it: inside an nnx transform (nnx.jit, nnx.grad, nnx.scan...), or by nnx.merge, "
    "nnx.clone or a copy.\n"
    "Fix:\n"
    "  1. pass the model (and pass it to the transform too): optimizer.update(model, grads)\n"
    "  2. or hold both in one object: optimizer = nnx.ModelAndOptimizer(model, tx), then "
    "optimizer.update(grads)"
)
_MODEL_ONLY = (
    "Optimizer.update: got only the model ({what}), no gradients. Nothing was changed.\n"
    "Fix: grads = nnx.grad(loss_fn)(model); optimizer.update(model, grads)"
)
_MODEL_AS_GRADS = (
    "Optimizer.update(model, grads): the gradients are the model itself ({what}). Nothing "
    "was changed.\nFix: grads = nnx.grad(loss_fn)(model); optimizer.update(model, grads)"
)
_SWAPPED = (
    "Optimizer.update(model, grads): the arguments look swapped: the first ({first}) is "
    "not the model, the second ({second}) is. Nothing was changed.\n"
    "Fix: optimizer.update(model, grads), the model first."
)
_SNAPSHOT = (
    "Optimizer.update(model, grads): the model argument is a State, a snapshot of the "
    "model's values (e.g. nnx.state(model)), not the model: updating it would leave the "
    "model's Variables unchanged while the step advances. Nothing was changed.\n"
    "Fix: pass the model itself: optimizer.update(model, grads)"
)
_NOT_A_MODEL = (
    "Optimizer.update(model, grads): the model argument ({what}) holds no Variable that the "
    "update could change in place (a Module, or a Variable, is needed). Nothing was "
    "changed.\nFix: pass the Module the optimizer trains: optimizer.update(model, grads)"
)
_BAD_GRADS = (
    "Optimizer.update: the gradients must be " + _GRADS_FORMS + "; got {what}. Nothing "
    "was changed.\nFix: grads = nnx.grad(loss_fn)(model); optimizer.update(model, grads)"
)
_BAD_GRAD_LEAVES = (
    "Optimizer.update: the gradients must hold arrays, but they hold:\n{where}\nNothing was "
    "changed.\nFix: pass " + _GRADS_FORMS + ", e.g. grads = nnx.grad(loss_fn)(model)."
)
_NO_MODEL_ATTRIBUTE = (
    "Optimizer has no attribute 'model': an Optimizer's state is its step and optax state "
    "only (as in flax 0.12), and it does not expose the model it trains.\n"
    "Fix:\n"
    "  1. keep your own reference to the model, and call optimizer.update(model, grads)\n"
    "  2. or use optimizer = nnx.ModelAndOptimizer(model, tx), whose .model is the model"
)


def _grad_pairs(grads: Any) -> list[tuple[tuple, Any]]:
    """The (path, array) pairs of the gradients, in any form flax accepts; NNXError else."""
    if is_node(grads):  # module-shaped: jax.grad(loss)(model) for a pytree-registered module
        tree = _state(grads)
    elif isinstance(grads, Mapping):
        tree = grads
    else:
        raise NNXError(_BAD_GRADS.format(what=what(grads)))
    pairs = [(p, v._value if isinstance(v, Variable) else v) for p, v in flat_pairs(tree)]
    bad = [f"{format_path(p, 'grads')}: {what(v)}" for p, v in pairs if not _is_array_like(v)]
    if bad:
        raise NNXError(_BAD_GRAD_LEAVES.format(where=short_list(bad)))
    return pairs


class _Held:
    """The model an Optimizer was built with, for ``update(grads)``, held outside the graph:
    the optimizer keeps it in an ``_nnx_`` field, which the graph walk skips, so
    ``nnx.state``, ``nnx.split`` and checkpoints never reach the model through it. A private,
    slotted holder, so that an error locating a Variable on the heap names it from the model
    (``Net.blocks[0].count``), not through this reference."""

    __slots__ = ("model",)

    def __init__(self, model: Any):
        self.model = model


class Optimizer(Pytree):
    """Holds an optax transformation's state and applies its updates to a model in place.

    Args:
      model: the model whose Variables are trained; its ``wrt`` Variables give the optax
        state its structure. It is not part of the optimizer's state.
      tx: an ``optax.GradientTransformation`` (chains, schedules, ``multi_transform``,
        ``MultiSteps`` all work).
      wrt: a filter choosing the trained Variables (default ``nnx.Param``; e.g.
        ``nnx.LoRAParam`` trains only adapters). flax requires it; nnx defaults it.
      graph: False refuses a model with shared references or cycles (flax's tree mode);
        None follows ``nnx.set_graph_mode``.

    Attributes:
      step: an ``OptState`` counter of applied updates.
      opt_state: the optax state, with its arrays held in ``OptArray`` Variables.
    """

    # Its display shows step and opt_state (and wrt when not Param); `tx` is a pair of
    # optax closures, nothing a reader can use.
    _nnx_repr_hide = ("tx",)

    def __init__(
        self,
        model: Any,
        tx: optax.GradientTransformation,
        *,
        wrt: Filter = Param,
        graph: bool | None = None,
    ):
        check_tree_mode(graph, model, "Optimizer")
        self._init_state(model, tx, wrt)
        self._nnx_model = _Held(model)

    def _init_state(self, model: Any, tx: optax.GradientTransformation, wrt: Filter) -> None:
        self.step = OptState(jnp.array(0, dtype=jnp.uint32))
        self.tx = tx
        self.wrt = wrt
        trained = _state(model, wrt)
        init = tx.init(_values(trained))
        # optax gets its state back in the very structure it built (plain dicts), whatever
        # containers the graph keeps it in.
        self._opt_treedef = static(jax.tree.structure(init))
        self.opt_state = data(_as_graph_data(_opt_arrays(init, trained)))

    def __getattr__(self, name: str) -> Any:  # only called for attributes that do not exist
        if name == "model":
            raise AttributeNotFoundError(_NO_MODEL_ATTRIBUTE)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict:
        # A copy (or pickle) does not carry the model reference: the copy's update(grads)
        # would otherwise train a hidden copy of the model, not the caller's.
        state = super().__getstate__()
        state.pop("_nnx_model", None)
        return state

    def update(self, model_or_grads: Any, grads: Any = _MISSING, /, **kwargs: Any) -> Any:
        """Applies one update: ``update(model, grads)``, or ``update(grads)`` in eager code for
        the model given at construction. Extra keyword arguments go to ``tx.update`` (e.g.
        ``value=`` for ``optax.contrib`` transforms that need the loss).

        `grads` is a State (what ``nnx.grad`` returns), a nested dict of arrays, or a module
        of the model's structure holding the gradients (what ``jax.grad`` returns for a
        module); entries for Variables that are not trained are ignored.

        Returns:
          The updates that were added to the trained Variables (a State of arrays), as
          flax's ``Optimizer.update`` does.

        Raises:
          NNXError: the arguments are not a model and its gradients (a State in place of the
            model, swapped arguments, no model inside a transform...), the gradients do not
            cover the trained Variables, or their shapes differ (paths listed). Everything is
            checked before anything changes: a failed update (``tx.update`` raising
            included) leaves the model and the optimizer, step included, as they were.
        """
        held = self.__dict__.get("_nnx_model")
        held = held.model if held is not None else None
        if grads is _MISSING:
            if held is None:
                raise NNXError(_NO_MODEL)
            if model_or_grads is held:
                raise NNXError(_MODEL_ONLY.format(what=what(held)))
            return self._apply(held, model_or_grads, kwargs)
        model = model_or_grads
        if grads is model:
            raise NNXError(_MODEL_AS_GRADS.format(what=what(model)))
        if (held is not None and grads is held) or (_is_model(grads) and not _is_model(model)):
            raise NNXError(_SWAPPED.format(first=what(model), second=what(grads)))
        if isinstance(model, State):
            raise NNXError(_SNAPSHOT)
        if not _is_model(model):
            raise NNXError(_NOT_A_MODEL.format(what=what(model)))
        return self._apply(model, grads, kwargs)

    def _apply(self, model: Any, grads: Any, kwargs: Mapping[str, Any]) -> Any:
        """Checks, computes, then writes: nothing changes unless everything succeeds."""
        grad_map = dict(_grad_pairs(grads))
        params = _values(_state(model, self.wrt))
        param_pairs = flat_pairs(params)
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
        writes = [
            *zip(opt_vars, jax.tree.leaves(new_opt), strict=True),
            (self.step, self.step.value + 1),
        ]
        # A traced value must not land in a Variable of another trace (an optimizer reached
        # through a closure): checked for all before any is written. nnx.update checks the
        # model's Variables the same way, and writes nothing if it raises.
        for var, value in writes:
            if isinstance(value, JaxTracer):
                check_frame(var, value)
        _update(model, new_params)
        for var, value in writes:
            var.value = value
        return updates
