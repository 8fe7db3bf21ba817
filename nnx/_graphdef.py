"""The GraphDef, and flatten: a live object graph to a GraphDef and its leaves.

flatten walks the graph depth first, attributes in sorted order. Every object with identity
(a Pytree such as a Module or Rngs, a tracked List/Dict, a Variable) gets a node index the
first time it is seen; seeing it again emits a reference, which is how shared layers, tied
weights and cycles survive a round trip (the records are in ``_encoding.py``). Tuples and
other JAX pytrees are walked as plain structure; raw array leaves in them are recorded with
a :class:`Slot` (owner, attribute, path inside it), which ``_flatten.py`` reads and writes.

The result, a :class:`Flat`, is what the structure cache (``_flatten.py``) keeps on the root
object. Building objects back from a GraphDef is ``_build.py``'s job; the public API is in
``graph.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from operator import is_not
from types import GenericAlias
from typing import Any, NamedTuple

import jax

from . import _treescope, _version
from ._build import Plans, build, leaves_for_merge, state_nest_plan
from ._encoding import (
    ChildDef,
    Kind,
    LeafDef,
    NodeDef,
    Path,
    RefDef,
    StaticDef,
    TreeDef,
    VarDef,
    items_of,
    kind_of,
    outline,
)
from .errors import StaticAttributeError, format_path
from .pytreelib import Pytree, is_array, is_data
from .state import State, from_flat_state, state_from_plan
from .variablelib import Variable

__all__ = [
    "CallProxy",
    "Flat",
    "GraphDef",
    "Slot",
    "Untracked",
    "flatten_full",
    "is_pytree_with_data",
    "plain_key",
    "snapshot_leaves",
    "snapshot_state",
]

_ROOT_NAME = "model"
_LEAF = LeafDef()


# -- GraphDef -----------------------------------------------------------------------------
class GraphDef:
    """The static structure of an object graph: types, static attributes, sharing. No arrays.

    Immutable, hashable, and equal for equal structures, so it can key a ``jax.jit`` cache.
    ``GraphDef[Linear]`` may be written in type hints (the parameter is not checked).
    """

    __class_getitem__: Any = classmethod(GenericAlias)

    __slots__ = ("_hash", "_plans", "leaf_paths", "leaf_types", "num_nodes", "root")

    def __init__(self, root: ChildDef, num_nodes: int, leaf_paths: tuple, leaf_types: tuple):
        self.root = root
        self.num_nodes = num_nodes
        self.leaf_paths = leaf_paths
        self.leaf_types = leaf_types
        self._hash = hash((root, num_nodes))
        self._plans: Plans | None = None  # compiled on first use by _build.py

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, GraphDef):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.num_nodes == other.num_nodes
            and (self.root == other.root)
        )

    # -- display (see _repr.py and _treescope.py) -------------------------------------
    def _nnx_display(self) -> tuple[str, type, list[tuple[Any, Any]]]:
        """``GraphDef(MLP(...))``: the structure it encodes, drawn like the model without its
        arrays: types, the configuration a model shows, Variable types, ``array`` for a raw
        array leaf, and a reference for a node met again (sharing, cycles)."""
        return "call", GraphDef, [(None, outline(self.root, "", {}))]

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    def apply(self, state: Mapping, *states: Mapping, graph: bool | None = None) -> CallProxy:
        """Functional call: ``out, (graphdef, new_state) = graphdef.apply(state)(x)``.

        ``graph`` is accepted for flax compatibility; the call works the same either way.
        """
        return CallProxy(self, (state, *states), ())


jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


class CallProxy:
    """``proxy(*args)`` or ``proxy.method(*args)`` merges, calls, splits, and returns
    ``(output, (graphdef, state))``; the states passed in are left untouched."""

    def __init__(self, graphdef: GraphDef, states: tuple[Mapping, ...], names: tuple[str, ...]):
        self._graphdef = graphdef
        self._states = states
        self._names = names

    def __getattr__(self, name: str) -> CallProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return CallProxy(self._graphdef, self._states, (*self._names, name))

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[GraphDef, State]]:
        leaves = leaves_for_merge(self._graphdef, self._states)
        obj = build(self._graphdef, leaves, copy=True)
        fn: Callable = obj
        for name in self._names:
            fn = getattr(fn, name)
        out = fn(*args, **kwargs)
        flat = flatten_full(obj)
        return out, (flat.graphdef, snapshot_state(flat))


# -- flatten ------------------------------------------------------------------------------
class Slot(NamedTuple):
    """Where a raw array leaf (one outside any Variable) lives: in attribute or item `key`
    of `owner` (a Pytree, List or Dict; None for a plain root), at `subpath` (JAX key
    entries) inside the pytree held there."""

    owner: Any
    key: Any
    subpath: tuple


class Untracked(NamedTuple):
    """A plain mutable container walked as structure (a list or dict under ``nnx.data``,
    or another mutable pytree): mutations take no stamp, so the cache compares its
    children by identity with `snapshot` on every use. `treedef` is None for lists and
    dicts."""

    value: Any
    snapshot: Any
    treedef: Any


class Flat:
    """One flatten result: the GraphDef, the leaves in order, and what is needed to validate
    and reuse it (the identity objects and their stamps)."""

    __slots__ = (
        "__weakref__",  # nnx.jit's last-call memo refers to its flatten weakly
        "clock",
        "extra",
        "graphdef",
        "has_raw",
        "leaves",
        "nodes",
        "paths",
        "raw_plan",
        "slots",
        "stamps",
        "states",
        "untracked",
    )

    def __init__(self) -> None:
        self.graphdef: GraphDef
        self.nodes: list[Any] = []
        self.stamps: list[int] = []
        self.leaves: list[Any] = []  # Variables, or raw values for LeafDef slots
        self.paths: list[Path] = []
        self.slots: list[Slot | None] = []  # None for Variables
        self.has_raw = False
        self.raw_plan: Any = None  # how raw leaves are read and written (_flatten.py)
        self.clock = _version.now()
        self.extra: dict[Any, Any] = {}  # per-entry data of transforms (their call specs)
        self.untracked: list[Untracked] = []
        self.states: list[tuple[State, int]] = []  # States walked as structure, their stamps

    def valid(self) -> bool:
        """Nothing structural changed in the graph since this flatten."""
        if self.untracked and not _untracked_unchanged(self.untracked):
            return False
        now = _version.now()
        if self.clock == now:
            return True
        for obj, stamp in zip(self.nodes, self.stamps, strict=True):
            if getattr(obj, "_nnx_stamp", 0) != stamp:
                return False
        for state, stamp in self.states:
            if state._nnx_stamp != stamp:
                return False
        self.clock = now
        return True


def flatten_full(root: Any) -> Flat:
    """Walks the graph under `root` (see the module docstring); no cache."""
    flat = Flat()
    index: dict[int, int] = {}
    nodes, leaves, paths, slots = flat.nodes, flat.leaves, flat.paths, flat.slots
    untracked = flat.untracked
    leaf_types: list[type | None] = []

    def visit(
        value: Any, path: Path, owner: Any, key: Any, subpath: tuple, force: bool = False
    ) -> ChildDef:
        if isinstance(value, Variable):
            i = index.get(id(value))
            if i is not None:
                return RefDef(i)
            i = index[id(value)] = len(nodes)
            nodes.append(value)
            leaves.append(value)
            paths.append(path)
            slots.append(None)
            leaf_types.append(type(value))
            return VarDef(i, type(value))
        kind = kind_of(value)
        if kind is not None:
            i = index.get(id(value))
            if i is not None:
                return RefDef(i)
            i = index[id(value)] = len(nodes)
            nodes.append(value)
            children: list[tuple[Hashable, ChildDef]] = []
            for k, v in items_of(value, kind):
                child_path = (*path, k)
                if kind == Kind.OBJ and not value._nnx_is_data(k, v):
                    children.append((k, _static(v, child_path, value)))
                else:
                    forced = kind == Kind.OBJ and _forced_data(value, k)
                    children.append((k, visit(v, child_path, value, k, (), forced)))
            fields: tuple = ()
            if kind == Kind.OBJ:
                f = value.__dict__.get("_nnx_fields")
                fields = tuple(sorted(f.items())) if f else ()
            return NodeDef(kind, type(value), i, tuple(children), fields)
        if is_array(value) or (force and _is_pytree_leaf(value)):
            leaves.append(value)
            paths.append(path)
            slots.append(Slot(owner, key, subpath))
            leaf_types.append(None)
            return _LEAF
        if (
            force
            or is_data(value)
            or is_pytree_with_data(value)
            or (_unhashable(value) and not _is_pytree_leaf(value))
        ):
            # A pytree holding data, or an unhashable one (a plain list or dict, even an
            # empty one) that could not be a static value: walked as structure, as flax does.
            pairs, treedef = jax.tree_util.tree_flatten_with_path(
                value, is_leaf=lambda x: x is not value
            )
            if type(value) is State:  # stamped on change: checked only when the clock moved
                if not value._nnx_stamp:
                    object.__setattr__(value, "_nnx_stamp", _version.WATCHED)
                flat.states.append((value, value._nnx_stamp))
            elif not isinstance(value, tuple):
                untracked.append(_untracked_entry(value, treedef, pairs))
            tree_children: list[tuple[Hashable, ChildDef]] = []
            for keypath, child in pairs:
                k = plain_key(keypath[0])
                child_def = visit(child, (*path, k), owner, key, (*subpath, keypath[0]))
                tree_children.append((k, child_def))
            return TreeDef(treedef, tuple(tree_children))
        return _static(value, path, None if subpath else owner)

    root_def = visit(root, (), None, None, ())
    flat.stamps = [getattr(n, "_nnx_stamp", 0) for n in nodes]
    flat.has_raw = any(s is not None for s in slots)
    flat.graphdef = GraphDef(root_def, len(nodes), tuple(paths), tuple(leaf_types))
    return flat


def snapshot_state(flat: Flat) -> State:
    """A State of copies of the flatten's Variables (raw leaves as they are)."""
    leaves = snapshot_leaves(flat)
    plan = state_nest_plan(flat.graphdef)
    if plan is None:  # paths that do not nest plainly (an empty path): the general way
        return from_flat_state(list(zip(flat.paths, leaves, strict=True)))
    return state_from_plan(plan, leaves)


def snapshot_leaves(flat: Flat) -> list[Any]:
    """The flatten's leaves in order: copies of its Variables, raw leaves as they are."""
    if flat.has_raw:
        return [
            leaf.copy() if slot is None else leaf
            for leaf, slot in zip(flat.leaves, flat.slots, strict=True)
        ]
    return [leaf.copy() for leaf in flat.leaves]


def plain_key(entry: Any) -> Hashable:
    """The state key of a JAX key entry (DictKey, SequenceKey, GetAttrKey...)."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def _untracked_entry(value: Any, treedef: Any, pairs: list) -> Untracked:
    if type(value) is list:
        return Untracked(value, tuple(value), None)
    if type(value) is dict:
        return Untracked(value, dict(value), None)
    return Untracked(value, tuple(c for _, c in pairs), treedef)


def _untracked_unchanged(entries: list[Untracked]) -> bool:
    # identity comparisons through map(operator.is_not, ...): no Python frame per child
    for obj, snap, treedef in entries:
        t = type(obj)
        if t is list:
            if len(obj) != len(snap) or any(map(is_not, obj, snap)):
                return False
        elif t is dict:
            if obj.keys() != snap.keys() or any(
                map(is_not, map(obj.__getitem__, snap), snap.values())
            ):
                return False
        else:
            children, now = jax.tree_util.tree_flatten(obj, is_leaf=_not(obj))
            if now != treedef or len(children) != len(snap) or any(map(is_not, children, snap)):
                return False
    return True


def _not(obj: Any) -> Callable[[Any], bool]:
    return lambda x: x is not obj


def _forced_data(obj: Pytree, name: Hashable) -> bool:
    fields = obj.__dict__.get("_nnx_fields")
    return bool(fields and fields.get(name))


def _is_pytree_leaf(value: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(value, is_leaf=lambda x: x is not value)
    return len(leaves) == 1 and leaves[0] is value


def is_pytree_with_data(value: Any) -> bool:
    """A JAX pytree (not a leaf) with data (arrays, Variables, nodes) somewhere inside."""
    if value is None or isinstance(value, str | int | float | bool | complex | type):
        return False
    leaves = jax.tree_util.tree_leaves(value, is_leaf=lambda x: x is not value)
    if len(leaves) == 1 and leaves[0] is value:
        return False
    return any(is_data(leaf) or is_pytree_with_data(leaf) for leaf in leaves)


_STATIC_FIX = (
    "Static attributes are part of the GraphDef, which must be hashable. Fix, one of:\n"
    "  1. make the value hashable (a tuple instead of a list, a frozen dataclass);\n"
    "  2. if it holds arrays or state, mark it as data: self.{name} = nnx.data(value);\n"
    "  3. if it is configuration you never compare, wrap it in an object that hashes by id."
)
_STATIC_LEAF_FIX = (
    "It is not a pytree nnx can walk, so it would be a static value of the GraphDef, which "
    "must be hashable. Fix, one of:\n"
    "  1. make the value hashable (a frozen dataclass, a tuple);\n"
    "  2. if it holds arrays or state, keep it in a Variable: nnx.Variable(value);\n"
    "  3. register its type as a JAX pytree (jax.tree_util.register_dataclass) so nnx walks "
    "it."
)


def _unhashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return True
    return False


def _static(value: Any, path: Path, owner: Any = None) -> StaticDef:
    """The definition of a static value at `path`; `owner` is the Pytree (Module) whose
    attribute it is, if it is one directly (it names the owner in the error)."""
    try:
        hash(value)
    except TypeError:
        where = format_path(path, _ROOT_NAME)
        kind = type(value).__name__
        if isinstance(owner, Pytree):
            name = path[-1]
            raise StaticAttributeError(
                f"{type(owner).__name__} at {format_path(path[:-1], _ROOT_NAME)} has a static "
                f"attribute {name!r} holding an unhashable {kind} ({where}).\n"
                + _STATIC_FIX.format(name=name)
            ) from None
        owned = f" (in a {type(owner).__name__})" if owner is not None else ""
        raise StaticAttributeError(
            f"The value at {where}{owned} is an unhashable {kind}. " + _STATIC_LEAF_FIX
        ) from None
    return StaticDef(value, type(value))
