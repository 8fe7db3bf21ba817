"""Finding where an object sits in the model that holds it, for error messages.

A layer does not know its own path (``model.blocks[3].attn``); when it must report an error,
:func:`path_of` walks the references back up from the layer to the outermost Pytree that
holds it. This uses the garbage collector's referrer lists and is only ever called on an
error path, never in normal operation.

Example:
  >>> class Inner(nnx.Module): pass
  >>> class Outer(nnx.Module):
  ...   def __init__(self):
  ...     self.blocks = [Inner(), Inner()]
  >>> outer = Outer()
  >>> nnx.locate.path_of(outer.blocks[1])
  'Outer.blocks[1]'
"""

from __future__ import annotations

import gc
from collections.abc import Hashable
from typing import Any

from .errors import format_path
from .pytreelib import Dict, List, Pytree

__all__ = ["describe", "path_of"]

_MAX_DEPTH = 64


def _parent(obj: Any) -> tuple[Any, Hashable] | None:
    for ref in gc.get_referrers(obj):
        if isinstance(ref, List):
            for i, item in enumerate(ref):
                if item is obj:
                    return ref, i
        elif isinstance(ref, Dict):
            for k, item in ref.items():
                if item is obj:
                    return ref, k
        elif type(ref) is dict:
            namespace: dict[str, Any] = ref  # a Pytree's __dict__?
            for owner in gc.get_referrers(ref):
                if isinstance(owner, Pytree) and getattr(owner, "__dict__", None) is ref:
                    for k, item in namespace.items():
                        if item is obj and not k.startswith("_nnx_"):
                            return owner, k
    return None


def path_of(obj: Any) -> str:
    """``Root.attr[i].attr``: the path from the outermost Pytree holding `obj` down to it
    (just the class name when nothing holds it)."""
    parts: list[Hashable] = []
    current = obj
    seen = {id(obj)}
    for _ in range(_MAX_DEPTH):
        found = _parent(current)
        if found is None or id(found[0]) in seen:
            break
        current, key = found
        seen.add(id(current))
        parts.append(key)
    return format_path(tuple(reversed(parts)), type(current).__name__)


def describe(module: Any) -> str:
    """``ClassName at Root.path`` (or just the class name for a top-level object)."""
    where = path_of(module)
    name = type(module).__name__
    return name if where == name else f"{name} at {where}"
