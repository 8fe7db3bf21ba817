"""Model summaries: :func:`tabulate`, a plain-text table of a model's module calls, the
shapes flowing through them, their Variables and, on request, their FLOPs.

How it works. The model (with any graph objects among the call's arguments) is split into
a GraphDef and an abstract State (a ``jax.ShapeDtypeStruct`` per array), and the method
runs once under ``jax.eval_shape`` on a copy merged inside the trace: nothing is allocated,
no real forward pass runs, the caller's objects are not touched, and a model built with
``nnx.eval_shape`` (too large to allocate) works the same way. To see the sub-modules'
calls, each Module of that private copy is switched to a recording subclass of its class
made for this run and this path, whose methods (``__call__`` and the public ones its class
defines) note each call's abstract inputs and outputs. The caller's classes are never
patched, so other threads using them are unaffected; and since the path travels with the
class, calls inside transforms the model applies to itself (``nnx.scan`` over a cell,
``nnx.remat`` or ``nnx.jit`` on a method) are seen as well, with the shapes seen inside
(one scan step, one vmapped example).

Variable counts come from the model as it is: each row counts the Variables of that
module's whole subgraph (a shared Variable once), so Variables a call would create (a lazily
initialised layer, ``sow``) are not counted. FLOPs come from XLA's cost analysis of each call
lowered on its own (``jax.jit(f).lower(...)``, compiled only when the lowering reports
nothing); XLA counts the body of a loop (``scan``) once.

Costs: each run makes one small class per module, which JAX keeps registered as a pytree
type (a few KB per module per call): fine for a summary printed now and then, not for a
loop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import FunctionType, MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from .errors import ArgumentError, AttributeNotFoundError, format_path
from .graph import is_node, iter_graph, merge, split
from .module import Module, iter_modules
from .pytreelib import Pytree, is_array
from .rngs import RngState
from .variablelib import Variable

__all__ = ["CallInfo", "tabulate"]

Path = tuple[Hashable, ...]


@dataclasses.dataclass
class CallInfo:
    """One row of the table: a call of a module's method seen during the abstract run.

    Attributes:
      call_order: position of the call in the run (the root's call is 0); ``None`` for a
        module the run never called (listed after the called ones).
      path: the module's path in the model (``()`` for the root).
      type: the module's class.
      method: the method called (``None`` if never called).
      args, kwargs: the call's arguments, arrays replaced by ``jax.ShapeDtypeStruct``.
      outputs: what it returned, arrays replaced the same way.
      flops, vjp_flops: XLA's estimates (``None`` where not computed or not reported).
    """

    call_order: int | None
    path: Path
    type: type
    method: str | None
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    outputs: Any = None
    flops: int | None = None
    vjp_flops: int | None = None


# -- the abstract run ----------------------------------------------------------------------
class _Opaque:
    """Stands for a graph object passed to or returned by a call (shown by its class name)."""

    def __init__(self, name: str):
        self.name = name


def _abstract_leaf(x: Any) -> Any:
    if isinstance(x, Pytree):
        return _Opaque(type(x).__name__)
    if is_array(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x


def _abstract(tree: Any) -> Any:
    """`tree` with ShapeDtypeStructs for arrays (tracers included) and placeholders for graph
    objects; everything else (Python scalars, None, strings) is kept."""
    return jax.tree.map(_abstract_leaf, tree, is_leaf=lambda x: isinstance(x, Pytree))


class _Recorder:
    """The calls of one abstract run. Nested calls of a module already inside a recorded call
    (``__call__`` calling ``self.helper``) belong to that call and are not recorded."""

    def __init__(self) -> None:
        self.active: set[Path] = set()
        self.calls: list[CallInfo] = []

    def call(self, cls: type, path: Path, method: str, fn: Callable, args: tuple, kwargs: dict):
        """Records the call ``fn(*args, **kwargs)`` of `method` of the module at `path`."""
        if path in self.active:
            return fn(*args, **kwargs)
        info = CallInfo(len(self.calls), path, cls, method, _abstract(args), _abstract(kwargs))
        self.calls.append(info)
        self.active.add(path)
        try:
            out = fn(*args, **kwargs)
        finally:
            self.active.discard(path)
        info.outputs = _abstract(out)
        return out


_local = threading.local()  # .recorder: the _Recorder of the abstract run on this thread


def _methods(cls: type) -> dict[str, Any]:
    """``__call__`` and the public methods a Module class defines (not Module's own), as the
    class resolves them: functions, or method decorators such as ``nnx.jit``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in Module.__mro__:
            continue
        for name, value in vars(klass).items():
            if (name == "__call__" or name[0] != "_") and _is_method(klass, value):
                names.add(name)
    return {name: inspect.getattr_static(cls, name) for name in sorted(names)}


def _is_method(klass: type, value: Any) -> bool:
    """A function defined in the body of `klass` (not a function stored as a class
    attribute), or a callable method decorator (``nnx.jit``, ``nnx.remat``) placed there."""
    if isinstance(value, FunctionType):
        return value.__qualname__.startswith(f"{klass.__qualname__}.")
    plain = not isinstance(value, staticmethod | classmethod | property | type)
    return plain and callable(value) and hasattr(type(value), "__get__")


def _recording_method(cls: type, path: Path, name: str, fn: Any) -> Callable:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = fn.__get__(self, type(self))
        rec: _Recorder | None = getattr(_local, "recorder", None)
        if rec is None:
            return bound(*args, **kwargs)
        return rec.call(cls, path, name, bound, args, kwargs)

    return functools.wraps(fn)(method) if isinstance(fn, FunctionType) else method


def _recording_class(cls: type, path: Path) -> type:
    """A subclass of `cls` whose methods record their calls as calls of the module at `path`.

    The path is carried by the class, so it survives the split/merge of the transforms the
    model applies inside its call (``nnx.scan`` over a cell, ``nnx.remat`` of a block), whose
    copies are of the same class. A class is made per run: a jitted function the model keeps
    is then retraced (its cache key holds the class), so each run sees every call.
    """
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    for name, fn in _methods(cls).items():
        namespace[name] = _recording_method(cls, path, name, fn)
    return type(cls)(cls.__name__, (cls,), namespace)


class _Pure:
    """A model and a call's arguments as a function of their arrays, for a trace.

    Graph objects (the model, and any among the arguments such as an ``nnx.Rngs``) are split
    together into a GraphDef and a State, arrays become ``jax.ShapeDtypeStruct``: `abstract`
    lists them all, and :meth:`build` makes, inside the trace, a fresh copy of the model and
    arguments around the traced values. Other leaves (Python scalars, None) stay as given.
    """

    def __init__(self, model: Any, args: tuple, kwargs: dict):
        self.leaves, self.treedef = jax.tree.flatten((args, kwargs), is_leaf=is_node)
        self.nodes = [i for i, x in enumerate(self.leaves) if is_node(x)]
        self.graphdef, state = split((model, *(self.leaves[i] for i in self.nodes)))
        self.state_leaves, self.state_def = jax.tree.flatten(_abstract(state))
        self.state_arrays = [i for i, x in enumerate(self.state_leaves) if is_array(x)]
        self.arrays = [i for i, x in enumerate(self.leaves) if is_array(x)]
        self.abstract = [self.state_leaves[i] for i in self.state_arrays]
        self.abstract += [_abstract_leaf(self.leaves[i]) for i in self.arrays]

    def build(self, values: Sequence[Any]) -> tuple[Any, tuple, dict]:
        n = len(self.state_arrays)
        state_leaves = list(self.state_leaves)
        for i, value in zip(self.state_arrays, values[:n], strict=True):
            state_leaves[i] = value
        state = jax.tree.unflatten(self.state_def, state_leaves)
        model, *nodes = merge(self.graphdef, state)
        leaves = list(self.leaves)
        pairs = [*zip(self.nodes, nodes, strict=True), *zip(self.arrays, values[n:], strict=True)]
        for i, value in pairs:
            leaves[i] = value
        args, kwargs = jax.tree.unflatten(self.treedef, leaves)
        return model, args, kwargs


def _trace(model: Any, method: str, args: tuple, kwargs: dict) -> list[CallInfo]:
    """Runs ``model.<method>(*args, **kwargs)`` under ``jax.eval_shape`` on a copy made
    inside the trace (graph objects among the arguments are copied too) and returns the calls
    it made, the root's first."""
    pure = _Pure(model, args, kwargs)
    rec = _Recorder()

    def run(values: list) -> None:
        copy, call_args, call_kwargs = pure.build(values)
        for path, module in iter_modules(copy):  # each module once, at its first path
            object.__setattr__(module, "__class__", _recording_class(type(module), path))
        previous = getattr(_local, "recorder", None)
        _local.recorder = rec
        try:
            rec.call(type(model), (), method, getattr(copy, method), call_args, call_kwargs)
        finally:
            _local.recorder = previous

    jax.eval_shape(run, pure.abstract)
    return rec.calls


# -- FLOPs -----------------------------------------------------------------------------------
def _flops(lowered: Any) -> int | None:
    """XLA's FLOP count of a lowered function: from the lowering if it reports one, else from
    the compiled executable; None if neither does."""
    for stage in (lambda: lowered, lowered.compile):
        analysis = stage().cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else None
        flops = (analysis or {}).get("flops")
        if flops is not None and flops >= 0:
            return round(flops)
    return None


def _inexact(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


_MISSING = object()


def _call_cost(
    module: Any, method: str, args: tuple, kwargs: dict, *, vjp: bool, cache: dict
) -> int | None:
    """FLOPs of ``module.<method>(*args, **kwargs)`` lowered on its own: the forward pass, or
    with `vjp` the forward and backward passes (a VJP w.r.t. every floating-point array of
    the module's state and the arguments). None when XLA reports nothing or the call cannot
    be lowered on its own (a sub-module's call that took a graph object as an argument, or
    that only works inside its parent's call). `cache` holds the counts of calls already
    lowered, by structure and shapes: a stack of identical blocks is lowered once."""
    if any(isinstance(x, _Opaque) for x in jax.tree.leaves((args, kwargs))):
        return None
    pure = _Pure(module, args, kwargs)
    dynamic = {*pure.nodes, *pure.arrays}
    static = tuple(x for i, x in enumerate(pure.leaves) if i not in dynamic)
    key: Any = (pure.graphdef, tuple(pure.abstract), pure.treedef, static, method, vjp)
    try:
        found = cache.get(key, _MISSING)
    except TypeError:  # an unhashable argument: no caching
        found, key = _MISSING, None
    if found is not _MISSING:
        return found

    def forward(values: list) -> list:
        copy, call_args, call_kwargs = pure.build(values)
        out = getattr(copy, method)(*call_args, **call_kwargs)
        return [x for x in jax.tree.leaves(out) if is_array(x)]

    fn: Callable = forward
    if vjp:
        diff = [i for i, x in enumerate(pure.abstract) if _inexact(x)]

        def forward_and_backward(values: list) -> list:
            def f(diff_values: list) -> list:
                full = list(values)
                for i, v in zip(diff, diff_values, strict=True):
                    full[i] = v
                return [y for y in forward(full) if _inexact(y)]

            outs, pullback = jax.vjp(f, [values[i] for i in diff])
            return pullback([jnp.ones_like(y) for y in outs])

        fn = forward_and_backward
    try:
        flops = _flops(jax.jit(fn).lower(pure.abstract))
    except Exception:  # an estimate: a call that cannot be lowered on its own shows "-"
        flops = None
    if key is not None:
        cache[key] = flops
    return flops


# -- Variable counts -------------------------------------------------------------------------
def _kind(value: Any) -> str:
    """The column a Variable (or a raw array attribute) is counted in."""
    if isinstance(value, RngState):
        return "RngState"  # RngKey and RngCount together, as flax does
    if isinstance(value, Variable):
        return type(value).__name__
    return "array"


def _stats(node: Any) -> dict[str, tuple[int, int]]:
    """``{kind: (elements, bytes)}`` over every Variable and array of `node`'s subgraph."""
    out: dict[str, tuple[int, int]] = {}
    for _, value in iter_graph(node):
        if isinstance(value, Variable):
            arrays = [x for x in jax.tree.leaves(value.get_value()) if is_array(x)]
        elif is_array(value):
            arrays = [value]
        else:
            continue
        kind = _kind(value)
        count, size = out.get(kind, (0, 0))
        for x in arrays:
            n = math.prod(x.shape)
            count, size = count + n, size + n * x.dtype.itemsize
        out[kind] = (count, size)
    return out


def _bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    scaled = float(n)
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        scaled /= 1000
        if scaled < 1000 or unit == "PB":
            break
    return f"{scaled:.1f} {unit}"


def _count(stat: tuple[int, int] | None) -> str:
    return "" if stat is None else f"{stat[0]:,} ({_bytes(stat[1])})"


# -- cells and the table ---------------------------------------------------------------------
def _fmt(x: Any) -> str:
    """One value of a call's inputs or outputs: ``float32[8,4]`` for an array."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return f"{x.dtype}[{','.join(map(str, x.shape))}]"
    if isinstance(x, _Opaque):
        return x.name
    if isinstance(x, Variable):
        return f"{type(x).__name__}({_fmt(x.get_value())})"
    if isinstance(x, tuple):
        inner = ", ".join(map(_fmt, x))
        return f"({inner},)" if len(x) == 1 else f"({inner})"
    if isinstance(x, list):
        return f"[{', '.join(map(_fmt, x))}]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in x.items()) + "}"
    text = repr(x)
    return text if len(text) <= 30 else text[:27] + "..."


def _inputs_cell(info: CallInfo) -> str:
    if info.method is None:
        return "(not called)"
    lines = [_fmt(a) for a in info.args] + [f"{k}={_fmt(v)}" for k, v in info.kwargs.items()]
    return "\n".join(lines)


def _outputs_cell(info: CallInfo) -> str:
    if info.method is None:
        return ""
    if isinstance(info.outputs, tuple) and info.outputs:
        return "\n".join(map(_fmt, info.outputs))
    return _fmt(info.outputs)


def _flops_cell(info: CallInfo, flops: int | None) -> str:
    if info.method is None:
        return ""
    return "-" if flops is None else f"{flops:,}"


_JUSTIFY = {"left": str.ljust, "right": str.rjust, "center": str.center}


def _render(
    headers: list[str],
    justify: list[str],
    body: list[list[str]],
    total: list[str],
    *,
    title: str | None,
    caption: str | None,
    show_header: bool,
    show_lines: bool,
) -> str:
    """A plain-text grid; cells may hold several lines."""
    grid = [[cell.split("\n") for cell in row] for row in [headers, *body, total]]
    widths = [max(len(line) for row in grid for line in row[j]) for j in range(len(headers))]

    def rule(char: str) -> str:
        return "+" + "+".join(char * (w + 2) for w in widths) + "+"

    def lines(row: list[list[str]]) -> list[str]:
        out = []
        for i in range(max(len(cell) for cell in row)):
            parts = [
                _JUSTIFY[justify[j]](cell[i] if i < len(cell) else "", widths[j])
                for j, cell in enumerate(row)
            ]
            out.append("| " + " | ".join(parts) + " |")
        return out

    out = [rule("-")]
    if show_header:
        out += [*lines(grid[0]), rule("=")]
    for k, row in enumerate(grid[1:-1]):
        if k and show_lines:
            out.append(rule("-"))
        out += lines(row)
    out += [rule("="), *lines(grid[-1]), rule("-")]
    width = len(out[0])
    if title:
        out.insert(0, title.center(width).rstrip())
    if caption:
        out += [line.center(width).rstrip() for line in caption.split("\n")]
    return "\n".join(out)


# -- the public function ---------------------------------------------------------------------
_TABLE_KEYS = frozenset({"title", "caption", "show_header", "show_lines"})
_COLUMN_KEYS = frozenset({"justify"})

_NO_METHOD = (
    "nnx.tabulate(..., method={method!r}): {cls} has no method {method!r} to run.\n"
    "Fix: pass the name of one of its methods, e.g. method='{example}' ({cls} has: "
    "{available})."
)


def _check_options(
    model: Any,
    depth: Any,
    method: Any,
    row_filter: Any,
    table_kwargs: Mapping[str, Any],
    column_kwargs: Mapping[str, Any],
) -> None:
    if not is_node(model):
        raise ArgumentError(
            f"nnx.tabulate summarises a Module (or another nnx graph object), got a "
            f"{type(model).__name__}.\nFix: pass the model itself, e.g. "
            "nnx.tabulate(model, x); to summarise a function's shapes use jax.eval_shape."
        )
    if not isinstance(method, str):
        raise ArgumentError(
            f"nnx.tabulate: method must be the name of a method of the model (a str), got "
            f"{method!r}.\nFix: e.g. nnx.tabulate(model, x, method='encode')."
        )
    if not callable(getattr(model, method, None)):
        cls = type(model).__name__
        available = sorted(_methods(type(model))) if isinstance(model, Module) else []
        raise AttributeNotFoundError(
            _NO_METHOD.format(
                method=method,
                cls=cls,
                example=available[0] if available else "__call__",
                available=", ".join(available) or "no public methods",
            )
        )
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ArgumentError(
            f"nnx.tabulate: depth is the number of module levels shown below the root (an "
            f"int >= 0, or None for all), got {depth!r}.\nFix: e.g. depth=1 for the root and "
            "its direct sub-modules."
        )
    if row_filter is not None and not callable(row_filter):
        raise ArgumentError(
            f"nnx.tabulate: row_filter must be a function of a CallInfo returning a bool, got "
            f"{row_filter!r}.\nFix: e.g. row_filter=lambda row: row.method is not None."
        )
    for name, given, known in (
        ("table_kwargs", table_kwargs, _TABLE_KEYS),
        ("column_kwargs", column_kwargs, _COLUMN_KEYS),
    ):
        ignored = sorted(set(given) - known)
        if ignored:
            warnings.warn(
                f"nnx.tabulate ignores {name} {ignored}: nnx renders a plain-text table "
                f"(without rich) and only knows {sorted(known)}.",
                stacklevel=3,
            )
    justify = column_kwargs.get("justify")
    if justify is not None and justify not in _JUSTIFY:
        raise ArgumentError(
            f"nnx.tabulate: column_kwargs justify must be one of {sorted(_JUSTIFY)}, got "
            f"{justify!r}."
        )


def _preorder(paths: Sequence[Path]) -> list[Path]:
    """Module paths listed by `iter_modules` (children first) put parents first, siblings
    kept in their order."""
    rank = {p: i for i, p in enumerate(paths)}

    def before(a: Path, b: Path) -> int:
        if a == b[: len(a)]:
            return -1
        if b == a[: len(b)]:
            return 1
        return rank[a] - rank[b]

    return sorted(paths, key=functools.cmp_to_key(before))


def _add_costs(
    rows: list[CallInfo],
    model: Any,
    modules: dict[Path, Any],
    args: tuple,
    kwargs: dict,
    forward: bool,
    vjp: bool,
) -> None:
    """Fills in the FLOPs (`forward`) and VJP FLOPs (`vjp`) of each called row."""
    cache: dict = {}
    for info in rows:
        if info.method is None:
            continue
        if info.path == ():  # the caller's own arguments: graph objects among them work too
            call = (model, info.method, args, kwargs)
        else:
            call = (modules[info.path], info.method, info.args, info.kwargs)
        if forward:
            info.flops = _call_cost(*call, vjp=False, cache=cache)
        if vjp:
            info.vjp_flops = _call_cost(*call, vjp=True, cache=cache)


def tabulate(
    obj: Any,
    *input_args: Any,
    depth: int | None = None,
    method: str = "__call__",
    row_filter: Callable[[CallInfo], bool] | None = None,
    table_kwargs: Mapping[str, Any] = MappingProxyType({}),
    column_kwargs: Mapping[str, Any] = MappingProxyType({}),
    console_kwargs: Mapping[str, Any] = MappingProxyType({}),
    compute_flops: bool = False,
    compute_vjp_flops: bool = False,
    **input_kwargs: Any,
) -> str:
    """A table summarising `obj` (a model): a row per module call, with shapes, Variables, FLOPs.

    ``model.<method>(*input_args, **input_kwargs)`` runs once, abstractly
    (``jax.eval_shape`` on a copy: nothing is allocated, the model is left exactly as it
    was, and a model built with ``nnx.eval_shape`` works too). Each row shows a module's path
    (empty for the root), its class (``Class.method`` for a method other than ``__call__``),
    the shapes and dtypes of the call's inputs and outputs, and per Variable kind (``Param``,
    ``BatchStat``, ``RngState``, ...) the number of elements and bytes in that module's
    subgraph, on the module's first row. Rows come in call order, the root first; modules
    the call does not reach follow, marked ``(not called)``. The last row holds the
    model's totals (the root's call for FLOPs), and a caption the total of all Variables.
    Printing is the caller's: the table is returned.

    Args:
      obj: the model, a Module (or another nnx graph object with the method).
      *input_args: the method's positional arguments: arrays or ``jax.ShapeDtypeStruct``.
      depth: how many module levels below the root to show (``0``: the root alone, ``1``:
        also its direct sub-modules, including those in lists and dicts); None shows all.
        The totals always cover the whole model.
      method: the name of the method to run.
      row_filter: keeps the rows for which it returns True; it gets each row's
        :class:`CallInfo` (FLOPs filled in when computed). The totals are not affected.
      table_kwargs: ``title`` (default ``"<Class> Summary"``), ``caption``,
        ``show_header`` and ``show_lines`` (rules between rows); other keys (rich's)
        are ignored with a warning.
      column_kwargs: ``justify`` (``"left"``, ``"right"`` or ``"center"``) for every column;
        other keys are ignored with a warning.
      console_kwargs: accepted for flax compatibility and ignored: nnx renders plain text
        and has no console to configure.
      compute_flops: add a ``flops`` column: XLA's cost analysis of each call lowered on its
        own (``-`` where XLA reports nothing or the call cannot be lowered alone).
      compute_vjp_flops: add a ``vjp_flops`` column: the same for the forward and backward
        pass (a VJP w.r.t. the floating-point state and inputs).
      **input_kwargs: the method's keyword arguments.

    Returns:
      The table, as a string.

    Raises:
      ArgumentError: `model` is not a graph object, or an option has a wrong type or value.
      AttributeNotFoundError: the model has no method named `method`.

    Example:
      >>> class MLP(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.hidden = nnx.Linear(4, 8, rngs=rngs)
      ...     self.bn = nnx.BatchNorm(8, rngs=rngs)
      ...     self.out = nnx.Linear(8, 2, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.out(nnx.relu(self.bn(self.hidden(x))))
      >>> print(nnx.tabulate(MLP(nnx.Rngs(0)), jnp.ones((3, 4))))
                                       MLP Summary
      +--------+-----------+--------------+--------------+------------+-----------+
      | path   | type      | inputs       | outputs      |      Param | BatchStat |
      +========+===========+==============+==============+============+===========+
      |        | MLP       | float32[3,4] | float32[3,2] | 74 (296 B) | 16 (64 B) |
      +--------+-----------+--------------+--------------+------------+-----------+
      | hidden | Linear    | float32[3,4] | float32[3,8] | 40 (160 B) |           |
      +--------+-----------+--------------+--------------+------------+-----------+
      | bn     | BatchNorm | float32[3,8] | float32[3,8] |  16 (64 B) | 16 (64 B) |
      +--------+-----------+--------------+--------------+------------+-----------+
      | out    | Linear    | float32[3,8] | float32[3,2] |  18 (72 B) |           |
      +========+===========+==============+==============+============+===========+
      |        |           |              | Total        | 74 (296 B) | 16 (64 B) |
      +--------+-----------+--------------+--------------+------------+-----------+
                               Total Parameters: 90 (360 B)
    """
    del console_kwargs  # no console: the table is returned as text
    model = obj
    _check_options(model, depth, method, row_filter, table_kwargs, column_kwargs)
    modules = dict(iter_modules(model))
    calls = _trace(model, method, input_args, input_kwargs)

    def level(path: Path) -> int:
        return sum(path[:n] in modules for n in range(1, len(path) + 1))

    called = {info.path for info in calls}
    uncalled = [
        CallInfo(None, p, type(modules[p]), None)
        for p in _preorder(list(modules))
        if p not in called
    ]
    rows = [info for info in calls + uncalled if depth is None or level(info.path) <= depth]
    if compute_flops or compute_vjp_flops:
        _add_costs(rows, model, modules, input_args, input_kwargs, compute_flops, compute_vjp_flops)
    if row_filter is not None:
        rows = [info for info in rows if row_filter(info)]

    totals = _stats(model)
    first = ("Param", "BatchStat")
    kinds = [k for k in first if k in totals] + [k for k in totals if k not in first]
    headers = ["path", "type", "inputs", "outputs"]
    justify = ["left"] * 4
    numeric = []
    if compute_flops:
        numeric.append(("flops", lambda info: _flops_cell(info, info.flops)))
    if compute_vjp_flops:
        numeric.append(("vjp_flops", lambda info: _flops_cell(info, info.vjp_flops)))
    headers += [name for name, _ in numeric] + kinds
    justify += ["right"] * (len(numeric) + len(kinds))
    if "justify" in column_kwargs:
        justify = [column_kwargs["justify"]] * len(headers)

    body, counted = [], set()
    for info in rows:
        kind = info.type.__name__
        if info.method not in (None, "__call__"):
            kind += f".{info.method}"
        cells = [format_path(info.path, "").lstrip("."), kind, _inputs_cell(info)]
        cells += [_outputs_cell(info)] + [cell(info) for _, cell in numeric]
        if info.path in counted:
            stats = {}
        else:
            counted.add(info.path)
            stats = totals if info.path == () else _stats(modules[info.path])
        body.append(cells + [_count(stats.get(k)) for k in kinds])
    total = ["", "", "", "Total"] + [cell(calls[0]) for _, cell in numeric]
    total += [_count(totals[k]) for k in kinds]

    everything = (sum(c for c, _ in totals.values()), sum(b for _, b in totals.values()))
    caption = f"Total Parameters: {_count(everything)}"
    if table_kwargs.get("caption"):
        caption = f"{table_kwargs['caption']}\n{caption}"
    return _render(
        headers,
        justify,
        body,
        total,
        title=table_kwargs.get("title", f"{type(model).__name__} Summary"),
        caption=caption,
        show_header=table_kwargs.get("show_header", True),
        show_lines=table_kwargs.get("show_lines", True),
    )
