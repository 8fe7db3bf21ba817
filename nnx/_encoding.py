"""The records a GraphDef is made of, and how a GraphDef is drawn.

A GraphDef's root is a *definition*: one record per value of the graph, nested the way the
graph nests. Every object with identity (a Pytree such as a Module or Rngs, a tracked
List/Dict, a Variable) has a node index, given in flatten order the first time it is seen;
seeing it again gives a :class:`RefDef`.

=================  ======================================================================
record             what it stands for
=================  ======================================================================
:class:`RefDef`    an object with identity seen before (shared layers, tied weights, cycles)
:class:`VarDef`    a Variable, first sighting: consumes one leaf
:class:`LeafDef`   a raw array leaf (outside any Variable): consumes one leaf
:class:`StaticDef` a static value (hashable; part of the GraphDef)
:class:`NodeDef`   a Pytree / List / Dict, first sighting, with its children
:class:`TreeDef`   a JAX pytree without identity (tuple, namedtuple, plain dict...)
=================  ======================================================================

Records are NamedTuples, so a GraphDef hashes and compares in C; each ends with a
:class:`Tag`, so two records of different kinds never compare equal.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import IntEnum
from typing import Any, NamedTuple, TypeAlias, final

from . import _treescope
from ._keys import sort_key
from ._repr import shown_fields
from .pytreelib import Dict, List, Pytree

__all__ = [
    "ChildDef",
    "Kind",
    "LeafDef",
    "NodeDef",
    "Path",
    "RefDef",
    "StaticDef",
    "Tag",
    "TreeDef",
    "VarDef",
    "items_of",
    "kind_of",
    "outline",
    "summary",
]

Path: TypeAlias = tuple[Hashable, ...]


class Tag(IntEnum):
    """Which record a definition is (the last field of each)."""

    REF = 0
    VAR = 1
    LEAF = 2
    STATIC = 3
    NODE = 4
    TREE = 5


class Kind(IntEnum):
    """The three kinds of node with identity."""

    OBJ = 0  # a Pytree (Module, Rngs, Optimizer...): attributes
    LIST = 1  # nnx.List: items by index
    DICT = 2  # nnx.Dict: items by key


@final
class RefDef(NamedTuple):
    node_index: int
    tag: Tag = Tag.REF


@final
class VarDef(NamedTuple):
    node_index: int
    type: type
    tag: Tag = Tag.VAR


@final
class LeafDef(NamedTuple):
    tag: Tag = Tag.LEAF


@final
class StaticDef(NamedTuple):
    value: Any
    type: type  # keeps 1 and True apart (they are equal and hash the same)
    tag: Tag = Tag.STATIC


@final
class NodeDef(NamedTuple):
    kind: Kind
    type: type
    node_index: int
    children: tuple[tuple[Hashable, ChildDef], ...]
    fields: tuple[tuple[str, bool], ...]  # a Pytree's per-attribute data/static marks
    tag: Tag = Tag.NODE


@final
class TreeDef(NamedTuple):
    treedef: Any  # jax.tree_util.PyTreeDef (one level)
    children: tuple[tuple[Hashable, ChildDef], ...]
    tag: Tag = Tag.TREE


ChildDef: TypeAlias = RefDef | VarDef | LeafDef | StaticDef | NodeDef | TreeDef


def kind_of(value: Any) -> Kind | None:
    """The node kind of `value`, or None if it is not a node with identity."""
    if isinstance(value, Pytree):
        return Kind.OBJ
    if isinstance(value, List):
        return Kind.LIST
    if isinstance(value, Dict):
        return Kind.DICT
    return None


def items_of(value: Any, kind: Kind) -> list[tuple[Hashable, Any]]:
    """The children of a node, in flatten order (attributes and keys sorted)."""
    if kind == Kind.OBJ:
        return value._nnx_items()
    if kind == Kind.LIST:
        return list(enumerate(value))
    return [(k, dict.__getitem__(value, k)) for k in sorted(value, key=sort_key)]


# -- display --------------------------------------------------------------------------------
def _child_path(path: str, kind: Kind, key: Hashable) -> str:
    """A treescope path (``.name``, ``[0]``, ``['key']``), for references to draw."""
    if kind == Kind.OBJ and isinstance(key, str):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def outline(cd: ChildDef, path: str, seen: dict[int, tuple[str, str]]) -> Any:
    """What the display of a GraphDef draws for the definition `cd` at `path`; `seen` maps
    node indices to (type name, path) of their first sighting."""
    if type(cd) is StaticDef:
        return cd.value
    if type(cd) is LeafDef:
        return _treescope.Leaf("array")
    if type(cd) is RefDef:
        name, where = seen.get(cd.node_index, ("node", None))
        return _treescope.reference(name, where)
    if type(cd) is VarDef:
        seen[cd.node_index] = (cd.type.__name__, path)
        return _treescope.Leaf(cd.type.__name__)
    if type(cd) is NodeDef:
        seen[cd.node_index] = (cd.type.__name__, path)
        items = [(k, outline(c, _child_path(path, cd.kind, k), seen)) for k, c in cd.children]
        if cd.kind == Kind.LIST:
            return _treescope.Outline("list", cd.type, items)
        if cd.kind == Kind.DICT:
            return _treescope.Outline("dict", cd.type, items)
        named = [(str(k), v) for k, v in items]  # a Pytree's children are its attributes
        pairs = list(zip(named, cd.children, strict=True))
        static = [item for item, (_, c) in pairs if type(c) is StaticDef]
        data = [item for item, (_, c) in pairs if type(c) is not StaticDef]
        return _treescope.Outline("object", cd.type, shown_fields(cd.type, static + data))
    assert type(cd) is TreeDef
    items = [(k, outline(c, f"{path}[{k!r}]", seen)) for k, c in cd.children]
    node_type = cd.treedef.node_data()[0] if cd.treedef.node_data() else tuple
    if node_type is tuple or node_type is list:
        return node_type(v for _, v in items)
    if node_type is dict:
        return dict(items)
    if all(isinstance(k, str) for k, _ in items):
        return _treescope.Outline("object", node_type, items)
    return _treescope.Outline("call", node_type, items)


def summary(graphdef: Any) -> str:
    """One line for error messages: ``GraphDef(MLP, nodes=16, leaves=10)``."""
    root = graphdef.root
    if type(root) is NodeDef or type(root) is VarDef:
        name = root.type.__name__
    elif type(root) is TreeDef:
        name = getattr(root.treedef.node_data()[0], "__name__", "pytree")
    else:
        name = {LeafDef: "array", StaticDef: "static"}.get(type(root), "ref")
    return f"GraphDef({name}, nodes={graphdef.num_nodes}, leaves={len(graphdef.leaf_paths)})"
