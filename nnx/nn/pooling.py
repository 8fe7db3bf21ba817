"""Pooling functions: :func:`avg_pool`, :func:`max_pool`, :func:`min_pool` and the general
:func:`pool`, over the spatial axes of channels-last inputs.

Inputs are ``(*batch, *window_axes, features)`` with ``len(window_shape)`` window axes and
any number of leading batch axes (none for a single example). `strides` default to 1;
`padding` is ``'VALID'``, ``'SAME'``, ``'SAME_LOWER'`` or one ``(low, high)`` pair per
window axis.

Example:
  >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  >>> nnx.max_pool(x, (2, 2), strides=(2, 2))[0, :, :, 0]
  Array([[ 5.,  7.],
         [13., 15.]], dtype=float32)
  >>> nnx.avg_pool(x, (2, 2), strides=(2, 2))[0, :, :, 0]
  Array([[ 2.5,  4.5],
         [10.5, 12.5]], dtype=float32)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError, ShapeError

__all__ = ["avg_pool", "max_pool", "min_pool", "pool"]

_PADDINGS = ("VALID", "SAME", "SAME_LOWER")


def _ints(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return None
    out = []
    for v in value:
        if isinstance(v, bool):
            return None
        try:
            out.append(operator.index(v))
        except TypeError:
            return None
    return tuple(out)


def _window(fn: str, window_shape: Any, strides: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    window = _ints(window_shape)
    if not window or any(w <= 0 for w in window):
        raise ConfigError(
            f"{fn}: window_shape must be a non-empty tuple of positive ints, one per pooled "
            f"axis; got {window_shape!r}.\nFix: e.g. window_shape=(2, 2) to pool 2x2 patches "
            "of (batch, height, width, features) inputs."
        )
    if strides is None:
        return window, (1,) * len(window)
    steps = _ints(strides)
    if steps is None or len(steps) != len(window) or any(s <= 0 for s in steps):
        raise ConfigError(
            f"{fn}: strides must be a tuple of {len(window)} positive ints (one per axis of "
            f"window_shape={window}); got {strides!r}.\nFix: e.g. strides={window}."
        )
    return window, steps


def _pads(fn: str, padding: Any, rank: int) -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding.upper() in _PADDINGS:
            return padding.upper()
    elif isinstance(padding, Sequence) and len(padding) == rank:
        pairs = [p for p in map(_ints, padding) if p is not None and len(p) == 2]
        if len(pairs) == rank:
            return tuple((low, high) for low, high in pairs)
    raise ConfigError(
        f"{fn}: padding must be one of {_PADDINGS} or a sequence of {rank} (low, high) pairs, "
        f"one per window axis; got {padding!r}.\nFix: e.g. padding='SAME' or "
        f"padding={((1, 1),) * rank}."
    )


def _reduce(
    fn: str,
    inputs: jax.Array,
    init: Any,
    reduce_fn: Callable,
    window_shape: Any,
    strides: Any,
    padding: Any,
) -> jax.Array:
    window, steps = _window(fn, window_shape, strides)
    pads = _pads(fn, padding, len(window))
    ndim = getattr(inputs, "ndim", None)
    if ndim is None or ndim < len(window) + 1:
        raise ShapeError(
            f"{fn} with window_shape={window} pools {len(window)} axes of channels-last inputs "
            f"(*batch, {', '.join(f's{i}' for i in range(len(window)))}, features), at least "
            f"{len(window) + 1} dimensions, but got an array of shape "
            f"{getattr(inputs, 'shape', None)}.\nFix: add the features axis (x[..., None]) or "
            "give window_shape one entry per pooled axis."
        )
    lead = (1,) * (ndim - len(window) - 1)
    if not isinstance(pads, str):
        pads = ((0, 0),) * len(lead) + pads + ((0, 0),)
    return jax.lax.reduce_window(
        inputs, init, reduce_fn, lead + window + (1,), lead + steps + (1,), pads
    )


def pool(
    inputs: jax.Array,
    init: Any,
    reduce_fn: Callable,
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: str | Sequence[tuple[int, int]],
) -> jax.Array:
    """Reduces every window of `inputs` with `reduce_fn`, starting from `init`.

    Args:
      inputs: ``(*batch, *window_axes, features)``.
      init: the reduction's initial value (its identity: 0 for a sum, -inf for a max).
      reduce_fn: ``(a, b) -> c`` on arrays, e.g. ``jax.lax.add``.
      window_shape: window size along each pooled axis.
      strides: step along each pooled axis (None: 1 everywhere).
      padding: ``'VALID'``, ``'SAME'``, ``'SAME_LOWER'`` or one ``(low, high)`` pair per
        pooled axis; padded positions hold `init`.

    Returns:
      The reduction of each window, shape ``(*batch, *out_window_axes, features)``.

    Example:
      >>> nnx.pool(jnp.arange(6.0).reshape(6, 1), 1.0, jax.lax.mul, (2,), (2,), 'VALID')[:, 0]
      Array([ 0.,  6., 20.], dtype=float32)
    """
    inputs = jnp.asarray(inputs)
    if isinstance(init, int | float) and jnp.issubdtype(inputs.dtype, jnp.inexact):
        init = jnp.asarray(init, inputs.dtype)  # keeps e.g. bfloat16 inputs in bfloat16
    return _reduce("pool", inputs, init, reduce_fn, window_shape, strides, padding)


def _lowest(dtype: Any) -> Any:
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.array(-np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return np.array(False)
    return np.array(jnp.iinfo(dtype).min, dtype)


def _highest(dtype: Any) -> Any:
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.array(np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return np.array(True)
    return np.array(jnp.iinfo(dtype).max, dtype)


def max_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """The maximum over each window (padding never wins). Arguments as in :func:`pool`."""
    inputs = jnp.asarray(inputs)
    return _reduce(
        "max_pool", inputs, _lowest(inputs.dtype), jax.lax.max, window_shape, strides, padding
    )


def min_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """The minimum over each window (padding never wins). Arguments as in :func:`pool`."""
    inputs = jnp.asarray(inputs)
    return _reduce(
        "min_pool", inputs, _highest(inputs.dtype), jax.lax.min, window_shape, strides, padding
    )


def avg_pool(
    inputs: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """The mean over each window. Arguments as in :func:`pool`, and:

    Args:
      count_include_pad: divide by the full window size, padded positions (zeros) included;
        if False, divide by the number of real input positions in each window.
    """
    inputs = jnp.asarray(inputs)
    zero = jnp.zeros((), inputs.dtype)
    total = _reduce("avg_pool", inputs, zero, jax.lax.add, window_shape, strides, padding)
    if count_include_pad:
        return total / np.prod(window_shape)
    dtype = inputs.dtype if jnp.issubdtype(inputs.dtype, jnp.inexact) else jnp.float32
    rank = len(tuple(window_shape))
    ones_shape = (1,) * (inputs.ndim - rank - 1) + inputs.shape[-rank - 1 : -1] + (1,)
    count = _reduce(
        "avg_pool",
        jnp.ones(ones_shape, dtype),
        jnp.zeros((), dtype),
        jax.lax.add,
        window_shape,
        strides,
        padding,
    )
    return total / count
