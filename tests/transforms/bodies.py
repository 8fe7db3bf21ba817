"""A small op language for random function *bodies* over nnx object graphs, and its interpreter.

A body is a tuple of ops (plain, hashable data, drawn by hypothesis). :func:`run_ops` interprets
it on a live graph -- eagerly, or inside any nnx transform, where the graph is the transform's
rebuilt copy -- and returns the output items it collected. Ops name their targets by an int
taken modulo the candidates found by :func:`graph_objects`, a traversal in the graph's own
deterministic order (attributes sorted, depth first), so the eager copy and the transformed
copy of the same recipe pick the same targets.

Ops:
  ``("read", k)``                       the value of float Variable k goes to the output
  ``("add", k, c)``                     float Variable k += c, in place
  ``("add_i", k, c)``                   float Variable k += i * c (loop bodies: i is the index)
  ``("new_attr", k, name, t, s, c, r)`` module k gets a fresh attribute `name` holding a new
                                        Variable of type t, shape index s, value c (a
                                        structure change); r: return it too
  ``("replace", k, name, "-", s, c)``   module k's attribute `name` (existing or not) is set
                                        to a new :class:`Replacement` Variable (replacing
                                        whatever was there)
  ``("link", k, name, j)``              module k gets a fresh attribute `name` holding the
                                        existing identity object j (new sharing, or a cycle)
  ``("delete", k, j)``                  module k loses its j-th attribute (sorted names)
  ``("ret_new_var", k, t, c)``          a new Variable (value: float Variable k + c) is returned
  ``("ret_obj", k)``                    identity object k (Module, Variable, List, Dict, Rngs)
                                        is returned
  ``("ret_self",)``                     the root itself is returned
  ``("ret_new_module", k, c, share)``   a new module holding a new Param (and, if `share`,
                                        float Variable k too) is returned
  ``("dup", k)``                        output item k is output again (the same object twice)
  ``("rng", k, stream)``                Rngs k draws a key (its counter advances); 2 random
                                        uint32 go to the output
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from hypothesis import strategies as st

import nnx
from tests.strategies import (
    IDENTITY_TYPES,
    Node,
    _children,  # the documented child order, shared with walk
)

__all__ = [
    "CONSTS",
    "FRESH_NAMES",
    "NEW_SHAPES",
    "NEW_TYPES",
    "GraphObjects",
    "Replacement",
    "clone_carry",
    "graph_objects",
    "loop_ops",
    "make_carry",
    "mirror_ops",
    "ops_lists",
    "return_kinds",
    "run_ops",
    "shallow_copy",
]

CONSTS = (0.5, 1.0, -2.0, 0.25)
# Attribute names no recipe uses: setting one is always a new attribute (a structure change).
FRESH_NAMES = ("n0", "n1")
# Names recipes do use: setting one may replace a Variable, a sub-module, a container...
REPLACE_NAMES = ("a", "w", "sub")
NEW_TYPES: dict[str, type[nnx.Variable]] = {"Param": nnx.Param, "BatchStat": nnx.BatchStat}
NEW_SHAPES: tuple[tuple[int, ...], ...] = ((), (2,))
STREAMS = ("params", "dropout")


class Replacement(nnx.Variable):
    """The type of the Variables ``replace`` ops set (no recipe uses it)."""


class GraphObjects:
    """The identity objects of a graph, first-seen order, and the candidates ops pick from."""

    def __init__(self, objects: list[Any]):
        self.objects = objects
        self.floats = [
            o
            for o in objects
            if isinstance(o, nnx.Variable)
            and isinstance(o.value, jax.Array)
            and o.value.dtype == jnp.float32
        ]
        self.modules = [o for o in objects if isinstance(o, nnx.Module) and not _is_rng(o)]
        self.rngs = [o for o in objects if isinstance(o, nnx.Rngs)]


def _is_rng(o: Any) -> bool:
    return isinstance(o, nnx.Rngs | nnx.RngStream)


def graph_objects(root: Any) -> GraphObjects:
    """The identity objects reachable from `root` (works on traced graphs too: no values are
    read)."""
    seen: set[int] = set()
    found: list[Any] = []

    def visit(value: Any) -> None:
        if isinstance(value, IDENTITY_TYPES):
            if id(value) in seen:
                return
            seen.add(id(value))
            found.append(value)
            if not isinstance(value, nnx.Variable):
                for _, child in _children(value):
                    visit(child)
        elif type(value) is tuple:
            for child in value:
                visit(child)

    visit(root)
    return GraphObjects(found)


def _const(shape: tuple[int, ...], c: float) -> jax.Array:
    return jnp.full(shape, c, jnp.float32)


def _pick(seq: list, k: int) -> Any:
    return seq[k % len(seq)] if seq else None


def run_ops(ops: tuple, root: Any, i: Any = None) -> tuple:
    """Interprets `ops` on the graph `root`; returns the output items, in order.

    `i` is the loop index (``add_i`` is a no-op without one). The candidates are looked up
    again after every op, so targets created by earlier ops can be picked.
    """
    out: list[Any] = []
    for op in ops:
        g = graph_objects(root)
        kind = op[0]
        if kind == "read":
            v = _pick(g.floats, op[1])
            if v is not None:
                out.append(v.value)
        elif kind == "add":
            v = _pick(g.floats, op[1])
            if v is not None:
                v.value = v.value + op[2]
        elif kind == "add_i":
            v = _pick(g.floats, op[1])
            if v is not None and i is not None:
                v.value += i * op[2]
        elif kind in ("new_attr", "replace"):
            _, k, name, t, s, c = op[:6]
            module = _pick(g.modules, k)
            if module is not None:
                # A replacement is of a type no input graph holds: nnx documents that a
                # Variable replaced by one of its exact type at the same path *continues* it
                # (the caller's object takes the new value), which eager Python does not.
                cls = Replacement if kind == "replace" else NEW_TYPES[t]
                new = cls(_const(NEW_SHAPES[s], c))
                setattr(module, name, new)
                if kind == "new_attr" and op[6]:
                    out.append(new)
        elif kind == "link":
            _, k, name, j = op
            module = _pick(g.modules, k)
            if module is not None:
                setattr(module, name, _pick(g.objects, j))
        elif kind == "delete":
            _, k, j = op
            module = _pick(g.modules, k)
            names = [] if module is None else sorted(vars(module))
            names = [n for n in names if not n.startswith("_nnx_")]
            if names:
                delattr(module, _pick(names, j))
        elif kind == "ret_new_var":
            _, k, t, c = op
            v = _pick(g.floats, k)
            value = v.value + c if v is not None else _const((), c)
            out.append(NEW_TYPES[t](value))
        elif kind == "ret_obj":
            out.append(_pick(g.objects, op[1]))
        elif kind == "ret_self":
            out.append(root)
        elif kind == "ret_new_module":
            _, k, c, share = op
            new_module = Node()
            new_module.p = nnx.Param(_const((2,), c))
            v = _pick(g.floats, k)
            if share and v is not None:
                new_module.q = v
            out.append(new_module)
        elif kind == "dup":
            if out:
                out.append(_pick(out, op[1]))
        elif kind == "rng":
            rngs = _pick(g.rngs, op[1])
            if rngs is not None:
                key = getattr(rngs, STREAMS[op[2]])()
                out.append(jax.random.bits(key, (2,)))
        else:
            raise ValueError(f"unknown op {op!r}")
    return tuple(out)


def shallow_copy(module: nnx.Module) -> nnx.Module:
    """A new module of the same class holding the very same attribute values."""
    new = type(module)()
    for k, v in module.__dict__.items():
        if not k.startswith("_nnx_"):
            setattr(new, k, v)
    return new


def clone_carry(module: nnx.Module) -> nnx.Module:
    """A deep, independent copy (all new objects, same structure and values)."""
    return nnx.clone(module)


# -- strategies ----------------------------------------------------------------------------
_K = st.integers(0, 15)
_C = st.sampled_from(CONSTS)
_T = st.sampled_from(tuple(NEW_TYPES))
_S = st.integers(0, len(NEW_SHAPES) - 1)


def _op(kind: str) -> st.SearchStrategy[tuple]:
    if kind == "structure":  # any one change of structure that eager Python allows
        return st.one_of(_op("new_attr"), _op("link"), _op("delete"))
    if kind == "structure_kept":  # the same, never returning a new object (scan's ys)
        return st.one_of(_op("new_attr_kept"), _op("link"), _op("delete"))
    just = st.just(kind)
    if kind in ("read", "ret_obj", "dup"):
        return st.tuples(just, _K)
    if kind in ("add", "add_i"):
        return st.tuples(just, _K, _C)
    if kind == "new_attr":
        return st.tuples(just, _K, st.sampled_from(FRESH_NAMES), _T, _S, _C, st.booleans())
    if kind == "new_attr_kept":  # new_attr that never returns the new object (scan's ys)
        names = st.sampled_from(FRESH_NAMES)
        return st.tuples(st.just("new_attr"), _K, names, _T, _S, _C, st.just(False))
    if kind == "replace":
        return st.tuples(just, _K, st.sampled_from(REPLACE_NAMES), st.just("-"), _S, _C)
    if kind == "link":
        return st.tuples(just, _K, st.sampled_from(FRESH_NAMES), _K)
    if kind == "delete":
        return st.tuples(just, _K, _K)
    if kind == "ret_new_var":
        return st.tuples(just, _K, _T, _C)
    if kind == "ret_self":
        return st.just(("ret_self",))
    if kind == "ret_new_module":
        return st.tuples(just, _K, _C, st.booleans())
    if kind == "rng":
        return st.tuples(just, _K, st.integers(0, len(STREAMS) - 1))
    raise ValueError(kind)


def ops_lists(kinds: tuple[str, ...], max_size: int = 5) -> st.SearchStrategy[tuple]:
    """Bodies made of ops of the given kinds (a kind listed twice is drawn twice as often)."""
    return st.lists(st.one_of([_op(k) for k in kinds]), max_size=max_size).map(tuple)


def loop_ops(kinds: tuple[str, ...], max_size: int = 4) -> st.SearchStrategy[tuple]:
    """Loop bodies: ops, then how the body returns the carry (see :func:`return_kinds`)."""
    return st.tuples(ops_lists(kinds, max_size), return_kinds())


def return_kinds() -> st.SearchStrategy[str]:
    """How a loop body returns its carry: the module it received, a new module holding the
    same attribute values, or a deep copy (all new objects)."""
    return st.sampled_from(("self", "self", "shallow", "clone"))


def make_carry(kind: str, module: nnx.Module) -> nnx.Module:
    """The carry a loop body returns, per :func:`return_kinds`."""
    if kind == "self":
        return module
    if kind == "shallow":
        return shallow_copy(module)
    return clone_carry(module)


def mirror_ops(ops: tuple) -> tuple:
    """The other branch of a cond: the same output structure (the same reads, returns, draws
    and structure changes) but different in-place updates and new values."""
    out = []
    for op in ops:
        kind = op[0]
        if kind == "add":
            out.append(("add", op[1] + 1, op[2] + 3.0))
        elif kind == "ret_new_var":
            out.append((*op[:3], op[3] + 5.0))
        elif kind == "ret_new_module":
            out.append(("ret_new_module", op[1], op[2] - 1.0, op[3]))
        else:
            out.append(op)
    return tuple(out)
