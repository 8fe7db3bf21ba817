"""Dtype helpers shared by the layers.

Example:
  >>> x, w = nnx.nn.dtypes.promote_dtype((jnp.ones(2, jnp.bfloat16), jnp.ones(2)), dtype=None)
  >>> x.dtype, w.dtype
  (dtype('float32'), dtype('float32'))
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["canonicalize_dtype", "promote_dtype"]


def canonicalize_dtype(*args: Any, dtype: Any = None, inexact: bool = True) -> Any:
    """`dtype` if given, else the result type of `args` (None entries ignored), made inexact."""
    if dtype is None:
        args_filtered = [jnp.asarray(x) for x in args if x is not None]
        dtype = jnp.result_type(*args_filtered)
        if inexact and not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(jnp.float32, dtype)
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"Dtype must be inexact: {dtype}")
    return dtype


def promote_dtype(args: tuple, /, *, dtype: Any = None, inexact: bool = True) -> tuple:
    """Casts all arrays in `args` to `dtype` (or to their common type); None stays None."""
    dtype = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)
    return tuple(jnp.asarray(x, dtype) if x is not None else None for x in args)
