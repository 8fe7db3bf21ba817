"""``nnx.Sequential``: call layers (or any callables) one after another.

Example:
  >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu)
  >>> model(jnp.ones((1, 2))).shape
  (1, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """Applies its layers in order; a layer returning a tuple passes it on as positional
    arguments. Keyword arguments go to the first layer only."""

    def __init__(self, *fns: Callable[..., Any]):
        self.layers = list(fns)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.layers:
            raise ValueError("Sequential has no layers to call. Fix: nnx.Sequential(layer, ...).")
        out: Any = None
        for f in self.layers:
            out = f(*args, **kwargs)
            args = out if isinstance(out, tuple) else (out,)
            kwargs = {}
        return out
