"""The GraphDef: how an object graph is encoded, and how new graphs are built from one.

A GraphDef is a nested tuple of child definitions (see the tags below) plus the leaf paths
and Variable types in flatten order: immutable, hashable, no arrays. This module holds the
encoding, the ``GraphDef`` class, the gathering of a State's leaves into GraphDef order
(:func:`_leaves_for`, the ``merge`` side), and :func:`_build`, which makes a graph from a
GraphDef and its leaves (compiled once per GraphDef into a :class:`_BuildPlan`).

Producing a GraphDef from a live graph is ``_flatten.py``'s job; the public API is in
``graph.py``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping
from itertools import repeat
from types import GenericAlias
from typing import TYPE_CHECKING, Any

import jax

from . import _treescope, _version
from ._keys import sort_key as _sort_key
from ._repr import shown_fields
from .errors import GraphDefMismatchError, format_path, short_list
from .pytreelib import Dict, List, Pytree
from .state import State, _flat_pairs, _iter_pairs, _nest_plan
from .variablelib import Variable, _Meta

if TYPE_CHECKING:
    from .graph import _CallProxy

Path = tuple[Hashable, ...]

# Child definitions are plain tuples (cheap to build, hash and compare):
#   (_REF, index)                          an identity object seen before
#   (_VAR, index, variable_type)           a Variable, first sighting; consumes one leaf
#   (_LEAF,)                               a raw array leaf; consumes one leaf
#   (_STATIC, value, type)                 a static value (its type keeps 1 and True apart)
#   (_NODE, kind, type, index, children, fields)   a Pytree / List / Dict, first sighting
#   (_TREE, treedef, children)             a JAX pytree without identity (tuple, namedtuple...)
# where children is a tuple of (key, child definition).
_REF, _VAR, _LEAF, _STATIC, _NODE, _TREE = range(6)
_OBJ, _LIST, _DICT = range(3)  # the kinds of _NODE
_MISSING: Any = object()  # "no value here" (None can be a value)


def _kind(value: Any) -> int | None:
    if isinstance(value, Pytree):
        return _OBJ
    if isinstance(value, List):
        return _LIST
    if isinstance(value, Dict):
        return _DICT
    return None


def _items(value: Any, kind: int) -> list[tuple[Hashable, Any]]:
    if kind == _OBJ:
        return value._nnx_items()
    if kind == _LIST:
        return list(enumerate(value))
    return [(k, dict.__getitem__(value, k)) for k in sorted(value, key=_sort_key)]


# -- GraphDef -----------------------------------------------------------------------------
class GraphDef:
    """The static structure of an object graph: types, static attributes, sharing. No arrays.

    Immutable, hashable, and equal for equal structures, so it can key a ``jax.jit`` cache.
    ``GraphDef[Linear]`` may be written in type hints (the parameter is not checked).
    """

    __class_getitem__ = classmethod(GenericAlias)

    __slots__ = (
        "_build_plan",
        "_gather_plan",
        "_hash",
        "_path_index",
        "_state_plan",
        "leaf_paths",
        "leaf_types",
        "num_nodes",
        "root",
    )

    def __init__(self, root: tuple, num_nodes: int, leaf_paths: tuple, leaf_types: tuple):
        self.root = root
        self.num_nodes = num_nodes
        self.leaf_paths = leaf_paths
        self.leaf_types = leaf_types
        self._hash = hash((root, num_nodes))
        self._path_index: dict[Path, int] | None = None
        self._state_plan: dict | bool | None = False  # False: not computed yet
        self._build_plan: _BuildPlan | None = None
        self._gather_plan: tuple | bool | None = False

    def _gather_level(self) -> tuple | None:
        """The nest plan compiled for ``_gather`` (built once)."""
        level = self._gather_plan
        if level is False:
            plan = self._plan()
            level = self._gather_plan = (
                None if plan is None else _compile_level(plan, self.leaf_types)
            )
        return level  # type: ignore[return-value]

    def _plan(self) -> dict | None:
        """How a State of this GraphDef nests (see ``state._nest_plan``), built once."""
        plan = self._state_plan
        if plan is False:
            plan = self._state_plan = _nest_plan(self.leaf_paths)
        return plan  # type: ignore[return-value]

    def _index(self) -> dict[Path, int]:
        """leaf path -> leaf position (built once per GraphDef)."""
        index = self._path_index
        if index is None:
            index = self._path_index = {p: i for i, p in enumerate(self.leaf_paths)}
        return index

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
        return "call", GraphDef, [(None, _outline(self.root, "", {}))]

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    def _summary(self) -> str:
        """One line for error messages: ``GraphDef(MLP, nodes=16, leaves=10)``."""
        root = self.root
        if root[0] in (_NODE, _VAR):
            name = root[2].__name__
        elif root[0] == _TREE:
            name = getattr(root[1].node_data()[0], "__name__", "pytree")
        else:
            name = {_LEAF: "array", _STATIC: "static"}.get(root[0], "ref")
        return f"GraphDef({name}, nodes={self.num_nodes}, leaves={len(self.leaf_paths)})"

    def apply(self, state: Mapping, *states: Mapping, graph: bool | None = None) -> _CallProxy:
        """Functional call: ``out, (graphdef, new_state) = graphdef.apply(state)(x)``.

        ``graph`` is accepted for flax compatibility; the call works the same either way.
        """
        from .graph import _CallProxy  # the public API sits above this module

        return _CallProxy(self, (state, *states), ())


jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


def _child_path(path: str, kind: Any, key: Hashable) -> str:
    """A treescope path (``.name``, ``[0]``, ``['key']``), for references to draw."""
    if kind == _OBJ and isinstance(key, str):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _outline(cd: tuple, path: str, seen: dict[int, tuple[str, str]]) -> Any:
    """What the display of a GraphDef draws for the child definition `cd` at `path`;
    `seen` maps node indices to (type name, path) of their first sighting."""
    tag = cd[0]
    if tag == _STATIC:
        return cd[1]
    if tag == _LEAF:
        return _treescope.Leaf("array")
    if tag == _REF:
        name, where = seen.get(cd[1], ("node", None))
        return _treescope.reference(name, where)
    if tag == _VAR:
        seen[cd[1]] = (cd[2].__name__, path)
        return _treescope.Leaf(cd[2].__name__)
    if tag == _NODE:
        kind, cls, index, children = cd[1], cd[2], cd[3], cd[4]
        seen[index] = (cls.__name__, path)
        items = [(k, _outline(c, _child_path(path, kind, k), seen)) for k, c in children]
        if kind == _LIST:
            return _treescope.Outline("list", cls, items)
        if kind == _DICT:
            return _treescope.Outline("dict", cls, items)
        static = [(k, v) for (k, v), (_, c) in zip(items, children, strict=True) if c[0] == _STATIC]
        data = [(k, v) for (k, v), (_, c) in zip(items, children, strict=True) if c[0] != _STATIC]
        return _treescope.Outline("object", cls, shown_fields(cls, static + data))
    # _TREE: a pytree without identity (tuple, namedtuple, plain dict...)
    treedef, children = cd[1], cd[2]
    items = [(k, _outline(c, f"{path}[{k!r}]", seen)) for k, c in children]
    node_type = treedef.node_data()[0] if treedef.node_data() else tuple
    if node_type is tuple or node_type is list:
        return node_type(v for _, v in items)
    if node_type is dict:
        return dict(items)
    if all(isinstance(k, str) for k, _ in items):
        return _treescope.Outline("object", node_type, items)
    return _treescope.Outline("call", node_type, items)


# -- building graphs ---------------------------------------------------------------------
def _replace_metadata(var: Variable, meta: Mapping) -> None:
    """Gives `var` exactly `meta` as metadata (keys it lacks are dropped, unlike
    ``set_metadata``, which merges): how a saved state or a transform's result rolls
    metadata back. A structural change."""
    object.__setattr__(var, "_meta", meta if isinstance(meta, _Meta) else _Meta(meta))
    object.__setattr__(var, "_nnx_stamp", _version.bump())


def _build(
    graphdef: GraphDef,
    leaves: list,
    copy: bool,
    metas: list | None = None,
    reuse: Mapping[int, Any] | None = None,
    nodes_out: list | None = None,
    recreate: bool = True,
) -> Any:
    """Builds the graph of `graphdef` from `leaves` (in GraphDef order).

    Args:
      copy: copy Variable leaves instead of adopting them.
      metas: with raw leaves, the metadata of each leaf's Variable (in leaf order).
      reuse: node index -> existing object to update in place instead of creating a new one
        (how transforms write structural changes back into the caller's objects).
      nodes_out: if given, receives the node table (the object built for each index).
      recreate: wrap raw leaves in the Variable type the GraphDef records; with False a raw
        leaf is placed as it is (flax's ``recreate_variables``).
    """
    if not reuse:
        plan = graphdef._build_plan
        if plan is None:
            plan = graphdef._build_plan = _BuildPlan(graphdef)
        return plan.run(leaves, copy, metas, nodes_out, recreate)
    nodes: list[Any] = [None] * graphdef.num_nodes
    it = iter(leaves)
    meta_it = iter(metas) if metas is not None else None

    def build(cd: tuple) -> Any:
        tag = cd[0]
        if tag == _REF:
            return nodes[cd[1]]
        if tag == _VAR:
            leaf = next(it)
            meta = next(meta_it) if meta_it is not None else None
            i, vtype = cd[1], cd[2]
            old = reuse.get(i) if reuse else None
            if old is not None and type(old) is vtype:
                if isinstance(leaf, Variable):
                    meta, leaf = leaf._meta, leaf._value
                object.__setattr__(old, "_value", leaf)
                if meta is not None and meta is not old._meta and meta != old._meta:
                    _replace_metadata(old, meta)
                var = old
            else:
                keep = recreate or isinstance(leaf, Variable)
                var = _leaf_object(vtype if keep else None, leaf, copy, meta)
            nodes[i] = var
            return var
        if tag == _LEAF:
            leaf = next(it)
            if meta_it is not None:
                next(meta_it)
            return _leaf_object(None, leaf, copy, None)
        if tag == _STATIC:
            return cd[1]
        if tag == _NODE:
            _, kind, typ, i, children, fields = cd
            old = reuse.get(i) if reuse else None
            if old is not None and type(old) is not typ:
                old = None
            if kind == _OBJ:
                if old is not None:
                    obj = old
                    d = obj.__dict__
                    nodes[i] = obj
                    new_items = {k: build(c) for k, c in children}
                    old_keys = [k for k in d if not k.startswith("_nnx_")]
                    unchanged = len(old_keys) == len(new_items) and all(
                        k in d and d[k] is v for k, v in new_items.items()
                    )
                    if not unchanged:
                        for k in old_keys:
                            del d[k]
                        d.update(new_items)
                        d["_nnx_stamp"] = _version.bump()
                    d.pop("_nnx_fields", None)
                else:
                    obj = object.__new__(typ)
                    nodes[i] = obj
                    d = obj.__dict__
                    for k, c in children:
                        d[k] = c[1] if c[0] == _STATIC else build(c)
                if fields:
                    d["_nnx_fields"] = dict(fields)
                return obj
            if old is not None:
                obj = old
                nodes[i] = obj
                items = [(k, build(c)) for k, c in children]
                if kind == _LIST:
                    same = len(obj) == len(items) and all(
                        a is b for a, (_, b) in zip(obj, items, strict=True)
                    )
                    if not same:
                        list.clear(obj)
                        list.extend(obj, [v for _, v in items])
                else:
                    same = len(obj) == len(items) and all(
                        k in obj and dict.__getitem__(obj, k) is v for k, v in items
                    )
                    if not same:
                        dict.clear(obj)
                        dict.update(obj, items)
                if not same:
                    object.__setattr__(obj, "_nnx_stamp", _version.bump())
                return obj
            obj = typ.__new__(typ)
            object.__setattr__(obj, "_nnx_stamp", 0)
            nodes[i] = obj
            if kind == _LIST:
                list.extend(obj, [build(c) for _, c in children])
            else:
                for k, c in children:
                    dict.__setitem__(obj, k, build(c))
            return obj
        # _TREE
        return cd[1].unflatten([build(c) for _, c in cd[2]])

    root = build(graphdef.root)
    if nodes_out is not None:
        nodes_out.extend(nodes)
    return root


class _BuildPlan:
    """A GraphDef compiled for building new graphs (:func:`merge`, :func:`unflatten`, the
    rebuild inside a transform): flat instruction lists instead of a walk of the nested
    definition, so each merge does one pass over the leaves and one over the nodes.

    Every object lives in one table: first the leaves in GraphDef order (so a list of
    Variables is adopted with one slice assignment), then the other nodes (Modules, Lists,
    Dicts), then one cell per static value and pytree (tuple, namedtuple...). First the
    empty Lists and Dicts, and the objects that something refers to before they are filled
    (shared, cyclic, inside a pytree, or with field specs) are created; then the leaves are
    placed; then pytrees bottom-up; then the other objects in batches of one type and set of
    attributes, lowest in the graph first, each batch created into consecutive cells and
    filled from the table by index with C-level iteration; then the early objects are
    filled; last the Lists' and Dicts' items.
    """

    __slots__ = (
        "colls",
        "dict_fills",
        "early",
        "early_fills",
        "leaf_types",
        "list_fills",
        "node_pos",
        "num_leaves",
        "obj_groups",
        "root",
        "template",
        "trees",
    )

    def __init__(self, graphdef: GraphDef):
        n_leaves = len(graphdef.leaf_paths)
        template: list[Any] = [None] * n_leaves
        node_pos: list[int] = [-1] * graphdef.num_nodes  # node index -> table position
        leaf_types: list[type | None] = []
        colls: list[tuple[int, type]] = []
        trees: list[tuple[int, Any, tuple[int, ...]]] = []
        obj_fills: list[tuple] = []
        list_fills: list[tuple[int, tuple[int, ...]]] = []
        dict_fills: list[tuple[int, tuple, tuple[int, ...]]] = []
        early: set[int] = set()  # table positions of objects needed before their own fill
        is_node: set[int] = set()

        def cell(value: Any) -> int:
            template.append(value)
            return len(template) - 1

        def slot(cd: tuple) -> int:  # same depth-first order as the flatten that made cd
            tag = cd[0]
            if tag == _REF:
                pos = node_pos[cd[1]]
                early.add(pos)
                return pos
            if tag in (_VAR, _LEAF):
                pos = len(leaf_types)
                leaf_types.append(cd[2] if tag == _VAR else None)
                if tag == _VAR:
                    node_pos[cd[1]] = pos
                return pos
            if tag == _STATIC:
                return cell(cd[1])
            if tag == _NODE:
                _, kind, typ, i, children, fields = cd
                pos = node_pos[i] = cell(None)
                is_node.add(pos)
                if kind != _OBJ:
                    colls.append((pos, typ))
                keys = tuple(k for k, _ in children)
                idxs = tuple(slot(c) for _, c in children)
                if kind == _OBJ:
                    obj_fills.append((pos, typ, keys, idxs, fields))
                elif kind == _LIST:
                    list_fills.append((pos, idxs))
                else:
                    dict_fills.append((pos, keys, idxs))
                return pos
            idxs = tuple(slot(c) for _, c in cd[2])  # _TREE: children first
            early.update(i for i in idxs if i in is_node)
            pos = cell(None)
            trees.append((pos, cd[1], idxs))
            return pos

        root = slot(graphdef.root)
        assert len(leaf_types) == n_leaves
        early.update(pos for pos, _, _, _, fields in obj_fills if fields)

        # The other objects are created and filled in batches: one per (height, type, keys),
        # lowest first, so children exist before their parents. Each batch gets consecutive
        # table cells (one slice assignment), so positions are remapped before use.
        height: dict[int, int] = {}
        groups: dict[tuple, list[tuple[int, tuple]]] = {}
        for pos, typ, keys, idxs, _ in obj_fills:  # post-order: children first
            if pos in early:
                continue
            h = height[pos] = 1 + max((height.get(i, 0) for i in idxs), default=0)
            groups.setdefault((h, typ, keys), []).append((pos, idxs))
        moved: dict[int, int] = {}
        order = sorted(groups.items(), key=lambda item: item[0][0])
        for _, members in order:
            for pos, _ in members:
                moved[pos] = len(template)
                template.append(None)

        def at(i: int) -> int:
            return moved.get(i, i)

        def at_all(idxs: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(map(at, idxs))

        self.obj_groups = [
            (
                typ,
                keys,
                at(members[0][0]),
                at(members[-1][0]) + 1,
                [_getter(at_all(ix)) for _, ix in members],
            )
            for (_, typ, keys), members in order
        ]
        self.early = [(pos, typ) for pos, typ, *_ in obj_fills if pos in early]
        self.early_fills = [
            (pos, keys, _getter(at_all(idxs)), fields)
            for pos, _, keys, idxs, fields in obj_fills
            if pos in early
        ]
        self.trees = [(pos, treedef, at_all(idxs)) for pos, treedef, idxs in trees]
        self.list_fills = [(pos, at_all(idxs)) for pos, idxs in list_fills]
        self.dict_fills = [(pos, keys, at_all(idxs)) for pos, keys, idxs in dict_fills]
        self.num_leaves, self.leaf_types = n_leaves, leaf_types
        self.node_pos = [at(i) for i in node_pos]
        self.root = at(root)
        self.template, self.colls = template, colls

    def run(
        self,
        leaves: list,
        copy: bool,
        metas: list | None,
        nodes_out: list | None,
        recreate: bool = True,
    ) -> Any:
        n = self.num_leaves
        if len(leaves) != n:
            raise GraphDefMismatchError(f"got {len(leaves)} leaves for a GraphDef of {n}.")
        table = self.template.copy()
        new = object.__new__
        for pos, typ in self.early:
            table[pos] = new(typ)
        for pos, typ in self.colls:
            obj = typ.__new__(typ)
            object.__setattr__(obj, "_nnx_stamp", 0)
            table[pos] = obj
        if metas is None and list(map(type, leaves)) == self.leaf_types:
            table[:n] = map(Variable.copy, leaves) if copy else leaves  # all Variables
        else:
            meta_list = metas if metas is not None else [None] * n
            for pos, (vtype, leaf, meta) in enumerate(
                zip(self.leaf_types, leaves, meta_list, strict=True)
            ):
                if not recreate and not isinstance(leaf, Variable):
                    vtype = None  # flax's recreate_variables=False: the raw value as it is
                table[pos] = _leaf_object(vtype, leaf, copy, meta)
        get = table.__getitem__
        for pos, treedef, idxs in self.trees:
            table[pos] = treedef.unflatten(list(map(get, idxs)))
        read = operator.methodcaller("__call__", table)
        for typ, keys, start, stop, getters in self.obj_groups:
            objs = list(map(new, repeat(typ, stop - start)))
            table[start:stop] = objs
            # obj.__dict__.update(zip(keys, getter(table))) for each, iterated in C
            any(map(_update, map(_dict_of, objs), map(zip, repeat(keys), map(read, getters))))
        for pos, keys, getter, fields in self.early_fills:
            d = table[pos].__dict__
            d.update(zip(keys, getter(table), strict=False))
            if fields:
                d["_nnx_fields"] = dict(fields)
        for pos, idxs in self.list_fills:
            list.extend(table[pos], map(get, idxs))
        for pos, keys, idxs in self.dict_fills:
            dict.update(table[pos], zip(keys, map(get, idxs), strict=True))
        if nodes_out is not None:
            nodes_out.extend(map(get, self.node_pos))
        return table[self.root]


_update = dict.update
_dict_of = operator.attrgetter("__dict__")


def _getter(idxs: tuple[int, ...]) -> Callable[[list], tuple]:
    """``table -> tuple(table[i] for i in idxs)``, in C for the common case."""
    if len(idxs) > 1:
        return operator.itemgetter(*idxs)
    return lambda table: tuple(table[i] for i in idxs)


def _leaf_object(vtype: type | None, leaf: Any, copy: bool, meta: Any) -> Any:
    """What one leaf becomes in a built graph: a raw value for a pytree leaf slot; else a
    Variable (the state's own, a copy of it, or a new one around a raw value and `meta`)."""
    if vtype is None:
        return leaf._value if isinstance(leaf, Variable) else leaf
    if isinstance(leaf, Variable):
        return leaf.copy() if copy else leaf
    var = vtype.__new__(vtype)
    Variable.__init__(var, leaf)
    if meta:
        object.__setattr__(var, "_meta", meta)
    return var


# -- a State's leaves in GraphDef order --------------------------------------------------
def _state_pairs(states: tuple[Mapping, ...]) -> list[tuple[Path, Any]]:
    pairs: list[tuple[Path, Any]] = []
    for s in states:
        pairs.extend(_flat_pairs(s))
    return pairs


def _normalize(path: Path, index: Mapping[Path, int]) -> Path:
    """Maps stringified integer keys ('0', as orbax returns them) back to ints."""
    if path in index:
        return path
    fixed = tuple(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k for k in path)
    return fixed if fixed in index else path


def _leaves_fast(graphdef: GraphDef, states: list[Mapping]) -> list[Any] | None:
    """The common case of :func:`_leaves_for`: every path found as is, the right types, none
    missing. None for anything else (the full version then handles it and reports errors)."""
    index = graphdef._index()
    types = graphdef.leaf_types
    leaves: list[Any] = [_MISSING] * len(index)
    if len(states) == 1:
        level = graphdef._gather_level()
        state = states[0]
        data = state._mapping if isinstance(state, State) else state
        if level is not None and type(data) is dict and _gather(level, data, leaves):
            return leaves
    found = 0
    for s in states:
        pairs: list[tuple[Path, Any]] = []
        _iter_pairs(s, (), pairs)
        for path, leaf in pairs:
            i = index.get(path)
            if i is None:
                return None
            expected = types[i]
            if expected is not None and type(leaf) is not expected and isinstance(leaf, Variable):
                return None
            if leaves[i] is _MISSING:
                found += 1
            leaves[i] = leaf
    return leaves if found == len(leaves) else None


# (number of keys, ((key, leaf position, Variable type | None), ...), ((key, _Level), ...))
_Level = tuple


def _compile_level(plan: dict, types: tuple) -> _Level:
    """``_nest_plan``'s nested dict as tuples for :func:`_gather`: leaves and sub-levels
    apart, each leaf with the Variable type expected there."""
    leaves = tuple((k, sub, types[sub]) for k, sub in plan.items() if type(sub) is int)
    subs = tuple((k, _compile_level(sub, types)) for k, sub in plan.items() if type(sub) is not int)
    return (len(plan), leaves, subs)


def _gather(level: _Level, data: dict, out: list) -> bool:
    """Reads the leaves of one State laid out exactly as `level` says into `out` (by
    position, no path tuples built or hashed); False at the first difference."""
    todo = [(level, data)]
    pop, push = todo.pop, todo.append
    while todo:
        (n, leaves, subs), data = pop()
        if len(data) != n:
            return False
        get = data.get
        for key, i, expected in leaves:
            value = get(key, _MISSING)
            if (  # a raw value also fits (orbax restores arrays); a Variable of another type not
                type(value) is not expected
                and (value is _MISSING or isinstance(value, (Mapping, Variable)))
                and not (expected is None and isinstance(value, Variable))
            ):
                return False
            out[i] = value
        for key, sub in subs:
            value = get(key)
            t = type(value)
            if t is State:
                value = value._mapping
            elif t is not dict:
                return False
            push((sub, value))
    return True


def _leaves_for(graphdef: GraphDef, states: list[Mapping]) -> list[Any]:
    fast = _leaves_fast(graphdef, states)
    if fast is not None:
        return fast
    index = graphdef._index()
    leaves: list[Any] = [_MISSING] * len(index)
    extra: list[Path] = []
    wrong_type: list[str] = []
    for path, leaf in _state_pairs(tuple(states)):
        path = _normalize(path, index)
        i = index.get(path)
        if i is None:
            extra.append(path)
            continue
        expected = graphdef.leaf_types[i]
        if expected is not None and isinstance(leaf, Variable) and type(leaf) is not expected:
            wrong_type.append(
                f"{format_path(path)}: state has {type(leaf).__name__}, GraphDef expects "
                f"{expected.__name__}"
            )
        leaves[i] = leaf
    missing = [graphdef.leaf_paths[i] for i, v in enumerate(leaves) if v is _MISSING]
    if extra or missing or wrong_type:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} paths of the GraphDef are missing from the state:\n"
                + short_list([format_path(p) for p in missing])
            )
        if extra:
            parts.append(
                f"{len(extra)} paths of the state are not in the GraphDef:\n"
                + short_list([format_path(p) for p in extra])
            )
        if wrong_type:
            parts.append("Variable types differ:\n" + short_list(wrong_type))
        raise GraphDefMismatchError(
            f"merge: the state does not fit the GraphDef ({graphdef._summary()}).\n"
            + "\n".join(parts)
            + "\nFix: merge a state with the GraphDef that came from the same nnx.split, "
            "and pass every state that split returned (nnx.merge(graphdef, *states))."
        )
    return leaves
