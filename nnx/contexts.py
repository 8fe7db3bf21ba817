"""Split and merge several objects that share references, across calls and across a trace.

``with nnx.split_context() as ctx`` splits objects one call at a time; an object (or a
Variable) already split in the same context is not split again: the later GraphDef refers
to it. ``with nnx.merge_context() as ctx`` merges in the same order and rebuilds the sharing.
``nnx.update_context(tag)`` ties four such calls together around a raw JAX transform (split
outside, merge inside, split inside, merge outside), so that the last merge updates the
original objects in place -- values, structure, new attributes and cycles -- and returns them.

Within one context, GraphDef indices continue from call to call, so a GraphDef whose object
was already split is a reference (its State is empty). The first split of a context is
exactly ``nnx.split``.

Example:
  >>> shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> with nnx.split_context() as ctx:
  ...   gd1, s1 = ctx.split(nnx.List([shared]))
  ...   gd2, s2 = ctx.split(shared)
  >>> len(s2)
  0
  >>> with nnx.merge_context() as ctx:
  ...   a = ctx.merge(gd1, s1)
  ...   b = ctx.merge(gd2, s2)
  >>> a[0] is b
  True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, TypeVar, cast

from ._build import build, leaves_for_merge
from ._encoding import ChildDef, LeafDef, NodeDef, RefDef, StaticDef, TreeDef, VarDef
from ._flatten import flatten_cached
from ._graphdef import GraphDef
from .errors import ArgumentError, MergeError
from .filters import Filter
from .state import FlatState, State, from_flat_state
from .variablelib import Variable

__all__ = [
    "MergeContext",
    "SplitContext",
    "UpdateContext",
    "current_update_context",
    "merge_context",
    "split_context",
    "update_context",
]

F = TypeVar("F", bound=Callable[..., Any])


class _Stacks(threading.local):
    def __init__(self) -> None:
        self.update: dict[Hashable, list[UpdateContext]] = {}


_STACKS = _Stacks()


class RefMap(Mapping):
    """object -> index, keyed by identity (objects need not be hashable)."""

    def __init__(self) -> None:
        self._data: dict[int, tuple[Any, int]] = {}
        self._top = 0  # one more than the largest index

    def __getitem__(self, obj: Any) -> int:
        return self._data[id(obj)][1]

    def __contains__(self, obj: object) -> bool:
        return id(obj) in self._data

    def __iter__(self) -> Iterator[Any]:
        return (obj for obj, _ in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def _set(self, obj: Any, index: int) -> None:
        self._data[id(obj)] = (obj, index)
        self._top = max(self._top, index + 1)

    def get(self, obj: Any, default: Any = None) -> Any:
        entry = self._data.get(id(obj))
        return default if entry is None else entry[1]


# -- update context --------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class UpdateContext:
    """The bookkeeping of one :func:`update_context`: which outer object had which index at
    the outer split, and which inner object came from which outer index at the inner merge.

    Attributes:
      tag: the context's tag.
      outer_ref_outer_index: outer object -> index (set by the outer split).
      outer_index_outer_ref: index -> outer object.
      outer_index_inner_ref: index -> inner object (set by the inner merge).
      inner_ref_outer_index: inner object -> index.
    """

    tag: Hashable
    outer_ref_outer_index: RefMap | None = None
    outer_index_outer_ref: dict[int, Any] | None = None
    outer_index_inner_ref: dict[int, Any] | None = None
    inner_ref_outer_index: RefMap | None = None
    num_outer: int = 0

    def __hash__(self) -> int:  # opaque, as flax's: all contexts compare equal
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UpdateContext)

    def _flatten_end(self, ref_index: RefMap, next_index: int) -> None:
        if self.outer_ref_outer_index is None:  # (1) the outer split
            self.outer_ref_outer_index = ref_index
            self.outer_index_outer_ref = {i: obj for obj, i in ref_index._data.values()}
            self.num_outer = next_index
        else:  # (3) the inner split: the inner maps are done
            self.outer_index_inner_ref = None
            self.inner_ref_outer_index = None

    def _unflatten_end(self, index_ref: dict[int, Any], inner: bool) -> None:
        if inner:  # (2) the inner merge
            self.outer_index_inner_ref = index_ref
            refs = RefMap()
            for i, obj in index_ref.items():
                refs._set(obj, i)
            self.inner_ref_outer_index = refs


class _UpdateContextManager:
    def __init__(self, tag: Hashable):
        self.tag = tag

    def __enter__(self) -> UpdateContext:
        ctx = UpdateContext(self.tag)
        _STACKS.update.setdefault(self.tag, []).append(ctx)
        return ctx

    def __exit__(self, *exc: object) -> None:
        stack = _STACKS.update[self.tag]
        stack.pop()
        if not stack:
            del _STACKS.update[self.tag]

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return cast(F, wrapper)


def update_context(tag: Hashable) -> _UpdateContextManager:
    """A context (or decorator) in which a split outside a JAX transform, a merge and a split
    inside it, and a merge outside again update the outer objects in place.

    Use ``split_context(tag)`` / ``merge_context(tag, inner=...)`` for the four calls: (1)
    split outside, (2) merge inside with ``inner=True``, (3) split inside, (4) merge outside
    with ``inner=False``. The last merge returns the original objects, changed as the code
    inside changed its copies (values, new or removed attributes, new sharing and cycles).

    Example:
      >>> class Foo(nnx.Module):
      ...   pass
      >>> m1 = Foo()
      >>> with nnx.update_context('example'):
      ...   with nnx.split_context('example') as ctx:
      ...     graphdef, state = ctx.split(m1)
      ...   @jax.jit
      ...   def f(graphdef, state):
      ...     with nnx.merge_context('example', inner=True) as ctx:
      ...       m2 = ctx.merge(graphdef, state)
      ...     m2.a = 1
      ...     m2.ref = m2  # a new cycle
      ...     with nnx.split_context('example') as ctx:
      ...       return ctx.split(m2)
      ...   graphdef_out, state_out = f(graphdef, state)
      ...   with nnx.merge_context('example', inner=False) as ctx:
      ...     m3 = ctx.merge(graphdef_out, state_out)
      >>> m3 is m1, m1.a, m1.ref is m1
      (True, 1, True)
    """
    return _UpdateContextManager(tag)


def current_update_context(tag: Hashable) -> UpdateContext:
    """The innermost active :class:`UpdateContext` of `tag`.

    Raises:
      ArgumentError: no :func:`update_context` with this tag is active.

    Example:
      >>> with nnx.update_context('t'):
      ...   nnx.current_update_context('t').tag
      't'
    """
    stack = _STACKS.update.get(tag)
    if not stack:
        raise ArgumentError(
            f"No update context with tag {tag!r} is active.\nFix: call this inside "
            f"`with nnx.update_context({tag!r}):`, and use the same tag."
        )
    return stack[-1]


# -- split -------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class SplitContext:
    """Splits objects one call at a time, keeping their shared references (see
    :func:`split_context`).

    Attributes:
      ctxtag: the update-context tag, or None.
      ref_index: every object split so far -> its index (keyed by identity).
      is_inner: True for the split inside a transform of an update context, False for the
        one outside, None without a tag.
    """

    ctxtag: Hashable | None
    ref_index: RefMap
    is_inner: bool | None
    _next: int = 0

    def split(self, node: Any, *filters: Filter) -> tuple[Any, ...]:
        """``nnx.split(node, *filters)``, with objects split earlier in this context as
        references."""
        graphdef, pairs = self._flatten(node)
        if type(graphdef.root) is VarDef:  # a Variable split by itself: its state is a copy of it
            return (graphdef, pairs[0][1].copy(), *[State({}) for _ in filters[1:]])
        state = from_flat_state(
            [(p, v.copy() if isinstance(v, Variable) else v) for p, v in pairs]
        )
        if not filters:
            return graphdef, state
        states = state.split(*filters)
        return (graphdef, *(states if isinstance(states, tuple) else (states,)))

    def flatten(
        self, node: Any, *filters: Filter, with_paths: bool = True
    ) -> tuple[Any, ...]:
        """Like :meth:`split`, with FlatStates (or, ``with_paths=False``, the list of leaves
        in GraphDef order: the graph's own Variables) instead of States."""
        if not with_paths and filters:
            raise ArgumentError(
                "SplitContext.flatten cannot apply filters with with_paths=False.\nFix: drop "
                "the filters, or keep with_paths=True."
            )
        graphdef, pairs = self._flatten(node)
        if not with_paths:
            return graphdef, [v for _, v in pairs]
        flat = FlatState(pairs)
        if not filters:
            return graphdef, flat
        parts = flat.filter(*filters) if len(filters) > 1 else (flat.filter(filters[0]),)
        return (graphdef, *parts)

    def _flatten(self, node: Any) -> tuple[GraphDef, list[tuple[Any, Any]]]:
        flat = flatten_cached(node)
        inner = None
        if self.ctxtag is not None:
            inner = current_update_context(self.ctxtag).inner_ref_outer_index
        refs = self.ref_index
        if not refs and not inner and self._next == 0:  # first split: exactly nnx.split's
            for i, obj in enumerate(flat.nodes):
                refs._set(obj, i)
            self._next = len(flat.nodes)
            return flat.graphdef, list(zip(flat.paths, flat.leaves, strict=True))
        leaves = iter(zip(flat.paths, flat.leaves, strict=True))
        kept: list[tuple[Any, Any]] = []
        types: list[Any] = []
        nodes = flat.nodes

        def index_of(obj: Any) -> int:
            i = refs.get(obj)
            if i is None:
                i = inner.get(obj) if inner is not None else None
                if i is None:
                    i = self._next
                    self._next += 1
                refs._set(obj, i)
            return i

        def skip(cd: ChildDef) -> None:  # a subtree split before: consume its leaves
            if type(cd) is VarDef or type(cd) is LeafDef:
                next(leaves)
            elif type(cd) is NodeDef or type(cd) is TreeDef:
                for _, c in cd.children:
                    skip(c)

        def walk(cd: ChildDef) -> ChildDef:
            if type(cd) is RefDef:
                return RefDef(refs[nodes[cd.node_index]])
            if type(cd) is VarDef or type(cd) is NodeDef:
                obj = nodes[cd.node_index]
                if obj in refs:
                    skip(cd)
                    return RefDef(refs[obj])
                i = index_of(obj)
                if type(cd) is VarDef:
                    kept.append(next(leaves))
                    types.append(cd.type)
                    return VarDef(i, cd.type)
                children = tuple((k, walk(c)) for k, c in cd.children)
                return cd._replace(node_index=i, children=children)
            if type(cd) is LeafDef:
                kept.append(next(leaves))
                types.append(None)
                return cd
            if type(cd) is StaticDef:
                return cd
            return TreeDef(cd.treedef, tuple((k, walk(c)) for k, c in cd.children))

        root = walk(flat.graphdef.root)
        paths = tuple(p for p, _ in kept)
        graphdef = GraphDef(root, max(self._next, refs._top), paths, tuple(types))
        return graphdef, kept


@contextlib.contextmanager
def split_context(ctxtag: Hashable | None = None) -> Iterator[SplitContext]:
    """A context whose :meth:`SplitContext.split` calls share one index space, so objects
    shared between the split objects are split once and referred to afterwards.

    Args:
      ctxtag: the tag of an active :func:`update_context` this split belongs to.

    Example:
      >>> tied = nnx.Param(jnp.ones(2))
      >>> with nnx.split_context() as ctx:
      ...   gd_a, a = ctx.split({'w': tied})
      ...   gd_b, b = ctx.split({'v': tied})
      >>> sorted(a), sorted(b)
      (['w'], [])
      >>> with nnx.merge_context() as ctx:
      ...   ra, rb = ctx.merge(gd_a, a), ctx.merge(gd_b, b)
      >>> ra['w'] is rb['v']
      True
    """
    uctx = current_update_context(ctxtag) if ctxtag is not None else None
    is_inner = uctx.outer_ref_outer_index is not None if uctx is not None else None
    ctx = SplitContext(ctxtag, RefMap(), is_inner)
    if uctx is not None and is_inner:
        ctx._next = uctx.num_outer  # new inner objects take indices after the outer ones
    yield ctx
    if uctx is not None:
        uctx._flatten_end(ctx.ref_index, ctx._next)


# -- merge -------------------------------------------------------------------------------------
class _Box:
    """Hashable stand-in for an object while a transient GraphDef is hashed."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj


@dataclasses.dataclass(eq=False)
class MergeContext:
    """Merges what a :class:`SplitContext` split, in the same order (see
    :func:`merge_context`).

    Attributes:
      ctxtag: the update-context tag, or None.
      index_ref: index -> every object merged so far.
      is_inner: True for the merge inside a transform of an update context, False for the
        last merge outside (which updates the original objects), None without a tag.
    """

    ctxtag: Hashable | None
    index_ref: dict[int, Any]
    is_inner: bool | None

    def merge(self, graphdef: GraphDef, state: Any, /, *states: Any) -> Any:
        """``nnx.merge(graphdef, state, *states)``, resolving references to objects merged
        earlier in this context (the new graph's Variables are copies of the state's)."""
        if not isinstance(graphdef, GraphDef):
            raise MergeError(
                f"MergeContext.merge expects a GraphDef first, got {type(graphdef).__name__}."
                "\nFix: pass what SplitContext.split returned: ctx.merge(graphdef, *states)."
            )
        if isinstance(state, list):
            leaves = list(state)
        elif isinstance(state, Variable):
            leaves = [state]
        elif isinstance(state, FlatState):
            pairs = [pair for s in (state, *states) for pair in s]
            leaves = leaves_for_merge(graphdef, [from_flat_state(pairs)])
        else:
            leaves = leaves_for_merge(graphdef, [state, *states])
        return self._build(graphdef, leaves)

    def unflatten(self, graphdef: GraphDef, flat_state: Any, /, *flat_states: Any) -> Any:
        """:meth:`merge` for what :meth:`SplitContext.flatten` returned."""
        return self.merge(graphdef, flat_state, *flat_states)

    def _build(self, graphdef: GraphDef, leaves: list) -> Any:
        defined: list[int] = []
        outside: dict[int, Any] = {}
        _scan(graphdef.root, defined, outside, self.index_ref)
        reuse: dict[int, Any] = {}
        if self.ctxtag is not None and self.is_inner is False:
            outer = current_update_context(self.ctxtag).outer_index_outer_ref or {}
            reuse = {i: outer[i] for i in defined if i in outer}
        if outside:  # references to objects of earlier merges: stand them in as statics
            boxed = _substitute(graphdef.root, outside, box=True)
            transient = GraphDef(
                boxed, graphdef.num_nodes, graphdef.leaf_paths, graphdef.leaf_types
            )
            transient.root = _substitute(graphdef.root, outside, box=False)
            graphdef = transient
        table: list[Any] = []
        root = build(graphdef, leaves, copy=True, reuse=reuse or None, nodes_out=table)
        for i in defined:
            self.index_ref[i] = table[i]
        return root


def _scan(
    cd: ChildDef, defined: list[int], outside: dict[int, Any], known: dict[int, Any]
) -> None:
    if type(cd) is VarDef:
        defined.append(cd.node_index)
    elif type(cd) is NodeDef:
        defined.append(cd.node_index)
        for _, c in cd.children:
            _scan(c, defined, outside, known)
    elif type(cd) is TreeDef:
        for _, c in cd.children:
            _scan(c, defined, outside, known)
    elif type(cd) is RefDef and cd.node_index not in defined:
        if cd.node_index not in known:
            raise MergeError(
                f"MergeContext.merge got a GraphDef that refers to object #{cd.node_index}, which "
                f"no earlier merge of this context built.\nFix: merge in the order the split "
                f"context split, inside one `with nnx.merge_context() as ctx:` block."
            )
        outside[cd.node_index] = known[cd.node_index]


def _substitute(cd: ChildDef, outside: dict[int, Any], box: bool) -> ChildDef:
    if type(cd) is RefDef and cd.node_index in outside:
        obj = outside[cd.node_index]
        return StaticDef(_Box(obj) if box else obj, type(obj))
    if type(cd) is NodeDef or type(cd) is TreeDef:
        children = tuple((k, _substitute(c, outside, box)) for k, c in cd.children)
        return cd._replace(children=children)
    return cd


@contextlib.contextmanager
def merge_context(
    ctxtag: Hashable | None = None, inner: bool | None = None
) -> Iterator[MergeContext]:
    """A context whose :meth:`MergeContext.merge` calls rebuild the sharing between objects
    split in one :func:`split_context`.

    Args:
      ctxtag: the tag of an active :func:`update_context` this merge belongs to.
      inner: with a tag, ``True`` for the merge inside the transform, ``False`` for the
        merge outside, which updates the original objects in place.

    Raises:
      ArgumentError: `ctxtag` is given without `inner`.

    Example:
      >>> shared = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      >>> with nnx.split_context() as ctx:
      ...   parts = [ctx.split(m) for m in (shared, nnx.List([shared]))]
      >>> with nnx.merge_context() as ctx:
      ...   a, b = (ctx.merge(*p) for p in parts)
      >>> b[0] is a
      True
    """
    ctx = MergeContext(ctxtag, {}, inner)
    yield ctx
    if ctxtag is not None:
        if inner is None:
            raise ArgumentError(
                f"merge_context({ctxtag!r}) needs inner=True (the merge inside the "
                f"transform) or inner=False (the merge outside).\nFix: "
                f"nnx.merge_context({ctxtag!r}, inner=...)."
            )
        current_update_context(ctxtag)._unflatten_end(ctx.index_ref, inner)
