"""The structure cache, and the raw leaves of a flatten read and written in place.

The :class:`~nnx._graphdef.Flat` of a root object is cached on it and reused while nothing
structural changed anywhere in the graph (see ``_version.py``); plain mutable containers,
which take no stamps, are compared by identity instead (``Flat.valid``).

Raw array leaves (outside any Variable) are read and written per attribute: one walk over
the containers on the way to them, planned once per flatten (:class:`RawPlan`); plain lists,
dicts and States are written in place, tuples and other pytrees rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple, cast

import jax

from ._build import MISSING
from ._encoding import Path
from ._graphdef import Flat, Slot, Untracked, flatten_full, plain_key
from .pytreelib import Dict, List, Pytree
from .state import State
from .variablelib import Variable

__all__ = [
    "Flat",
    "flatten_cached",
    "flatten_full",
    "get_child",
    "mutable_parent",
    "refresh_raw_leaves",
    "write_raw_leaves",
    "write_slot",
]


def _not(obj: Any) -> Callable[[Any], bool]:
    return lambda x: x is not obj


def get_child(owner: Any, key: Any) -> Any:
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
    return jax.tree_util.tree_unflatten(treedef, children)


def mutable_parent(root: Any, subpath: Path) -> tuple | None:
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


def write_slot(slot: Slot, new: Any, root: Any = None) -> None:
    """Writes one raw leaf, as :func:`write_raw_leaves` does (which writes many at once and
    keeps a cache entry valid)."""
    owner, key, subpath = slot
    if owner is None:  # a raw leaf of a plain root (a dict or list): write in that container
        container, entry, rest = mutable_parent(root, subpath)  # type: ignore[misc]
        k = plain_key(entry)
        container[k] = _replace_by_keyentry(container[k], rest, new)
        return
    if not subpath:
        _set_child(owner, key, new)
        return
    value = get_child(owner, key)
    written = _write_raw(value, _raw_node(value, [(subpath, 0)], {}), {0: new}, [])
    if written is not value:
        _set_child(owner, key, written)


# -- raw leaves: read and written per attribute -------------------------------------------
class RawKind(IntEnum):
    """How a container on the way to raw leaves is read and written."""

    LIST = 0  # in place, access by index
    DICT = 1  # in place, access by key
    STATE = 2  # in place, access by key into its mapping
    TUPLE = 3  # rebuilt, by index
    NAMED = 4  # a namedtuple whose pytree children are its fields: rebuilt with ``_make``
    SEQ = 5  # another tuple subclass: rebuilt from its flatten, index = flatten position
    GEN = 6  # any other pytree: rebuilt, access = position among its one-level children


_K_LIST, _K_DICT, _K_STATE, _K_TUPLE, _K_NAMED, _K_SEQ, _K_GEN = RawKind


class RawNode(NamedTuple):
    """A container on the way to raw leaves: its entries are ``(access, leaf index or
    RawNode)``; `untracked` is its position in ``Flat.untracked`` (None if not there)."""

    kind: RawKind
    untracked: int | None
    entries: tuple[tuple[Any, Any], ...]


class RawGroup(NamedTuple):
    """One attribute (or List/Dict item) holding raw leaves: `tree` is the leaf index when
    the attribute is the raw leaf itself, else the RawNode of the container there."""

    owner: Any
    key: Any
    tree: int | RawNode


class RawPlan(NamedTuple):
    """Built once per flatten from its slots; `group_of` maps a leaf index to its group."""

    groups: list[RawGroup]
    group_of: dict[int, int]


def refresh_raw_leaves(flat: Flat) -> None:
    """Reads the raw leaves again (a value change does not invalidate the entry): one walk
    per attribute that holds them, each container on the way visited once."""
    leaves = flat.leaves
    for owner, key, tree in _raw_plan(flat).groups:
        value = get_child(owner, key)
        if isinstance(tree, int):
            leaves[tree] = value
        else:
            _read_raw(value, tree, leaves)


def _raw_plan(flat: Flat) -> RawPlan:
    plan = flat.raw_plan
    if plan is None:
        plan = flat.raw_plan = _build_raw_plan(flat)
    return plan


def _build_raw_plan(flat: Flat) -> RawPlan:
    uindex: dict[int, int] = {}
    for j, entry in enumerate(flat.untracked):
        uindex.setdefault(id(entry.value), j)
    attrs: dict[tuple[int, Any], tuple[Any, Any, list]] = {}
    for i, slot in enumerate(flat.slots):
        if slot is not None and slot.owner is not None:  # a plain root's leaves: write_slot
            owner, key, subpath = slot
            attrs.setdefault((id(owner), key), (owner, key, []))[2].append((subpath, i))
    groups: list[RawGroup] = []
    group_of: dict[int, int] = {}
    for owner, key, items in attrs.values():
        if len(items) == 1 and not items[0][0]:
            tree: Any = items[0][1]
        else:
            tree = _raw_node(get_child(owner, key), items, uindex)
        for _, i in items:
            group_of[i] = len(groups)
        groups.append(RawGroup(owner, key, tree))
    return RawPlan(groups, group_of)


def _raw_node(value: Any, items: list[tuple[Path, int]], uindex: dict[int, int]) -> RawNode:
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
        access = getattr(entry, "key", MISSING) if kind in (_K_DICT, _K_STATE) else pos
        if kind != _K_GEN and (access is MISSING or _lookup(direct, access) is not child):
            return _raw_node_generic(value, by_entry, position, pairs, uindex)
        entries.append((access, _raw_sub(child, sub_items, uindex)))
    return RawNode(kind, uindex.get(id(value)), tuple(entries))


def _raw_kind(value: Any) -> RawKind:
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
) -> RawNode:
    entries = tuple(
        (position[e], _raw_sub(pairs[position[e]][1], sub_items, uindex))
        for e, sub_items in by_entry.items()
    )
    return RawNode(_K_GEN, uindex.get(id(value)), entries)


def _raw_sub(child: Any, items: list[tuple[Path, int]], uindex: dict[int, int]) -> Any:
    if len(items) == 1 and not items[0][0]:
        return items[0][1]  # the raw leaf itself
    return _raw_node(child, items, uindex)


def _lookup(container: Any, access: Any) -> Any:
    try:
        return container[access]
    except (KeyError, IndexError, TypeError):
        return MISSING


def _read_raw(value: Any, node: RawNode, leaves: list) -> None:
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


def write_raw_leaves(flat: Flat, pairs: list[tuple[int, Any]], root: Any = None) -> None:
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
            write_slot(cast(Slot, flat.slots[i]), value, root)  # a raw leaf: it has a slot
        else:
            new[i] = value
            touched[g] = None
    untracked = flat.untracked
    for g in touched:
        owner, key, tree = groups[g]
        if isinstance(tree, int):
            _set_child(owner, key, new[tree])
            continue
        value = get_child(owner, key)
        written = _write_raw(value, tree, new, untracked)
        if written is not value:
            _set_child(owner, key, written)


def _write_raw(
    value: Any, node: RawNode, new: dict[int, Any], untracked: list[Untracked]
) -> Any:
    """`value` with the raw leaves of `new` under it written: the same object if it is a
    plain list, dict or State (changed in place), else a rebuilt one if anything changed."""
    kind, uidx, entries = node
    if kind <= _K_STATE:
        target = value._mapping if kind == _K_STATE else value
        entry = untracked[uidx] if uidx is not None else None
        snap = entry[1] if entry is not None and entry[0] is value else None
        changes = []
        for access, sub in entries:
            old = target[access]
            v = new.get(sub, MISSING) if type(sub) is int else _write_raw(old, sub, new, untracked)
            if v is not MISSING and v is not old:
                target[access] = v
                changes.append((access, v))
        if changes and snap is not None and uidx is not None:  # keep the snapshot in step
            if kind == _K_LIST:
                items = list(snap)
                for access, v in changes:
                    items[access] = v
                untracked[uidx] = Untracked(value, tuple(items), None)
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
        v = new.get(sub, MISSING) if type(sub) is int else _write_raw(old, sub, new, untracked)
        if v is not MISSING and v is not old:
            children[access] = v
            changed = True
    if not changed:
        return value
    if treedef is None:
        return tuple(children) if make is None else make(children)
    rebuilt = treedef.unflatten(children)
    if uidx is not None and untracked[uidx].value is value:
        untracked[uidx] = Untracked(rebuilt, tuple(children), treedef)
    return rebuilt


# -- the structure cache ------------------------------------------------------------------
_MULTI_CACHE_SIZE = 8
_ROOTS = (Pytree, List, Dict, Variable)  # what a multi-root flatten caches on


def flatten_cached(root: Any) -> Flat:
    """The flatten of `root`, reused while no structural change happened in its graph.

    A Pytree, List or Dict root keeps its entry in its ``_nnx_cache`` attribute; a tuple of
    such roots (as transforms pass them) in a small table on the first root keyed by the
    roots' identities (exact: the entry holds the roots alive, so no id is reused).
    """
    if isinstance(root, Pytree | List | Dict):
        if isinstance(root, Pytree):
            flat = root.__dict__.get("_nnx_cache")
        else:  # slotted containers
            flat = getattr(root, "_nnx_cache", None)
        if flat is not None and flat.nodes[0] is root and _reusable(flat):
            return flat
        flat = flatten_full(root)
        object.__setattr__(root, "_nnx_cache", flat)
        return flat
    if (
        type(root) is tuple
        and root
        and isinstance(root[0], Pytree)
        and all(isinstance(r, _ROOTS) for r in root)
    ):
        holder = root[0].__dict__
        table = holder.get("_nnx_multi")
        if table is None:  # (setdefault would build an empty dict on every call)
            table = holder["_nnx_multi"] = {}
        key = tuple(map(id, root))
        flat = table.get(key)
        if flat is not None and _reusable(flat):
            return flat
        flat = flatten_full(root)
        if len(table) >= _MULTI_CACHE_SIZE:
            table.pop(next(iter(table)))
        table[key] = flat
        return flat
    return flatten_full(root)


def _reusable(flat: Flat) -> bool:
    """A cache hit: nothing structural changed; raw leaves (values) read again."""
    if not flat.valid():
        return False
    if flat.has_raw:
        refresh_raw_leaves(flat)
    return True
