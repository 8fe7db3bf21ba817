"""Which JAX trace is running (flax's ``nnx.tracers``).

Example:
  >>> state = nnx.tracers.TraceState()
  >>> state.is_valid()
  True
  >>> jax.jit(lambda x: (state.is_valid(), x)[1])(1.0)  # inside jit another trace runs
  Array(1., dtype=float32, weak_type=True)
"""

from __future__ import annotations

from typing import Any

import jax
from jax.extend.core import get_opaque_trace_state

__all__ = ["TraceState", "current_jax_trace"]


def current_jax_trace() -> Any:
    """An opaque, comparable token of the JAX trace running now."""
    return get_opaque_trace_state(convention="nnx")


class TraceState:
    """Records the JAX trace at creation; ``is_valid()`` tells whether it is still running.

    Example:
      >>> outer = nnx.tracers.TraceState()
      >>> def f(x):
      ...     return x if outer.is_valid() else -x
      >>> f(1.0), float(jax.jit(f)(1.0))
      (1.0, -1.0)
    """

    __slots__ = ("_jax_trace",)

    def __init__(self) -> None:
        self._jax_trace = current_jax_trace()

    @property
    def jax_trace(self) -> Any:
        return self._jax_trace

    def is_valid(self) -> bool:
        return self._jax_trace == current_jax_trace()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraceState) and self._jax_trace == other._jax_trace

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"TraceState(jax_trace={self._jax_trace!r})"


jax.tree_util.register_pytree_node(TraceState, lambda s: ((), None), lambda _a, _c: TraceState())
