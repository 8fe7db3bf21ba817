"""Inference helpers: :func:`inference` (an eval-mode copy without training-only state) and
:func:`cast` (the floating Variables selected by a filter, cast to one dtype, in place)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._graph_iter import iter_graph
from .errors import ArgumentError
from .filters import Filter, to_predicate
from .graph import clone, pop
from .module import Module, iter_modules
from .nn.stochastic import Dropout
from .variablelib import Intermediate, Param, Perturbation, Variable

__all__ = ["cast", "inference"]


def inference(model: Module) -> Module:
    """A copy of `model` ready for inference; `model` itself is left as it was.

    The copy (``nnx.clone``: new Variables over the same arrays) is put in eval mode
    (``.eval()``: ``deterministic=True``, ``use_running_average=True``), and exactly this
    state, unused in eval mode, is dropped from it:

    * every :class:`nnx.Intermediate` and :class:`nnx.Perturbation` Variable (values sown by
      earlier calls, and perturbation slots);
    * the random stream of every ``Dropout`` (its ``rngs`` becomes None): a deterministic
      Dropout never draws a key. Calling ``.train()`` on the copy then needs keys passed to
      the call (``dropout(x, rngs=...)``), or a fresh model.

    Everything else is kept: parameters, BatchNorm statistics, ``Cache`` Variables (an
    attention KV cache is used by decoding), other ``Rngs`` a module may hold (a sampling
    layer still needs its keys), and the keys of lazy layers not yet called.

    Example:
      >>> class Net(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 2, rngs=rngs)
      ...     self.drop = nnx.Dropout(0.5, rngs=rngs)
      ...   def __call__(self, x):
      ...     self.sow(nnx.Intermediate, "h", x)
      ...     return self.drop(self.linear(x))
      >>> net = Net(nnx.Rngs(0))
      >>> _ = net(jnp.ones((1, 2)))
      >>> fast = nnx.inference(net)
      >>> fast.drop.deterministic, fast.drop.rngs, hasattr(fast, "h")
      (True, None, False)
      >>> net.drop.deterministic, net.drop.rngs is None, hasattr(net, "h")
      (False, False, True)
    """
    if not isinstance(model, Module):
        raise ArgumentError(
            f"nnx.inference expects an nnx.Module, got {type(model).__name__}.\n"
            "Fix: pass the model (the root Module)."
        )
    copy = clone(model)
    copy.eval()
    pop(copy, (Intermediate, Perturbation))
    for _, module in iter_modules(copy):
        if isinstance(module, Dropout) and module.deterministic:
            module.rngs = None
    return copy


def _floating(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def cast(model: Any, dtype: Any, filter: Filter = Param) -> Any:
    """Casts the floating values of the Variables selected by `filter` to `dtype`, in place.

    Integer, boolean and PRNG-key values are left as they are, even when selected, as are
    Variables the filter does not select (by default everything but ``Param`` s: BatchNorm
    statistics stay float32, for instance).

    Args:
      model: the model (any graph node), changed in place (returned too, for chaining).
      dtype: a floating dtype, e.g. ``jnp.bfloat16``.
      filter: which Variables, matched against ``(path, variable)`` (default ``nnx.Param``).

    Returns:
      `model` itself.

    Raises:
      ArgumentError: `dtype` is not a floating dtype (nothing is changed).

    Example:
      >>> rngs = nnx.Rngs(0)
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs))
      >>> _ = nnx.cast(model, jnp.bfloat16)
      >>> model.layers[0].kernel.dtype, model.layers[1].scale.dtype, model.layers[1].mean.dtype
      (dtype(bfloat16), dtype(bfloat16), dtype('float32'))
    """
    try:
        target = jnp.dtype(dtype)
    except TypeError:
        target = None
    if target is None or not jnp.issubdtype(target, jnp.floating):
        raise ArgumentError(
            f"nnx.cast: dtype must be a floating dtype (e.g. jnp.bfloat16), got {dtype!r}; "
            "casting parameters to an integer or other dtype would lose them.\n"
            "Fix: for int8 weights use nnx.quantize(model), which keeps per-channel scales."
        )
    predicate = to_predicate(filter)
    for path, node in list(iter_graph(model)):
        if isinstance(node, Variable) and predicate(path, node):
            value = node.raw_value
            if _floating(value) and not jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
                node.set_raw_value(value.astype(target))
    return model
