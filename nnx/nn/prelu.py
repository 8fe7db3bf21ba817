"""The parametric ReLU layer :class:`PReLU`.

Example:
  >>> act = nnx.PReLU(negative_slope_init=0.5)
  >>> act(jnp.array([-2.0, 3.0])).tolist()
  [-1.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from ..module import Module
from ..variablelib import Param
from .dtypes import promote_dtype as _promote_dtype

__all__ = ["PReLU"]


class PReLU(Module):
    """``x`` where ``x >= 0``, else ``negative_slope * x``, with a learned scalar slope.

    Args:
      negative_slope_init: initial value of the slope.
      dtype: computation dtype (default: inferred from input and parameter).
      param_dtype: storage dtype of the slope.
      promote_dtype: how the input and the slope are brought to one dtype.
      negative_slope_metadata: extra Variable metadata.
    """

    def __init__(
        self,
        negative_slope_init: float = 0.01,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        promote_dtype: Callable = _promote_dtype,
        negative_slope_metadata: Mapping[str, Any] = {},
    ):
        if not isinstance(negative_slope_init, (int, float)) or isinstance(
            negative_slope_init, bool
        ):
            raise ConfigError(
                f"PReLU: negative_slope_init must be a number, got {negative_slope_init!r}."
            )
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype
        self.negative_slope = Param(
            jnp.asarray(negative_slope_init, dtype=param_dtype), **dict(negative_slope_metadata)
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x, slope = self.promote_dtype((inputs, self.negative_slope.value), dtype=self.dtype)
        return jnp.where(x >= 0, x, slope * x)
