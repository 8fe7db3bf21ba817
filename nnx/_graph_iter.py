"""Walks over an object graph: every node and leaf (:func:`iter_graph`), or a node's direct
children (:func:`iter_children`, :func:`iter_module_children`)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

import jax

from ._encoding import Kind, Path, items_of, kind_of
from ._graph_mode import check_tree_mode
from ._graphdef import is_pytree_with_data, plain_key
from .errors import ArgumentError
from .pytreelib import Dict, List, Pytree, is_array
from .variablelib import Variable

__all__ = ["iter_children", "iter_graph", "iter_module_children"]


def _is_node(value: Any) -> bool:
    return isinstance(value, Pytree | List | Dict)


def iter_graph(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Any]]:
    """Yields ``(path, value)`` for every node, Variable and array leaf, each once, children
    before their parent (the root comes last, with path ``()``).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      >>> [(p, type(v).__name__) for p, v in nnx.iter_graph([M()])]
      [((0, 'w'), 'Param'), ((0,), 'M')]
    """
    check_tree_mode(graph, node, "iter_graph")
    return _iter_graph(node)


def _iter_graph(node: Any) -> Iterator[tuple[Path, Any]]:
    seen: set[int] = set()

    def walk(value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
        if isinstance(value, Variable):
            if id(value) not in seen:
                seen.add(id(value))
                yield path, value
            return
        kind = kind_of(value)
        if kind is not None:
            if id(value) in seen:
                return
            seen.add(id(value))
            for k, v in items_of(value, kind):
                if kind == Kind.OBJ and not value._nnx_is_data(k, v):
                    continue
                yield from walk(v, (*path, k))
            yield path, value
            return
        if is_array(value):
            yield path, value
            return
        if isinstance(value, list | tuple | dict) or is_pytree_with_data(value):
            pairs, _ = jax.tree_util.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
            for keypath, child in pairs:
                yield from walk(child, (*path, plain_key(keypath[0])))

    yield from walk(node, ())


def iter_children(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Hashable, Any]]:
    """Yields ``(key, child)`` for the direct children of a node that are nodes themselves
    (Modules, Rngs, Lists, Dicts) or Variables, in key order; arrays and static attributes
    are skipped, and nothing deeper is visited (see :func:`iter_graph`).

    Raises:
      ArgumentError: `node` is not a node (a Pytree such as a Module, a List or a Dict), or
        ``graph=False`` and the graph under it shares references.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.layers = [nnx.Module()]
      ...     self.size = 2
      >>> [(k, type(v).__name__) for k, v in nnx.iter_children(M())]
      [('layers', 'List'), ('w', 'Param')]
    """
    return _iter_children(_checked_kind(node, "iter_children", graph), node, False)


def iter_module_children(
    node: Any, /, *, graph: bool | None = None
) -> Iterator[tuple[Hashable, Any]]:
    """Like :func:`iter_children`, without the Variables: yields ``(key, child)`` for the
    direct children that are nodes (Modules, Rngs, Lists, Dicts), in key order.

    Raises:
      ArgumentError: as :func:`iter_children`.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.layers = [nnx.Linear(2, 2, rngs=nnx.Rngs(0))]
      >>> [(k, type(v).__name__) for k, v in nnx.iter_module_children(M())]
      [('layers', 'List')]
    """
    return _iter_children(_checked_kind(node, "iter_module_children", graph), node, True)


def _checked_kind(node: Any, fn_name: str, graph: bool | None) -> Kind:
    kind = kind_of(node)
    if kind is None:
        raise ArgumentError(
            f"{fn_name} expects a node (a Module or other nnx.Pytree, an nnx.List or "
            f"nnx.Dict), got a {type(node).__name__}.\nFix: for a plain pytree iterate it "
            "directly, or use nnx.iter_graph(value) to walk every node inside it."
        )
    check_tree_mode(graph, node, fn_name)
    return kind


def _iter_children(kind: Kind, node: Any, nodes_only: bool) -> Iterator[tuple[Hashable, Any]]:
    for k, v in items_of(node, kind):
        if _is_node(v) or (not nodes_only and isinstance(v, Variable)):
            yield k, v
