"""The one order of state keys: ints first (numerically), then strings, then anything else
by ``repr``. States, nnx.Dict pytrees and GraphDefs all sort by it, so their flat orders
agree."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


def sort_key(key: Hashable) -> tuple[int, Any]:
    """Sort key for a state key.

    Example:
      >>> from nnx._keys import sort_key
      >>> sorted(['b', 2, 'a', 0], key=sort_key)
      [0, 2, 'a', 'b']
    """
    if isinstance(key, int):
        return (0, key)
    if isinstance(key, str):
        return (1, key)
    return (2, repr(key))
