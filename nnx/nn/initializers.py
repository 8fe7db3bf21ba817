"""Parameter initializers: ``init(key, shape, dtype) -> array``.

These are JAX's own initializers under the names flax.nnx users know, plus ``zeros_init()``
and ``ones_init()`` factories.

The factories (``lecun_normal()``, ``normal(0.02)``, ``variance_scaling(...)``...) return an
:class:`InitializerFn` instead of JAX's closure: it computes the same values (it calls JAX's
factory with the same arguments), but it pickles, so a layer holding it does too, and two
built with the same arguments are equal and hash alike, so two identically-built layers
share a GraphDef (and ``nnx.jit`` does not retrace for the second one).

Example:
  >>> init = nnx.initializers.lecun_normal()
  >>> init(jax.random.key(0), (3, 4)).shape
  (3, 4)
  >>> init == nnx.initializers.lecun_normal(), init
  (True, nnx.initializers.lecun_normal())
  >>> nnx.initializers.zeros_init()(jax.random.key(0), (2,)).tolist()
  [0.0, 0.0]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax.nn.initializers as _jinit
import numpy as np
from jax.nn.initializers import ones as ones
from jax.nn.initializers import zeros as zeros

__all__ = [
    "Initializer",
    "InitializerFn",
    "constant",
    "delta_orthogonal",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "ones_init",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
    "zeros_init",
]

Initializer = Callable[..., Any]


def _key(value: Any) -> Any:
    """A hashable stand-in for an argument, equal for equal arguments (arrays by dtype,
    shape and contents; lists as tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_key(v) for v in value)
    if not isinstance(value, type) and hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            a = np.asarray(value)
        except Exception:  # a tracer: only equal to itself
            return ("id", id(value))
        return ("array", a.dtype.str, a.shape, a.tobytes())
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


class InitializerFn:
    """An initializer made by one of JAX's initializer factories, kept as the factory's name
    and arguments (rather than the closure the factory returns).

    Calling it calls ``jax.nn.initializers.<factory>(*args, **kwargs)(key, shape, dtype)``,
    so the values are JAX's. It pickles (by the factory's name), compares equal to another
    built from the same factory and arguments (defaults filled in: ``normal()`` equals
    ``normal(0.01)``), and hashes accordingly: layers store initializers as static
    attributes, which are part of the GraphDef.

    Args:
      factory: the name of the factory in ``jax.nn.initializers`` (e.g. ``'lecun_normal'``).
      *args, **kwargs: its arguments.
    """

    __slots__ = ("_arguments", "_factory", "_hash")

    def __init__(self, factory: str, /, *args: Any, **kwargs: Any):
        signature = inspect.signature(getattr(_jinit, factory))
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self._factory = factory
        self._arguments = tuple(bound.arguments.items())
        self._hash: int | None = None

    def __call__(self, key: Any, shape: Any, dtype: Any = None, **kwargs: Any) -> Any:
        init = getattr(_jinit, self._factory)(**dict(self._arguments))
        if dtype is None:
            return init(key, shape, **kwargs)
        return init(key, shape, dtype, **kwargs)

    def _identity(self) -> tuple:
        return (self._factory, _key(self._arguments))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InitializerFn):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._identity())
        return self._hash

    def __reduce__(self) -> tuple:
        return (_rebuild, (self._factory, dict(self._arguments)))

    def __repr__(self) -> str:
        defaults = inspect.signature(getattr(_jinit, self._factory)).parameters
        parts = [
            f"{k}={v!r}"
            for k, v in self._arguments
            if defaults[k].default is inspect.Parameter.empty
            or _key(v) != _key(defaults[k].default)
        ]
        return f"nnx.initializers.{self._factory}({', '.join(parts)})"


def _rebuild(factory: str, arguments: dict[str, Any]) -> InitializerFn:
    return InitializerFn(factory, **arguments)


def variance_scaling(
    scale: Any,
    mode: str,
    distribution: str,
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> InitializerFn:
    """``jax.nn.initializers.variance_scaling`` as an :class:`InitializerFn`."""
    return InitializerFn(
        "variance_scaling", scale, mode, distribution, in_axis, out_axis, batch_axis, dtype
    )


def _fan_factory(name: str) -> Callable[..., InitializerFn]:
    def factory(
        in_axis: int | Sequence[int] = -2,
        out_axis: int | Sequence[int] = -1,
        batch_axis: int | Sequence[int] = (),
        dtype: Any = None,
    ) -> InitializerFn:
        return InitializerFn(name, in_axis, out_axis, batch_axis, dtype)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"``jax.nn.initializers.{name}`` as an :class:`InitializerFn`."
    return factory


glorot_normal = _fan_factory("glorot_normal")
glorot_uniform = _fan_factory("glorot_uniform")
he_normal = _fan_factory("he_normal")
he_uniform = _fan_factory("he_uniform")
lecun_normal = _fan_factory("lecun_normal")
lecun_uniform = _fan_factory("lecun_uniform")
xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


def normal(stddev: Any = 1e-2, dtype: Any = None) -> InitializerFn:
    """``jax.nn.initializers.normal`` as an :class:`InitializerFn`."""
    return InitializerFn("normal", stddev, dtype)


def uniform(scale: Any = 1e-2, dtype: Any = None) -> InitializerFn:
    """``jax.nn.initializers.uniform`` as an :class:`InitializerFn`."""
    return InitializerFn("uniform", scale, dtype)


def truncated_normal(
    stddev: Any = 1e-2, dtype: Any = None, lower: Any = -2.0, upper: Any = 2.0
) -> InitializerFn:
    """``jax.nn.initializers.truncated_normal`` as an :class:`InitializerFn`."""
    return InitializerFn("truncated_normal", stddev, dtype, lower, upper)


def constant(value: Any, dtype: Any = None) -> InitializerFn:
    """``jax.nn.initializers.constant`` as an :class:`InitializerFn`."""
    return InitializerFn("constant", value, dtype)


def orthogonal(scale: Any = 1.0, column_axis: int = -1, dtype: Any = None) -> InitializerFn:
    """``jax.nn.initializers.orthogonal`` as an :class:`InitializerFn`."""
    return InitializerFn("orthogonal", scale, column_axis, dtype)


def delta_orthogonal(scale: Any = 1.0, column_axis: int = -1, dtype: Any = None) -> InitializerFn:
    """``jax.nn.initializers.delta_orthogonal`` as an :class:`InitializerFn`."""
    return InitializerFn("delta_orthogonal", scale, column_axis, dtype)


def zeros_init() -> Initializer:
    """An initializer returning zeros."""
    return zeros


def ones_init() -> Initializer:
    """An initializer returning ones."""
    return ones
