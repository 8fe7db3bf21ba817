"""Flattening nested mappings to ``{path tuple: leaf}`` and back (flax's ``nnx.traversals``).

Example:
  >>> flat = nnx.traversals.flatten_mapping({'a': 1, 'b': {'c': 2}})
  >>> flat
  {('a',): 1, ('b', 'c'): 2}
  >>> nnx.traversals.unflatten_mapping(flat)
  {'a': 1, 'b': {'c': 2}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import ArgumentError

__all__ = ["empty_node", "flatten_mapping", "flatten_to_sequence", "unflatten_mapping"]

IsLeaf = Callable[[tuple[Any, ...], Mapping[Any, Any]], bool]


class _EmptyNode:
    """Marks an empty mapping kept by ``flatten_mapping(..., keep_empty_nodes=True)``."""

    def __repr__(self) -> str:
        return "empty_node"


empty_node = _EmptyNode()


def _pairs(
    xs: Mapping[Any, Any], prefix: tuple[Any, ...], keep_empty: bool, is_leaf: IsLeaf | None
) -> list[tuple[tuple[Any, ...], Any]]:
    out: list[tuple[tuple[Any, ...], Any]] = []
    for key, value in xs.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and not (is_leaf is not None and is_leaf(path, value)):
            if value:
                out.extend(_pairs(value, path, keep_empty, is_leaf))
            elif keep_empty:
                out.append((path, empty_node))
        else:
            out.append((path, value))
    return out


def flatten_mapping(
    xs: Mapping[Any, Any],
    /,
    *,
    keep_empty_nodes: bool = False,
    is_leaf: IsLeaf | None = None,
    sep: str | None = None,
) -> dict[Any, Any]:
    """A nested mapping as one flat dict keyed by path tuples (or ``sep``-joined strings).

    Args:
      xs: the nested mapping.
      keep_empty_nodes: keep empty mappings as ``empty_node`` leaves (dropped otherwise).
      is_leaf: ``is_leaf(path, mapping)`` returning True stops the descent there.
      sep: join each path's keys with this string instead of keeping a tuple.

    Example:
      >>> nnx.traversals.flatten_mapping({'a': {'b': 1}, 'e': {}}, sep='/')
      {'a/b': 1}
    """
    pairs = _pairs(xs, (), keep_empty_nodes, is_leaf)
    if sep is None:
        return dict(pairs)
    return {sep.join(str(k) for k in path): value for path, value in pairs}


def flatten_to_sequence(
    xs: Mapping[Any, Any], /, *, is_leaf: IsLeaf | None = None
) -> list[tuple[Any, Any]]:
    """``flatten_mapping`` as a list of ``(path, leaf)`` pairs, in the mapping's order.

    Example:
      >>> nnx.traversals.flatten_to_sequence({'a': 1, 'b': {'c': 2, 'd': {}}})
      [(('a',), 1), (('b', 'c'), 2)]
    """
    return _pairs(xs, (), False, is_leaf)


def unflatten_mapping(xs: Any, /, *, sep: str | None = None) -> dict[Any, Any]:
    """The nested dict of a flat ``{path: leaf}`` mapping (or a sequence of pairs).

    Raises:
      ArgumentError: a key is not a tuple (pass ``sep`` for string keys), or one path is a
        prefix of another.

    Example:
      >>> nnx.traversals.unflatten_mapping({'a/b': 1, 'c': 2}, sep='/')
      {'a': {'b': 1}, 'c': 2}
    """
    items = xs.items() if isinstance(xs, Mapping) else xs
    out: dict[Any, Any] = {}
    for key, value in items:
        if sep is not None:
            key = tuple(key.split(sep))
        if not isinstance(key, tuple):
            raise ArgumentError(
                f"unflatten_mapping needs tuple keys, got {key!r}.\nFix: pass sep='/' (the "
                "separator used by flatten_mapping) for string keys."
            )
        node = out
        for part in key[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ArgumentError(
                    f"unflatten_mapping: path {key!r} goes through a leaf at {part!r}."
                )
            node = child
        node[key[-1]] = {} if value is empty_node else value
    return out
