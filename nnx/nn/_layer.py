"""Shared machinery of the layers: lazy parameter creation, argument and shape checks.

Lazy layers keep a fork of their Rngs' ``params`` stream (``lazy_rngs``) until their first
call; :func:`materialize` then draws from it. Parameter creation runs under
``jax.ensure_compile_time_eval`` so that :func:`nnx.lazy_init` (which runs the model under
``jax.eval_shape``) still produces real, concrete parameters.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..rngs import Rngs, RngStream

__all__ = [
    "Axes",
    "check_features",
    "check_positive",
    "check_rank",
    "config_axes",
    "config_epsilon",
    "feature_param_shape",
    "lazy_stream",
    "materialize",
]


def check_positive(layer: str, **values: Any) -> None:
    """ConfigError unless every value is a positive int (None allowed: lazy)."""
    for name, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(
                f"{layer}: {name} must be a positive int (or None to infer it from the first "
                f"input), got {v!r}."
            )


def lazy_stream(rngs: Rngs | None, layer: str) -> RngStream:
    """The stream a lazy layer keeps for its first call."""
    if rngs is None:
        raise ConfigError(f"{layer} needs rngs=nnx.Rngs(...) to initialise its parameters.")
    return rngs.params.fork()


def materialize(init: Callable, stream: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    """Draws a key from `stream` and runs the initializer, eagerly where the stream's state is
    concrete (see the module docstring)."""
    with jax.ensure_compile_time_eval():
        return init(stream(), tuple(shape), dtype)


def check_features(
    module: Any, x: Any, expected: int, *, axis: int = -1, name: str = "in_features"
) -> None:
    """ShapeError unless ``x.shape[axis] == expected``."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) == 0 or shape[axis] != expected:
        got = "a scalar" if shape is not None and len(shape) == 0 else f"shape {shape}"
        actual = shape[axis] if shape else "?"
        raise ShapeError(
            f"{describe(module)} expects inputs with dimension {expected} at axis {axis} "
            f"({name}={expected}) but got an array of {got}.\n"
            f"Fix: build it with {name}={actual}, use {name}=None to infer it from the "
            "first input, or reshape the input."
        )


def check_rank(module: Any, x: Any, min_rank: int, what: str) -> None:
    """ShapeError unless ``x.ndim >= min_rank``."""
    ndim = getattr(x, "ndim", None)
    if ndim is None or ndim < min_rank:
        raise ShapeError(
            f"{describe(module)} expects {what} (at least {min_rank} dimensions) but got an "
            f"array of shape {getattr(x, 'shape', None)}.\nFix: add the missing axes, e.g. "
            "x[None] for a batch of one."
        )


# -- shared by the normalisation layers and the wrappers of nn/reparam.py ------------------
Axes = int | Sequence[int]


def config_axes(layer: str, name: str, axes: object) -> int | tuple[int, ...]:
    """`axes` as given (int or tuple of ints), or ConfigError."""
    items = (axes,) if not isinstance(axes, Sequence) else tuple(axes)
    ints = [int(a) for a in items if not isinstance(a, bool) and isinstance(a, numbers.Integral)]
    if not items or len(ints) != len(items):
        raise ConfigError(
            f"{layer}: {name} must be an int or a non-empty sequence of ints, got {axes!r}."
        )
    return ints[0] if isinstance(axes, numbers.Integral) else tuple(ints)


def config_epsilon(layer: str, epsilon: object) -> None:
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, numbers.Real)
        or epsilon < 0
        or epsilon != epsilon  # NaN
    ):
        raise ConfigError(f"{layer}: epsilon must be a non-negative number, got {epsilon!r}.")


def feature_param_shape(x: jax.Array, feature_axes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of per-feature parameters: `x`'s sizes on `feature_axes`, 1 elsewhere."""
    return tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
