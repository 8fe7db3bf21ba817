"""``nnx.jit``: ``jax.jit`` over functions of Modules, Variables, Rngs and optimizers.

Graph arguments are replaced by the list of their leaf values before the compiled call, and
the values that changed come back and are written into the same Python objects. On an
unchanged model a call does no graph traversal: the structure cache hands over the
Variables, the :class:`CallSpec` (the static argument of the compiled function) is reused,
so jax's dispatch cache hits without hashing the graph again.

Example:
  >>> class Counter(nnx.Module):
  ...   def __init__(self):
  ...     self.count = nnx.BatchStat(jnp.array(0))
  ...     self.w = nnx.Param(jnp.ones(3))
  ...   def __call__(self, x):
  ...     self.count.value += 1
  ...     return x * self.w
  >>> @nnx.jit
  ... def step(model, x):
  ...   return model(x)
  >>> model = Counter()
  >>> step(model, jnp.ones(3)).tolist(), int(model.count.value)
  ([1.0, 1.0, 1.0], 1)
  >>> _ = step(model, jnp.ones(3)); int(model.count.value)
  2
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import jax

from ..errors import TransformError
from ..graph import _flatten_full, _write_slot
from ..state import State, _flat_pairs
from ..variables import Variable
from ._lift import (
    CallSpec,
    FilterMap,
    apply,
    collect,
    contains_graph,
    leaf_values,
    replace_graph_args,
    split_args,
    traced_call,
)

__all__ = ["JitWrapped", "StateSharding", "cached_partial", "jit", "jit_partial"]

_UNSPECIFIED: Any = object()


class StateSharding(FilterMap):
    """Per-filter shardings for a graph argument of ``nnx.jit``:
    ``StateSharding({nnx.Param: param_sharding, ...: None})``."""


def _as_tuple(x: int | Iterable[int] | None) -> tuple:
    if x is None:
        return ()
    if isinstance(x, int | str):
        return (x,)
    return tuple(x)


class JitWrapped:
    """The callable ``nnx.jit`` returns; also usable as a method decorator."""

    def __init__(
        self,
        fun: Callable,
        *,
        in_shardings: Any = _UNSPECIFIED,
        out_shardings: Any = _UNSPECIFIED,
        static_argnums: int | Iterable[int] | None = None,
        static_argnames: str | Iterable[str] | None = None,
        donate_argnums: int | Iterable[int] | None = None,
        donate_argnames: str | Iterable[str] | None = None,
        keep_unused: bool = False,
        device: Any = None,
        backend: str | None = None,
        inline: bool = False,
        compiler_options: dict[str, Any] | None = None,
    ):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.static_argnums = _as_tuple(static_argnums)
        self.static_argnames = _as_tuple(static_argnames)
        self._static = frozenset(self.static_argnums)
        self._static_names = frozenset(self.static_argnames)
        self._donate = frozenset(_as_tuple(donate_argnums))
        self._donate_names = frozenset(_as_tuple(donate_argnames))
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self._jit_kwargs: dict[str, Any] = dict(
            static_argnums=(0, *(i + 1 for i in self.static_argnums)),
            static_argnames=self.static_argnames or None,
            donate_argnums=tuple(i + 1 for i in self._donate) or None,
            donate_argnames=tuple(self._donate_names) or None,
            keep_unused=keep_unused,
            inline=inline,
        )
        if device is not None:
            self._jit_kwargs["device"] = device
        if backend is not None:
            self._jit_kwargs["backend"] = backend
        if compiler_options is not None:
            self._jit_kwargs["compiler_options"] = compiler_options
        self._per_spec = in_shardings is not _UNSPECIFIED or out_shardings is not _UNSPECIFIED
        self._jitted = None if self._per_spec else jax.jit(self._inner, **self._jit_kwargs)
        self._jitted_by_spec: dict[CallSpec, Any] = {}
        self._memo: _LastCall | None = None

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self, obj)

    # -- inside the trace ---------------------------------------------------------------
    def _inner(self, spec: CallSpec, *args: Any, **kwargs: Any) -> Any:
        parts = [args[p] if isinstance(p, int) else kwargs[p] for p in spec.positions]
        values = [v for part in parts for v in part]
        donated = {
            k
            for k, p in enumerate(spec.positions)
            if (p in self._donate if isinstance(p, int) else p in self._donate_names)
        }
        force = (lambda i: spec.root_of[i] in donated) if donated else False
        with traced_call(spec, values, self.fun, args, kwargs) as t:
            out = t.out
            if self.out_shardings is not _UNSPECIFIED:
                out = _constrain_out(out, self.out_shardings)
            return collect(t, out, force=force, what="nnx.jit")

    # -- outside ------------------------------------------------------------------------
    def _split(self, args: tuple, kwargs: dict) -> tuple:
        spec, flat, values = split_args(args, kwargs, self._static, self._static_names)
        if len(spec.slices) == 1:
            parts: list[Any] = [values]
        else:
            parts = [values[a:b] for a, b in spec.slices]
        new_args, new_kwargs = replace_graph_args(args, kwargs, spec, parts)
        return spec, flat, new_args, new_kwargs

    def _get_jitted(self, spec: CallSpec, flat: Any, args: tuple) -> Any:
        if self._jitted is not None:
            return self._jitted
        jitted = self._jitted_by_spec.get(spec)
        if jitted is None:
            kwargs = dict(self._jit_kwargs)
            if self.in_shardings is not _UNSPECIFIED:
                kwargs["in_shardings"] = self._leaf_in_shardings(spec, flat, args)
            # out_shardings are applied inside the trace (_constrain_out): graph objects in
            # the output travel as the values of the joint graph, not as `out`, so a jax-level
            # out_shardings prefix could not reach their Variables.
            jitted = self._jitted_by_spec[spec] = jax.jit(self._inner, **kwargs)
        return jitted

    def _leaf_in_shardings(self, spec: CallSpec, flat: Any, args: tuple) -> tuple:
        user = self.in_shardings
        n = len(args)
        if not isinstance(user, tuple | list):
            user = (user,) * n
        if len(user) != n:
            raise TransformError(
                f"nnx.jit: in_shardings has {len(user)} entries but the function was called "
                f"with {n} positional arguments. Fix: give one sharding (or None) per argument."
            )
        out = []
        for i, s in enumerate(user):
            if i in self._static:
                continue
            if i in spec.positions:
                k = spec.positions.index(i)
                a, b = spec.slices[k]
                out.append(self._graph_sharding(s, flat.leaves[a:b], spec.paths[a:b]))
            else:
                out.append(s)
        return tuple(out)

    @staticmethod
    def _graph_sharding(s: Any, leaves: list, paths: tuple) -> Any:
        if isinstance(s, FilterMap):
            return s.resolve(leaves, paths, "nnx.jit in_shardings")
        if isinstance(s, dict) or hasattr(s, "_mapping"):
            by_path = {p: (v._value if isinstance(v, Variable) else v) for p, v in _flat_pairs(s)}
            missing = [p for p in paths if p not in by_path]
            if missing:
                raise TransformError(
                    f"nnx.jit: the sharding state has no entry for {missing[:5]}. "
                    "Fix: build it from the argument's own state (same paths)."
                )
            return [by_path[p] for p in paths]
        return s  # one sharding (or None) for every leaf: a pytree prefix

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        memo = self._memo
        if memo is not None and not kwargs:
            hit = memo.args_for(args)
            if hit is not None:
                flat, new_args = hit
                out, values, info = self._jitted(memo.spec, *new_args)
                if not values and info.mode == "fast" and not info.metas:
                    return out  # nothing changed inside (a forward pass)
                return apply(flat, out, values, info, cache=True)
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        jitted = self._jitted if self._jitted is not None else self._get_jitted(spec, flat, args)
        out, values, info = jitted(spec, *new_args, **new_kwargs)
        if not kwargs and self._jitted is not None:
            self._memo = _LastCall.make(spec, flat, args, self._static)
        return apply(flat, out, values, info, cache=True)

    # -- introspection ------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """``jax.stages.Lowered`` of the compiled call (``.compile()``, ``.as_text()``)."""
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        return self._get_jitted(spec, flat, args).lower(spec, *new_args, **new_kwargs)

    def trace(self, *args: Any, **kwargs: Any) -> Any:
        """``jax.stages.Traced`` of the call (``.jaxpr``, ``.lower()``)."""
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        return self._get_jitted(spec, flat, args).trace(spec, *new_args, **new_kwargs)

    def eval_shape(self, *args: Any, **kwargs: Any) -> Any:
        """The output's shapes and dtypes, without computing (and without touching state)."""
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        jitted = self._get_jitted(spec, flat, args)
        out, values, info = jitted.eval_shape(spec, *new_args, **new_kwargs)
        return apply(flat, out, values, info, write=False)


class _LastCall:
    """The graph arguments of the last call, to skip the argument scan and the cache lookup
    when the next call passes the same objects (a training loop): valid while the flatten is
    (no structural change since), its roots sit at the same positions, and no other
    argument holds graph objects. Refers to the flatten weakly: never keeps a model alive.
    The values go back through :func:`apply`, whose write plan is cached on the flatten."""

    __slots__ = ("flat_ref", "nargs", "others", "roots", "slices", "spec")

    @staticmethod
    def make(spec: CallSpec, flat: Any, args: tuple, static: frozenset[int]) -> _LastCall | None:
        positions = spec.positions
        nodes = flat.nodes
        roots = []
        for p in positions:
            arg = args[p]
            index = next((i for i, n in enumerate(nodes) if n is arg), None)
            if index is None:  # a pytree of graph objects, not one graph object
                return None
            roots.append((p, index))
        memo = _LastCall()
        memo.flat_ref = weakref.ref(flat)
        memo.spec = spec
        memo.nargs = len(args)
        memo.roots = tuple(roots)
        memo.slices = tuple(zip(positions, spec.slices, strict=True))
        memo.others = tuple(i for i in range(len(args)) if i not in static and i not in positions)
        return memo

    def args_for(self, args: tuple) -> tuple[Any, list] | None:
        """(flatten, the arguments of the compiled call) if this call fits, else None."""
        flat = self.flat_ref()
        if flat is None or len(args) != self.nargs:
            return None
        nodes = flat.nodes
        for p, i in self.roots:
            if args[p] is not nodes[i]:
                return None
        for i in self.others:
            if contains_graph(args[i]):
                return None
        if not flat.valid():
            return None
        if flat.has_raw:
            flat.refresh_raw_leaves()
        values = leaf_values(flat)
        new_args = list(args)
        slices = self.slices
        if len(slices) == 1:
            new_args[slices[0][0]] = values
        else:
            for p, (a, b) in slices:
                new_args[p] = values[a:b]
        return flat, new_args


def _is_sharding_leaf(s: Any) -> bool:
    return s is None or isinstance(
        s, FilterMap | State | jax.sharding.Sharding | jax.sharding.PartitionSpec
    )


def _constrain_out(out: Any, shardings: Any) -> Any:
    """Applies ``out_shardings`` (a prefix of the output) inside the trace, with
    ``with_sharding_constraint``: to arrays, and to the Variables of graph objects in the output
    (one sharding for all of them, per filter with a StateSharding, or per path with a State of
    shardings such as ``nnx.get_named_sharding(nnx.state(abstract_model), mesh)``)."""

    def one(s: Any, x: Any) -> Any:
        if s is None:
            return x
        if contains_graph(x):
            flat = _flatten_full((x,))
            paths = [p[1:] for p in flat.paths]
            if isinstance(s, FilterMap):
                per_leaf = s.resolve(flat.leaves, paths, "nnx.jit out_shardings")
            elif isinstance(s, State):
                per_leaf = JitWrapped._graph_sharding(s, flat.leaves, paths)
            else:
                per_leaf = [s] * len(flat.leaves)
            for leaf, slot, sh in zip(flat.leaves, flat.slots, per_leaf, strict=True):
                if sh is None:
                    continue
                if slot is None:
                    leaf.value = jax.lax.with_sharding_constraint(leaf.value, sh)
                else:
                    _write_slot(slot, jax.lax.with_sharding_constraint(leaf, sh))
            return x
        if isinstance(s, FilterMap | State):
            raise TransformError(
                f"nnx.jit: out_shardings gives a {type(s).__name__} for an output that holds "
                "no graph objects. Fix: use a StateSharding or a State of shardings only where "
                "the function returns a Module (or Variables); give plain shardings for arrays."
            )
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, s), x)

    return jax.tree.map(one, shardings, out, is_leaf=_is_sharding_leaf)


def jit(
    fun: Callable | None = None,
    *,
    in_shardings: Any = _UNSPECIFIED,
    out_shardings: Any = _UNSPECIFIED,
    static_argnums: int | Iterable[int] | None = None,
    static_argnames: str | Iterable[str] | None = None,
    donate_argnums: int | Iterable[int] | None = None,
    donate_argnames: str | Iterable[str] | None = None,
    keep_unused: bool = False,
    device: Any = None,
    backend: str | None = None,
    inline: bool = False,
    compiler_options: dict[str, Any] | None = None,
) -> Any:
    """Compiles `fun` with ``jax.jit``; Modules and other graph objects may be arguments and
    outputs, and whatever the function changes on them is visible afterwards.

    Arguments follow ``jax.jit``. For a graph argument, `in_shardings` may be one sharding
    (all its leaves), a :class:`StateSharding` (per filter), or a State of shardings; donating
    a graph argument donates its Variables' buffers (they are replaced by the new values).
    `out_shardings` is a prefix of the output; where the output holds graph objects (a Module
    created inside), one sharding, a StateSharding or a State of shardings (e.g.
    ``nnx.get_named_sharding(nnx.state(abstract_model), mesh)``) there applies to their
    Variables.
    Usable as ``@nnx.jit`` or ``@nnx.jit(static_argnums=...)``.
    """
    kwargs = dict(
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        static_argnums=static_argnums,
        static_argnames=static_argnames,
        donate_argnums=donate_argnums,
        donate_argnames=donate_argnames,
        keep_unused=keep_unused,
        device=device,
        backend=backend,
        inline=inline,
        compiler_options=compiler_options,
    )
    if fun is None:
        return functools.partial(jit, **kwargs)
    return JitWrapped(fun, **kwargs)


def cached_partial(f: Callable, *cached_args: Any) -> Callable:
    """``functools.partial(f, *cached_args)``, kept for code written against flax.

    flax.nnx needs this to skip re-traversing the graph of `cached_args` on every call; nnx's
    structure cache already does that for every call of ``nnx.jit``, so it is plain partial
    application here, with the same semantics: state changed on the cached arguments inside
    the call is visible on them afterwards.

    Example:
      >>> class M(nnx.Module):
      ...   def __init__(self):
      ...     self.n = nnx.BatchStat(jnp.array(0))
      >>> m = M()
      >>> @nnx.jit
      ... def step(m, k):
      ...   m.n.value += k
      >>> fast = nnx.cached_partial(step, m)
      >>> fast(2); fast(3); int(m.n.value)
      5
    """
    return functools.partial(f, *cached_args)


def jit_partial(fun: Callable, *partial_args: Any, **jit_kwargs: Any) -> Callable:
    """``nnx.jit(fun, **jit_kwargs)`` with `partial_args` bound first (flax compatibility).

    Argument numbers in `jit_kwargs` (static_argnums, donate_argnums) count the bound
    arguments too, as they would for ``fun`` itself.
    """
    return functools.partial(jit(fun, **jit_kwargs), *partial_args)
