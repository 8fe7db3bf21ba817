"""Control flow over graph objects: ``cond``, ``switch``, ``fori_loop``, ``while_loop``.

The graph objects among the operands are carried through ``jax.lax`` as their leaf values;
every branch and loop body must keep their structure (it may change values). Afterwards the
caller's objects hold the new values.

Example:
  >>> class Acc(nnx.Module):
  ...   def __init__(self):
  ...     self.total = nnx.BatchStat(jnp.array(0.0))
  >>> acc = Acc()
  >>> def body(i, acc):
  ...   acc.total.value += i
  ...   return acc
  >>> _ = nnx.fori_loop(0, 5, body, acc)
  >>> float(acc.total.value)
  10.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from ..errors import TraceContextError
from ..graph import _build, _flatten_full
from ..variables import Variable
from ._lift import Frame, collect, rebuild, replace_graph_args, split_args

__all__ = ["cond", "fori_loop", "switch", "while_loop"]


def _branch(fn: Callable, spec: Any, operands: Sequence[Any], what: str) -> Callable:
    def pure(values: list, dyn: list) -> Any:
        with Frame():
            roots, nodes = rebuild(spec, values)
            new_args, _ = replace_graph_args(dyn, {}, spec, roots)
            out = fn(*new_args)
            return collect(
                spec, roots, nodes, values, out, force=True, allow_structure_change=False, what=what
            )

    return pure


def _run_branches(
    index_or_pred: Any,
    branches: Sequence[Callable],
    operands: Sequence[Any],
    what: str,
    is_cond: bool,
) -> Any:
    spec, flat, values = split_args(operands, {})
    graph_pos = set(spec.positions)
    dyn = [None if i in graph_pos else a for i, a in enumerate(operands)]
    pures = [_branch(b, spec, operands, what) for b in branches]
    if is_cond:
        out, new_values, info = jax.lax.cond(index_or_pred, pures[0], pures[1], values, dyn)
    else:
        out, new_values, info = jax.lax.switch(index_or_pred, pures, values, dyn)
    from ._lift import apply

    return apply(flat, out, new_values, info)


def cond(pred: Any, true_fun: Callable, false_fun: Callable, *operands: Any) -> Any:
    """``jax.lax.cond`` whose operands may be graph objects.

    Both branches must leave the graph's structure unchanged and return outputs of the same
    structure; state either branch changes is written back.
    """
    return _run_branches(pred, (true_fun, false_fun), operands, "nnx.cond", True)


def switch(index: Any, branches: Sequence[Callable], *operands: Any) -> Any:
    """``jax.lax.switch`` whose operands may be graph objects (see :func:`cond`)."""
    return _run_branches(index, tuple(branches), operands, "nnx.switch", False)


def _loop_values(spec: Any, val: Any, what: str) -> list:
    post = _flatten_full((val,))
    if post.graphdef != spec.graphdef:
        raise TraceContextError(
            f"The loop body of {what} returned a value whose structure differs from the "
            f"initial value ({spec.graphdef!r} before, {post.graphdef!r} after). A loop "
            "carry must keep its structure.\nFix: return the same objects you received "
            "(mutated in place is fine), and create attributes before the loop."
        )
    return [leaf._value if isinstance(leaf, Variable) else leaf for leaf in post.leaves]


def _write_back(spec: Any, flat: Any, values: list) -> Any:
    reuse = dict(enumerate(flat.nodes))
    (result,) = _build(spec.graphdef, list(values), False, metas=list(spec.metas), reuse=reuse)
    return result


def fori_loop(
    lower: int,
    upper: int,
    body_fun: Callable[[Any, Any], Any],
    init_val: Any,
    *,
    unroll: Any = None,
) -> Any:
    """``jax.lax.fori_loop`` whose carry may hold graph objects; they are updated in place and
    the (same) objects are returned."""
    spec, flat, values = split_args((init_val,), {})
    if not spec.positions:
        return jax.lax.fori_loop(lower, upper, body_fun, init_val, unroll=unroll)

    def body(i: Any, values: list) -> list:
        with Frame():
            (val,), _ = rebuild(spec, values)
            return _loop_values(spec, body_fun(i, val), "nnx.fori_loop")

    kwargs = {} if unroll is None else {"unroll": unroll}
    final = jax.lax.fori_loop(lower, upper, body, values, **kwargs)
    return _write_back(spec, flat, final)


def while_loop(
    cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any
) -> Any:
    """``jax.lax.while_loop`` whose carry may hold graph objects (see :func:`fori_loop`)."""
    spec, flat, values = split_args((init_val,), {})
    if not spec.positions:
        return jax.lax.while_loop(cond_fun, body_fun, init_val)

    def cond(values: list) -> Any:
        with Frame():
            (val,), _ = rebuild(spec, values)
            return cond_fun(val)

    def body(values: list) -> list:
        with Frame():
            (val,), _ = rebuild(spec, values)
            return _loop_values(spec, body_fun(val), "nnx.while_loop")

    final = jax.lax.while_loop(cond, body, values)
    return _write_back(spec, flat, final)
