"""Dense layers: :class:`Linear`.

Example:
  >>> layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  >>> layer(jnp.ones((2, 3))).shape
  (2, 4)
  >>> lazy = nnx.Linear(None, 4, rngs=nnx.Rngs(0))    # in_features from the first input
  >>> lazy(jnp.ones((2, 5))).shape, lazy.kernel.shape
  ((2, 4), (5, 4))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..module import Module
from ..rngs import Rngs, RngStream
from ..variablelib import Param
from . import initializers
from ._layer import check_features, check_positive, lazy_stream, materialize
from .dtypes import promote_dtype as _promote_dtype

__all__ = ["Linear", "default_kernel_init", "dequantized"]

default_kernel_init = initializers.lecun_normal()


def dequantized(module: Any, name: str) -> Any:
    """The value of ``module.<name>``, dequantised where :func:`nnx.quantize` left int8 values
    and a per-channel scale ``module.<name>_scale``: ``q.astype(scale.dtype) * scale`` (the
    layers' one hook for quantisation; on CPU, XLA materialises the result before the matmul:
    see :mod:`nnx.quantize`)."""
    value = getattr(module, name).value
    scale = module.__dict__.get(f"{name}_scale")  # no lookup miss (and its message) per call
    if scale is None:
        return value
    return value.astype(scale.dtype) * scale.value


class Linear(Module):
    """``y = x @ kernel + bias`` over the last axis of ``x``.

    Args:
      in_features: size of the input's last axis, or None to infer it on the first call.
      out_features: size of the output's last axis.
      use_bias: add a learned bias.
      dtype: computation dtype (default: inferred from input and parameters).
      param_dtype: parameter storage dtype.
      precision: ``jax.lax`` matmul precision.
      kernel_init, bias_init: initializers.
      dot_general: the contraction function (e.g. a quantised one).
      promote_dtype: how inputs and parameters are brought to one dtype.
      preferred_element_type: accumulation dtype passed to `dot_general`.
      rngs: random streams; ``params`` (or ``default``) initialises the parameters.
      kernel_metadata, bias_metadata: extra Variable metadata (e.g. sharding names).
    """

    in_features: int | None
    kernel: Param[jax.Array] | None  # None until a lazy layer's first call
    bias: Param[jax.Array] | None
    lazy_rngs: RngStream

    def __init__(
        self,
        in_features: int | None,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = default_kernel_init,
        bias_init: Callable = initializers.zeros,
        dot_general: Callable = jax.lax.dot_general,
        promote_dtype: Callable = _promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = {},
        bias_metadata: Mapping[str, Any] = {},
    ):
        check_positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.dot_general = dot_general
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self._meta = (tuple(kernel_metadata.items()), tuple(bias_metadata.items()))
        if in_features is None:
            self.kernel = None
            self.bias = None
            self.lazy_rngs = lazy_stream(rngs, "Linear")
        else:
            self._create(in_features, rngs.params)

    def _create(self, in_features: int, stream: RngStream) -> None:
        kernel_meta, bias_meta = (dict(m) for m in self._meta)
        self.in_features = in_features
        self.kernel = Param(
            materialize(
                self.kernel_init, stream, (in_features, self.out_features), self.param_dtype
            ),
            **kernel_meta,
        )
        self.bias = (
            Param(
                materialize(self.bias_init, stream, (self.out_features,), self.param_dtype),
                **bias_meta,
            )
            if self.use_bias
            else None
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.kernel is None:
            if getattr(inputs, "ndim", 0) < 1:
                check_features(self, inputs, -1)
            self._create(inputs.shape[-1], self.lazy_rngs)
            del self.lazy_rngs
        assert self.kernel is not None and self.in_features is not None  # created by now
        check_features(self, inputs, self.in_features)
        kernel = dequantized(self, "kernel")
        bias = self.bias.value if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = self.dot_general(
            inputs,
            kernel,
            (((inputs.ndim - 1,), (0,)), ((), ())),
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y
