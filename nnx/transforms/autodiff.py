"""Automatic differentiation over graph objects: ``grad``, ``value_and_grad``, ``vjp``,
``jvp``, ``custom_vjp`` and ``remat``.

By default ``nnx.grad`` differentiates the ``nnx.Param`` Variables of argument 0 and returns
their gradients as a :class:`State` of the same shape as ``nnx.state(model, nnx.Param)``.
Variables held directly in a plain pytree argument (a State, a dict), outside any Module, are
all differentiated, as in flax.
Other state the function changes (BatchNorm statistics, RNG counters) is written back.

Example:
  >>> class Scale(nnx.Module):
  ...   def __init__(self):
  ...     self.w = nnx.Param(jnp.array(3.0))
  ...     self.calls = nnx.BatchStat(jnp.array(0))
  ...   def __call__(self, x):
  ...     self.calls.value += 1
  ...     return self.w * x
  >>> model = Scale()
  >>> grads = nnx.grad(lambda m, x: m(x) ** 2)(model, 2.0)
  >>> float(grads['w'].value), int(model.calls.value)   # d(w x)^2/dw = 2 w x^2
  (24.0, 1)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax

from .._graph_mode import graph_mode
from .._graph_mode import graph_updates as graph_updates_default
from ..errors import TraceContextError, TransformError, format_path, short_list
from ..filters import Filter, to_predicate
from ..graph import is_node
from ..state import State, from_flat_state
from ..variablelib import Param, Variable
from ._lift import (
    CallSpec,
    Traced,
    apply,
    call_transformed,
    collect,
    contains_graph,
    split_args,
    traced_call,
)
from ._modes import Mode, check_call, check_trace, resolve

__all__ = [
    "CustomVjp",
    "DiffState",
    "custom_vjp",
    "grad",
    "jvp",
    "remat",
    "value_and_grad",
    "vjp",
]


class _ReduceAxesError(TransformError, NotImplementedError):
    """``reduce_axes`` given: jax removed it (flax raises NotImplementedError too)."""


def _no_reduce_axes(reduce_axes: Sequence[Any], name: str) -> None:
    if reduce_axes:
        raise _ReduceAxesError(
            f"nnx.{name}(reduce_axes={tuple(reduce_axes)!r}): reduce_axes is deprecated and "
            "no longer supported by jax (flax keeps the keyword for compatibility only).\n"
            "Fix: drop reduce_axes and reduce the gradients yourself, e.g. with "
            "jax.lax.psum(grads, axis_name) inside the mapped function."
        )


class DiffState:
    """Which part of a graph argument to differentiate: ``DiffState(argnum, filter)``."""

    def __init__(self, argnum: int, filter: Filter):
        self.argnum = argnum
        self.filter = filter

    def __repr__(self) -> str:
        return f"DiffState({self.argnum}, {self.filter!r})"


class _Default(DiffState):
    """An argnum given as a plain int: the Params of the graph nodes in that argument, and
    every Variable or array that sits in it outside any node (as in flax, where a State or a
    dict of Variables passed to ``grad`` is a plain pytree, differentiated whole)."""


def _diff_items(argnums: Any) -> tuple[list[DiffState], bool]:
    if isinstance(argnums, int):
        return [_Default(argnums, Param)], True
    if isinstance(argnums, DiffState):
        return [argnums], True
    items = [a if isinstance(a, DiffState) else _Default(a, Param) for a in argnums]
    return items, False


def _inside_node(root: Any, path: tuple) -> bool:
    """Whether the leaf at `path` under `root` is held by a graph node (a Module, Rngs, ...)."""
    obj = root
    for key in path[:-1]:
        if is_node(obj):
            return True
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            obj = getattr(obj, str(key), None)
    return is_node(obj)


def _default_predicate(root: Any) -> Callable[[tuple, Any], bool]:
    if is_node(root):
        return lambda _path, leaf: isinstance(leaf, Param)
    return lambda path, leaf: isinstance(leaf, Param) or not _inside_node(root, path)


def _groups(
    spec: CallSpec, flat: Any, items: list[DiffState], args: Sequence[Any]
) -> list[tuple[str, Any]]:
    """Per differentiated argument: ("graph", its leaf indices) or ("plain", its position)."""
    groups: list[tuple[str, Any]] = []
    for d in items:
        if d.argnum >= len(args):
            raise TransformError(
                f"argnums refers to argument {d.argnum} but the function got {len(args)} "
                "positional arguments. Fix: pass argnums that exist."
            )
        if d.argnum in spec.positions:
            k = spec.positions.index(d.argnum)
            a, b = spec.slices[k]
            if isinstance(d, _Default):
                pred = _default_predicate(args[d.argnum])
            else:
                pred = to_predicate(d.filter)
            idx = [i for i in range(a, b) if pred(spec.paths[i], flat.leaves[i])]
            groups.append(("graph", idx))
        else:
            groups.append(("plain", d.argnum))
    return groups


def _grad_state(
    spec: CallSpec, flat: Any, idx: list[int], grads: list[Any]
) -> State | Variable[Any]:
    pairs = []
    for i, g in zip(idx, grads, strict=True):
        leaf = flat.leaves[i]
        pairs.append((spec.paths[i], leaf.replace(g) if isinstance(leaf, Variable) else g))
    if len(pairs) == 1 and pairs[0][0] == ():
        return pairs[0][1]  # the argument is a Variable itself: its gradient, as flax does
    return from_flat_state(pairs)


def _lifted_value_and_grad(
    f: Callable,
    argnums: Any,
    has_aux: bool,
    holomorphic: bool,
    allow_int: bool,
    name: str,
    mode: Mode | None = None,
) -> Callable:
    items, single = _diff_items(argnums)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if mode is not None:
            check_call(mode, args, kwargs)
        spec, flat, values = split_args(args, kwargs)
        groups = _groups(spec, flat, items, args)
        diff_inputs = tuple(
            [values[i] for i in g] if kind == "graph" else args[g] for kind, g in groups
        )

        def pure(diff_inputs: tuple) -> Any:
            vals = list(values)
            call_args = list(args)
            for (kind, g), inp in zip(groups, diff_inputs, strict=True):
                if kind == "graph":
                    for i, v in zip(g, inp, strict=True):
                        vals[i] = v
                else:
                    call_args[g] = inp
            with traced_call(spec, vals, f, call_args, kwargs) as t:
                res = t.out
                if has_aux:
                    if not (isinstance(res, tuple) and len(res) == 2):
                        raise TransformError(
                            f"{name}(has_aux=True) expects the function to return "
                            f"(loss, aux); it returned {type(res).__name__}."
                        )
                    loss, aux = res
                else:
                    loss, aux = res, None
                if not hasattr(loss, "shape") and not isinstance(loss, float | int):
                    raise TransformError(
                        f"{name}: the function must return a scalar loss, got "
                        f"{type(loss).__name__}. A Module or State cannot be differentiated "
                        "as an output. Fix: return a scalar (and use has_aux=True for "
                        "anything else)."
                    )
                if mode is not None:
                    check_trace(mode, t, res)
                return loss, collect(t, aux, what=name)

        (loss, (aux, new_values, info)), grads = jax.value_and_grad(
            pure, has_aux=True, holomorphic=holomorphic, allow_int=allow_int
        )(diff_inputs)
        aux = apply(flat, aux, new_values, info)
        outs = []
        for (kind, g), gr in zip(groups, grads, strict=True):
            outs.append(_grad_state(spec, flat, g, gr) if kind == "graph" else gr)
        grads_out = outs[0] if single else tuple(outs)
        return ((loss, aux) if has_aux else loss), grads_out

    return wrapper


def value_and_grad(
    f: Callable | None = None,
    *,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: Sequence[Any] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Like ``jax.value_and_grad``, over graph objects; see :func:`grad`."""
    _no_reduce_axes(reduce_axes, "value_and_grad")
    mode = resolve("value_and_grad", graph, graph_updates)
    if f is None:
        return functools.partial(
            value_and_grad,
            argnums=argnums,
            has_aux=has_aux,
            holomorphic=holomorphic,
            allow_int=allow_int,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    return _lifted_value_and_grad(
        f, argnums, has_aux, holomorphic, allow_int, "nnx.value_and_grad", mode
    )


def grad(
    f: Callable | None = None,
    *,
    argnums: int | DiffState | Sequence[int | DiffState] = 0,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: Sequence[Any] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Gradient of a scalar function of graph objects.

    Args:
      f: the function; its argument `argnums` may be a Module (or any graph object).
      argnums: an int (the ``nnx.Param``s of the Modules in that argument; Variables and
        arrays outside any Module as themselves), a ``DiffState(argnum, filter)`` to choose
        other Variables, or a sequence of those.
      has_aux: `f` returns ``(loss, aux)``; the result is then ``(grads, aux)``.
      reduce_axes: kept for flax compatibility; anything but ``()`` raises (as in flax).
      graph: False refuses arguments sharing Variables or sub-objects (flax's tree mode).
      graph_updates: False refuses returning input Variables and structural changes inside
        (flax drops those silently). None (both): the ``nnx.set_graph_mode`` /
        ``nnx.set_graph_updates`` default in force when `grad` is applied.

    Returns:
      For a graph argument, a State of gradients (Variables of the same types); for a plain
      argument, its gradient; a tuple when `argnums` is a sequence.
    """
    _no_reduce_axes(reduce_axes, "grad")
    if f is None:
        return functools.partial(
            grad,
            argnums=argnums,
            has_aux=has_aux,
            holomorphic=holomorphic,
            allow_int=allow_int,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    mode = resolve("grad", graph, graph_updates)
    vg = _lifted_value_and_grad(f, argnums, has_aux, holomorphic, allow_int, "nnx.grad", mode)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value, grads = vg(*args, **kwargs)
        if has_aux:
            return grads, value[1]
        return grads

    return wrapper


def _positions(spec: CallSpec) -> list[int]:
    """Where the graph primals sit: ints, as these transforms split positional arguments only
    (``split_args(primals, {})``)."""
    return cast("list[int]", list(spec.positions))


def _param_view(
    primals: Sequence[Any], filters: dict[int, Filter] | None = None
) -> tuple[CallSpec, Any, list, list[list[int]]]:
    """The graph primals' flatten and, per graph primal, its differentiable leaves: its
    ``nnx.Param``s, or those matching ``filters[position]``."""
    spec, flat, values = split_args(primals, {})
    groups = []
    for k, p in enumerate(spec.positions):
        a, b = spec.slices[k]
        if filters and p in filters:
            pred = to_predicate(filters[p])
            groups.append([i for i in range(a, b) if pred(spec.paths[i], flat.leaves[i])])
        else:
            groups.append([i for i in range(a, b) if isinstance(flat.leaves[i], Param)])
    return spec, flat, values, groups


def vjp(
    f: Callable | None = None,
    *primals: Any,
    has_aux: bool = False,
    reduce_axes: Sequence[Any] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.vjp`` where graph primals contribute their ``nnx.Param`` state.

    Returns ``(out, vjp_fn)`` (plus aux with `has_aux`); ``vjp_fn(cotangent)`` returns one
    cotangent per primal: a State of Params for graph primals, an array otherwise.
    `reduce_axes`, `graph` and `graph_updates` are as in :func:`grad` (unlike flax, the
    default graph mode with graph updates is supported). Without `f`, returns
    ``vjp`` with these keywords bound.
    """
    _no_reduce_axes(reduce_axes, "vjp")
    if f is None:
        return functools.partial(
            vjp, has_aux=has_aux, graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    mode = resolve("vjp", graph, graph_updates)
    if mode is not None:
        check_call(mode, primals)
    spec, flat, values, groups = _param_view(primals)
    graph_pos = _positions(spec)
    inputs = [
        [values[i] for i in groups[graph_pos.index(p)]] if p in graph_pos else a
        for p, a in enumerate(primals)
    ]

    def pure(*inputs: Any) -> Any:
        vals = list(values)
        call = list(inputs)
        for k, p in enumerate(graph_pos):
            for i, v in zip(groups[k], inputs[p], strict=True):
                vals[i] = v
        with traced_call(spec, vals, f, call) as t:
            if mode is not None:
                check_trace(mode, t, t.out)
            out, aux = t.out if has_aux else (t.out, None)
            return out, collect(t, aux, what="nnx.vjp")

    out, vjp_raw, (aux, new_values, info) = jax.vjp(pure, *inputs, has_aux=True)
    aux = apply(flat, aux, new_values, info)

    def vjp_fn(cotangent: Any) -> tuple:
        cts = vjp_raw(cotangent)
        result = []
        for p, ct in enumerate(cts):
            if p in graph_pos:
                result.append(_grad_state(spec, flat, groups[graph_pos.index(p)], ct))
            else:
                result.append(ct)
        return tuple(result)

    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def jvp(
    f: Callable | None = None,
    primals: Sequence[Any] | None = None,
    tangents: Sequence[Any] | None = None,
    *,
    has_aux: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.jvp`` where a graph primal's tangent is a State of its ``nnx.Param``s (as
    ``nnx.state(model, nnx.Param)`` returns). Returns ``(out, tangent_out)`` (plus aux with
    `has_aux`). `graph` and `graph_updates` are as in :func:`grad`. Without `f`, returns
    ``jvp`` with these keywords bound; without `primals`, a function of
    ``(primals, tangents)``.
    """
    bound = functools.partial(
        jvp,
        has_aux=has_aux,
        graph=graph_mode(graph),
        graph_updates=graph_updates_default(graph_updates),
    )
    if f is None:
        return bound
    if primals is None or tangents is None:
        return functools.partial(bound, f)
    mode = resolve("jvp", graph, graph_updates)
    if mode is not None:
        check_call(mode, primals)
    spec, flat, values, groups = _param_view(primals)
    graph_pos = _positions(spec)

    def as_list(p: int, t: Any) -> Any:
        if p not in graph_pos:
            return t
        k = graph_pos.index(p)
        by_path = {path: leaf for path, leaf in State(t).flat_state()} if t is not None else {}
        out = []
        for i in groups[k]:
            leaf = by_path.get(spec.paths[i])
            if leaf is None:
                raise TransformError(
                    f"nnx.jvp: the tangent for argument {p} has no entry for "
                    f"{spec.paths[i]}. Fix: build it like nnx.state(model, nnx.Param)."
                )
            out.append(leaf._value if isinstance(leaf, Variable) else leaf)
        return out

    prim_in = [
        [values[i] for i in groups[graph_pos.index(p)]] if p in graph_pos else a
        for p, a in enumerate(primals)
    ]
    tan_in = [as_list(p, t) for p, t in enumerate(tangents)]

    def pure(*inputs: Any) -> Any:
        vals = list(values)
        call = list(inputs)
        for k, p in enumerate(graph_pos):
            for i, v in zip(groups[k], inputs[p], strict=True):
                vals[i] = v
        with traced_call(spec, vals, f, call) as t:
            if mode is not None:
                check_trace(mode, t, t.out)
            out, aux = t.out if has_aux else (t.out, None)
            return out, collect(t, aux, what="nnx.jvp")

    # State changed inside comes back through jax's aux and is written back, as for vjp.
    out, tangent_out, (aux, new_values, info) = jax.jvp(
        pure, tuple(prim_in), tuple(tan_in), has_aux=True
    )
    aux = apply(flat, aux, new_values, info)
    return (out, tangent_out, aux) if has_aux else (out, tangent_out)


def remat(
    f: Callable | None = None,
    *,
    prevent_cse: bool = True,
    static_argnums: int | Sequence[int] = (),
    policy: Callable[..., bool] | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.checkpoint`` (rematerialisation) over graph objects: activations are recomputed
    in the backward pass instead of stored. State changes propagate as usual. `graph` and
    `graph_updates` are as in :func:`grad`."""
    if f is None:
        return functools.partial(
            remat,
            prevent_cse=prevent_cse,
            static_argnums=static_argnums,
            policy=policy,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    mode = resolve("remat", graph, graph_updates)
    static = frozenset((static_argnums,) if isinstance(static_argnums, int) else static_argnums)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if mode is not None:
            check_call(mode, args, kwargs)
        return call_transformed(
            f,
            args,
            kwargs,
            lambda pure: jax.checkpoint(pure, prevent_cse=prevent_cse, policy=policy),
            static=static,
            what="nnx.remat",
            check=None if mode is None else functools.partial(check_trace, mode),
        )

    return wrapper


checkpoint = remat


class CustomVjp:
    """What :func:`custom_vjp` returns: call it like the function, after ``defvjp``."""

    def __init__(self, fun: Callable, nondiff_argnums: tuple = (), mode: Mode | None = None):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.fwd: Callable | None = None
        self.bwd: Callable | None = None
        self.nondiff_argnums = tuple(nondiff_argnums)
        self._mode = mode
        self._static: tuple[int, ...] = ()
        self._filters: dict[int, Filter] = {}
        for item in self.nondiff_argnums:
            index = item.argnum if isinstance(item, DiffState) else item
            if index in self._static or index in self._filters:
                raise TransformError(
                    f"nnx.custom_vjp: argument {index} appears twice in nondiff_argnums="
                    f"{self.nondiff_argnums!r}. Fix: list each argument once."
                )
            if isinstance(item, DiffState):
                self._filters[index] = item.filter
            else:
                self._static += (index,)

    def defvjp(self, fwd: Callable, bwd: Callable, symbolic_zeros: bool = False) -> None:
        """Sets the rule: ``fwd(*args) -> (out, residuals)``; ``bwd(*nondiff_args,
        residuals, g) -> cotangents`` (one per differentiable argument)."""
        if symbolic_zeros:
            raise TransformError(
                "nnx.custom_vjp: defvjp(symbolic_zeros=True) is not supported. Fix: drop it."
            )
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: Any) -> Any:
        if self.fwd is None or self.bwd is None:
            raise TransformError(
                f"custom_vjp function {self.fun.__name__} has no rule. "
                "Fix: call .defvjp(fwd, bwd) first."
            )
        if self._mode is not None:
            check_call(self._mode, args)
        static = tuple(i % len(args) for i in self._static if -len(args) <= i < len(args))
        for i in static:
            if contains_graph(args[i]):
                raise TransformError(
                    f"nnx.custom_vjp({self.fun.__name__}): argument {i} is a graph object "
                    f"({type(args[i]).__name__}) listed as an int in nondiff_argnums; an int "
                    "marks a plain argument (as in flax).\nFix: use nnx.DiffState("
                    f"{i}, nnx.Not(...)) to choose the differentiable part of a graph object, "
                    "or pass it as a differentiable argument."
                )
        spec, _, values, groups = _param_view(args, self._filters)
        graph_pos = _positions(spec)
        fun, fwd, bwd, mode = self.fun, self.fwd, self.bwd, self._mode
        diff_pos = [p for p in range(len(args)) if p not in static]

        def run(f: Callable, inputs: Sequence[Any]) -> Any:
            vals = list(values)
            for k, p in enumerate(graph_pos):
                for i, v in zip(groups[k], inputs[p], strict=True):
                    vals[i] = v
            with traced_call(spec, vals, f, list(inputs)) as t:
                if mode is not None:
                    check_trace(mode, t, t.out)
                _check_read_only(t, f)
                return t.out

        @functools.partial(jax.custom_vjp, nondiff_argnums=static)
        def pure(*inputs: Any) -> Any:
            return run(fun, inputs)

        def pure_fwd(*inputs: Any) -> Any:
            return run(fwd, inputs)

        def pure_bwd(*rest: Any) -> tuple:
            *nondiff, res, g = rest
            cts = bwd(*nondiff, res, g)
            if not isinstance(cts, tuple):
                cts = (cts,)
            if len(cts) != len(diff_pos):
                raise TransformError(
                    f"nnx.custom_vjp({self.fun.__name__}): bwd returned {len(cts)} cotangents "
                    f"but there are {len(diff_pos)} differentiable arguments (positions "
                    f"{diff_pos}; nondiff_argnums={self.nondiff_argnums!r}).\nFix: return one "
                    "cotangent per argument not listed as an int in nondiff_argnums."
                )
            out = []
            for p, ct in zip(diff_pos, cts, strict=True):
                if p in graph_pos:
                    k = graph_pos.index(p)
                    by_path = dict(State(ct).flat_state()) if ct is not None else {}
                    out.append(
                        [_value_or_zero(by_path.get(spec.paths[i]), values[i]) for i in groups[k]]
                    )
                else:
                    out.append(ct)
            return tuple(out)

        pure.defvjp(pure_fwd, pure_bwd)
        inputs = [
            [values[i] for i in groups[graph_pos.index(p)]] if p in graph_pos else a
            for p, a in enumerate(args)
        ]
        return pure(*inputs)


def custom_vjp(
    fun: Callable | None = None,
    *,
    nondiff_argnums: tuple[int | DiffState, ...] = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """``jax.custom_vjp`` for functions of graph objects.

    ``fwd(*args) -> (out, residuals)`` and ``bwd(*nondiff_args, residuals, g) ->
    cotangents`` follow ``jax.custom_vjp``, except that the cotangent for a graph argument is
    a State of its differentiable Variables (by default its ``nnx.Param``s, shaped like
    ``nnx.state(arg, nnx.Param)``). Graph arguments are read-only inside `f` and `fwd`:
    assigning to one of their Variables raises a ``TransformError`` naming it (a custom_vjp
    cannot carry state changes out).

    Args:
      fun: the function; without it, a decorator.
      nondiff_argnums: ints mark plain arguments as not differentiated: as in jax they are
        passed first to `bwd`, which returns no cotangent for them (a graph object cannot be
        marked by an int, as in flax); ``nnx.DiffState(i, filter)`` makes the Variables of
        graph argument `i` matching `filter` its differentiable part (its cotangent State).
      graph: False refuses arguments sharing Variables or sub-objects (flax's tree mode).
      graph_updates: False refuses returning input Variables. None (both): the
        ``nnx.set_graph_mode`` / ``nnx.set_graph_updates`` default when it is applied.

    Example:
      >>> class Lin(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.array(2.0))
      >>> @nnx.custom_vjp
      ... def f(m, x):
      ...   return m.w.value * x
      >>> def fwd(m, x):
      ...   return f(m, x), (m.w.value, x)
      >>> def bwd(res, g):
      ...   w, x = res
      ...   return nnx.State({'w': nnx.Param(10 * g * x)}), g * w   # a deliberately odd rule
      >>> f.defvjp(fwd, bwd)
      >>> grads = nnx.grad(lambda m, x: f(m, x))(Lin(), 3.0)
      >>> float(grads['w'].value)
      30.0
    """
    if fun is None:
        return functools.partial(
            custom_vjp,
            nondiff_argnums=nondiff_argnums,
            graph=graph_mode(graph),
            graph_updates=graph_updates_default(graph_updates),
        )
    return CustomVjp(fun, nondiff_argnums, resolve("custom_vjp", graph, graph_updates))


def _check_read_only(t: Traced, f: Callable) -> None:
    """custom_vjp cannot carry state out of its function: refuse a change instead of
    silently dropping it (the caller's objects are untouched)."""
    spec = t.spec
    name = getattr(f, "__name__", "the function")
    try:
        _, _, info = collect(t, None, allow_structure_change=False, what="nnx.custom_vjp")
    except TraceContextError:
        raise TransformError(
            f"nnx.custom_vjp: {name} changed the structure of a graph argument (added, removed "
            "or replaced an attribute or Variable); graph arguments are read-only inside a "
            "custom_vjp function, so the change would be lost.\n"
            "Fix: make the change before calling it, or return new values as outputs."
        ) from None
    changed = [
        format_path(spec.paths[i], root=f"argument {spec.positions[spec.root_of[i]]}")
        for i in info.indices
    ]
    if changed:
        raise TransformError(
            f"nnx.custom_vjp: {name} assigned to {len(changed)} Variable(s) of its graph "
            f"arguments:\n{short_list(changed)}\nGraph arguments are read-only inside a "
            "custom_vjp function (and its fwd rule), so the change would be lost.\n"
            "Fix: return the new values as part of the output and assign them outside, or "
            "update the state outside the custom_vjp function."
        )


def _value_or_zero(leaf: Any, like: Any) -> Any:
    if leaf is None:
        return jax.numpy.zeros_like(like)
    return leaf._value if isinstance(leaf, Variable) else leaf
