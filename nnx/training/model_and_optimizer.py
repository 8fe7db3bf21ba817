"""``nnx.ModelAndOptimizer``: an Optimizer whose state holds the model too (as in flax 0.12).

Where :class:`nnx.Optimizer` keeps only its step and optax state, this one also holds the
model as an ordinary graph attribute: ``nnx.state(optimizer)`` contains the weights, and
``update(grads)`` works everywhere, inside nnx transforms too, since the optimizer rebuilt
there holds the rebuilt model (the very object passed beside it, when it is).

Example:
  >>> class Lin(nnx.Module):
  ...   def __init__(self):
  ...     self.w = nnx.Param(jnp.array([1.0, 2.0]))
  ...   def __call__(self, x):
  ...     return x @ self.w
  >>> optimizer = nnx.ModelAndOptimizer(Lin(), optax.sgd(0.1))
  >>> @nnx.jit
  ... def step(optimizer, x):
  ...   grads = nnx.grad(lambda m: m(x) ** 2)(optimizer.model)
  ...   optimizer.update(grads)
  >>> step(optimizer, jnp.array([1.0, 0.0]))
  >>> optimizer.model.w.value.tolist(), sorted(nnx.state(optimizer))
  ([0.800000011920929, 2.0], ['model', 'step'])
"""

from __future__ import annotations

from typing import Any

import optax

from ..errors import NNXError
from ..filters import Filter
from ..variablelib import Param
from ._messages import what
from .optimizer import Optimizer

__all__ = ["ModelAndOptimizer"]

_GRADS_ONLY = (
    "ModelAndOptimizer.update takes the gradients: it updates its own model "
    "(optimizer.model). Got {got}.\n"
    "Fix: optimizer.update(grads), with grads = nnx.grad(loss_fn)(optimizer.model)"
)
_MODEL_AS_GRADS = (
    "ModelAndOptimizer.update(grads): the gradients are the model itself ({what}). Nothing "
    "was changed.\nFix: optimizer.update(grads), with grads = "
    "nnx.grad(loss_fn)(optimizer.model)"
)


class ModelAndOptimizer(Optimizer):
    """An :class:`Optimizer` that also holds the model it trains, in its state.

    Args:
      model: the model; it becomes ``optimizer.model``, part of ``nnx.state(optimizer)``.
      tx: an ``optax.GradientTransformation``.
      wrt: a filter choosing the trained Variables (default ``nnx.Param``).

    Attributes:
      model: the model.
      step: an ``OptState`` counter of applied updates.
      opt_state: the optax state, with its arrays held in ``OptArray`` Variables.
    """

    def __init__(self, model: Any, tx: optax.GradientTransformation, *, wrt: Filter = Param):
        self._init_state(model, tx, wrt)
        self.model = model

    def update(self, *args: Any, **kwargs: Any) -> Any:
        """``update(grads)``: applies one update to ``self.model`` from `grads` (a State, a
        nested dict of arrays, or a module holding the gradients); keyword arguments go to
        ``tx.update``. ``update(optimizer.model, grads)`` is the same call, so helpers
        written for :class:`Optimizer` (``nnx.training.scaled_update``...) work too.

        Returns:
          The updates that were added to the trained Variables.

        Raises:
          NNXError: other arguments than the gradients (another model than its own), or
            gradients that do not fit the model (see :meth:`Optimizer.update`); nothing is
            changed.
        """
        if len(args) == 2 and args[0] is self.model:
            args = args[1:]
        if len(args) != 1:
            got = (
                f"a model ({what(args[0])}) that is not optimizer.model, and gradients"
                if len(args) == 2
                else f"{len(args)} positional arguments"
            )
            raise NNXError(_GRADS_ONLY.format(got=got))
        (grads,) = args
        if grads is self.model:
            raise NNXError(_MODEL_AS_GRADS.format(what=what(grads)))
        return self._apply(self.model, grads, kwargs)
