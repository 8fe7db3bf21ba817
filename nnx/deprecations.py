"""Deprecated aliases (flax's ``nnx.deprecations``)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["deprecated"]


def deprecated(new_fn: F) -> F:
    """A wrapper of `new_fn` that warns (``DeprecationWarning``) on every call, then calls it.

    Example:
      >>> import warnings
      >>> old_name = nnx.deprecations.deprecated(nnx.split)
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     _ = old_name(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
      >>> caught[0].category.__name__
      'DeprecationWarning'
    """
    name = getattr(new_fn, "__name__", repr(new_fn))

    @functools.wraps(new_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"this alias is deprecated: use {name} instead.", DeprecationWarning, stacklevel=2
        )
        return new_fn(*args, **kwargs)

    wrapper.__doc__ = f"Deprecated: use ``{name}``.\n\n{new_fn.__doc__ or ''}"
    return wrapper  # type: ignore[return-value]
