"""The graph core: split any object graph into a GraphDef and a State, and merge them back.

flatten walks the graph depth first, attributes in sorted order. Every object with identity
(a Pytree such as a Module or Rngs, a tracked List/Dict, a Variable) gets an index the first
time it is seen; seeing it again emits a reference, which is how shared layers, tied weights
and cycles survive a round trip. Tuples and other JAX pytrees are walked as plain structure.

The result of a flatten is cached on the root object and reused while nothing structural
changed anywhere in the graph (see ``_version.py``): a repeated ``split``/``state``/``update``
of an unchanged model only touches its Variables.

Example:
  >>> class Block(nnx.Module):
  ...   def __init__(self, shared):
  ...     self.shared = shared
  ...     self.w = nnx.Param(jnp.ones(2))
  >>> shared = nnx.Param(jnp.zeros(2))
  >>> model = nnx.List([Block(shared), Block(shared)])
  >>> graphdef, state = nnx.split(model)
  >>> sorted(state.flat_state().paths)
  [(0, 'shared'), (0, 'w'), (1, 'w')]
  >>> copy = nnx.merge(graphdef, state)
  >>> copy[0].shared is copy[1].shared
  True
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

import jax

from . import _version
from .errors import (
    ArgumentError,
    GraphDefMismatchError,
    MergeError,
    NNXError,
    StaticAttributeError,
    UpdateError,
    format_path,
    short_list,
)
from .filters import Filter
from .pytreelib import Dict, List, Pytree, is_array, is_data
from .state import (
    State,
    _flat_pairs,
    _from_plan,
    _iter_pairs,
    _locate,
    _nest_plan,
    _split_pairs,
    from_flat_state,
)
from .variables import Variable, _Meta

__all__ = [
    "GraphDef",
    "call",
    "clone",
    "flatten",
    "graphdef",
    "is_node",
    "iter_children",
    "iter_graph",
    "merge",
    "pop",
    "split",
    "state",
    "unflatten",
    "update",
]

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
_OBJ, _LIST, _DICT = range(3)
_ROOT_NAME = "model"


def is_node(value: Any) -> bool:
    """True for objects the graph walks with identity: Pytrees (Modules, Rngs), List, Dict."""
    return isinstance(value, Pytree | List | Dict)


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


def _sort_key(key: Any) -> tuple[int, Any]:
    if isinstance(key, int):
        return (0, key)
    if isinstance(key, str):
        return (1, key)
    return (2, repr(key))


def _plain_key(entry: Any) -> Hashable:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


# -- GraphDef -----------------------------------------------------------------------------
class GraphDef:
    """The static structure of an object graph: types, static attributes, sharing. No arrays.

    Immutable, hashable, and equal for equal structures, so it can key a ``jax.jit`` cache.
    """

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

    def __repr__(self) -> str:
        root = self.root
        if root[0] in (_NODE, _VAR):
            name = root[2].__name__
        elif root[0] == _TREE:
            name = getattr(root[1].node_data()[0], "__name__", "pytree")
        else:
            name = {_LEAF: "array", _STATIC: "static"}.get(root[0], "ref")
        return f"GraphDef({name}, nodes={self.num_nodes}, leaves={len(self.leaf_paths)})"

    def apply(self, state: Mapping, *states: Mapping) -> _CallProxy:
        """Functional call: ``out, (graphdef, new_state) = graphdef.apply(state)(x)``."""
        return _CallProxy(self, (state, *states), ())


jax.tree_util.register_pytree_node(GraphDef, lambda g: ((), g), lambda g, _: g)


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
        "slots",
        "stamps",
        "state_plan",
        "untracked",
    )

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.leaves: list[Any] = []  # Variables, or raw values for _LEAF slots
        self.paths: list[Path] = []
        self.slots: list[Any] = []  # None for Variables; (owner, key, subpath) for raw leaves
        self.path_index: dict[Path, int] | None = None
        self.state_plan: dict | bool | None = False  # False: not computed yet
        self.clock = _version.now()
        self.extra: dict[Any, Any] = {}  # per-entry data of transforms (their call specs)
        self.untracked: list[tuple] = []  # mutable containers without stamps (see below)

    def valid(self) -> bool:
        if self.untracked and not _untracked_unchanged(self.untracked):
            return False
        now = _version.now()
        if self.clock == now:
            return True
        for obj, stamp in zip(self.nodes, self.stamps, strict=True):
            if getattr(obj, "_nnx_stamp", 0) != stamp:
                return False
        self.clock = now
        return True

    def refresh_raw_leaves(self) -> None:
        for i, slot in enumerate(self.slots):
            if slot is not None:
                self.leaves[i] = _read_slot(slot)

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
            if not isinstance(value, tuple):
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
    for obj, snap, treedef in entries:
        t = type(obj)
        if t is list:
            if len(obj) != len(snap) or any(a is not b for a, b in zip(obj, snap, strict=True)):
                return False
        elif t is dict:
            if len(obj) != len(snap) or any(obj.get(k, _MISSING) is not v for k, v in snap.items()):
                return False
        else:
            children, now = jax.tree_util.tree_flatten(obj, is_leaf=_not(obj))
            if now != treedef or len(children) != len(snap):
                return False
            if any(a is not b for a, b in zip(children, snap, strict=True)):
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


def _read_slot(slot: tuple) -> Any:
    owner, key, subpath = slot
    if owner is None:
        raise MergeError("internal: a raw root leaf has no owner")  # pragma: no cover
    value = _get_child(owner, key)
    for entry in subpath:
        value = _child_by_keyentry(value, entry)
    return value


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


def _replace_metadata(var: Variable, meta: Mapping) -> None:
    """Gives `var` exactly `meta` as metadata (keys it lacks are dropped, unlike
    ``set_metadata``, which merges): how a saved state or a transform's result rolls
    metadata back. A structural change."""
    object.__setattr__(var, "_meta", meta if isinstance(meta, _Meta) else _Meta(meta))
    object.__setattr__(var, "_nnx_stamp", _version.bump())


def _write_slot(slot: tuple, new: Any, root: Any = None) -> None:
    owner, key, subpath = slot
    if owner is None:  # a raw leaf of a plain root (a dict or list): write in that container
        container, entry, rest = _mutable_parent(root, subpath)  # type: ignore[misc]
        k = _plain_key(entry)
        container[k] = _replace_by_keyentry(container[k], rest, new)
        return
    if subpath:
        new = _replace_by_keyentry(_get_child(owner, key), subpath, new)
    _set_child(owner, key, new)


# -- the structure cache ------------------------------------------------------------------
_MULTI_CACHE_SIZE = 8


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
    if type(root) is tuple and root and all(is_node(r) or isinstance(r, Variable) for r in root):
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


# -- public API: flatten / unflatten ------------------------------------------------------
def flatten(node: Any) -> tuple[GraphDef, list[tuple[Path, Any]]]:
    """Flattens an object graph into its GraphDef and its (path, leaf) pairs.

    The leaves are the graph's own Variables (not copies); use :func:`split` for a snapshot.
    """
    flat = _flatten_cached(node)
    return flat.graphdef, list(zip(flat.paths, flat.leaves, strict=True))


def unflatten(graphdef: GraphDef, state: Mapping | list, *, copy: bool = False) -> Any:
    """Rebuilds an object graph from a GraphDef and a State (or a list of leaves in order).

    Args:
      graphdef: the structure, from :func:`split` or :func:`graphdef`.
      state: a State covering exactly the GraphDef's leaves, or the leaves as a list in
        GraphDef order (raw values are wrapped in the Variable type the GraphDef records).
      copy: copy Variables out of `state` so the new graph does not alias it (by default it
        adopts them, as :func:`merge` does).

    Raises:
      GraphDefMismatchError: the state's paths are not those of the GraphDef.
    """
    if isinstance(state, Mapping):
        leaves = _leaves_for(graphdef, [state])
    else:
        leaves = list(state)
        if len(leaves) != len(graphdef.leaf_paths):
            raise GraphDefMismatchError(
                f"unflatten got {len(leaves)} leaves but the GraphDef has "
                f"{len(graphdef.leaf_paths)}."
            )
    return _build(graphdef, leaves, copy)


def _build(
    graphdef: GraphDef,
    leaves: list,
    copy: bool,
    metas: list | None = None,
    reuse: Mapping[int, Any] | None = None,
    nodes_out: list | None = None,
) -> Any:
    """Builds the graph of `graphdef` from `leaves` (in GraphDef order).

    Args:
      copy: copy Variable leaves instead of adopting them.
      metas: with raw leaves, the metadata of each leaf's Variable (in leaf order).
      reuse: node index -> existing object to update in place instead of creating a new one
        (how transforms write structural changes back into the caller's objects).
      nodes_out: if given, receives the node table (the object built for each index).
    """
    if not reuse:
        plan = graphdef._build_plan
        if plan is None:
            plan = graphdef._build_plan = _BuildPlan(graphdef)
        return plan.run(leaves, copy, metas, nodes_out)
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
            elif isinstance(leaf, Variable):
                var = leaf.copy() if copy else leaf
            else:
                var = vtype.__new__(vtype)
                Variable.__init__(var, leaf)
                if meta:
                    object.__setattr__(var, "_meta", meta)
            nodes[i] = var
            return var
        if tag == _LEAF:
            leaf = next(it)
            if meta_it is not None:
                next(meta_it)
            return leaf._value if isinstance(leaf, Variable) else leaf
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
    (shared, cyclic, or inside a pytree) are created; then the leaves are placed; then
    pytrees bottom-up; then the other objects, children before parents, each created and
    filled from the table by index in one step; last the Lists' and Dicts' items.
    """

    __slots__ = (
        "colls",
        "dict_fills",
        "early",
        "leaf_types",
        "list_fills",
        "node_pos",
        "num_leaves",
        "obj_fills",
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
                    obj_fills.append((pos, typ, keys, _getter(idxs), fields))
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

        self.root = slot(graphdef.root)
        assert len(leaf_types) == n_leaves
        self.num_leaves, self.leaf_types, self.node_pos = n_leaves, leaf_types, node_pos
        self.template, self.colls, self.trees = template, colls, trees
        self.early = [(pos, typ) for pos, typ, *_ in obj_fills if pos in early]
        self.obj_fills = [(pos, typ, pos in early, *rest) for pos, typ, *rest in obj_fills]
        self.list_fills, self.dict_fills = list_fills, dict_fills

    def run(self, leaves: list, copy: bool, metas: list | None, nodes_out: list | None) -> Any:
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
                table[pos] = _leaf_object(vtype, leaf, copy, meta)
        get = table.__getitem__
        for pos, treedef, idxs in self.trees:
            table[pos] = treedef.unflatten(list(map(get, idxs)))
        for pos, typ, made, keys, getter, fields in self.obj_fills:
            if made:
                d = table[pos].__dict__
            else:
                obj = table[pos] = new(typ)
                d = obj.__dict__
            d.update(zip(keys, getter(table), strict=False))  # lengths fixed at compile
            if fields:
                d["_nnx_fields"] = dict(fields)
        for pos, idxs in self.list_fills:
            list.extend(table[pos], map(get, idxs))
        for pos, keys, idxs in self.dict_fills:
            dict.update(table[pos], zip(keys, map(get, idxs), strict=True))
        if nodes_out is not None:
            nodes_out.extend(map(get, self.node_pos))
        return table[self.root]


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
            f"merge: the state does not fit the GraphDef ({graphdef!r}).\n"
            + "\n".join(parts)
            + "\nFix: merge a state with the GraphDef that came from the same nnx.split, "
            "and pass every state that split returned (nnx.merge(graphdef, *states))."
        )
    return leaves


_MISSING: Any = object()


# -- public API: split / merge / state / update -------------------------------------------
def graphdef(node: Any, /) -> GraphDef:
    """The GraphDef of an object graph."""
    return _flatten_cached(node).graphdef


def _snapshot_pairs(flat: _Flat) -> list[tuple[Path, Any]]:
    return [
        (p, leaf.copy() if slot is None else leaf)
        for p, leaf, slot in zip(flat.paths, flat.leaves, flat.slots, strict=True)
    ]


def _snapshot_state(flat: _Flat) -> State:
    """``from_flat_state(_snapshot_pairs(flat))``, nesting by a plan kept on the cache entry."""
    plan = flat.plan()
    if plan is None:
        return from_flat_state(_snapshot_pairs(flat))
    if flat.has_raw:
        leaves = [
            leaf.copy() if slot is None else leaf
            for leaf, slot in zip(flat.leaves, flat.slots, strict=True)
        ]
    else:
        leaves = [leaf.copy() for leaf in flat.leaves]
    return _from_plan(plan, leaves)


def split(node: Any, /, *filters: Filter) -> tuple[Any, ...]:
    """Splits an object graph into its GraphDef and State(s).

    With filters, one State per filter (each leaf goes to the first filter it matches); the
    filters must cover the whole state. The States hold copies of the Variables: later changes
    to the model do not change them (a saved State rolls the model back).

    Raises:
      FilterError: the filters leave some leaves unmatched.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.n = nnx.BatchStat(jnp.zeros(2))
      >>> graphdef, params, rest = nnx.split(M(), nnx.Param, ...)
      >>> list(params), list(rest)
      (['w'], ['n'])
    """
    flat = _flatten_cached(node)
    if not filters:
        return flat.graphdef, _snapshot_state(flat)
    pairs = _snapshot_pairs(flat)
    return (flat.graphdef, *_split_pairs(pairs, filters, exhaustive=True))


def merge(graphdef: GraphDef, state: Mapping, /, *states: Mapping, copy: bool = False) -> Any:
    """Builds a new object graph from a GraphDef and the State(s) that :func:`split` returned.

    As in flax.nnx, the new graph adopts the states' Variable objects (no copies): changing
    the merged model's Variables changes the state's too. Pass ``copy=True`` for a graph that
    shares nothing with the state. (:func:`split` and :func:`state` already return
    snapshots, so merging them never aliases the model they came from.)

    Raises:
      GraphDefMismatchError: the states' paths or Variable types do not fit the GraphDef.
    """
    if not isinstance(graphdef, GraphDef):
        raise MergeError(
            f"merge expects a GraphDef first, got {type(graphdef).__name__}. "
            "Fix: graphdef, state = nnx.split(model); nnx.merge(graphdef, state)."
        )
    leaves = _leaves_for(graphdef, [state, *states])
    return _build(graphdef, leaves, copy)


def state(node: Any, /, *filters: Filter) -> Any:
    """A snapshot State of the graph's Variables; with filters, only what they select.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.n = nnx.BatchStat(jnp.zeros(2))
      >>> list(nnx.state(M(), nnx.BatchStat))
      ['n']
    """
    flat = _flatten_cached(node)
    if not filters:
        return _snapshot_state(flat)
    pairs = _snapshot_pairs(flat)
    states = _split_pairs(pairs, filters, exhaustive=False)
    return states[0] if len(filters) == 1 else states


def update(node: Any, /, *states: Mapping) -> None:
    """Writes the values (and metadata) of `states` into the graph's Variables, in place.

    Every state path must exist in the graph, with the same Variable type and shape. Checked
    before anything is written, so a failed update leaves the graph exactly as it was.

    Raises:
      UpdateError: unknown paths, wrong Variable types or shapes (all of them are listed).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      >>> m = M()
      >>> saved = nnx.state(m)
      >>> m.w.value = m.w.value * 5
      >>> nnx.update(m, saved)
      >>> m.w.value.tolist()
      [1.0, 1.0]
    """
    flat = _flatten_cached(node)
    index = flat.index()
    fast = _update_plan_fast(flat, index, states)
    # Anything the fast plan does not cover (stringified int keys, errors) goes the full way,
    # which checks every pair in sorted order and reports all problems.
    plan: list[tuple[int, Any]] = fast if fast is not None else []
    problems: list[str] = []
    for path, leaf in _state_pairs(states) if fast is None else ():
        path = _normalize(path, index)
        i = index.get(path)
        if i is None:
            problems.append(f"{format_path(path)}: no such Variable in the model")
            continue
        target = flat.leaves[i]
        if isinstance(leaf, Variable) and isinstance(target, Variable):
            if type(leaf) is not type(target):
                problems.append(
                    f"{format_path(path)}: the model has a {type(target).__name__}, the state a "
                    f"{type(leaf).__name__}"
                )
                continue
            value = leaf._value
        elif isinstance(leaf, Variable):
            value = leaf._value
        else:
            value = leaf
        old = target._value if isinstance(target, Variable) else target
        old_shape, new_shape = getattr(old, "shape", None), getattr(value, "shape", None)
        if old_shape is not None and new_shape is not None and tuple(old_shape) != tuple(new_shape):
            problems.append(
                f"{format_path(path)}: shape {tuple(new_shape)} in the state, "
                f"{tuple(old_shape)} in the model"
            )
            continue
        plan.append((i, leaf))
    if flat.has_raw:  # raw leaves of a plain root: only plain lists and dicts take writes
        problems += [
            f"{format_path(flat.paths[i])}: an array in a {type(node).__name__}, which "
            "cannot change in place (hold it in a list, a dict or a Module)"
            for i, _ in plan
            if flat.slots[i] is not None
            and flat.slots[i][0] is None
            and _mutable_parent(node, flat.slots[i][2]) is None
        ]
    if problems:
        raise UpdateError(
            f"update: the state does not fit {type(node).__name__}; nothing was changed.\n"
            + short_list(problems)
            + "\nFix: update with a state taken from this model (nnx.state(model)), or "
            "rebuild the model with the matching configuration."
        )
    for i, leaf in plan:
        target = flat.leaves[i]
        if isinstance(target, Variable):
            if isinstance(leaf, Variable):
                object.__setattr__(target, "_value", leaf._value)
                if leaf._meta is not target._meta and leaf._meta != target._meta:
                    _replace_metadata(target, leaf._meta)
            else:
                object.__setattr__(target, "_value", leaf)
        else:
            value = leaf._value if isinstance(leaf, Variable) else leaf
            _write_slot(flat.slots[i], value, node)
            flat.leaves[i] = value


def _update_plan_fast(
    flat: _Flat, index: Mapping[Path, int], states: tuple[Mapping, ...]
) -> list[tuple[int, Any]] | None:
    """The (leaf position, new leaf) plan of :func:`update` when every path is found as is and
    fits (type, shape); None as soon as one does not."""
    leaves = flat.leaves
    state_plan = flat.plan()
    located: list[tuple[int, Any]] = []
    for s in states:
        data = s._mapping if isinstance(s, State) else s
        if state_plan is not None and type(data) is dict:
            if not _locate(state_plan, data, located):
                return None
            continue
        pairs: list[tuple[Path, Any]] = []
        _iter_pairs(s, (), pairs)
        for path, leaf in pairs:
            i = index.get(path)
            if i is None:
                return None
            located.append((i, leaf))
    plan: list[tuple[int, Any]] = []
    for i, leaf in located:
        target = leaves[i]
        target_is_var = isinstance(target, Variable)
        if isinstance(leaf, Variable):
            if target_is_var and type(leaf) is not type(target):
                return None
            value = leaf._value
        else:
            value = leaf
        old = target._value if target_is_var else target
        if value is not old:
            old_shape = getattr(old, "shape", None)
            if old_shape is not None:
                new_shape = getattr(value, "shape", None)
                if (
                    new_shape is not None
                    and old_shape != new_shape
                    and tuple(old_shape) != tuple(new_shape)
                ):
                    return None
        plan.append((i, leaf))
    return plan


def pop(node: Any, /, *filters: Filter) -> Any:
    """Removes the Variables selected by `filters` from the graph and returns them.

    Returns one State per filter (a single State for one filter).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.seen = nnx.Intermediate((jnp.ones(1),))
      >>> m = M()
      >>> popped = nnx.pop(m, nnx.Intermediate)
      >>> list(popped), hasattr(m, 'seen')
      (['seen'], False)
    """
    if not filters:
        raise ArgumentError(
            f"nnx.pop({type(node).__name__}) got no filter: pop removes only the Variables "
            "a filter selects (popping everything would empty the model).\nFix: name what "
            "to remove, e.g. nnx.pop(model, nnx.Intermediate)."
        )
    flat = _flatten_cached(node)
    pairs = [
        (p, leaf)
        for p, leaf, s in zip(flat.paths, flat.leaves, flat.slots, strict=False)
        if s is None
    ]
    states = _split_pairs(pairs, filters, exhaustive=False)
    chosen = {id(leaf) for s in states for _, leaf in _flat_pairs(s)}
    removals: list[tuple[Any, Any]] = []
    for owner, key, value in _edges(node):
        if isinstance(value, Variable) and id(value) in chosen:
            removals.append((owner, key))
    removable = {id(_get_child(owner, key)) for owner, key in removals}
    stuck = [p for p, leaf in pairs if id(leaf) in chosen and id(leaf) not in removable]
    if stuck:
        raise NNXError(
            "pop: these Variables sit inside tuples (or other immutable pytrees), from which "
            "they cannot be removed:\n"
            + short_list([format_path(p) for p in stuck])
            + "\nNothing was removed. Fix: hold them in a list or as attributes instead."
        )
    # Delete list items from the back so earlier indices stay valid.
    removals.sort(key=lambda ok: -ok[1] if isinstance(ok[0], List) else 0)
    for owner, key in removals:
        if isinstance(owner, Pytree):
            delattr(owner, key)
        elif isinstance(owner, List | Dict):
            del owner[key]
    return states[0] if len(filters) == 1 else states


def _edges(root: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(owner, key, child) for each attribute/item of every identity node, each node once."""
    seen: set[int] = set()
    stack = [root] if is_node(root) else [v for v in _tree_children(root) if is_node(v)]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = _kind(node)
        for k, v in _items(node, kind):  # type: ignore[arg-type]
            yield node, k, v
            if is_node(v):
                stack.append(v)
            elif not isinstance(v, Variable) and not is_array(v):
                stack.extend(c for c in _tree_children(v) if is_node(c))


def _tree_children(value: Any) -> list[Any]:
    if value is None or isinstance(value, str | int | float | bool):
        return []
    return jax.tree_util.tree_leaves(value, is_leaf=lambda x: is_node(x) or isinstance(x, Variable))


def clone(node: Any, /) -> Any:
    """A deep, independent copy of an object graph (sharing inside it is preserved)."""
    return merge(*split(node))


def iter_graph(node: Any, /) -> Iterator[tuple[Path, Any]]:
    """Yields ``(path, value)`` for every node, Variable and array leaf, each once, children
    before their parent (the root comes last, with path ``()``).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      >>> [(p, type(v).__name__) for p, v in nnx.iter_graph([M()])]
      [((0, 'w'), 'Param'), ((0,), 'M')]
    """
    seen: set[int] = set()

    def walk(value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
        if isinstance(value, Variable):
            if id(value) not in seen:
                seen.add(id(value))
                yield path, value
            return
        kind = _kind(value)
        if kind is not None:
            if id(value) in seen:
                return
            seen.add(id(value))
            for k, v in _items(value, kind):
                if kind == _OBJ and not value._nnx_is_data(k, v):
                    continue
                yield from walk(v, (*path, k))
            yield path, value
            return
        if is_array(value):
            yield path, value
            return
        if isinstance(value, list | tuple | dict) or _is_pytree_with_data(value):
            pairs, _ = jax.tree_util.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)
            for keypath, child in pairs:
                yield from walk(child, (*path, _plain_key(keypath[0])))

    yield from walk(node, ())


def iter_children(node: Any, /) -> Iterator[tuple[Hashable, Any]]:
    """Yields ``(key, child)`` for the direct children of a node that are nodes themselves
    (Modules, Rngs, Lists, Dicts) or Variables, in key order; arrays and static attributes
    are skipped, and nothing deeper is visited (see :func:`iter_graph`).

    Raises:
      ArgumentError: `node` is not a node (a Pytree such as a Module, a List or a Dict).

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(2))
      ...     self.layers = [nnx.Module()]
      ...     self.size = 2
      >>> [(k, type(v).__name__) for k, v in nnx.iter_children(M())]
      [('layers', 'List'), ('w', 'Param')]
    """
    kind = _kind(node)
    if kind is None:
        raise ArgumentError(
            f"iter_children expects a node (a Module or other nnx.Pytree, an nnx.List or "
            f"nnx.Dict), got a {type(node).__name__}.\nFix: for a plain pytree iterate it "
            "directly, or use nnx.iter_graph(value) to walk every node inside it."
        )
    return _iter_children(node, kind)


def _iter_children(node: Any, kind: int) -> Iterator[tuple[Hashable, Any]]:
    for k, v in _items(node, kind):
        if is_node(v) or isinstance(v, Variable):
            yield k, v


# -- functional calls ---------------------------------------------------------------------
class _CallProxy:
    """``proxy(*args)`` or ``proxy.method(*args)`` merges, calls, splits, and returns
    ``(output, (graphdef, state))``."""

    def __init__(self, graphdef: GraphDef, states: tuple[Mapping, ...], names: tuple[str, ...]):
        self._graphdef = graphdef
        self._states = states
        self._names = names

    def __getattr__(self, name: str) -> _CallProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return _CallProxy(self._graphdef, self._states, (*self._names, name))

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[GraphDef, State]]:
        obj = merge(self._graphdef, *self._states, copy=True)  # functional: inputs untouched
        fn: Callable = obj
        for name in self._names:
            fn = getattr(fn, name)
        out = fn(*args, **kwargs)
        new_graphdef, new_state = split(obj)
        return out, (new_graphdef, new_state)


def call(graphdef_state: Any, /, *states: Mapping) -> _CallProxy:
    """Functional call of a split model.

    Accepts ``call((graphdef, state))`` (flax's form) or ``call(graphdef, state)``.

    Example:
      >>> class Counter(nnx.Module):
      ...   def __init__(self):
      ...     self.n = nnx.BatchStat(jnp.array(0))
      ...   def __call__(self, x):
      ...     self.n.value += 1
      ...     return x * 2
      >>> graphdef, st = nnx.split(Counter())
      >>> y, (graphdef, st) = nnx.call((graphdef, st))(3)
      >>> y, int(st['n'].value)
      (6, 1)
    """
    if isinstance(graphdef_state, GraphDef):
        return _CallProxy(graphdef_state, states, ())
    graphdef_, *rest = graphdef_state
    return _CallProxy(graphdef_, (*rest, *states), ())
