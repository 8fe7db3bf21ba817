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

import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import jax

from .._flatten import refresh_raw_leaves, write_slot
from .._graph_mode import graph_mode
from .._graph_mode import graph_updates as graph_updates_default
from .._graphdef import flatten_full
from ..errors import ArgumentError, TransformError
from ..pytreelib import Dict, List, Pytree
from ..state import State, flat_pairs
from ..variablelib import Variable
from ._lift import (
    CallSpec,
    FilterMap,
    Out,
    apply,
    collect,
    contains_graph,
    leaf_values,
    replace_graph_args,
    roots_of,
    split_args,
    traced_call,
)
from ._modes import Mode, check_call, check_trace, resolve

__all__ = ["JitWrapped", "StateSharding", "cached_partial", "jit", "jit_partial"]

class StateSharding(FilterMap):
    """Per-filter shardings for a graph argument of ``nnx.jit``:
    ``StateSharding({nnx.Param: param_sharding, ...: None})``."""

    def __init__(self, filter_sharding: Any = (), /):
        super().__init__(filter_sharding)


def _as_tuple(x: int | Iterable[int] | None) -> tuple:
    if x is None:
        return ()
    if isinstance(x, int | str):
        return (x,)
    return tuple(x)


def _numbers_and_names(
    fun: Callable, argnums: Any, argnames: Any
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(argnums, argnames) as ``jax.jit`` resolves them: when only one of the two is given, the
    other follows from `fun`'s signature (its positional-or-keyword parameters), so an argument
    marked static (or donated) by name is recognised when passed by position, and the reverse.

    Args:
      fun: the function ``nnx.jit`` wraps.
      argnums: the numbers given (int, iterable of ints, or None).
      argnames: the names given (str, iterable of strs, or None).

    Returns:
      The numbers and the names, each a tuple without duplicates.
    """
    nums, names = _as_tuple(argnums), _as_tuple(argnames)
    if (argnums is None) == (argnames is None):  # both given (taken as they are), or neither
        return nums, names
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):  # no signature (some builtins): nothing to infer from
        return nums, names
    both = [(i, p.name) for i, p in enumerate(params) if p.kind is p.POSITIONAL_OR_KEYWORD]
    if argnums is None:
        nums = tuple(i for i, name in both if name in names)
    else:
        names = tuple(name for i, name in both if i in nums)
    return tuple(dict.fromkeys(nums)), tuple(dict.fromkeys(names))


def _parameter_names(fun: Callable) -> list[str]:
    """The names of `fun`'s positional parameters, for messages ([] without a signature)."""
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


_STATIC_GRAPH_MESSAGE = (
    "nnx.jit({fun}): {which} is static ({how}) but holds a graph object, {what}. A static "
    "argument is hashed into the compiled function and its contents are baked in as "
    "constants, so a graph object (a Module, Variable, Rngs, Optimizer, or a pytree holding "
    "one) cannot be static: its Variables' values would be frozen in, and what the function "
    "changes on it would be lost.\nFix: pass it as a normal argument (remove it from "
    "static_argnums/static_argnames); nnx.jit already caches the compiled function on the "
    "object's structure and traces only its array values."
)

_NOT_SERIALISABLE_MESSAGE = (
    "This exported nnx.jit function returns graph objects (Modules, Variables...) or changes "
    "the structure or metadata of its graph arguments (new attributes, replaced Variables): "
    "only nnx can carry that out, so it has no serialisable form.\nFix: export a function "
    "that returns arrays (pytrees of arrays, e.g. jax.tree.leaves(nnx.state(model))), and "
    "create attributes and sub-modules before exporting (run the model once, or "
    "nnx.eval_shape)."
)


def _not_serialisable(_: Any) -> bytes:
    raise TransformError(_NOT_SERIALISABLE_MESSAGE)


# An exported nnx.jit function whose output could not be said in arrays (see JitWrapped.trace)
# still carries the static Out node: serialising it says why instead of "unregistered type".
with contextlib.suppress(ValueError):  # ValueError: already registered (a module reload)
    jax.export.register_pytree_node_serialization(
        Out,
        serialized_name="nnx.transforms.Out",
        serialize_auxdata=_not_serialisable,
        deserialize_auxdata=_not_serialisable,
    )


class JitWrapped:
    """The callable ``nnx.jit`` returns; also usable as a method decorator."""

    def __init__(
        self,
        fun: Callable,
        *,
        in_shardings: Any = None,
        out_shardings: Any = None,
        static_argnums: int | Iterable[int] | None = None,
        static_argnames: str | Iterable[str] | None = None,
        donate_argnums: int | Iterable[int] | None = None,
        donate_argnames: str | Iterable[str] | None = None,
        keep_unused: bool = False,
        device: Any = None,
        backend: str | None = None,
        inline: bool = False,
        graph: bool | None = None,
        graph_updates: bool | None = None,
        compiler_options: dict[str, Any] | None = None,
    ):
        functools.update_wrapper(self, fun)
        self._mode: Mode | None = resolve("jit", graph, graph_updates)
        self.fun = fun
        # Numbers and names both, as jax.jit: f(m, x, "double") with static_argnames="mode"
        # must find the static argument at its position (and static_argnums by keyword).
        self.static_argnums, self.static_argnames = _numbers_and_names(
            fun, static_argnums, static_argnames
        )
        donate_nums, donate_names = _numbers_and_names(fun, donate_argnums, donate_argnames)
        self._static = frozenset(self.static_argnums)
        self._static_names = frozenset(self.static_argnames)
        self._donate = frozenset(donate_nums)
        self._donate_names = frozenset(donate_names)
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
        self._per_spec = in_shardings is not None or out_shardings is not None
        self._jitted = None if self._per_spec else jax.jit(self._inner, **self._jit_kwargs)
        self._jitted_by_spec: dict[CallSpec, Any] = {}
        self._exported_by_spec: dict[CallSpec | None, Any] = {}
        self._memo: _LastCall | None = None

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self, obj)

    # -- inside the trace ---------------------------------------------------------------
    def _inner(self, spec: CallSpec, *args: Any, **kwargs: Any) -> Any:
        values = [v for part in roots_of(spec, args, kwargs) for v in part]
        donated = {
            k
            for k, p in enumerate(spec.positions)
            if (p in self._donate if isinstance(p, int) else p in self._donate_names)
        }
        force = (lambda i: spec.root_of[i] in donated) if donated else False
        with traced_call(spec, values, self.fun, args, kwargs) as t:
            out = t.out
            if self.out_shardings is not None:
                out = _constrain_out(out, self.out_shardings)
            if self._mode is not None:
                check_trace(self._mode, t, out)
            return collect(t, out, force=force, what="nnx.jit")

    def _export_inner(self, spec: CallSpec, *args: Any, **kwargs: Any) -> Any:
        """:meth:`_inner` as a pure function of arrays, what :meth:`trace` and :meth:`lower`
        (and so ``jax.export``) see: returns `out`, or ``(out, new_state)`` when the call
        changed Variable values, `new_state` holding one list per graph argument, like its
        input. A call that changes structure or metadata, or returns graph objects, cannot be
        said in arrays: it keeps ``_inner``'s (out, values, Out), which serialises to an
        error."""
        out, values, info = self._inner(spec, *args, **kwargs)
        if info.mode != "fast" or info.metas:
            return out, values, info
        state = [v for part in roots_of(spec, args, kwargs) for v in part]
        changed = False
        for i, value in zip(info.indices, values, strict=True):
            if value is not state[i]:  # donated leaves come back unchanged: not an update
                state[i] = value
                changed = True
        if not changed:
            return out
        return out, tuple(state[a:b] for a, b in spec.slices)

    # -- outside ------------------------------------------------------------------------
    def _check_static(self, args: tuple, kwargs: dict) -> None:
        """Raises TransformError if a static argument holds a graph object."""
        for i in self._static:
            if -len(args) <= i < len(args) and contains_graph(args[i]):
                raise TransformError(self._static_graph_message(args[i], i))
        for name in self._static_names:
            if name in kwargs and contains_graph(kwargs[name]):
                raise TransformError(self._static_graph_message(kwargs[name], name))

    def _static_graph_message(self, arg: Any, where: int | str) -> str:
        if isinstance(where, int):
            names = [n for i, n in enumerate(_parameter_names(self.fun)) if i == where]
            which = f"argument {where}" + (f" (`{names[0]}`)" if names else "")
            how = f"static_argnums={self.static_argnums}"
        else:
            which, how = f"argument `{where}`", f"static_argnames={self.static_argnames}"
        graph = (Pytree, List, Dict, Variable)
        if isinstance(arg, graph):
            what = f"`{type(arg).__name__}`"
        else:
            leaf = next(
                leaf
                for leaf in jax.tree_util.tree_leaves(arg, is_leaf=lambda x: isinstance(x, graph))
                if isinstance(leaf, graph)
            )
            what = f"`{type(leaf).__name__}` inside a {type(arg).__name__}"
        name = getattr(self.fun, "__qualname__", None) or repr(self.fun)
        return _STATIC_GRAPH_MESSAGE.format(fun=name, which=which, how=how, what=what)

    def _split(self, args: tuple, kwargs: dict) -> tuple:
        if self._static or self._static_names:
            self._check_static(args, kwargs)
        if self._mode is not None:
            check_call(self._mode, args, kwargs)
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
            if self.in_shardings is not None:
                kwargs["in_shardings"] = self._leaf_in_shardings(spec, flat, args)
            # out_shardings are applied inside the trace (_constrain_out): graph objects in
            # the output travel as the values of the joint graph, not as `out`, so a jax-level
            # out_shardings prefix could not reach their Variables.
            jitted = self._jitted_by_spec[spec] = jax.jit(self._inner, **kwargs)
        return jitted

    def _get_exported(self, spec: CallSpec, flat: Any, args: tuple) -> Any:
        """``jax.jit`` of :meth:`_export_inner` (per spec where shardings are per leaf)."""
        key = spec if self._per_spec else None
        jitted = self._exported_by_spec.get(key)
        if jitted is None:
            kwargs = dict(self._jit_kwargs)
            if self.in_shardings is not None:
                kwargs["in_shardings"] = self._leaf_in_shardings(spec, flat, args)

            def pure(spec: CallSpec, *args: Any, **kwargs: Any) -> Any:
                return self._export_inner(spec, *args, **kwargs)

            # The name jax.export records (Exported.fun_name); not functools.wraps, whose
            # __wrapped__ would show jax the user's signature instead of this one.
            pure.__name__ = getattr(self.fun, "__name__", "fun")
            pure.__qualname__ = getattr(self.fun, "__qualname__", pure.__name__)
            jitted = self._exported_by_spec[key] = jax.jit(pure, **kwargs)
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
    def _graph_sharding(s: Any, leaves: Sequence[Any], paths: Sequence[tuple]) -> Any:
        if isinstance(s, FilterMap):
            return s.resolve(leaves, paths, "nnx.jit in_shardings")
        if isinstance(s, dict) or hasattr(s, "_mapping"):
            by_path = {p: (v._value if isinstance(v, Variable) else v) for p, v in flat_pairs(s)}
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
                out, values, info = memo.jitted(memo.spec, *new_args)
                if not values and info.mode == "fast" and not info.metas:
                    return out  # nothing changed inside (a forward pass)
                return apply(flat, out, values, info, cache=True)
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        jitted = self._jitted if self._jitted is not None else self._get_jitted(spec, flat, args)
        out, values, info = jitted(spec, *new_args, **new_kwargs)
        if not kwargs and self._jitted is not None:
            self._memo = _LastCall.make(spec, flat, args, self._jitted)
        return apply(flat, out, values, info, cache=True)

    # -- introspection ------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """``jax.stages.Lowered`` of the call (``.compile()``, ``.as_text()``): the same pure
        function of arrays as :meth:`trace`."""
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        return self._get_exported(spec, flat, args).lower(spec, *new_args, **new_kwargs)

    def trace(self, *args: Any, **kwargs: Any) -> Any:
        """``jax.stages.Traced`` of the call (``.jaxpr``, ``.lower()``), as a pure function of
        arrays; ``jax.export.export(nnx.jit(f))(*args)`` exports it.

        Nothing is written to the arguments. The traced (and exported) function takes:

        * in place of each graph argument (a Module, Optimizer, Rngs, or a pytree of them),
          its state as a list of arrays, in the order of ``jax.tree.leaves(nnx.state(arg))``
          (an abstract model from ``nnx.eval_shape`` exports without allocating);
        * every other argument as it is; static arguments are not inputs (as in jax).

        It returns what `f` returns if the call changes no Variable, else ``(out,
        new_state)``: `new_state` is a tuple with one list per graph argument, in the order
        of the inputs, holding all its new values, so the state update is never dropped: feed
        it to the next call. A call that changes structure or metadata, or returns graph
        objects, cannot be said in arrays: it traces as nnx's internal form, and serialising
        it (``Exported.serialize()``) raises TransformError.

        Example:
          >>> class Counter(nnx.Module):
          ...   def __init__(self):
          ...     self.count = nnx.BatchStat(jnp.array(0))
          ...     self.w = nnx.Param(jnp.ones(2))
          >>> def step(m, x):
          ...   m.count.value += 1
          ...   return x * m.w
          >>> model = Counter()
          >>> exported = jax.export.export(nnx.jit(step))(model, jnp.ones(2))
          >>> y, (state,) = exported.call(jax.tree.leaves(nnx.state(model)), jnp.ones(2))
          >>> y.tolist(), int(state[0])
          ([1.0, 1.0], 1)
        """
        spec, flat, new_args, new_kwargs = self._split(args, kwargs)
        return self._get_exported(spec, flat, args).trace(spec, *new_args, **new_kwargs)

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

    __slots__ = ("flat_ref", "jitted", "nargs", "others", "roots", "slices", "spec")
    flat_ref: weakref.ref[Any]
    jitted: Callable[..., Any]  # the JitWrapped's one compiled function
    nargs: int
    others: tuple[int, ...]
    roots: tuple[tuple[int, int], ...]  # (argument position, index of the node in the flatten)
    slices: tuple[tuple[int, tuple[int, int]], ...]  # (position, its slice of the values)
    spec: CallSpec

    @staticmethod
    def make(
        spec: CallSpec, flat: Any, args: tuple, jitted: Callable[..., Any]
    ) -> _LastCall | None:
        positions = cast("tuple[int, ...]", spec.positions)  # a call without keyword arguments
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
        memo.jitted = jitted
        memo.spec = spec
        memo.nargs = len(args)
        memo.roots = tuple(roots)
        memo.slices = tuple(zip(positions, spec.slices, strict=True))
        # Static arguments too: one that holds a graph object must take the full path, which
        # raises (see JitWrapped._check_static).
        memo.others = tuple(i for i in range(len(args)) if i not in positions)
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
            refresh_raw_leaves(flat)
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
            flat = flatten_full((x,))
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
                    write_slot(slot, jax.lax.with_sharding_constraint(leaf, sh))
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
    in_shardings: Any = None,
    out_shardings: Any = None,
    static_argnums: int | Iterable[int] | None = None,
    static_argnames: str | Iterable[str] | None = None,
    donate_argnums: int | Iterable[int] | None = None,
    donate_argnames: str | Iterable[str] | None = None,
    keep_unused: bool = False,
    device: Any = None,
    backend: str | None = None,
    inline: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
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
    As in ``jax.jit``, an argument marked static by name may be passed by position and one
    marked by number by keyword. Graph objects cannot be static (TransformError): pass them as
    normal arguments, the compiled function is cached on their structure.
    ``jax.export.export(nnx.jit(f))`` exports `f` as a pure function of arrays, graph
    arguments going in (and changed state coming out) as lists of arrays; see
    :meth:`JitWrapped.trace`.
    `in_shardings`/`out_shardings` None (the default) leave the shardings to jax, as in
    flax. `graph=False` refuses graph arguments that share Variables or sub-objects (flax's
    tree mode); `graph_updates=False` refuses returning input Variables and structural changes
    made inside (flax drops those silently). None takes the default of
    ``nnx.set_graph_mode`` / ``nnx.set_graph_updates`` in force when `jit` is applied.
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
        graph=graph_mode(graph),
        graph_updates=graph_updates_default(graph_updates),
    )
    if fun is None:
        return functools.partial(jit, **kwargs)
    return JitWrapped(fun, **kwargs)


def cached_partial(
    f: Callable, *cached_args: Any, graph: bool | None = None, graph_updates: bool | None = None
) -> Callable:
    """``functools.partial(f, *cached_args)``, kept for code written against flax.

    flax.nnx needs this to skip re-traversing the graph of `cached_args` on every call; nnx's
    structure cache already does that for every call of ``nnx.jit``, so it is plain partial
    application here, with the same semantics: state changed on the cached arguments inside
    the call is visible on them afterwards. As in flax, it is a graph-mode API: `graph` and
    `graph_updates` (None: the ``nnx.set_graph_mode`` / ``set_graph_updates`` default) must
    be True, else ArgumentError (use :func:`jit_partial`).

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
    if not (graph_mode(graph) and graph_updates_default(graph_updates)):
        raise ArgumentError(
            f"nnx.cached_partial(graph={graph!r}, graph_updates={graph_updates!r}): "
            "cached_partial is a graph-mode API and needs graph=True and graph_updates=True "
            "(as in flax).\nFix: use nnx.jit_partial(f, *args, graph=False) for tree mode, or "
            "drop the keywords."
        )
    return functools.partial(f, *cached_args)


def jit_partial(
    fun: Callable,
    *partial_args: Any,
    in_shardings: Any = None,
    out_shardings: Any = None,
    static_argnums: int | Iterable[int] | None = None,
    static_argnames: str | Iterable[str] | None = None,
    donate_argnums: int | Iterable[int] | None = None,
    donate_argnames: str | Iterable[str] | None = None,
    keep_unused: bool = False,
    device: Any = None,
    backend: str | None = None,
    inline: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Callable:
    """``nnx.jit(fun, ...)`` with `partial_args` bound as its first arguments.

    The keywords are those of :func:`jit`. Argument numbers (static_argnums,
    donate_argnums) and a tuple of in_shardings count the bound arguments too, as they would
    for ``fun`` itself. State the call changes on the bound arguments is visible on them
    afterwards. With ``graph=False`` the bound arguments may not share Variables (checked
    here, once, as flax does) nor may the call arguments.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> forward = nnx.jit_partial(lambda m, x: m(x), model)
      >>> forward(jnp.ones((4, 2))).shape
      (4, 3)
    """
    jitted = jit(
        fun,
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
        graph=graph,
        graph_updates=graph_updates,
    )
    if jitted._mode is not None:
        check_call(Mode("jit_partial", jitted._mode.tree), partial_args)
    return functools.partial(jitted, *partial_args)
