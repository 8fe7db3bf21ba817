"""Graph utilities built on the public graph API: map a function over a model's state or over
every object in it, strip Variables, set metadata, filter and map States.

All of them go through :func:`nnx.split`, :func:`nnx.merge` and :func:`nnx.variables`, so
shared sub-modules, tied weights and cycles behave as they do there.

Example:
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> zeros = nnx.map(lambda path, v: v.replace(jnp.zeros_like(v.value)), model)
  >>> float(zeros.kernel.value.sum()), float(model.kernel.value.sum()) != 0.0
  (0.0, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jax

from ._graph_mode import check_tree_mode, iter_paths
from ._graphdef import is_pytree_with_data, plain_key
from .errors import ArgumentError, format_path
from .filters import Filter
from .graph import graphdef, is_node, merge, variables
from .pytreelib import Dict, List, Pytree, is_array
from .state import State, flat_pairs, from_flat_state
from .variablelib import Variable

__all__ = [
    "as_pure",
    "filter_state",
    "map",
    "map_state",
    "pure",
    "recursive_map",
    "set_metadata",
]

A = TypeVar("A")
Path = tuple[Hashable, ...]


# -- map -----------------------------------------------------------------------------------
def map(  # flax name
    f: Callable[[Path, Any], Any],
    node: A,
    /,
    *,
    graph: bool | None = None,
    recreate_variables: bool = True,
) -> A:
    """A new graph like `node` whose leaves are ``f(path, leaf)``.

    `f` sees every leaf of the state (the graph's own Variables, and raw arrays held
    directly) with its path and returns the new leaf. A Variable it returns is placed in the
    new graph as it is (returning the leaf unchanged shares it with `node`); a raw value is
    wrapped in the Variable type the GraphDef records. The structure of `node` is not
    changed.

    Args:
      f: ``(path, leaf) -> new leaf``.
      node: a Module or any other graph node (or a single Variable).
      graph: ``False`` refuses shared references and cycles, as flax's tree mode does.
      recreate_variables: wrap raw values `f` returns in Variables (the default); with
        ``False`` they are set in the new graph as they are.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> doubled = nnx.map(lambda path, v: v.replace(v.value * 2), model)
      >>> bool((doubled.kernel.value == model.kernel.value * 2).all())
      True
    """
    check_tree_mode(graph, node, "map")
    if isinstance(node, Variable):
        out = f((), node)
        if recreate_variables and not isinstance(out, Variable):
            return node.replace(out)
        return out
    pairs = [(p, f(p, leaf)) for p, leaf in flat_pairs(variables(node))]
    return merge(
        graphdef(node), from_flat_state(pairs), recreate_variables=recreate_variables
    )


# -- recursive_map ---------------------------------------------------------------------------
def recursive_map(f: Callable[[Path, Any], Any], node: Any, /, *, graph: bool | None = None):
    """Applies ``f(path, value)`` to every object in a copy of the graph, children before
    their parents, and returns what `f` returns for the root.

    The copy has its own Modules and containers but shares the Variables of `node`. Every
    attribute is visited (sub-modules, Variables, arrays, static values such as ints), with
    its path; an object reached along several paths is visited once, and the other places get
    the same result. Whatever `f` returns replaces the value in its parent.

    Raises:
      ArgumentError: the graph has a cycle (a node is reached again before `f` returned for
        it), or `graph=False` and the graph has shared references.

    Example:
      >>> class Block(nnx.Module):
      ...   def __init__(self):
      ...     self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      ...     self.drop = nnx.Dropout(0.5)
      >>> def show(path, value):
      ...   if isinstance(value, nnx.Module):
      ...     print('.'.join(str(k) for k in path) or '<root>', type(value).__name__)
      ...   return value
      >>> _ = nnx.recursive_map(show, Block())
      drop Dropout
      lin Linear
      <root> Block
    """
    check_tree_mode(graph, node, "recursive_map")
    if any(is_node(obj) for _, obj in iter_paths(node)):
        # new Modules and containers (also inside a plain tuple/dict root), same Variables
        node = merge(graphdef(node), variables(node))
    return _RecursiveMap(f).visit(node, ())


class _RecursiveMap:
    def __init__(self, f: Callable[[Path, Any], Any]):
        self.f = f
        self.visited: set[int] = set()
        self.results: dict[int, Any] = {}

    def visit(self, value: Any, path: Path) -> Any:
        key = id(value)
        if key in self.visited:
            if key in self.results:
                return self.results[key]
            raise ArgumentError(
                f"recursive_map found a cycle: the {type(value).__name__} at "
                f"{format_path(path, 'model')} is reached again while its own children are "
                f"still being mapped, so there is no result to put there yet.\nFix: break the "
                f"cycle before mapping (e.g. remove the back reference), or use nnx.map, which "
                f"maps only the state."
            )
        if isinstance(value, Variable):
            self.visited.add(key)
        elif is_node(value):
            self.visited.add(key)
            self._children(value, path)
        elif not is_array(value) and (
            isinstance(value, list | tuple | dict) or is_pytree_with_data(value)
        ):
            value = self._pytree(value, path)
        out = self.f(path, value)
        if key in self.visited:
            self.results[key] = out
        return out

    def _children(self, node: Any, path: Path) -> None:
        if isinstance(node, Pytree):
            for k, v in node._nnx_items():
                new = self.visit(v, (*path, k))
                if new is not v:
                    setattr(node, k, new)
        elif isinstance(node, List):
            for i, v in enumerate(list(node)):
                new = self.visit(v, (*path, i))
                if new is not v:
                    node[i] = new
        elif isinstance(node, Dict):
            for k, v in sorted(dict.items(node), key=lambda kv: str(kv[0])):
                new = self.visit(v, (*path, k))
                if new is not v:
                    node[k] = new

    def _pytree(self, value: Any, path: Path) -> Any:
        pairs, treedef = jax.tree_util.tree_flatten_with_path(
            value, is_leaf=lambda x: x is not value
        )
        children = [self.visit(c, (*path, plain_key(kp[0]))) for kp, c in pairs]
        if all(a is b for (_, a), b in zip(pairs, children, strict=True)):
            return value
        return jax.tree_util.tree_unflatten(treedef, children)


# -- pure values, metadata, state helpers ----------------------------------------------------
def as_pure(tree: A) -> A:
    """`tree` with every Variable replaced by its raw value (metadata dropped).

    Example:
      >>> state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> jax.tree.map(jnp.shape, nnx.as_pure(state))['kernel']
      (2, 3)
      >>> nnx.as_pure({'a': nnx.Param(1)})
      {'a': 1}
    """

    def pure_leaf(x: Any) -> Any:
        return as_pure(x.get_raw_value()) if isinstance(x, Variable) else x

    return jax.tree.map(pure_leaf, tree, is_leaf=lambda x: isinstance(x, Variable))


def pure(tree: A) -> A:
    """Deprecated alias of :func:`as_pure` (warns, as flax.nnx does).

    Example:
      >>> import warnings
      >>> with warnings.catch_warnings():
      ...   warnings.simplefilter('ignore')
      ...   nnx.pure({'a': nnx.Param(1)})
      {'a': 1}
    """
    warnings.warn(
        "nnx.pure is deprecated. Use nnx.as_pure instead.", DeprecationWarning, stacklevel=2
    )
    return as_pure(tree)


def set_metadata(node: Any, /, *, only: Filter = Variable, **metadata: Any) -> None:
    """Sets metadata entries on the graph's Variables that `only` selects, in place.

    Example:
      >>> class Foo(nnx.Module):
      ...   def __init__(self):
      ...     self.param = nnx.Param(0.0)
      ...     self.other = nnx.Variable(0.0)
      >>> foo = Foo()
      >>> nnx.set_metadata(foo, only=nnx.Param, frozen=True)
      >>> foo.param.get_metadata('frozen'), foo.other.get_metadata('frozen', None)
      (True, None)
    """
    for _, var in flat_pairs(variables(node, only)):
        if isinstance(var, Variable):
            var.set_metadata(**metadata)


def filter_state(state: State, first: Filter, /, *filters: Filter) -> State | tuple[State, ...]:
    """The leaves of `state` each filter selects: one State per filter (function form of
    :meth:`State.filter`).

    Example:
      >>> s = nnx.state(nnx.BatchNorm(2, rngs=nnx.Rngs(0)))
      >>> sorted(nnx.filter_state(s, nnx.BatchStat))
      ['mean', 'var']
    """
    return State.filter(state if isinstance(state, State) else State(state), first, *filters)


def map_state(f: Callable[[Path, Any], Any], state: State) -> State:
    """A new State with ``f(path, leaf)`` in place of each leaf.

    Example:
      >>> s = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> nnx.map_state(lambda path, v: path, s)['kernel']
      ('kernel',)
    """
    return from_flat_state([(p, f(p, leaf)) for p, leaf in flat_pairs(state)])
