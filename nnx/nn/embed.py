"""Embedding tables: :class:`Embed`.

``Embed(num_embeddings, features)`` holds an ``(num_embeddings, features)`` table. Calling it
on integer ids looks rows up (the output is ``ids.shape + (features,)``); :meth:`Embed.attend`
multiplies a query by the transposed table, the usual tied output projection of a language
model. Ids outside ``[0, num_embeddings)`` give NaN rows (``jnp.take``'s fill mode), so a bad
id shows up instead of silently reading a neighbour.

Example:
  >>> embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
  >>> tokens = jnp.array([[1, 2, 3], [4, 5, 6]])
  >>> h = embed(tokens)
  >>> h.shape, embed.attend(h).shape       # logits over the 10 ids
  ((2, 3, 4), (2, 3, 10))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..module import Module
from ..rngs import Rngs
from ..variablelib import Param
from . import initializers
from ._layer import check_positive, materialize
from .dtypes import promote_dtype as _promote_dtype
from .linear import dequantized

__all__ = ["Embed", "default_embed_init"]

default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

_NOT_INTEGER = (
    "{layer} looks up rows by integer id, but got inputs of dtype {dtype} (shape {shape}).\n"
    "Fix: pass integer ids, e.g. tokens.astype(jnp.int32); to project vectors onto the "
    "table use .attend(x) instead."
)


class Embed(Module):
    """A learned lookup table from integer ids to ``features``-sized vectors.

    Args:
      num_embeddings: number of rows (the vocabulary size).
      features: size of each embedding vector.
      dtype: computation dtype of the outputs (default: the table's dtype).
      param_dtype: storage dtype of the table.
      embedding_init: initializer of the ``(num_embeddings, features)`` table.
      promote_dtype: how the table (and, in :meth:`attend`, the query) are brought to one
        dtype.
      rngs: random streams; ``params`` (or ``default``) initialises the table.
      embedding_metadata: extra Variable metadata (e.g. sharding names).
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Callable = default_embed_init,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        embedding_metadata: Mapping[str, Any] = {},
    ):
        check_positive("Embed", num_embeddings=num_embeddings, features=features)
        if num_embeddings is None or features is None:
            raise ConfigError(
                f"Embed: num_embeddings and features must both be given (an embedding table's "
                f"size cannot be inferred from integer ids); got num_embeddings="
                f"{num_embeddings!r}, features={features!r}."
            )
        self.embedding = Param(
            materialize(embedding_init, rngs.params, (num_embeddings, features), param_dtype),
            **dict(embedding_metadata),
        )
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype or self.embedding.value.dtype
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Looks up ``inputs`` (integer ids of any shape); returns ``inputs.shape + (features,)``.

        Raises:
          ShapeError: the ids are not integers.
        """
        inputs = jnp.asarray(inputs)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ShapeError(
                _NOT_INTEGER.format(layer=describe(self), dtype=inputs.dtype, shape=inputs.shape)
            )
        scale = self.__dict__.get("embedding_scale")
        if scale is not None and out_sharding is None:
            # int8 table (nnx.quantize): gather the rows and their scales, then dequantise
            # only those, not the whole (num_embeddings, features) table on every call.
            rows = jnp.take(self.embedding.value, inputs, axis=0)
            row_scales = jnp.take(scale.value, inputs, axis=0)
            (out,) = self.promote_dtype(
                (rows.astype(row_scales.dtype) * row_scales,), dtype=self.dtype, inexact=False
            )
            return out
        (table,) = self.promote_dtype(
            (dequantized(self, "embedding"),), dtype=self.dtype, inexact=False
        )
        take = lambda table, ids: jnp.take(table, ids, axis=0)
        if out_sharding is not None:
            take = jax.sharding.auto_axes(take, out_sharding=out_sharding)
        return take(table, inputs)

    def attend(self, query: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Inner products of `query` (last axis ``features``) with every row of the table:
        returns ``query.shape[:-1] + (num_embeddings,)``.

        Raises:
          ShapeError: the query's last axis is not ``features``.
        """
        shape = getattr(query, "shape", None)
        if not shape or shape[-1] != self.features:
            raise ShapeError(
                f"{describe(self)} (num_embeddings={self.num_embeddings}, features="
                f"{self.features}) attends with queries whose last dimension is {self.features}, "
                f"but got an array of shape {shape}.\nFix: project the query to {self.features} "
                "features first."
            )
        query, table = self.promote_dtype((query, dequantized(self, "embedding")), dtype=self.dtype)
        kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
        return jax.lax.dot_general(query, table, (((query.ndim - 1,), (1,)), ((), ())), **kwargs)
