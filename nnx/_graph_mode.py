"""flax.nnx's ``graph=`` / ``graph_updates=`` switches, on nnx's one implementation.

flax.nnx 0.12 has two traversals: graph mode (shared references, cycles, structural updates
through transforms) and tree mode (``graph=False``: a Module is treated as a plain pytree,
shared references are an error). nnx has one traversal, graph semantics at tree-mode speed
(docs/coming-from-flax.md, "One semantics"), so the switches here do not pick another code
path. They keep flax's observable contract:

* ``graph=False`` refuses an object graph with shared references or cycles, naming every
  duplicate path, exactly where flax's tree mode refuses it;
* ``graph_updates=False`` on a transform refuses Variable aliasing between inputs and
  outputs, and refuses structural changes made inside (flax drops them silently; nnx says so,
  because a silently lost change is the worst kind of bug);
* ``set_graph_mode`` / ``set_graph_updates`` change the default, as a plain call, a context
  manager or a decorator, per thread.

Everything defaults to ``True``, as in flax.nnx 0.12.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar, cast

import jax

from ._encoding import Kind, items_of, kind_of
from ._graphdef import is_pytree_with_data, plain_key
from .errors import ArgumentError, format_path
from .filters import Filter, to_predicate
from .pytreelib import is_array
from .variablelib import Variable

F = TypeVar("F", bound=Callable[..., Any])
Path = tuple[Hashable, ...]


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.graph: list[bool] = []
        self.updates: list[bool] = []


_STACKS = _Stacks()


class _Setting:
    """``set_x(v)`` sets the default now; ``with set_x(v):`` restores it on exit;
    ``@set_x(v)`` applies it only while the decorated function runs."""

    _name = ""

    @classmethod
    def _stack(cls) -> list[bool]:
        return getattr(_STACKS, cls._name)

    def __init__(self, value: bool, /) -> None:
        if not isinstance(value, bool):
            raise ArgumentError(
                f"nnx.{type(self).__name__} takes True or False, got {value!r}."
            )
        stack = self._stack()
        self._previous = stack[-1] if stack else None
        if stack:
            stack[-1] = value
        else:
            stack.append(value)
        self._value = value

    @classmethod
    def current_value(cls) -> bool:
        """The value in force on this thread (``True`` unless set)."""
        stack = cls._stack()
        return stack[-1] if stack else True

    def __enter__(self) -> _Setting:
        if self._previous is not None:  # keep the outer value under ours, to restore on exit
            self._stack().insert(-1, self._previous)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack().pop()

    def __call__(self, fn: F) -> F:
        stack = self._stack()  # used as a decorator: undo the immediate setting
        stack.pop()
        if self._previous is not None:
            stack.append(self._previous)
        value = self._value

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = self._stack()
            stack.append(value)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()

        return cast(F, wrapper)


class set_graph_mode(_Setting):  # flax name
    """Sets the default of every ``graph=`` argument (flax.nnx's graph/tree mode switch).

    nnx has one traversal with graph semantics, so ``False`` only adds flax's tree-mode
    check: an object graph with shared references or cycles is refused with every duplicate
    path. Use it as a call (sets the default on this thread), a context manager (restores
    the previous default on exit) or a decorator.

    Example:
      >>> shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      >>> pair = nnx.List([shared, shared])
      >>> try:
      ...     with nnx.set_graph_mode(False):
      ...         nnx.split(pair)
      ... except nnx.errors.ArgumentError as error:
      ...     print(str(error).splitlines()[1])
        model[0] = model[1]
      >>> nnx.set_graph_mode.current_value()
      True
    """

    _name = "graph"


class set_graph_updates(_Setting):  # flax name
    """Sets the default of every transform's ``graph_updates=`` argument.

    With ``False`` a transform refuses Variable aliasing (the same Variable passed twice,
    or returned as an output) and refuses structural changes made inside it, instead of
    carrying them out. Use it as a call, a context manager or a decorator.

    Example:
      >>> with nnx.set_graph_updates(False):
      ...     nnx.set_graph_updates.current_value()
      False
      >>> nnx.set_graph_updates.current_value()
      True
    """

    _name = "updates"


def graph_mode(graph: bool | None) -> bool:
    """``graph`` resolved against the current default."""
    if graph is None:
        stack = _STACKS.graph
        return stack[-1] if stack else True
    return graph


def graph_updates(updates: bool | None) -> bool:
    """``graph_updates`` resolved against the current default."""
    if updates is None:
        stack = _STACKS.updates
        return stack[-1] if stack else True
    return updates


# -- duplicates --------------------------------------------------------------------------
def _walk(node: Any, path: Path, seen: dict[int, list], order: list[list]) -> None:
    """Records every path to every identity object; a second sighting is not descended."""
    is_var = isinstance(node, Variable)
    kind = None if is_var else kind_of(node)
    if is_var or kind is not None:
        entry = seen.get(id(node))
        if entry is not None:
            entry[1].append(path)
            return
        entry = [node, [path]]
        seen[id(node)] = entry
        order.append(entry)
        if kind is None:  # a Variable
            return
        for key, child in items_of(node, kind):
            if kind == Kind.OBJ and not node._nnx_is_data(key, child):
                continue
            _walk(child, (*path, key), seen, order)
        return
    if is_array(node) or node is None or isinstance(node, str | int | float | bool):
        return
    if isinstance(node, list | tuple | dict) or is_pytree_with_data(node):
        pairs, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
        for keypath, child in pairs:
            _walk(child, (*path, plain_key(keypath[0])), seen, order)


def find_duplicates(node: Any, /, *, only: Filter = ...) -> list[list[Path]]:
    """Every object reachable along more than one path, as the list of its paths.

    Modules, Rngs, tracked containers and Variables have identity; each one seen twice or
    more (a shared layer, a tied weight, a cycle back to the root) gives one list, its
    first path first. A shared object is not descended a second time, so its children are
    reported once, under the object. ``only`` keeps the objects matching a filter.

    Example:
      >>> shared = nnx.Param(jnp.ones(2))
      >>> nnx.find_duplicates({'a': shared, 'b': [shared]})
      [[('a',), ('b', 0)]]
    """
    seen: dict[int, list] = {}
    order: list[list] = []
    _walk(node, (), seen, order)
    keep = to_predicate(only)
    return [paths for obj, paths in order if len(paths) > 1 and keep(paths[0], obj)]


def _describe(duplicates: list[list[Path]], limit: int = 6) -> str:
    lines = []
    for paths in duplicates[:limit]:
        lines.append("  " + " = ".join(format_path(p) or "<root>" for p in paths))
    if len(duplicates) > limit:
        lines.append(f"  ... and {len(duplicates) - limit} more")
    return "\n".join(lines)


def check_tree(node: Any, fn_name: str) -> None:
    """Refuses shared references and cycles, as flax's tree mode (``graph=False``) does."""
    duplicates = find_duplicates(node)
    if duplicates:
        raise ArgumentError(
            f"nnx.{fn_name}(graph=False) found shared references, which tree mode does not "
            f"allow (each line is one object reached along several paths):\n"
            f"{_describe(duplicates)}\n"
            f"Fix: drop graph=False (nnx handles shared references at the same speed), or "
            f"give each place its own object (nnx.clone)."
        )


def check_tree_mode(graph: bool | None, node: Any, fn_name: str) -> None:
    """:func:`check_tree` when `graph` (resolved against ``set_graph_mode``) is False: the one
    check every ``graph=`` argument of the graph API adds; nothing else runs otherwise."""
    if graph is False or (graph is None and not graph_mode(None)):
        check_tree(node, fn_name)


def check_no_aliasing(values: Any, fn_name: str, what: str = "inputs") -> None:
    """Refuses a Variable reachable twice among a transform's inputs or outputs
    (``graph_updates=False``, as flax does)."""
    duplicates = find_duplicates(values, only=Variable)
    if duplicates:
        raise ArgumentError(
            f"nnx.{fn_name}(graph_updates=False) found the same Variable more than once in "
            f"its {what} (flax's simple traversal does not allow aliasing):\n"
            f"{_describe(duplicates)}\n"
            f"Fix: drop graph_updates=False, or pass each Variable once (nnx.clone makes "
            f"independent copies)."
        )


def iter_paths(node: Any) -> Iterator[tuple[Path, Any]]:
    """(first path, object) for every identity object, in traversal order."""
    seen: dict[int, list] = {}
    order: list[list] = []
    _walk(node, (), seen, order)
    for obj, paths in order:
        yield paths[0], obj
