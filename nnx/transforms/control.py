"""Control flow over graph objects: ``cond``, ``switch``, ``fori_loop``, ``while_loop``.

The graph objects among the operands are carried through ``jax.lax`` as their leaf values.
``cond``/``switch`` branches may change values but not structure; state either branch
changes is written back into the caller's objects.

Loops follow the rule every nnx transform follows: the loop value the body returns is the
next carry, and what the loop returns is built from the last one. An object the body
received and returns (mutated in place or not) is the caller's very object, updated in
place; an object the body creates and returns comes back as a new object (the caller's
object it replaced keeps the value it had). The carry keeps its structure from step to
step: the body may change values, and may return new objects of the same structure.

Example:
  >>> class Acc(nnx.Module):
  ...   def __init__(self):
  ...     self.total = nnx.BatchStat(jnp.array(0.0))
  >>> acc = Acc()
  >>> def body(i, acc):
  ...   acc.total.value += i
  ...   return acc
  >>> nnx.fori_loop(0, 5, body, acc) is acc  # mutated in place, returned
  True
  >>> float(acc.total.value)
  10.0
  >>> p = nnx.Param(jnp.array(0.0))
  >>> q = nnx.fori_loop(0, 3, lambda i, p: nnx.Param(p.value + 1.0), p)  # a new object
  >>> float(q.value), float(p.value), q is p
  (3.0, 0.0, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import TraceContextError, format_path
from ._lift import (
    CARRY_STRUCTURE,
    GRAPH_TYPES,
    apply,
    check_dropped,
    collect,
    follow,
    restore,
    split_args,
    traced_call,
)
from ._modes import Mode, check_call, check_trace, resolve

__all__ = ["cond", "fori_loop", "switch", "while_loop"]


def _branch(fn: Callable, spec: Any, what: str, mode: Mode | None) -> Callable:
    def pure(values: list, dyn: list) -> Any:
        with traced_call(spec, values, fn, dyn) as t:
            if mode is not None:
                check_trace(mode, t, t.out)
            return collect(t, t.out, force=True, allow_structure_change=False, what=what)

    return pure


def _run_branches(
    index_or_pred: Any,
    branches: Sequence[Callable],
    operands: Sequence[Any],
    what: str,
    is_cond: bool,
    mode: Mode | None = None,
) -> Any:
    if mode is not None:
        check_call(mode, operands)
    spec, flat, values = split_args(operands, {})
    graph_pos = set(spec.positions)
    dyn = [None if i in graph_pos else a for i, a in enumerate(operands)]
    pures = [_branch(b, spec, what, mode) for b in branches]
    if is_cond:
        out, new_values, info = jax.lax.cond(index_or_pred, pures[0], pures[1], values, dyn)
    else:
        out, new_values, info = jax.lax.switch(index_or_pred, pures, values, dyn)
    return apply(flat, out, new_values, info)


def cond(
    pred: Any,
    true_fun: Callable,
    false_fun: Callable,
    *operands: Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.cond`` whose operands may be graph objects.

    Both branches must leave the graph's structure unchanged and return outputs of the same
    structure; state either branch changes is written back. ``graph=False`` refuses operands
    sharing Variables or sub-objects (flax's tree mode); ``graph_updates=False`` refuses
    returning operand Variables (as flax does). None: the current ``nnx.set_graph_mode`` /
    ``nnx.set_graph_updates`` default.
    """
    mode = resolve("cond", graph, graph_updates)
    return _run_branches(pred, (true_fun, false_fun), operands, "nnx.cond", True, mode)


def switch(
    index: Any,
    branches: Sequence[Callable],
    *operands: Any,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.switch`` whose operands may be graph objects (see :func:`cond`)."""
    mode = resolve("switch", graph, graph_updates)
    return _run_branches(index, tuple(branches), operands, "nnx.switch", False, mode)


_SCALARS = (bool, int, float, complex, np.number, np.bool_)


def as_array_carry(carry: Any) -> Any:
    """`carry` with its plain Python/numpy scalars as arrays, as ``jax.lax`` loops treat a
    carry (a scalar left static would hide the loop's result); graph objects untouched."""

    def conv(x: Any) -> Any:
        return jnp.asarray(x) if isinstance(x, _SCALARS) else x

    return jax.tree_util.tree_map(conv, carry, is_leaf=lambda x: isinstance(x, GRAPH_TYPES))


class _Loop:
    """One loop over a carry holding graph objects: the traced step, and after the loop the
    objects built from the final values (see the module docstring for the rule)."""

    def __init__(self, init_val: Any, what: str):
        self.what = what
        self.spec, self.flat, self.values = split_args((init_val,), {})
        self.found: list[Any] = []  # (metas, reuse) of the traced step

    def step(self, fn: Callable, values: list) -> list:
        """Inside the trace: one body call on the carry `values`; the next carry's values."""
        with traced_call(self.spec, values, fn, [None]) as t:
            nxt = follow(t, (t.out,))
            if nxt.flat.graphdef != self.spec.graphdef:
                raise TraceContextError(
                    CARRY_STRUCTURE.format(
                        what=self.what,
                        step="loop body",
                        where="the carry",
                        before=self.spec.graphdef,
                        after=nxt.flat.graphdef,
                    )
                )
            check_dropped(t, nxt, lambda p: format_path(p[1:], "carry"), self.what, "loop body")
            self.found[:] = [(nxt.metas, nxt.reuse)]
            return nxt.values

    def peek(self, fn: Callable, values: list) -> Any:
        """Inside the trace: `fn` of the carry without a next carry (a while condition)."""
        with traced_call(self.spec, values, fn, [None]) as t:
            return t.out

    def result(self, final: list) -> Any:
        metas, reuse = self.found[0] if self.found else (self.spec.metas, ())
        (val,) = restore(self.flat, self.spec.graphdef, final, metas, reuse)
        return val


def fori_loop(
    lower: int,
    upper: int,
    body_fun: Callable[[Any, Any], Any],
    init_val: Any,
    *,
    unroll: Any = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.fori_loop`` whose carry may hold graph objects (see the module docstring
    for what is returned and what is updated in place). ``graph=False`` refuses a carry
    sharing Variables or sub-objects (flax's tree mode); the carry's structure is fixed in
    any case, so ``graph_updates`` changes nothing else."""
    mode = resolve("fori_loop", graph, graph_updates)
    if mode is not None:
        check_call(mode, (init_val,))
    kwargs = {} if unroll is None else {"unroll": unroll}
    carry = as_array_carry(init_val)
    loop = _Loop(carry, "nnx.fori_loop")
    if not loop.spec.positions:
        return jax.lax.fori_loop(lower, upper, body_fun, carry, **kwargs)
    if isinstance(lower, int) and isinstance(upper, int) and upper <= lower:
        return init_val  # the body never runs: the caller's objects, as a Python loop

    def body(i: Any, values: list) -> list:
        return loop.step(lambda val: body_fun(i, val), values)

    return loop.result(jax.lax.fori_loop(lower, upper, body, loop.values, **kwargs))


def while_loop(
    cond_fun: Callable[[Any], Any],
    body_fun: Callable[[Any], Any],
    init_val: Any,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.lax.while_loop`` whose carry may hold graph objects (see :func:`fori_loop`)."""
    mode = resolve("while_loop", graph, graph_updates)
    if mode is not None:
        check_call(mode, (init_val,))
    init_val = as_array_carry(init_val)
    loop = _Loop(init_val, "nnx.while_loop")
    if not loop.spec.positions:
        return jax.lax.while_loop(cond_fun, body_fun, init_val)
    final = jax.lax.while_loop(
        lambda values: loop.peek(cond_fun, values),
        lambda values: loop.step(body_fun, values),
        loop.values,
    )
    return loop.result(final)
