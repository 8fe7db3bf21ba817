"""flatten: a live object graph to a GraphDef and its leaves, and the structure cache.

flatten walks the graph depth first, attributes in sorted order. Every object with identity
(a Pytree such as a Module or Rngs, a tracked List/Dict, a Variable) gets an index the first
time it is seen; seeing it again emits a reference, which is how shared layers, tied weights
and cycles survive a round trip. Tuples and other JAX pytrees are walked as plain structure;
raw array leaves in them are recorded with a slot (owner, attribute, path inside it). They are
read and written per attribute (one walk over the containers on the way to them, planned once
per flatten): plain lists, dicts and States in place, tuples and other pytrees rebuilt.

The result, a :class:`_Flat`, is cached on the root object and reused while nothing
structural changed anywhere in the graph (see ``_version.py``); plain mutable containers,
which take no stamps, are compared by identity instead.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from operator import is_not
from typing import Any

import jax

from . import _version
from ._graphdef import (
    _LEAF,
    _MISSING,
    _NODE,
    _OBJ,
    _REF,
    _STATIC,
    _TREE,
    _VAR,
    GraphDef,
    Path,
    _items,
    _kind,
)
from .errors import StaticAttributeError, format_path
from .pytreelib import Dict, List, Pytree, is_array, is_data
from .state import State, _nest_plan
from .variablelib import Variable

_ROOT_NAME = "model"


def _plain_key(entry: Any) -> Hashable:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


# -- flatten ------------------------------------------------------------------------------
class _Flat:
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
        "path_index",
        "paths",
        "raw_plan",
        "slots",
        "stamps",
        "state_plan",
        "states",
        "untracked",
    )

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.leaves: list[Any] = []  # Variables, or raw values for _LEAF slots
        self.paths: list[Path] = []
        self.slots: list[Any] = []  # None for Variables; (owner, key, subpath) for raw leaves
        self.path_index: dict[Path, int] | None = None
        self.raw_plan: tuple | None = None  # how raw leaves are read and written, built once
        self.state_plan: dict | bool | None = False  # False: not computed yet
        self.clock = _version.now()
        self.extra: dict[Any, Any] = {}  # per-entry data of transforms (their call specs)
        self.untracked: list[tuple] = []  # mutable containers without stamps (see below)
        self.states: list[tuple[State, int]] = []  # States walked as structure, their stamps

    def valid(self) -> bool:
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

    def refresh_raw_leaves(self) -> None:
        """Reads the raw leaves again (a value change does not invalidate the entry): one
        walk per attribute that holds them, each container on the way visited once."""
        leaves = self.leaves
        for owner, key, tree in _raw_plan(self)[0]:
            value = _get_child(owner, key)
            if type(tree) is int:
                leaves[tree] = value
            else:
                _read_raw(value, tree, leaves)

    def plan(self) -> dict | None:
        """How a State of this entry nests (see ``state._nest_plan``), built once."""
        plan = self.state_plan
        if plan is False:
            plan = self.state_plan = _nest_plan(self.paths)
        return plan  # type: ignore[return-value]

    def index(self) -> dict[Path, int]:
        if self.path_index is None:
            self.path_index = {p: i for i, p in enumerate(self.paths)}
        return self.path_index


def _flatten_full(root: Any) -> _Flat:
    flat = _Flat()
    index: dict[int, int] = {}
    nodes, leaves, paths, slots = flat.nodes, flat.leaves, flat.paths, flat.slots
    untracked = flat.untracked
    leaf_types: list[type | None] = []

    def visit(
        value: Any, path: Path, owner: Any, key: Any, subpath: Path, force: bool = False
    ) -> tuple:
        if isinstance(value, Variable):
            i = index.get(id(value))
            if i is not None:
                return (_REF, i)
            i = index[id(value)] = len(nodes)
            nodes.append(value)
            leaves.append(value)
            paths.append(path)
            slots.append(None)
            leaf_types.append(type(value))
            return (_VAR, i, type(value))
        kind = _kind(value)
        if kind is not None:
            i = index.get(id(value))
            if i is not None:
                return (_REF, i)
            i = index[id(value)] = len(nodes)
            nodes.append(value)
            children = []
            for k, v in _items(value, kind):
                child_path = (*path, k)
                if kind == _OBJ and not value._nnx_is_data(k, v):
                    children.append((k, _static(v, child_path, value)))
                else:
                    forced = kind == _OBJ and _forced_data(value, k)
                    children.append((k, visit(v, child_path, value, k, (), forced)))
            fields = ()
            if kind == _OBJ:
                f = value.__dict__.get("_nnx_fields")
                fields = tuple(sorted(f.items())) if f else ()
            return (_NODE, kind, type(value), i, tuple(children), fields)
        if is_array(value) or (force and _is_pytree_leaf(value)):
            leaves.append(value)
            paths.append(path)
            slots.append((owner, key, subpath))
            leaf_types.append(None)
            return (_LEAF,)
        if (
            force
            or is_data(value)
            or _is_pytree_with_data(value)
            or (_unhashable(value) and not _is_pytree_leaf(value))
        ):
            # A pytree holding data, or an unhashable one (a plain list or dict, even an
            # empty one) that could not be a static value: walked as structure, as flax does.
            pairs, treedef = jax.tree_util.tree_flatten_with_path(
                value, is_leaf=lambda x: x is not value
            )
            if type(value) is State:  # stamped on change: checked only when the clock moved
                if not value._nnx_stamp:
                    object.__setattr__(value, "_nnx_stamp", -1)
                flat.states.append((value, value._nnx_stamp))
            elif not isinstance(value, tuple):
                untracked.append(_untracked_entry(value, treedef, pairs))
            children = []
            for keypath, child in pairs:
                k = _plain_key(keypath[0])
                children.append((k, visit(child, (*path, k), owner, key, (*subpath, keypath[0]))))
            return (_TREE, treedef, tuple(children))
        return _static(value, path, None if subpath else owner)

    root_def = visit(root, (), None, None, ())
    flat.stamps = [getattr(n, "_nnx_stamp", 0) for n in nodes]
    flat.has_raw = any(s is not None for s in slots)
    flat.graphdef = GraphDef(root_def, len(nodes), tuple(paths), tuple(leaf_types))
    return flat


def _untracked_entry(value: Any, treedef: Any, pairs: list) -> tuple:
    # A plain list/dict walked as structure (under nnx.data, inside a tuple) or another mutable
    # pytree: its mutations take no stamp, so the cache compares its children by identity on
    # every use (cheap, and only for graphs that hold such containers).
    if type(value) is list:
        return (value, tuple(value), None)
    if type(value) is dict:
        return (value, dict(value), None)
    return (value, tuple(c for _, c in pairs), treedef)


def _untracked_unchanged(entries: list[tuple]) -> bool:
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


def _forced_data(obj: Pytree, name: str) -> bool:
    fields = obj.__dict__.get("_nnx_fields")
    return bool(fields and fields.get(name))


def _is_pytree_leaf(value: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(value, is_leaf=lambda x: x is not value)
    return len(leaves) == 1 and leaves[0] is value


def _is_pytree_with_data(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool | complex | type):
        return False
    leaves = jax.tree_util.tree_leaves(value, is_leaf=lambda x: x is not value)
    if len(leaves) == 1 and leaves[0] is value:
        return False
    return any(is_data(leaf) or _is_pytree_with_data(leaf) for leaf in leaves)


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


def _static(value: Any, path: Path, owner: Any = None) -> tuple:
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
    return (_STATIC, value, type(value))  # the type keeps 1 and True apart


def _get_child(owner: Any, key: Any) -> Any:
    if isinstance(owner, Pytree):
        return owner.__dict__[key]
    if isinstance(owner, List):
        return list.__getitem__(owner, key)
    return dict.__getitem__(owner, key)


def _set_child(owner: Any, key: Any, value: Any) -> None:
    # A raw value written in place of a raw value: not a structural change, no stamp.
    if isinstance(owner, Pytree):
        object.__setattr__(owner, key, value)
    elif isinstance(owner, List):
        list.__setitem__(owner, key, value)
    else:
        dict.__setitem__(owner, key, value)


def _child_by_keyentry(value: Any, entry: Any) -> Any:
    pairs, _ = jax.tree_util.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
    for keypath, child in pairs:
        if keypath[0] == entry:
            return child
    raise KeyError(entry)


def _replace_by_keyentry(value: Any, subpath: Path, new: Any) -> Any:
    if not subpath:
        return new
    pairs, treedef = jax.tree_util.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
    children = [
        _replace_by_keyentry(c, subpath[1:], new) if kp[0] == subpath[0] else c for kp, c in pairs
    ]
    return treedef.unflatten(children)


def _mutable_parent(root: Any, subpath: Path) -> tuple | None:
    """``(container, key entry, rest of subpath)`` for the deepest plain list or dict on the
    way from a plain root to one of its raw leaves (a tuple below it is rebuilt on write);
    None when there is none, e.g. for an array directly in a root tuple."""
    found = None
    obj = root
    for i, entry in enumerate(subpath):
        if type(obj) in (dict, list):
            found = (obj, entry, subpath[i + 1 :])
        obj = _child_by_keyentry(obj, entry)
    return found


def _write_slot(slot: tuple, new: Any, root: Any = None) -> None:
    """Writes one raw leaf, as :func:`_write_raw_leaves` does (which writes many at once and
    keeps a cache entry valid)."""
    owner, key, subpath = slot
    if owner is None:  # a raw leaf of a plain root (a dict or list): write in that container
        container, entry, rest = _mutable_parent(root, subpath)  # type: ignore[misc]
        k = _plain_key(entry)
        container[k] = _replace_by_keyentry(container[k], rest, new)
        return
    if not subpath:
        _set_child(owner, key, new)
        return
    value = _get_child(owner, key)
    written = _write_raw(value, _raw_node(value, [(subpath, 0)], {}), {0: new}, [])
    if written is not value:
        _set_child(owner, key, written)


# -- raw leaves: read and written per attribute -------------------------------------------
# The plan, built once per flatten from the slots: ``(groups, group_of)``, one group
# ``(owner, key, tree)`` per attribute (or List/Dict item) holding raw leaves, where tree is
# the leaf index when the attribute is the raw leaf itself, else a node
# ``(kind, untracked index or -1, ((access, leaf index or node), ...))`` for each container
# on the way to raw leaves; ``group_of`` maps a leaf index to its group.
_K_LIST, _K_DICT, _K_STATE, _K_TUPLE, _K_SEQ, _K_GEN, _K_NAMED = range(7)
# in place:  list, dict (access: index, key), State (access: key into its mapping);
# rebuilt:   tuple (index), a namedtuple whose pytree children are its fields (index, rebuilt
#            with ``_make``: an optax state), another tuple subclass (index = flatten
#            position), any other pytree (access: position among its one-level flatten's
#            children).


def _raw_plan(flat: _Flat) -> tuple:
    plan = flat.raw_plan
    if plan is None:
        plan = flat.raw_plan = _build_raw_plan(flat)
    return plan


def _build_raw_plan(flat: _Flat) -> tuple:
    uindex: dict[int, int] = {}
    for j, entry in enumerate(flat.untracked):
        uindex.setdefault(id(entry[0]), j)
    attrs: dict[tuple[int, Any], tuple[Any, Any, list]] = {}
    for i, slot in enumerate(flat.slots):
        if slot is not None and slot[0] is not None:  # a plain root's leaves: _write_slot
            owner, key, subpath = slot
            attrs.setdefault((id(owner), key), (owner, key, []))[2].append((subpath, i))
    groups: list[tuple] = []
    group_of: dict[int, int] = {}
    for owner, key, items in attrs.values():
        if len(items) == 1 and not items[0][0]:
            tree: Any = items[0][1]
        else:
            tree = _raw_node(_get_child(owner, key), items, uindex)
        for _, i in items:
            group_of[i] = len(groups)
        groups.append((owner, key, tree))
    return groups, group_of


def _raw_node(value: Any, items: list[tuple[Path, int]], uindex: dict[int, int]) -> tuple:
    """The plan node of container `value` for its raw leaves `items` ((subpath, index))."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(value, is_leaf=_not(value))
    position = {kp[0]: p for p, (kp, _) in enumerate(pairs)}
    by_entry: dict[Any, list[tuple[Path, int]]] = {}
    for subpath, i in items:
        by_entry.setdefault(subpath[0], []).append((subpath[1:], i))
    kind = _raw_kind(value)
    if (
        kind == _K_SEQ
        and hasattr(type(value), "_make")
        and len(pairs) == len(value)
        and all(c is v for (_, c), v in zip(pairs, value, strict=True))
    ):
        kind = _K_NAMED
    direct = value._mapping if kind == _K_STATE else value
    entries = []
    for entry, sub_items in by_entry.items():
        pos = position[entry]
        child = pairs[pos][1]
        access = getattr(entry, "key", _MISSING) if kind in (_K_DICT, _K_STATE) else pos
        if kind != _K_GEN and (access is _MISSING or _lookup(direct, access) is not child):
            return _raw_node_generic(value, by_entry, position, pairs, uindex)
        entries.append((access, _raw_sub(child, sub_items, uindex)))
    return (kind, uindex.get(id(value), -1), tuple(entries))


def _raw_kind(value: Any) -> int:
    t = type(value)
    if t is list:
        return _K_LIST
    if t is dict:
        return _K_DICT
    if t is State:
        return _K_STATE
    if t is tuple:
        return _K_TUPLE
    return _K_SEQ if isinstance(value, tuple) else _K_GEN


def _raw_node_generic(
    value: Any, by_entry: dict, position: dict, pairs: list, uindex: dict[int, int]
) -> tuple:
    entries = tuple(
        (position[e], _raw_sub(pairs[position[e]][1], sub_items, uindex))
        for e, sub_items in by_entry.items()
    )
    return (_K_GEN, uindex.get(id(value), -1), entries)


def _raw_sub(child: Any, items: list[tuple[Path, int]], uindex: dict[int, int]) -> Any:
    if len(items) == 1 and not items[0][0]:
        return items[0][1]  # the raw leaf itself
    return _raw_node(child, items, uindex)


def _lookup(container: Any, access: Any) -> Any:
    try:
        return container[access]
    except (KeyError, IndexError, TypeError):
        return _MISSING


def _read_raw(value: Any, node: tuple, leaves: list) -> None:
    kind, _, entries = node
    if kind == _K_GEN:
        children = jax.tree_util.tree_flatten(value, is_leaf=_not(value))[0]
    elif kind == _K_STATE:
        children = value._mapping
    else:
        children = value
    for access, sub in entries:
        if type(sub) is int:
            leaves[sub] = children[access]
        else:
            _read_raw(children[access], sub, leaves)


def _write_raw_leaves(flat: _Flat, pairs: list[tuple[int, Any]], root: Any = None) -> None:
    """Writes new values of raw leaves, given as ``(leaf index, value)``, into the graph and
    into ``flat.leaves``: per attribute, the containers on the way are visited once; plain
    lists, dicts and States are written in place (the lists' and dicts' snapshots in
    ``flat.untracked`` kept in step and no State stamped, so the entry stays valid), tuples
    and other pytrees rebuilt. `root` is needed only for the raw leaves of a plain root (a
    dict or list), written in that container."""
    if not pairs:
        return
    leaves = flat.leaves
    groups, group_of = _raw_plan(flat)
    new: dict[int, Any] = {}
    touched: dict[int, None] = {}
    for i, value in pairs:
        leaves[i] = value
        g = group_of.get(i)
        if g is None:
            _write_slot(flat.slots[i], value, root)
        else:
            new[i] = value
            touched[g] = None
    untracked = flat.untracked
    for g in touched:
        owner, key, tree = groups[g]
        if type(tree) is int:
            _set_child(owner, key, new[tree])
            continue
        value = _get_child(owner, key)
        written = _write_raw(value, tree, new, untracked)
        if written is not value:
            _set_child(owner, key, written)


def _write_raw(value: Any, node: tuple, new: dict[int, Any], untracked: list[tuple]) -> Any:
    """`value` with the raw leaves of `new` under it written: the same object if it is a
    plain list, dict or State (changed in place), else a rebuilt one if anything changed."""
    kind, uidx, entries = node
    if kind <= _K_STATE:
        target = value._mapping if kind == _K_STATE else value
        entry = untracked[uidx] if uidx >= 0 else None
        snap = entry[1] if entry is not None and entry[0] is value else None
        changes = []
        for access, sub in entries:
            old = target[access]
            v = new.get(sub, _MISSING) if type(sub) is int else _write_raw(old, sub, new, untracked)
            if v is not _MISSING and v is not old:
                target[access] = v
                changes.append((access, v))
        if changes and snap is not None:  # keep the snapshot in step with our own writes
            if kind == _K_LIST:
                items = list(snap)
                for access, v in changes:
                    items[access] = v
                untracked[uidx] = (value, tuple(items), None)
            else:
                snap.update(changes)
        return value
    make = None
    if kind == _K_TUPLE:
        children, treedef = list(value), None
    elif kind == _K_NAMED:
        children, treedef, make = list(value), None, type(value)._make
    else:
        children, treedef = jax.tree_util.tree_flatten(value, is_leaf=_not(value))
    changed = False
    for access, sub in entries:
        old = children[access]
        v = new.get(sub, _MISSING) if type(sub) is int else _write_raw(old, sub, new, untracked)
        if v is not _MISSING and v is not old:
            children[access] = v
            changed = True
    if not changed:
        return value
    if treedef is None:
        return tuple(children) if make is None else make(children)
    rebuilt = treedef.unflatten(children)
    if uidx >= 0 and untracked[uidx][0] is value:
        untracked[uidx] = (rebuilt, tuple(children), treedef)
    return rebuilt


# -- the structure cache ------------------------------------------------------------------
_MULTI_CACHE_SIZE = 8
_ROOTS = (Pytree, List, Dict, Variable)  # what a multi-root flatten caches on


def _flatten_cached(root: Any) -> _Flat:
    """The flatten of `root`, reused while no structural change happened in its graph."""
    if isinstance(root, Pytree):
        d = root.__dict__
        flat = d.get("_nnx_cache")
        if flat is not None and flat.nodes[0] is root and flat.valid():
            if flat.has_raw:
                flat.refresh_raw_leaves()
            return flat
        flat = _flatten_full(root)
        d["_nnx_cache"] = flat
        return flat
    if isinstance(root, List | Dict):
        flat = getattr(root, "_nnx_cache", None)
        if flat is not None and flat.nodes[0] is root and flat.valid():
            if flat.has_raw:
                flat.refresh_raw_leaves()
            return flat
        flat = _flatten_full(root)
        object.__setattr__(root, "_nnx_cache", flat)
        return flat
    if type(root) is tuple and root and all(isinstance(r, _ROOTS) for r in root):
        return _flatten_multi(root)
    return _flatten_full(root)


def _flatten_multi(roots: tuple) -> _Flat:
    # Several roots (as transforms pass them): cached on the first root, keyed by identities.
    first = roots[0]
    holder = first.__dict__ if isinstance(first, Pytree) else None
    if holder is None:
        return _flatten_full(roots)
    cache = holder.get("_nnx_multi")
    if cache is None:
        cache = holder["_nnx_multi"] = {}
    key = tuple(map(id, roots))
    flat = cache.get(key)
    # Ids cannot be reused while the entry holds the roots alive, so the key is exact.
    if flat is not None and flat.valid():
        if flat.has_raw:
            flat.refresh_raw_leaves()
        return flat
    flat = _flatten_full(roots)
    if len(cache) >= _MULTI_CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = flat
    return flat
