"""Gradient accumulation: the gradients of one large batch from several micro-batches.

:func:`accumulate_gradients` runs ``nnx.value_and_grad`` on each micro-batch and averages
the results, weighting each micro-batch by its size, so that for a loss that is a mean over
its batch the result equals the loss and gradients of the concatenated batch. One optimizer
step then follows. (The other route, ``optax.MultiSteps(tx, k)`` in the Optimizer, applies
the averaged update every k-th ``update`` call instead.)

Example:
  >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
  >>> x, y = jnp.arange(8.0).reshape(4, 2), jnp.ones((4, 1))
  >>> loss, grads = nnx.training.accumulate_gradients(
  ...     loss_fn, model, [(x[:2], y[:2]), (x[2:], y[2:])])
  >>> big_loss, big_grads = nnx.value_and_grad(loss_fn)(model, x, y)
  >>> bool(jnp.allclose(loss, big_loss)), bool(jnp.allclose(grads['kernel'].value,
  ...                                                          big_grads['kernel'].value))
  (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import NNXError
from ..filters import Filter
from ..transforms.autodiff import DiffState, value_and_grad
from ..variablelib import Param

__all__ = ["accumulate_gradients"]


def _batch_size(batch: tuple, i: int) -> int:
    for leaf in jax.tree.leaves(batch):
        if jnp.ndim(leaf) >= 1:
            return int(jnp.shape(leaf)[0])
    raise NNXError(
        f"accumulate_gradients: micro-batch {i} holds no array with a batch axis, so its size "
        "(its weight in the average) is unknown. Fix: pass weights=[...] explicitly."
    )


def accumulate_gradients(
    loss_fn: Callable[..., Any],
    model: Any,
    batches: Sequence[Any],
    *,
    wrt: Filter = Param,
    has_aux: bool = False,
    weights: Sequence[float] | None = None,
) -> tuple[Any, Any]:
    """The loss and gradients of ``loss_fn`` averaged over micro-batches.

    Args:
      loss_fn: ``loss_fn(model, *batch)``, returning the *mean* loss over the batch (or
        ``(loss, aux)`` with ``has_aux=True``).
      model: the model (its non-differentiated state, e.g. batch statistics or RNG
        counters, changes as in ordinary calls, once per micro-batch).
      batches: the micro-batches: each a tuple of ``loss_fn``'s arguments after the model
        (a non-tuple is passed as the single argument).
      wrt: which Variables to differentiate (default ``nnx.Param``).
      has_aux: ``loss_fn`` returns ``(loss, aux)``; the aux values come back as a list.
      weights: the weight of each micro-batch (normalised to sum to 1); default: its size,
        the leading axis of its first array, which makes the result that of the whole batch.

    Returns:
      ``(loss, grads)``, or ``((loss, [aux, ...]), grads)`` with ``has_aux``; ``grads`` is a
      State like ``nnx.grad`` returns. Under ``nnx.jit`` the loop over micro-batches unrolls.
    """
    batches = [b if isinstance(b, tuple) else (b,) for b in batches]
    if not batches:
        raise NNXError("accumulate_gradients: no micro-batches. Fix: pass at least one.")
    if weights is None:
        weights = [_batch_size(b, i) for i, b in enumerate(batches)]
    if len(weights) != len(batches):
        raise NNXError(
            f"accumulate_gradients: {len(weights)} weights for {len(batches)} micro-batches. "
            "Fix: one weight per micro-batch."
        )
    total = float(sum(weights))
    grad_fn = value_and_grad(loss_fn, argnums=DiffState(0, wrt), has_aux=has_aux)
    loss_sum: Any = None
    grad_sum: Any = None
    auxes = []
    for batch, w in zip(batches, weights, strict=True):
        out, grads = grad_fn(model, *batch)
        if has_aux:
            out, aux = out
            auxes.append(aux)
        scale = w / total
        loss = out * scale
        grads = jax.tree.map(lambda g, s=scale: g * s, grads)
        if grad_sum is None:
            loss_sum, grad_sum = loss, grads
        else:
            loss_sum = loss_sum + loss
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return ((loss_sum, auxes), grad_sum) if has_aux else (loss_sum, grad_sum)
