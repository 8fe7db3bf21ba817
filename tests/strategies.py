"""Hypothesis strategies for random nnx object graphs, and helpers to inspect them.

A drawn :class:`GraphRecipe` is plain, hashable data; :func:`build_graph` turns it into live
objects. Building the same recipe twice gives two independent but identical graphs, which is
what the determinism properties need.

The graphs mix nested Modules (two generic classes whose attributes are set dynamically),
Variables of every built-in kind plus custom subclasses (random small float32 arrays, scalars
included, random metadata), plain lists/dicts (tracked as ``nnx.List``/``nnx.Dict``), explicit
``nnx.List``/``nnx.Dict`` objects (shareable), tuples, raw arrays, static values, ``nnx.Rngs``,
shared submodules, tied Variables and cycles.

:func:`walk` is an independent traversal (it does not use nnx's own flatten): it describes
every edge of the graph in nnx's documented order (attributes sorted, depth first, an identity
object expanded the first time it is seen), so two graphs are equivalent -- structure, values,
metadata, sharing and cycles -- exactly when their ``walk(...).entries`` are equal.

Example:
  >>> from hypothesis import given
  >>> @given(graph_recipes())
  ... def check(recipe):
  ...     model = build_graph(recipe)
  ...     assert walk(nnx.merge(*nnx.split(model))).entries == walk(model).entries
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import nnx

__all__ = [
    "ATTR_NAMES",
    "DICT_KEYS",
    "MUTATION_KINDS",
    "VARIABLE_TYPES",
    "Block",
    "Custom",
    "GraphInfo",
    "GraphRecipe",
    "Node",
    "SubParam",
    "apply_mutation",
    "array_desc",
    "build_graph",
    "describe_pairs",
    "filter_matches",
    "filter_sets",
    "filter_specs",
    "graph_recipes",
    "identity_partition",
    "make_filter",
    "mutation_ops",
    "perturb",
    "stringify_int_keys",
    "walk",
    "zeros_like",
]

Path = tuple[Hashable, ...]


# -- the classes the graphs are made of ---------------------------------------------------
class Node(nnx.Module):
    """A generic module; its attributes are set from outside."""


class Block(nnx.Module):
    """A second generic module class, so GraphDefs record more than one type."""


class Custom(nnx.Variable):
    """A user-defined Variable kind."""


class SubParam(nnx.Param):
    """A Param subclass: filters on ``nnx.Param`` must match it too."""


VARIABLE_TYPES: dict[str, type[nnx.Variable]] = {
    "Param": nnx.Param,
    "BatchStat": nnx.BatchStat,
    "Cache": nnx.Cache,
    "Intermediate": nnx.Intermediate,
    "Perturbation": nnx.Perturbation,
    "Custom": Custom,
    "SubParam": SubParam,
}
MODULE_TYPES: dict[str, type[nnx.Module]] = {"Node": Node, "Block": Block}
# Names that shadow no Module method.
ATTR_NAMES = ("a", "b", "c", "w", "kernel", "layers", "sub")
# Dict keys: strings and ints mixed, never digit strings (those would collide with
# stringified int keys).
DICT_KEYS: tuple[Hashable, ...] = ("p", "q", "kernel", 0, 1, 5)
SHAPES: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (3,), (2, 3), (1, 2, 1))
SEEDS = range(6)
TAGS = ("t1", "t2", "kernel")
STATICS: tuple[Any, ...] = (0, 3, -1, "relu", "", None, (), (1,), (2, 3), (4, 5, 6))
MAX_DEPTH = 4
IDENTITY_TYPES = (nnx.Variable, nnx.Pytree, nnx.List, nnx.Dict)


# -- values -------------------------------------------------------------------------------
@functools.cache
def _array(shape: tuple[int, ...], seed: int) -> jax.Array:
    # jax arrays are immutable, so one cached object may sit in many places.
    size = int(np.prod(shape, dtype=np.int64))
    values = ((np.arange(size) * 7 + seed * 3) % 11 - 5) * 0.25 + seed
    return jnp.asarray(values.astype(np.float32).reshape(shape))


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def perturb(x: Any) -> Any:
    """A different value of the same shape and dtype (PRNG keys included)."""
    if _is_key(x):
        return jax.random.wrap_key_data(jax.random.key_data(x) + 1)
    return x + 1


def zeros_like(x: Any) -> Any:
    """Zeros of the same shape and dtype (PRNG keys included)."""
    if _is_key(x):
        return jax.random.wrap_key_data(jnp.zeros_like(jax.random.key_data(x)))
    return _zeros(tuple(x.shape), str(x.dtype))


@functools.cache
def _zeros(shape: tuple[int, ...], dtype: str) -> jax.Array:
    return jnp.zeros(shape, dtype)


def array_desc(x: Any) -> tuple:
    """A hashable description of a value: dtype, shape, exact bytes, array class."""
    if _is_key(x):
        return ("key", str(x.dtype), tuple(x.shape), np.asarray(jax.random.key_data(x)).tobytes())
    if isinstance(x, jax.Array | np.ndarray):
        return (str(x.dtype), tuple(x.shape), np.asarray(x).tobytes(), isinstance(x, jax.Array))
    return ("value", type(x), x)


def _meta(v: nnx.Variable) -> tuple:
    return tuple(sorted(v.get_metadata().items(), key=lambda kv: kv[0]))


def describe_pairs(pairs: Any) -> list[tuple]:
    """(path, Variable type, metadata, value) for (path, leaf) pairs of a state."""
    out = []
    for path, leaf in pairs:
        if isinstance(leaf, nnx.Variable):
            out.append((path, type(leaf), _meta(leaf), array_desc(leaf.value)))
        else:
            out.append((path, None, (), array_desc(leaf)))
    return out


def stringify_int_keys(tree: Any) -> Any:
    """Converts int keys of (nested) mappings to strings, as orbax returns them."""
    if isinstance(tree, dict):
        return {
            (str(k) if isinstance(k, int) else k): stringify_int_keys(v) for k, v in tree.items()
        }
    return tree


# -- recipes ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GraphRecipe:
    """A random object graph, as plain data.

    Value specs: ``("var", i)``, ``("module", i)``, ``("rngs", i)``, ``("container", i)``
    index the tables below (the same index twice means the same object: tying, sharing,
    cycles); ``("array", shape, seed)``, ``("static", value)`` and ``("tuple", specs)`` are
    built in place.
    """

    root: tuple  # ("module",) | ("list", specs) | ("tuple", module index)
    modules: tuple  # (class name, ((attribute, spec), ...)); module 0 is the root module
    variables: tuple  # (type name, shape, seed, ((metadata key, value), ...))
    containers: tuple  # (kind, plain, items); 'list': (spec, ...), 'dict': ((key, spec), ...)
    rngs: tuple  # (seed, named streams?)


# Strategies are built once: constructing (and validating) them on every draw costs more than
# the draws themselves.
@functools.cache
def _choice(options: tuple) -> st.SearchStrategy:
    return st.sampled_from(options)


@functools.cache
def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


_BOOLS = st.booleans()
_ATTR_LISTS = st.lists(st.sampled_from(ATTR_NAMES), max_size=4, unique=True)
_KEY_LISTS = st.lists(st.sampled_from(DICT_KEYS), max_size=3, unique=True)
_META_KEY_LISTS = st.lists(st.sampled_from(("tag", "note", "sharding")), max_size=2)


class _Generator:
    def __init__(self, draw: Callable, max_nodes: int, cycles: bool, rngs: bool):
        self.draw = draw
        self.budget = max_nodes
        self.cycles = cycles
        self.allow_rngs = rngs
        self.modules: list[Any] = []
        self.variables: list[tuple] = []
        self.containers: list[Any] = []
        self.rngs: list[tuple] = []
        self.open_modules: set[int] = set()
        self.open_containers: set[int] = set()

    def module(self, depth: int) -> tuple:
        draw = self.draw
        i = len(self.modules)
        self.modules.append(None)
        self.budget -= 1
        self.open_modules.add(i)
        cls = draw(_choice(tuple(sorted(MODULE_TYPES))))
        names = draw(_ATTR_LISTS)
        attrs = tuple((name, self.value(depth + 1, "module")) for name in names)
        self.modules[i] = (cls, attrs)
        self.open_modules.discard(i)
        return ("module", i)

    def container(self, depth: int, ctx: str) -> tuple:
        draw = self.draw
        i = len(self.containers)
        self.budget -= 1
        kind = draw(_choice(("list", "dict")))
        # Plain containers (converted on assignment) are built afresh and never shared; the
        # ones inside tuples must be explicit nnx.List/nnx.Dict to be tracked at all.
        plain = ctx not in ("tuple", "tuple_any") and draw(_BOOLS)
        self.containers.append((kind, plain, None))  # completed below
        if not plain:
            self.open_containers.add(i)
        if kind == "list":
            n = draw(_ints(0, 3))
            items: tuple = tuple(self.value(depth + 1, "list") for _ in range(n))
        else:
            keys = draw(_KEY_LISTS)
            items = tuple((k, self.value(depth + 1, "dict")) for k in keys)
        self.containers[i] = (kind, plain, items)
        self.open_containers.discard(i)
        return ("container", i)

    def variable(self) -> tuple:
        draw = self.draw
        self.budget -= 1
        vtype = draw(_choice(tuple(sorted(VARIABLE_TYPES))))
        shape = draw(_choice(SHAPES))
        seed = draw(_choice(SEEDS))
        meta = []
        for key in draw(_META_KEY_LISTS):
            if any(k == key for k, _ in meta):
                continue
            if key == "tag":
                value: Any = draw(_choice(TAGS))
            elif key == "note":
                value = draw(_choice(("x", 1, None)))
            else:
                value = tuple(draw(_choice(("data", "model", None))) for _ in shape)
            meta.append((key, value))
        self.variables.append((vtype, shape, seed, tuple(meta)))
        return ("var", len(self.variables) - 1)

    def value(self, depth: int, ctx: str) -> tuple:
        draw = self.draw
        fresh = self.budget > 0
        kinds: list[str] = []
        if fresh:
            kinds += ["var", "var", "var", "array"]
            if depth < MAX_DEPTH:
                kinds += ["module", "module", "container", "tuple"]
            if self.allow_rngs:
                kinds.append("rngs")
        if self.variables:
            kinds.append("tied")
        modules = [i for i in range(len(self.modules)) if self.cycles or i not in self.open_modules]
        if modules:
            kinds.append("module_ref")
        shared = [
            i
            for i, c in enumerate(self.containers)
            if not c[1] and (self.cycles or i not in self.open_containers)
        ]
        if shared:
            kinds.append("container_ref")
        if self.rngs:
            kinds.append("rngs_ref")
        if ctx != "tuple":
            kinds += ["static", "static"]
        if not kinds:
            kinds = ["var"]
        kind = draw(_choice(tuple(kinds)))
        if kind == "var":
            return self.variable()
        if kind == "tied":
            return ("var", draw(_ints(0, len(self.variables) - 1)))
        if kind == "array":
            self.budget -= 1
            return ("array", draw(_choice(SHAPES)), draw(_choice(SEEDS)))
        if kind == "module":
            return self.module(depth)
        if kind == "module_ref":
            return ("module", modules[draw(_ints(0, len(modules) - 1))])
        if kind == "container":
            return self.container(depth, ctx)
        if kind == "container_ref":
            return ("container", shared[draw(_ints(0, len(shared) - 1))])
        if kind == "rngs":
            self.budget -= 1
            self.rngs.append((draw(_choice(SEEDS)), draw(_BOOLS)))
            return ("rngs", len(self.rngs) - 1)
        if kind == "rngs_ref":
            return ("rngs", draw(_ints(0, len(self.rngs) - 1)))
        if kind == "tuple":
            self.budget -= 1
            # At least one data item first, so the tuple is data (a static tuple of, say, an
            # empty list would be unhashable); then data or static items.
            items = [self.value(depth + 1, "tuple")]
            items += [self.value(depth + 1, "tuple_any") for _ in range(draw(_ints(0, 2)))]
            return ("tuple", tuple(items))
        return ("static", draw(_choice(STATICS)))


@st.composite
def graph_recipes(
    draw: Callable,
    max_nodes: int = 12,
    cycles: bool = True,
    rngs: bool = True,
    roots: tuple[str, ...] = ("module", "module", "module", "list", "tuple"),
) -> GraphRecipe:
    """Random object-graph recipes; build them with :func:`build_graph`.

    Args:
      max_nodes: a soft bound on Modules + Variables + containers + arrays + Rngs.
      cycles: allow references back to a module or container still being built.
      rngs: allow ``nnx.Rngs`` objects.
      roots: the root kinds to pick from: a Module, an ``nnx.List`` holding the root module,
        or a tuple of two modules (several roots at once, as transforms pass them).
    """
    gen = _Generator(draw, max_nodes, cycles, rngs)
    gen.module(0)
    kind = draw(_choice(tuple(roots)))
    if kind == "list":
        extra = tuple(gen.value(1, "list") for _ in range(draw(_ints(0, 2))))
        root: tuple = ("list", extra)
    elif kind == "tuple":
        root = ("tuple", draw(_ints(0, len(gen.modules) - 1)))
    else:
        root = ("module",)
    return GraphRecipe(
        root=root,
        modules=tuple(gen.modules),
        variables=tuple(gen.variables),
        containers=tuple(gen.containers),
        rngs=tuple(gen.rngs),
    )


def build_graph(recipe: GraphRecipe, *, reverse: bool = False) -> Any:
    """Builds the live object graph a recipe describes (fresh objects on every call).

    Args:
      reverse: set Module attributes and fill Dicts in the reverse order. nnx sorts names and
        keys, so the result must be indistinguishable from a forward build.
    """
    order = reversed if reverse else tuple
    variables = [
        VARIABLE_TYPES[t](_array(shape, seed), **dict(meta))
        for t, shape, seed, meta in recipe.variables
    ]
    modules = [MODULE_TYPES[cls]() for cls, _ in recipe.modules]
    rngs: dict[int, nnx.Rngs] = {}
    containers: dict[int, Any] = {}

    def build(spec: tuple) -> Any:
        tag = spec[0]
        if tag == "var":
            return variables[spec[1]]
        if tag == "module":
            return modules[spec[1]]
        if tag == "array":
            return _array(spec[1], spec[2])
        if tag == "static":
            return spec[1]
        if tag == "tuple":
            return tuple(build(s) for s in spec[1])
        if tag == "rngs":
            i = spec[1]
            if i not in rngs:
                seed, named = recipe.rngs[i]
                rngs[i] = nnx.Rngs(params=seed, dropout=seed + 1) if named else nnx.Rngs(seed)
            return rngs[i]
        # container
        i = spec[1]
        kind, plain, items = recipe.containers[i]
        if plain:
            if kind == "list":
                return [build(s) for s in items]
            return {k: build(s) for k, s in order(items)}
        if i in containers:
            return containers[i]
        obj = nnx.List() if kind == "list" else nnx.Dict()
        containers[i] = obj  # registered before filling: items may refer back to it
        if kind == "list":
            obj.extend([build(s) for s in items])
        else:
            obj.update({k: build(s) for k, s in order(items)})
        return obj

    for module, (_, attrs) in order(list(zip(modules, recipe.modules, strict=True))):
        for name, spec in order(attrs):
            setattr(module, name, build(spec))
    if recipe.root[0] == "list":
        return nnx.List([modules[0], *(build(s) for s in recipe.root[1])])
    if recipe.root[0] == "tuple":
        return (modules[0], modules[recipe.root[1]])
    return modules[0]


# -- an independent traversal ---------------------------------------------------------------
@dataclasses.dataclass
class GraphInfo:
    """What :func:`walk` found.

    Attributes:
      entries: ``(path, descriptor)`` for every edge; the descriptor of an identity object
        seen before is ``("ref", its first path)``.
      objects: the identity objects (Modules, Rngs, Lists, Dicts, Variables), first-seen order.
      first_paths: the path at which each of `objects` was first seen.
      groups: object index -> every path (through first-seen parents) that reaches it.
      edges: ``(owner, key, child)`` for the direct children of identity objects.
      leaf_paths / leaves: the state leaves (Variables, raw arrays) in flatten order.
    """

    entries: list = dataclasses.field(default_factory=list)
    objects: list = dataclasses.field(default_factory=list)
    first_paths: list = dataclasses.field(default_factory=list)
    groups: dict = dataclasses.field(default_factory=dict)
    edges: list = dataclasses.field(default_factory=list)
    leaf_paths: list = dataclasses.field(default_factory=list)
    leaves: list = dataclasses.field(default_factory=list)

    def of_type(self, *types: type) -> list:
        return [o for o in self.objects if isinstance(o, types)]


def _key_order(key: Any) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int) else (1, key)


def _children(obj: Any) -> list[tuple[Hashable, Any]]:
    if isinstance(obj, nnx.Pytree):
        d = obj.__dict__
        return [(k, d[k]) for k in sorted(d) if not k.startswith("_nnx_")]
    if isinstance(obj, nnx.List):
        return list(enumerate(obj))
    return [(k, dict.__getitem__(obj, k)) for k in sorted(obj, key=_key_order)]


def walk(root: Any) -> GraphInfo:
    """Traverses a graph without nnx's flatten; see :class:`GraphInfo`."""
    info = GraphInfo()
    index: dict[int, int] = {}

    def visit(value: Any, path: Path, owner: Any, key: Any) -> None:
        if owner is not None:
            info.edges.append((owner, key, value))
        if isinstance(value, IDENTITY_TYPES):
            i = index.get(id(value))
            if i is not None:
                info.groups[i].append(path)
                info.entries.append((path, ("ref", info.first_paths[i])))
                return
            i = index[id(value)] = len(info.objects)
            info.objects.append(value)
            info.first_paths.append(path)
            info.groups[i] = [path]
            if isinstance(value, nnx.Variable):
                info.entries.append(
                    (path, ("var", type(value), _meta(value), array_desc(value.value)))
                )
                info.leaf_paths.append(path)
                info.leaves.append(value)
                return
            info.entries.append((path, ("node", type(value))))
            for k, child in _children(value):
                visit(child, (*path, k), value, k)
            return
        if isinstance(value, jax.Array | np.ndarray):
            info.entries.append((path, ("array", *array_desc(value))))
            info.leaf_paths.append(path)
            info.leaves.append(value)
            return
        if type(value) is tuple:
            info.entries.append((path, ("tuple", len(value))))
            for i, child in enumerate(value):
                visit(child, (*path, i), None, None)
            return
        info.entries.append((path, ("static", type(value), value)))

    visit(root, (), None, None)
    return info


def identity_partition(root: Any) -> frozenset[frozenset[Path]]:
    """The paths of the graph grouped by the identity object they reach.

    Paths go through the first-seen path of every parent (so cycles give finitely many).
    Two graphs share alike exactly when their partitions are equal.
    """
    return frozenset(frozenset(paths) for paths in walk(root).groups.values())


# -- filters ------------------------------------------------------------------------------
FILTER_TYPES: dict[str, type] = {
    **VARIABLE_TYPES,
    "Variable": nnx.Variable,
    "RngState": nnx.RngState,
    "RngKey": nnx.RngKey,
}
_PATH_KEYS: tuple[Hashable, ...] = (*ATTR_NAMES, *DICT_KEYS, 2, "default", "key", "count")


def _filter_atoms() -> st.SearchStrategy[tuple]:
    return st.one_of(
        st.tuples(st.just("type"), st.sampled_from(sorted(FILTER_TYPES))),
        st.tuples(st.just("path"), st.sampled_from(_PATH_KEYS)),
        st.tuples(st.just("path_sub"), st.sampled_from(("a", "e", "1", "ern"))),
        st.tuples(st.just("str"), st.sampled_from((*ATTR_NAMES, *TAGS, "default"))),
        st.tuples(st.just("tag"), st.sampled_from((*TAGS, "params"))),
        st.tuples(st.just("depth"), st.sampled_from((2, 3))),
        st.just(("nothing",)),
    )


def filter_specs() -> st.SearchStrategy[tuple]:
    """Random filter descriptions; :func:`make_filter` makes the filter, :func:`filter_matches`
    is the independent oracle for what it selects."""
    return st.recursive(
        _filter_atoms(),
        lambda inner: st.one_of(
            st.tuples(st.just("not"), inner),
            st.tuples(st.just("all"), st.lists(inner, min_size=1, max_size=2).map(tuple)),
            st.tuples(st.just("any"), st.lists(inner, min_size=1, max_size=2).map(tuple)),
            st.tuples(st.just("seq"), st.lists(inner, min_size=1, max_size=2).map(tuple)),
        ),
        max_leaves=3,
    )


def filter_sets() -> st.SearchStrategy[tuple]:
    """``(specs, catch_all)``: 0-3 filter specs and an optional catch-all for the end
    (``None``, ``'ellipsis'``, ``'true'`` or ``'everything'``)."""
    return st.tuples(
        st.lists(filter_specs(), max_size=3).map(tuple),
        st.sampled_from((None, None, "ellipsis", "true", "everything")),
    )


def make_filter(spec: Any) -> Any:
    """The nnx filter for a filter spec (or a catch-all name)."""
    if spec == "ellipsis":
        return ...
    if spec == "true":
        return True
    if spec == "everything":
        return nnx.Everything()
    kind = spec[0]
    if kind == "type":
        return FILTER_TYPES[spec[1]]
    if kind == "path":
        return nnx.PathContains(spec[1])
    if kind == "path_sub":
        return nnx.PathContains(spec[1], exact=False)
    if kind == "str":
        return spec[1]
    if kind == "tag":
        return nnx.WithTag(spec[1])
    if kind == "depth":
        k = spec[1]
        return lambda path, value: len(path) % k == 0
    if kind == "nothing":
        return None
    if kind == "not":
        return nnx.Not(make_filter(spec[1]))
    parts = [make_filter(s) for s in spec[1]]
    if kind == "all":
        return nnx.All(*parts)
    if kind == "any":
        return nnx.Any(*parts)
    return tuple(parts)  # "seq": a tuple of filters means any of them


def _tag(leaf: Any) -> Any:
    return leaf.get_metadata("tag", None) if isinstance(leaf, nnx.Variable) else None


def filter_matches(spec: Any, path: Path, leaf: Any) -> bool:
    """The oracle: does the filter of `spec` select the leaf at `path`?"""
    if spec in ("ellipsis", "true", "everything"):
        return True
    kind = spec[0]
    if kind == "type":
        return isinstance(leaf, FILTER_TYPES[spec[1]])
    if kind == "path":
        return any(type(part) is type(spec[1]) and part == spec[1] for part in path)
    if kind == "path_sub":
        return any(spec[1] in str(part) for part in path)
    if kind == "str":
        return spec[1] in path or _tag(leaf) == spec[1]
    if kind == "tag":
        return _tag(leaf) == spec[1]
    if kind == "depth":
        return len(path) % spec[1] == 0
    if kind == "nothing":
        return False
    if kind == "not":
        return not filter_matches(spec[1], path, leaf)
    if kind == "all":
        return all(filter_matches(s, path, leaf) for s in spec[1])
    return any(filter_matches(s, path, leaf) for s in spec[1])  # "any", "seq"


# -- structural mutations -----------------------------------------------------------------
MUTATION_KINDS = (
    "add_param",
    "share_module",
    "tie_variable",
    "del_attr",
    "list_append",
    "list_pop",
    "list_insert",
    "dict_set",
    "dict_del",
    "replace_variable",
    "set_metadata",
    "del_metadata",
    "set_static",
    "swap_array",
    "swap_array",
    "set_value",
    "static_to_data",
)


def mutation_ops() -> st.SearchStrategy[list[tuple]]:
    """Lists of ``(kind, a, b, c, refresh)``: a mutation, three ints that pick its target and
    arguments, and whether to read the (cached) structure right after it."""
    op = st.tuples(
        st.sampled_from(MUTATION_KINDS),
        st.integers(0, 63),
        st.integers(0, 63),
        st.integers(0, 63),
        st.booleans(),
    )
    return st.lists(op, min_size=1, max_size=5)


def _pick(seq: list, i: int) -> Any:
    return seq[i % len(seq)] if seq else None


def _set(owner: Any, key: Any, value: Any) -> None:
    if isinstance(owner, nnx.Pytree):
        setattr(owner, key, value)
    else:
        owner[key] = value


def apply_mutation(root: Any, op: tuple) -> str:
    """Applies one mutation from :func:`mutation_ops` to the graph; returns what it did
    (``'skip: ...'`` when the graph has no suitable target)."""
    kind, a, b, c = op[:4]
    info = walk(root)
    modules = info.of_type(Node, Block)
    variables = info.of_type(nnx.Variable)
    lists = info.of_type(nnx.List)
    dicts = info.of_type(nnx.Dict)
    owned = [
        (o, k, v) for o, k, v in info.edges if isinstance(o, Node | Block | nnx.List | nnx.Dict)
    ]
    name = ATTR_NAMES[b % len(ATTR_NAMES)]
    shape = SHAPES[c % len(SHAPES)]
    vtype = VARIABLE_TYPES[sorted(VARIABLE_TYPES)[b % len(VARIABLE_TYPES)]]
    new_var = vtype(_array(shape, c % 5), tag=TAGS[c % len(TAGS)])
    module = _pick(modules, a)
    if kind == "add_param" and module is not None:
        setattr(module, name, nnx.Param(_array(shape, 1)))
    elif kind == "share_module" and module is not None:
        setattr(module, name, _pick(modules, c))
    elif kind == "tie_variable" and module is not None and variables:
        setattr(module, name, _pick(variables, c))
    elif kind == "del_attr" and module is not None and module._nnx_items():
        name = _pick([k for k, _ in module._nnx_items()], b)
        delattr(module, name)
    elif kind == "list_append" and lists:
        _pick(lists, a).append(new_var if b % 2 else _pick(modules, c))
    elif kind == "list_pop" and lists and _pick(lists, a):
        _pick(lists, a).pop()
    elif kind == "list_insert" and lists:
        _pick(lists, a).insert(0, new_var)
    elif kind == "dict_set" and dicts:
        _pick(dicts, a)[DICT_KEYS[b % len(DICT_KEYS)]] = new_var
    elif kind == "dict_del" and dicts and _pick(dicts, a):
        d = _pick(dicts, a)
        del d[_pick(sorted(d, key=_key_order), b)]
    elif kind == "replace_variable" and any(isinstance(v, nnx.Variable) for _, _, v in owned):
        owner, key, _ = _pick([e for e in owned if isinstance(e[2], nnx.Variable)], a)
        _set(owner, key, new_var)
        name = repr(key)
    elif kind == "set_metadata" and variables:
        _pick(variables, a).set_metadata(("tag", "note", "extra")[b % 3], TAGS[c % len(TAGS)])
    elif kind == "del_metadata" and variables and _pick(variables, a).get_metadata():
        v = _pick(variables, a)
        delattr(v, _pick(sorted(v.get_metadata()), b))
    elif kind == "set_static" and module is not None:
        setattr(module, name, STATICS[c % len(STATICS)])
    elif kind == "swap_array" and any(isinstance(v, jax.Array) for _, _, v in owned):
        owner, key, old = _pick([e for e in owned if isinstance(e[2], jax.Array)], a)
        _set(owner, key, _array(shape, 2) if c % 2 else perturb(old))
        name = repr(key)
    elif kind == "set_value" and variables:
        v = _pick(variables, a)
        v.value = perturb(v.value)
    elif kind == "static_to_data" and module is not None:
        statics = [k for k, v in module._nnx_items() if not nnx.pytreelib.is_data(v)]
        if not statics:
            return f"skip: {kind}"
        name = _pick(statics, b)
        setattr(module, name, _array(shape, 0))
    else:
        return f"skip: {kind}"
    return f"{kind} {name}"
