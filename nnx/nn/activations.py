"""Activation functions, under flax.nnx's names (JAX's implementations).

JAX's jitted and ``custom_jvp`` activations cannot be pickled (``pickle`` finds a different
object under their name), so a layer or ``Sequential`` holding one could not be either. Each
of those is exported here behind a plain function of this module with the same name,
signature and docs, which pickles by reference; the plain-function ones (``gelu``,
``softmax``...) are JAX's own objects.

Example:
  >>> nnx.relu(jnp.array([-1.0, 2.0])).tolist()
  [0.0, 2.0]
  >>> nnx.relu.__module__, nnx.gelu is jax.nn.gelu
  ('nnx.nn.activations', True)
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import jax.nn as _jnn
import jax.numpy as _jnp

__all__ = [
    "celu",
    "elu",
    "gelu",
    "glu",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "identity",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "one_hot",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_sign",
    "softmax",
    "softplus",
    "standardize",
    "swish",
    "tanh",
]


def _picklable(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` itself if it is a plain function (pickled by reference already), else a plain
    function of this module called ``name`` that calls it."""
    if isinstance(fn, types.FunctionType):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    wrapper.__module__ = __name__
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


celu = _picklable(_jnn.celu, "celu")
elu = _picklable(_jnn.elu, "elu")
gelu = _picklable(_jnn.gelu, "gelu")
glu = _picklable(_jnn.glu, "glu")
hard_sigmoid = _picklable(_jnn.hard_sigmoid, "hard_sigmoid")
hard_silu = _picklable(_jnn.hard_silu, "hard_silu")
hard_swish = _picklable(_jnn.hard_swish, "hard_swish")
hard_tanh = _picklable(_jnn.hard_tanh, "hard_tanh")
identity = _picklable(_jnn.identity, "identity")
leaky_relu = _picklable(_jnn.leaky_relu, "leaky_relu")
log_sigmoid = _picklable(_jnn.log_sigmoid, "log_sigmoid")
log_softmax = _picklable(_jnn.log_softmax, "log_softmax")
logsumexp = _picklable(_jnn.logsumexp, "logsumexp")
one_hot = _picklable(_jnn.one_hot, "one_hot")
relu = _picklable(_jnn.relu, "relu")
relu6 = _picklable(_jnn.relu6, "relu6")
selu = _picklable(_jnn.selu, "selu")
sigmoid = _picklable(_jnn.sigmoid, "sigmoid")
silu = _picklable(_jnn.silu, "silu")
soft_sign = _picklable(_jnn.soft_sign, "soft_sign")
softmax = _picklable(_jnn.softmax, "softmax")
softplus = _picklable(_jnn.softplus, "softplus")
standardize = _picklable(_jnn.standardize, "standardize")
swish = _picklable(_jnn.swish, "swish")
tanh = _picklable(_jnp.tanh, "tanh")
