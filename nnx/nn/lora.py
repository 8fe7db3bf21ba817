"""Low-rank adaptation: :class:`LoRAParam`, :class:`LoRA` and :class:`LoRALinear`.

The adapters' parameters are :class:`LoRAParam` (a :class:`nnx.Param` subtype), so a filter
selects them alone: ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` trains only the adapters,
``nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))`` differentiates only them.

Example:
  >>> layer = nnx.LoRALinear(4, 3, lora_rank=2, rngs=nnx.Rngs(0))
  >>> layer.lora.lora_a.shape, layer.lora.lora_b.shape
  ((4, 2), (2, 3))
  >>> bool(jnp.allclose(layer(jnp.ones((1, 4))), jnp.ones((1, 4)) @ layer.kernel.value))
  True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ArgumentError
from ..module import Module
from ..rngs import Rngs, RngStream
from ..variablelib import Param, Variable
from . import initializers
from ._layer import check_features, check_positive, lazy_stream, materialize
from .dtypes import promote_dtype as _promote_dtype
from .linear import Linear

__all__ = ["LoRA", "LoRALinear", "LoRAParam"]

default_a_initializer = initializers.he_uniform()


class LoRAParam(Param):
    """A low-rank adapter parameter (a :class:`nnx.Param`, selectable on its own)."""

    __slots__ = ()


class LoRA(Module):
    """A low-rank update ``x @ lora_a @ lora_b`` (plus ``base_module(x)`` when given).

    Args:
      in_features: size of the input's last axis, or None to infer it on the first call.
      lora_rank: inner rank of the adapter.
      out_features: size of the output's last axis.
      base_module: optional module whose output the update is added to.
      dtype, param_dtype: computation and parameter dtypes.
      a_initializer, b_initializer: initializers of ``lora_a`` (in, rank) and ``lora_b``
        (rank, out; zeros by default, so a fresh adapter changes nothing).
      lora_param_type: the Variable type of the adapter parameters.
      promote_dtype: how inputs and parameters are brought to one dtype.
      rngs: random streams for the parameters.
      a_metadata, b_metadata: extra Variable metadata.

    Example:
      >>> lora = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
      >>> lora(jnp.ones((5, 3))).shape
      (5, 4)
    """

    in_features: int | None
    lora_a: Variable[jax.Array] | None  # None until a lazy adapter's first call
    lora_b: Variable[jax.Array] | None
    lazy_rngs: RngStream

    def __init__(
        self,
        in_features: int | None,
        lora_rank: int,
        out_features: int,
        *,
        base_module: Module | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        a_initializer: Callable = default_a_initializer,
        b_initializer: Callable = initializers.zeros,
        lora_param_type: type[Variable] = LoRAParam,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        a_metadata: Mapping[str, Any] = MappingProxyType({}),
        b_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        check_positive(
            "LoRA", in_features=in_features, lora_rank=lora_rank, out_features=out_features
        )
        self.in_features = in_features
        self.lora_rank = lora_rank
        self.out_features = out_features
        self.base_module = base_module
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.a_initializer = a_initializer
        self.b_initializer = b_initializer
        self.lora_param_type = lora_param_type
        self.promote_dtype = promote_dtype
        self._meta = (tuple(a_metadata.items()), tuple(b_metadata.items()))
        if in_features is None:
            self.lora_a = None
            self.lora_b = None
            self.lazy_rngs = lazy_stream(rngs, "LoRA")
        else:
            self._create(in_features, rngs.params)

    def _create(self, in_features: int, stream: RngStream) -> None:
        a_meta, b_meta = (dict(m) for m in self._meta)
        self.in_features = in_features
        shape_a = (in_features, self.lora_rank)
        shape_b = (self.lora_rank, self.out_features)
        self.lora_a = self.lora_param_type(
            materialize(self.a_initializer, stream, shape_a, self.param_dtype), **a_meta
        )
        self.lora_b = self.lora_param_type(
            materialize(self.b_initializer, stream, shape_b, self.param_dtype), **b_meta
        )

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        """``x @ lora_a @ lora_b``, plus ``base_module(x, **kwargs)`` when there is one."""
        if self.lora_a is None:
            if getattr(x, "ndim", 0) < 1:
                check_features(self, x, -1)
            self._create(x.shape[-1], self.lazy_rngs)
            del self.lazy_rngs
        assert self.lora_a is not None and self.lora_b is not None  # created by now
        assert self.in_features is not None
        check_features(self, x, self.in_features)
        x, a, b = self.promote_dtype((x, self.lora_a.value, self.lora_b.value), dtype=self.dtype)
        out = x @ a @ b
        if self.base_module is not None:
            if not callable(self.base_module):
                raise ArgumentError(
                    f"LoRA: base_module is a {type(self.base_module).__name__}, which cannot be "
                    "called.\nFix: pass a layer (e.g. nnx.Linear) or a function as base_module."
                )
            out = self.base_module(x, **kwargs) + out
        elif kwargs:
            raise ArgumentError(
                f"LoRA got keyword arguments {sorted(kwargs)}, which go to base_module, but it "
                "has no base_module.\nFix: drop them, or build it with base_module=...."
            )
        return out


class LoRALinear(Linear):
    """A :class:`nnx.Linear` with a :class:`LoRA` adapter (``self.lora``) added to its output.

    Args:
      in_features, out_features: as :class:`nnx.Linear` (in_features may be None: lazy).
      lora_rank: inner rank of the adapter.
      lora_dtype, lora_param_dtype, lora_promote_dtype: the adapter's dtype settings.
      a_initializer, b_initializer, lora_param_type, a_metadata, b_metadata: as :class:`LoRA`.
      rngs: random streams.
      **kwargs: the other :class:`nnx.Linear` arguments.

    Example:
      >>> layer = nnx.LoRALinear(3, 2, lora_rank=1, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((4, 3))).shape
      (4, 2)
    """

    def __init__(
        self,
        in_features: int | None,
        out_features: int,
        *,
        lora_rank: int,
        lora_dtype: Any = None,
        lora_param_dtype: Any = jnp.float32,
        a_initializer: Callable = default_a_initializer,
        b_initializer: Callable = initializers.zeros,
        lora_param_type: type[Variable] = LoRAParam,
        lora_promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        a_metadata: Mapping[str, Any] = MappingProxyType({}),
        b_metadata: Mapping[str, Any] = MappingProxyType({}),
        **kwargs: Any,
    ):
        super().__init__(in_features, out_features, rngs=rngs, **kwargs)
        self.lora = LoRA(
            in_features,
            lora_rank,
            out_features,
            dtype=lora_dtype if lora_dtype is not None else kwargs.get("dtype"),
            param_dtype=lora_param_dtype,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
            lora_param_type=lora_param_type,
            promote_dtype=lora_promote_dtype,
            rngs=rngs,
            a_metadata=a_metadata,
            b_metadata=b_metadata,
        )

    def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
        """The Linear output plus the adapter's; `out_sharding` constrains the output's
        sharding (a PartitionSpec or Sharding), as in flax."""
        # Linear.__call__ as any callable: it takes out_sharding only where it has the
        # parameter (_LINEAR_TAKES_SHARDING, checked once at import).
        linear_call: Callable[..., jax.Array] = super().__call__
        if out_sharding is not None and _LINEAR_TAKES_SHARDING:
            y = linear_call(x, out_sharding=out_sharding)
        else:
            y = linear_call(x)
        y = y + self.lora(x)
        if out_sharding is not None and not _LINEAR_TAKES_SHARDING:
            y = jax.lax.with_sharding_constraint(y, out_sharding)
        return y


_LINEAR_TAKES_SHARDING = "out_sharding" in inspect.signature(Linear.__call__).parameters
