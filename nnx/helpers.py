"""flax's ``nnx.helpers`` namespace: small containers and training helpers, re-exported.

``Dict``, ``List``, ``Sequential`` and ``TrainState`` are the same classes as ``nnx.Dict``,
``nnx.List``, ``nnx.Sequential`` and ``nnx.TrainState``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .nn.sequential import Sequential
from .pytreelib import Dict, List
from .training.train_state import TrainState

__all__ = ["Dict", "List", "Sequential", "TrainState", "has_keyword_arg"]


def has_keyword_arg(func: Callable[..., Any], name: str) -> bool:
    """True if `func` takes an argument called `name` by keyword.

    Example:
      >>> nnx.helpers.has_keyword_arg(lambda x, *, rngs: x, 'rngs')
      True
      >>> nnx.helpers.has_keyword_arg(lambda x: x, 'rngs')
      False
    """
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    return param is not None and param.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
