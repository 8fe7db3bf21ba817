"""From a GraphDef back to objects: the leaves of States in GraphDef order, and the build.

Two operations, one implementation each:

* :func:`locate` puts the leaves of one or more States at their GraphDef positions. It walks
  each State alongside the GraphDef's nest plan (no path tuples built or hashed); a State
  that strays from the plan (stringified integer keys as orbax returns them, wrong Variable
  types, extra paths) is walked path by path, which also collects what is wrong. ``merge``
  and ``update`` both use it.
* :func:`build` makes the objects of a GraphDef around its leaves by running the GraphDef's
  :class:`BuildPlan`, compiled once per GraphDef. Building new objects and writing into
  existing ones (a transform writing structural changes back into the caller's objects) are
  the same plan: existing objects are seeded into the plan's table and filled in place.

This module sees a GraphDef only through its fields (``root``, ``num_nodes``,
``leaf_paths``, ``leaf_types``) and its ``_plans`` slot, the cache it owns.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _version
from ._encoding import Kind, LeafDef, NodeDef, Path, RefDef, StaticDef, VarDef, summary
from ._meta import Meta
from .errors import GraphDefMismatchError, format_path, short_list
from .state import State, flat_pairs, nest_plan
from .variablelib import Variable

if TYPE_CHECKING:
    from ._graphdef import GraphDef

__all__ = [
    "MISSING",
    "BuildPlan",
    "Located",
    "build",
    "leaves_for_merge",
    "locate",
    "plans",
    "replace_metadata",
    "state_nest_plan",
]

MISSING: Any = object()  # "no leaf here" (None can be a leaf)


class Plans:
    """What a GraphDef compiles on first use: kept in its ``_plans`` slot."""

    __slots__ = ("build", "level", "nest", "nest_built")

    def __init__(self) -> None:
        self.build: BuildPlan | None = None
        self.level: Level | None = None  # the nest plan compiled for locate
        self.nest: dict | None = None  # see state.nest_plan; None: the paths do not nest
        self.nest_built = False


def plans(graphdef: GraphDef) -> Plans:
    p = graphdef._plans
    if p is None:
        p = graphdef._plans = Plans()
    return p


def state_nest_plan(graphdef: GraphDef) -> dict | None:
    """How a State of this GraphDef nests (``state.nest_plan``), built once."""
    p = plans(graphdef)
    if not p.nest_built:
        p.nest, p.nest_built = nest_plan(graphdef.leaf_paths), True
    return p.nest


def _gather_level(graphdef: GraphDef) -> Level | None:
    p = plans(graphdef)
    if p.level is None:
        nest = state_nest_plan(graphdef)
        if nest is None:
            return None
        p.level = _compile(nest, graphdef.leaf_types)
    return p.level


# -- locate: the leaves of States at their GraphDef positions ---------------------------
class Located(NamedTuple):
    """What :func:`locate` found: `leaves` by position (``MISSING`` where a State had none),
    the State paths the GraphDef lacks, and ``(path, found type, expected type)`` for each
    Variable of another type than the GraphDef records there."""

    leaves: list[Any]
    extra: list[Path]
    wrong_type: list[tuple[Path, type, type]]


def locate(graphdef: GraphDef, states: Sequence[Mapping]) -> Located:
    types = graphdef.leaf_types
    out: list[Any] = [MISSING] * len(types)
    found = Located(out, [], [])
    level = _gather_level(graphdef)
    for s in states:
        data = s._mapping if type(s) is State else s
        if level is not None and type(data) is dict and _walk(level, data, out):
            continue
        _locate_by_path(graphdef, s, found)
    return found


class Level(NamedTuple):
    """One level of a GraphDef's nest plan, compiled for :func:`_walk`: its number of keys,
    its leaves as ``(key, position, Variable type or None)`` and its sub-levels as
    ``(key, Level)``."""

    size: int
    leaves: tuple[tuple[Hashable, int, type | None], ...]
    subs: tuple[tuple[Hashable, Level], ...]


def _compile(plan: dict, types: tuple) -> Level:
    return Level(
        len(plan),
        tuple((k, sub, types[sub]) for k, sub in plan.items() if type(sub) is int),
        tuple((k, _compile(sub, types)) for k, sub in plan.items() if type(sub) is not int),
    )


def _walk(level: Level, data: Mapping, out: list) -> bool:
    """Writes the leaves of `data` (a State's mapping; it may hold only some of them) at
    the positions `level` gives them, by key lookups along the plan: no path tuples built or
    hashed, one loop over a stack. False at the first key, nesting or Variable type the plan
    does not have (the caller then goes path by path)."""
    todo = [(level, data)]
    pop, push = todo.pop, todo.append
    while todo:
        (size, leaves, subs), data = pop()
        get = data.get
        absent = 0  # plan keys this level of `data` lacks (a partial state)
        for key, i, expected in leaves:
            value = get(key, MISSING)
            if type(value) is not expected:  # a raw value fits (orbax restores arrays)
                if value is MISSING:
                    absent += 1
                    continue
                if isinstance(value, Variable | Mapping):  # a Variable must match exactly
                    return False
            out[i] = value
        for key, sub in subs:
            value = get(key, MISSING)
            t = type(value)
            if t is State:
                value = value._mapping
            elif t is not dict:
                if value is MISSING:
                    absent += 1
                    continue
                return False
            push((sub, value))
        if len(data) != size - absent:  # keys the plan does not have
            return False
    return True


def _locate_by_path(graphdef: GraphDef, state: Mapping, found: Located) -> None:
    index = {path: i for i, path in enumerate(graphdef.leaf_paths)}
    types = graphdef.leaf_types
    for path, leaf in flat_pairs(state):
        path = _normalize(path, index)
        i = index.get(path)
        if i is None:
            found.extra.append(path)
            continue
        expected = types[i]
        if expected is not None and isinstance(leaf, Variable) and type(leaf) is not expected:
            found.wrong_type.append((path, type(leaf), expected))
            continue
        found.leaves[i] = leaf


def _normalize(path: Path, index: Mapping[Path, int]) -> Path:
    """Maps stringified integer keys ('0', as orbax returns them) back to ints."""
    if path in index:
        return path
    fixed = tuple(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k for k in path)
    return fixed if fixed in index else path


def leaves_for_merge(graphdef: GraphDef, states: Sequence[Mapping]) -> list[Any]:
    """Every leaf of `graphdef`, in order, from `states`; GraphDefMismatchError listing all
    missing and extra paths and wrong Variable types if they do not fit exactly."""
    leaves, extra, wrong_type = locate(graphdef, states)
    if not extra and not wrong_type and not any(map(operator.is_, leaves, repeat(MISSING))):
        return leaves
    wrong = {path for path, _, _ in wrong_type}
    paths = graphdef.leaf_paths
    missing = [p for p, v in zip(paths, leaves, strict=True) if v is MISSING and p not in wrong]
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
        parts.append(
            "Variable types differ:\n"
            + short_list(
                [
                    f"{format_path(p)}: state has {got.__name__}, GraphDef expects "
                    f"{want.__name__}"
                    for p, got, want in wrong_type
                ]
            )
        )
    raise GraphDefMismatchError(
        f"merge: the state does not fit the GraphDef ({summary(graphdef)}).\n"
        + "\n".join(parts)
        + "\nFix: merge a state with the GraphDef that came from the same nnx.split, "
        "and pass every state that split returned (nnx.merge(graphdef, *states))."
    )


# -- build -------------------------------------------------------------------------------
def replace_metadata(var: Variable, meta: Mapping) -> None:
    """Gives `var` exactly `meta` as metadata (keys it lacks are dropped, unlike
    ``set_metadata``, which merges): how a saved state or a transform's result rolls
    metadata back. A structural change."""
    object.__setattr__(var, "_meta", meta if isinstance(meta, Meta) else Meta(meta))
    object.__setattr__(var, "_nnx_stamp", _version.bump())


def build(
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
      reuse: node index -> existing object to fill in place instead of creating a new one
        (how transforms write structural changes back into the caller's objects); used
        where its type is the one the GraphDef records.
      nodes_out: if given, receives the node table (the object built for each index).
      recreate: wrap raw leaves in the Variable type the GraphDef records; with False a raw
        leaf is placed as it is (flax's ``recreate_variables``).
    """
    p = plans(graphdef)
    if p.build is None:
        p.build = BuildPlan(graphdef)
    return p.build.run(leaves, copy, metas, nodes_out, recreate, reuse)


class ObjGroup(NamedTuple):
    """Objects of one type and attribute names at one height: created into the consecutive
    table cells ``start:stop`` and filled from the table by one getter each."""

    type: type
    keys: tuple[Hashable, ...]
    start: int
    stop: int
    getters: list[Callable[[list], tuple]]


class EarlyFill(NamedTuple):
    """An object created before the others (something refers to it before it is filled)."""

    pos: int
    type: type
    keys: tuple[Hashable, ...]
    getter: Callable[[list], tuple]
    fields: tuple[tuple[str, bool], ...]


class TreeFill(NamedTuple):
    pos: int
    treedef: Any
    idxs: tuple[int, ...]


class ItemsFill(NamedTuple):
    """A List (keys None) or Dict filled from the table."""

    pos: int
    keys: tuple[Hashable, ...] | None
    idxs: tuple[int, ...]


class BuildPlan:
    """A GraphDef compiled for building: flat instruction lists instead of a walk of the
    nested definition, so each build does one pass over the leaves and one over the nodes.

    Every object lives in one table: first the leaves in GraphDef order (so a list of
    Variables is adopted with one slice assignment), then the other nodes (Modules, Lists,
    Dicts), then one cell per static value and pytree (tuple, namedtuple...). First the
    empty Lists and Dicts, and the objects that something refers to before they are filled
    (shared, cyclic, inside a pytree, or with field specs) are created; then the leaves are
    placed; then pytrees bottom-up; then the other objects in batches of one type and set of
    attributes, lowest in the graph first, each batch created into consecutive cells and
    filled from the table by index with C-level iteration; then the early objects are
    filled; last the Lists' and Dicts' items.

    With objects to reuse, those are seeded into the table instead of new ones and each is
    filled in place (its attributes or items replaced only where they changed, and then
    stamped as a structural change).
    """

    __slots__ = (
        "colls",
        "early",
        "items",
        "leaf_types",
        "node_pos",
        "node_types",
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
        node_types: list[type | None] = [None] * graphdef.num_nodes
        leaf_types: list[type | None] = []
        colls: list[tuple[int, type]] = []
        trees: list[TreeFill] = []
        objs: list[tuple[int, type, tuple, tuple[int, ...], tuple]] = []
        items: list[ItemsFill] = []
        early: set[int] = set()  # table positions of objects needed before their own fill
        is_node: set[int] = set()

        def cell(value: Any) -> int:
            template.append(value)
            return len(template) - 1

        def slot(cd: Any) -> int:  # the depth-first order of the flatten that made cd
            t = type(cd)
            if t is RefDef:
                pos = node_pos[cd.node_index]
                early.add(pos)
                return pos
            if t is VarDef or t is LeafDef:
                pos = len(leaf_types)
                leaf_types.append(cd.type if t is VarDef else None)
                if t is VarDef:
                    node_pos[cd.node_index], node_types[cd.node_index] = pos, cd.type
                return pos
            if t is StaticDef:
                return cell(cd.value)
            if t is NodeDef:
                pos = node_pos[cd.node_index] = cell(None)
                node_types[cd.node_index] = cd.type
                is_node.add(pos)
                if cd.kind != Kind.OBJ:
                    colls.append((pos, cd.type))
                keys = tuple(k for k, _ in cd.children)
                idxs = tuple(slot(c) for _, c in cd.children)
                if cd.kind == Kind.OBJ:
                    objs.append((pos, cd.type, keys, idxs, cd.fields))
                else:
                    items.append(ItemsFill(pos, keys if cd.kind == Kind.DICT else None, idxs))
                return pos
            idxs = tuple(slot(c) for _, c in cd.children)  # TreeDef: children first
            early.update(i for i in idxs if i in is_node)
            pos = cell(None)
            trees.append(TreeFill(pos, cd.treedef, idxs))
            return pos

        root = slot(graphdef.root)
        assert len(leaf_types) == n_leaves
        early.update(pos for pos, _, _, _, fields in objs if fields)

        # The other objects are created and filled in batches: one per (height, type, keys),
        # lowest first, so children exist before their parents. Each batch gets consecutive
        # table cells (one slice assignment), so positions are remapped before use.
        height: dict[int, int] = {}
        groups: dict[tuple, list[tuple[int, tuple]]] = {}
        for pos, typ, keys, idxs, _ in objs:  # post-order: children first
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
            ObjGroup(
                typ,
                keys,
                at(members[0][0]),
                at(members[-1][0]) + 1,
                [_getter(at_all(ix)) for _, ix in members],
            )
            for (_, typ, keys), members in order
        ]
        self.early = [
            EarlyFill(pos, typ, keys, _getter(at_all(idxs)), fields)
            for pos, typ, keys, idxs, fields in objs
            if pos in early
        ]
        self.trees = [TreeFill(f.pos, f.treedef, at_all(f.idxs)) for f in trees]
        self.items = [ItemsFill(i.pos, i.keys, at_all(i.idxs)) for i in items]
        self.num_leaves, self.leaf_types = n_leaves, leaf_types
        self.node_pos = [at(i) for i in node_pos]
        self.node_types = node_types
        self.root = at(root)
        self.template, self.colls = template, colls

    def run(
        self,
        leaves: list,
        copy: bool,
        metas: list | None,
        nodes_out: list | None,
        recreate: bool = True,
        reuse: Mapping[int, Any] | None = None,
    ) -> Any:
        n = self.num_leaves
        if len(leaves) != n:
            raise GraphDefMismatchError(f"got {len(leaves)} leaves for a GraphDef of {n}.")
        seeded = self._seeds(reuse) if reuse else None
        table = self.template.copy()
        new = object.__new__
        for f in self.early:
            table[f.pos] = new(f.type)
        for pos, typ in self.colls:
            obj = typ.__new__(typ)  # type: ignore[call-overload]  # List/Dict: no __init__
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
        if seeded:
            return self._run_seeded(table, seeded, leaves, metas, nodes_out)
        get = table.__getitem__
        for t in self.trees:
            table[t.pos] = t.treedef.unflatten(list(map(get, t.idxs)))
        read = operator.methodcaller("__call__", table)
        for g in self.obj_groups:
            objs: list[Any] = list(map(new, repeat(g.type, g.stop - g.start)))
            table[g.start : g.stop] = objs
            # obj.__dict__.update(zip(keys, getter(table))) for each, iterated in C
            any(map(_update, map(_dict_of, objs), map(zip, repeat(g.keys), map(read, g.getters))))
        for f in self.early:
            d = table[f.pos].__dict__
            d.update(zip(f.keys, f.getter(table), strict=False))
            if f.fields:
                d["_nnx_fields"] = dict(f.fields)
        for fill in self.items:
            if fill.keys is None:
                list.extend(table[fill.pos], map(get, fill.idxs))
            else:
                dict.update(table[fill.pos], zip(fill.keys, map(get, fill.idxs), strict=True))
        if nodes_out is not None:
            nodes_out.extend(map(get, self.node_pos))
        return table[self.root]

    def _seeds(self, reuse: Mapping[int, Any]) -> dict[int, Any]:
        """table position -> existing object, for those of the recorded type."""
        return {
            self.node_pos[i]: obj
            for i, obj in reuse.items()
            if obj is not None and type(obj) is self.node_types[i]
        }

    def _run_seeded(
        self,
        table: list,
        seeded: dict[int, Any],
        leaves: list,
        metas: list | None,
        nodes_out: list | None,
    ) -> Any:
        """The rest of :meth:`run` with existing objects seeded: each is filled in place."""
        n = self.num_leaves
        for pos, old in seeded.items():
            if pos < n:  # a Variable: takes the leaf's value and metadata
                leaf = leaves[pos]
                meta = metas[pos] if metas is not None else None
                if isinstance(leaf, Variable):
                    meta, leaf = leaf._meta, leaf._value
                object.__setattr__(old, "_value", leaf)
                if meta is not None and meta is not old._meta and meta != old._meta:
                    replace_metadata(old, meta)
            table[pos] = old
        get = table.__getitem__
        for t in self.trees:
            table[t.pos] = t.treedef.unflatten(list(map(get, t.idxs)))
        fills = [(f.pos, f.keys, f.getter, f.fields) for f in self.early]
        for g in self.obj_groups:  # every object exists before any is filled
            for pos, getter in zip(range(g.start, g.stop), g.getters, strict=True):
                if pos not in seeded:
                    table[pos] = object.__new__(g.type)
                fills.append((pos, g.keys, getter, ()))
        for pos, keys, getter, fields in fills:
            obj = table[pos]
            attrs = dict(zip(keys, getter(table), strict=False))
            if pos in seeded:
                _refill(obj.__dict__, attrs, fields)
            else:
                obj.__dict__.update(attrs)
                if fields:
                    obj.__dict__["_nnx_fields"] = dict(fields)
        for f in self.items:
            obj, values = table[f.pos], list(map(get, f.idxs))
            if f.pos not in seeded:
                if f.keys is None:
                    list.extend(obj, values)
                else:
                    dict.update(obj, zip(f.keys, values, strict=True))
            elif f.keys is None:
                if len(obj) != len(values) or any(map(operator.is_not, obj, values)):
                    list.clear(obj)
                    list.extend(obj, values)
                    object.__setattr__(obj, "_nnx_stamp", _version.bump())
            else:
                new = dict(zip(f.keys, values, strict=True))
                if obj.keys() != new.keys() or any(
                    dict.__getitem__(obj, k) is not v for k, v in new.items()
                ):
                    dict.clear(obj)
                    dict.update(obj, new)
                    object.__setattr__(obj, "_nnx_stamp", _version.bump())
        if nodes_out is not None:
            nodes_out.extend(map(get, self.node_pos))
        return table[self.root]


def _refill(d: dict, new: dict, fields: tuple) -> None:
    """An existing object's attributes become `new` (a structural change only if any
    differs); its field marks become `fields`."""
    old_keys = [k for k in d if not k.startswith("_nnx_")]
    if len(old_keys) != len(new) or any(k not in d or d[k] is not v for k, v in new.items()):
        for k in old_keys:
            del d[k]
        d.update(new)
        d["_nnx_stamp"] = _version.bump()
    d.pop("_nnx_fields", None)
    if fields:
        d["_nnx_fields"] = dict(fields)


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
    var: Variable = object.__new__(vtype)
    Variable.__init__(var, leaf)
    if meta:
        object.__setattr__(var, "_meta", meta)
    return var
