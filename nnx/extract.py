"""Passing object graphs through raw JAX transforms: graph nodes in a pytree to
:class:`NodeStates` (a GraphDef and its States, a plain pytree) and back.

:func:`to_tree` splits every Module, Variable or other graph node found in a pytree in one
:func:`nnx.split_context`, so objects shared between them stay shared; :func:`from_tree`
merges them back in one :func:`nnx.merge_context`. :func:`prefix` builds a transform prefix
(e.g. ``in_axes``) for a graph from a filter map.

Example:
  >>> shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> tree = nnx.extract.to_tree((shared, [shared]))
  >>> out = jax.jit(lambda t: t)(tree)
  >>> a, (b,) = nnx.extract.from_tree(out)
  >>> a is b, type(a).__name__
  (True, 'Linear')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax

from ._graph_mode import check_tree, graph_mode
from ._graphdef import plain_key
from .contexts import MergeContext, SplitContext, merge_context, split_context
from .errors import ArgumentError, format_path
from .filters import Filter, to_predicate
from .graph import is_node, iter_graph
from .state import flat_pairs, from_flat_state
from .variablelib import Variable

__all__ = ["NodeStates", "from_tree", "prefix", "to_tree"]

KeyPath = tuple[Hashable, ...]


class Missing:
    """The default of ``prefix=``: no prefix (as flax's ``flax.typing.Missing``)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NodeStates:
    """One graph node as a plain pytree: its GraphDef (static), its States, and static
    metadata (e.g. the transform prefix it was split with).

    Example:
      >>> ns = nnx.extract.NodeStates.from_split(*nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))
      >>> sorted(ns.state), len(jax.tree.leaves(ns))
      (['bias', 'kernel'], 2)
    """

    _graphdef: Any = dataclasses.field(metadata={"static": False})
    states: tuple[Any, ...]
    metadata: Any = dataclasses.field(default=None, metadata={"static": True})

    @property
    def graphdef(self) -> Any:
        """The GraphDef (raises if this NodeStates was built from states only)."""
        if self._graphdef is None:
            raise ArgumentError(
                "This NodeStates has no GraphDef (it was built with from_states or "
                "from_prefixes).\nFix: build it with NodeStates.from_split(graphdef, state)."
            )
        return self._graphdef

    @property
    def state(self) -> Any:
        """The single State (raises if there are several)."""
        if len(self.states) != 1:
            raise ArgumentError(
                f"NodeStates.state needs exactly one State, this one has {len(self.states)}."
                "\nFix: read .states instead."
            )
        return self.states[0]

    @classmethod
    def from_split(cls, graphdef: Any, state: Any, /, *states: Any, metadata: Any = None):
        """From what ``nnx.split`` returns."""
        return cls(graphdef, (state, *states), metadata)

    @classmethod
    def from_states(cls, state: Any, *states: Any):
        """States only, no GraphDef."""
        return cls(None, (state, *states), None)

    @classmethod
    def from_prefixes(cls, prefixes: Any, /, *, metadata: Any = None):
        """Prefix values in place of States."""
        return cls(None, tuple(prefixes), metadata)


def _is_graph_leaf(x: Any) -> bool:
    return isinstance(x, Variable) or is_node(x)


def _nnx_path(keypath: tuple) -> KeyPath:
    return tuple(plain_key(k) for k in keypath)


def default_split_fn(ctx: SplitContext, path: KeyPath, prefix: Any, leaf: Any) -> Any:
    """What :func:`to_tree` does with each graph node: a NodeStates of ``ctx.split(leaf)``."""
    del path, prefix
    return NodeStates.from_split(*ctx.split(leaf))


def merge_tree_node(ctx: MergeContext, path: KeyPath, prefix: Any, leaf: Any) -> Any:
    """What :func:`from_tree` does with each NodeStates: merge it in the context."""
    del prefix
    if not isinstance(leaf, NodeStates):
        raise ArgumentError(
            f"from_tree expected a NodeStates at {format_path(_nnx_path(path), 'tree')}, got "
            f"a {type(leaf).__name__}.\nFix: pass what nnx.extract.to_tree returned."
        )
    return ctx.merge(leaf.graphdef, *leaf.states)


def is_tree_node(x: Any) -> bool:
    return isinstance(x, NodeStates)


def _broadcast_prefix(prefix: Any, tree: Any, prefix_is_leaf: Callable, tree_is_leaf: Callable):
    """One prefix value per leaf of `tree` (`prefix` is a tree prefix of `tree`)."""
    out: list[Any] = []

    def add(p: Any, subtree: Any) -> None:
        out.extend([p] * len(jax.tree_util.tree_leaves(subtree, is_leaf=tree_is_leaf)))

    jax.tree.map(add, prefix, tree, is_leaf=lambda x: x is None or prefix_is_leaf(x))
    return out


def _check_consistent_aliasing(
    node: Any, node_prefix: Any, base: KeyPath, seen: dict[int, list[tuple[KeyPath, Any]]]
) -> None:
    for path, value in iter_graph(node):
        if isinstance(value, Variable):
            seen.setdefault(id(value), []).append(((*base, *path), node_prefix))
    clashes = [entries for entries in seen.values() if len({p for _, p in entries}) > 1]
    if clashes:
        lines = "\n".join(
            "  " + ", ".join(f"{format_path(p, 'tree')}: {pre!r}" for p, pre in entries)
            for entries in clashes
        )
        raise ArgumentError(
            "Inconsistent aliasing: the same Variable is reached under different prefixes:\n"
            f"{lines}\nFix: give every path to a shared Variable the same prefix (e.g. the "
            "same in_axes), or pass independent copies (nnx.clone)."
        )


def to_tree(
    tree: Any,
    /,
    *,
    prefix: Any = Missing,
    split_fn: Callable[[SplitContext, KeyPath, Any, Any], Any] = default_split_fn,
    map_non_graph_nodes: bool = False,
    ctxtag: Hashable | None = None,
    check_aliasing: bool = True,
) -> Any:
    """`tree` with each graph node (Module, Variable, List, ...) replaced by
    ``split_fn(ctx, path, prefix, node)`` (a :class:`NodeStates` by default), all split in one
    :func:`nnx.split_context`, so sharing between them survives :func:`from_tree`.

    Args:
      tree: any pytree holding graph nodes.
      prefix: a tree prefix of `tree` (e.g. a transform's ``in_axes``), handed to `split_fn`.
      split_fn: ``(ctx, keypath, prefix, node) -> replacement``.
      map_non_graph_nodes: also pass the other leaves through `split_fn`.
      ctxtag: the tag of an active :func:`nnx.update_context`.
      check_aliasing: with a prefix, refuse a Variable reached under two different prefixes.

    Raises:
      ArgumentError: inconsistent aliasing (see `check_aliasing`).

    Example:
      >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> tree = nnx.extract.to_tree({'a': m, 'b': m, 'x': 1})
      >>> type(tree['a']).__name__, len(tree['b'].state), tree['x']
      ('NodeStates', 0, 1)
    """
    with split_context(ctxtag) as ctx:
        if prefix is Missing or prefix is None:
            return jax.tree.map(
                lambda x: split_fn(ctx, (), prefix, x)
                if map_non_graph_nodes or _is_graph_leaf(x)
                else x,
                tree,
                is_leaf=_is_graph_leaf,
            )
        prefixes = _broadcast_prefix(prefix, tree, _is_graph_leaf, _is_graph_leaf)
        pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_graph_leaf)
        seen: dict[int, list] = {}
        out = []
        for (keypath, leaf), leaf_prefix in zip(pairs, prefixes, strict=True):
            if _is_graph_leaf(leaf):
                if check_aliasing:
                    _check_consistent_aliasing(leaf, leaf_prefix, _nnx_path(keypath), seen)
                out.append(split_fn(ctx, keypath, leaf_prefix, leaf))
            else:
                out.append(
                    split_fn(ctx, keypath, leaf_prefix, leaf) if map_non_graph_nodes else leaf
                )
        return jax.tree.unflatten(treedef, out)


def from_tree(
    tree: Any,
    /,
    *,
    prefix: Any = Missing,
    merge_fn: Callable[[MergeContext, KeyPath, Any, Any], Any] = merge_tree_node,
    is_node_leaf: Callable[[Any], bool] = is_tree_node,
    is_leaf: Callable[[Any], bool] = is_tree_node,
    map_non_graph_nodes: bool = False,
    is_inner: bool | None = None,
    ctxtag: Hashable | None = None,
) -> Any:
    """The inverse of :func:`to_tree`: each :class:`NodeStates` merged back, in one
    :func:`nnx.merge_context` (shared objects come back shared).

    Args:
      tree: what :func:`to_tree` returned (possibly through a JAX transform).
      prefix: a tree prefix of `tree`, handed to `merge_fn`.
      merge_fn: ``(ctx, keypath, prefix, leaf) -> object``.
      is_node_leaf: which leaves `merge_fn` takes.
      is_leaf: where flattening `tree` stops.
      map_non_graph_nodes: also pass the other leaves through `merge_fn`.
      is_inner: with `ctxtag`, whether this merge is inside the transform.
      ctxtag: the tag of an active :func:`nnx.update_context`.

    Example:
      >>> v = nnx.Param(jnp.ones(2))
      >>> a, b = nnx.extract.from_tree(nnx.extract.to_tree((v, v)))
      >>> a is b, a is v
      (True, False)
    """
    with merge_context(ctxtag, is_inner) as ctx:
        if prefix is Missing or prefix is None:
            return jax.tree.map(
                lambda x: merge_fn(ctx, (), prefix, x)
                if map_non_graph_nodes or is_node_leaf(x) or isinstance(x, Variable)
                else x,
                tree,
                is_leaf=is_leaf,
            )
        prefixes = _broadcast_prefix(prefix, tree, is_leaf, is_leaf)
        pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
        out = []
        for (keypath, leaf), leaf_prefix in zip(pairs, prefixes, strict=True):
            if map_non_graph_nodes or is_node_leaf(leaf) or isinstance(leaf, Variable):
                leaf = merge_fn(ctx, keypath, leaf_prefix, leaf)
            out.append(leaf)
        return jax.tree.unflatten(treedef, out)


def prefix(
    node: Any,
    filter_map: Mapping[Filter, Any] | Callable[..., Any],
    /,
    *,
    graph: bool | None = None,
) -> Any:
    """`node` with each leaf replaced by its prefix value (for a transform's ``in_axes``
    and the like).

    `filter_map` is ``(path, leaf) -> prefix``, or a mapping ``{filter: prefix}`` where the
    first matching filter wins. With graph semantics (the default) graph nodes are first
    turned into :class:`NodeStates` as :func:`to_tree` does (a shared object appears once,
    later sightings are references with an empty state), so prefix several objects of one
    transform call together; with ``graph=False`` the Module pytree itself is mapped.

    Raises:
      ArgumentError: no filter of the mapping matches a leaf; or ``graph=False`` and the
        graph has shared references.

    Example:
      >>> d = {'a': nnx.Param(jnp.array(2)), 'b': nnx.BatchStat(jnp.arange(5))}
      >>> nnx.prefix(d, lambda path, x: 0 if 'b' in path else None, graph=False)
      {'a': None, 'b': 0}
      >>> axes = nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0})
      >>> axes['a'].state, axes['b'].state
      (None, 0)
    """
    if isinstance(filter_map, Mapping):
        predicates = [(to_predicate(f), value) for f, value in filter_map.items()]

        def prefix_fn(path: KeyPath, leaf: Any) -> Any:
            for predicate, value in predicates:
                if predicate(path, leaf):
                    return value
            raise ArgumentError(
                f"prefix: no filter of {list(filter_map)!r} matches the "
                f"{type(leaf).__name__} at {format_path(path, 'node')}.\nFix: add a "
                f"catch-all entry, e.g. {{..., None}} last."
            )
    else:
        prefix_fn = filter_map

    def is_var(x: Any) -> bool:
        return isinstance(x, Variable)

    if not graph_mode(graph):  # flax's tree mode: a plain pytree map
        check_tree(node, "prefix")
        return jax.tree_util.tree_map_with_path(
            lambda kp, x: prefix_fn(_nnx_path(kp), x), node, is_leaf=is_var
        )

    def per_leaf(keypath: tuple, x: Any) -> Any:
        base = _nnx_path(keypath)
        if not isinstance(x, NodeStates):
            return prefix_fn(base, x)
        state = x.states[0]
        if isinstance(state, Variable):
            return NodeStates.from_split(x._graphdef, prefix_fn(base, state))
        pairs = [(p, prefix_fn((*base, *p), v)) for p, v in flat_pairs(state)]
        return NodeStates.from_split(x._graphdef, from_flat_state(pairs))

    return jax.tree_util.tree_map_with_path(
        per_leaf, to_tree(node), is_leaf=lambda x: isinstance(x, NodeStates)
    )


