"""Where a Variable may take a traced value: the transform frames and the leak checks.

While an nnx transform traces a function, the Variables it rebuilt (or that were created
during the trace) are registered in the innermost frame; assigning a tracer to any other
Variable would leak it (:func:`check_frame` raises). When a frame closes, Variables still
holding its tracers get a :class:`Leaked` stand-in value that explains the mistake when used.
Split out of ``variablelib`` (which re-exports these names) to keep that file readable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

from ._heap_path import find_path

if TYPE_CHECKING:
    from .variablelib import Variable


# Transform frames: while an nnx transform traces a function, the ids of the Variables it
# rebuilt (or that were created during the trace) are in FRAMES[-1]. Assigning a traced value
# to any other Variable would leak the tracer into an object the transform cannot write back.
class TraceFrame(set):
    """The ids of the Variables one transform trace rebuilt or created (and the objects)."""

    def __init__(self) -> None:
        super().__init__()
        self.objs: list[Variable] = []

    def register(self, var: Variable) -> None:
        self.add(id(var))
        self.objs.append(var)

    def close(self) -> None:
        # The trace is over: these Variables hold tracers that mean nothing any more. Any
        # later use of one (it leaked through a closure, a global, a list) raises a clear error.
        for var in self.objs:
            value = var._value
            if isinstance(value, jax.core.Tracer) or any(
                isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value)
            ):
                object.__setattr__(var, "_value", Leaked(type(var).__name__))
        self.objs.clear()


FRAMES: list[TraceFrame] = []

try:  # a weak reference to the JAX trace now running (the eval trace outside any transform)
    from jax._src.core import trace_state as jax_trace
except ImportError:  # pragma: no cover - a JAX without it: the public, slower equivalent

    class _OpaqueTrace:
        @property
        def value(self) -> Any:
            from jax.extend.core import get_opaque_trace_state

            return get_opaque_trace_state()

    jax_trace = _OpaqueTrace()

JaxTracer = jax.core.Tracer

_LEAK_MESSAGE = (
    "{what} was assigned a traced value inside an nnx transform, but it was "
    "not passed to that transform: it is reached through a closure or a global, so the "
    "transform cannot carry the new value back out, and the Variable would hold a leaked "
    "tracer. It keeps its old value.\nFix: pass the module (or Variable) that owns it as an "
    "argument of the transformed function, e.g. nnx.jit(lambda model, x: ...)(model, x)."
)

_JAX_LEAK_MESSAGE = (
    "{what} was assigned a traced value inside a JAX transform it was not passed to (a raw "
    "jax.jit, jax.grad, jax.vmap, jax.lax.scan/cond/while_loop... that reaches it through a "
    "closure or a global): the value is a tracer that means nothing once that transform "
    "returns, and the Variable would keep it (JAX's UnexpectedTracerError on a later call). "
    "It keeps its old value.\nFix: use the nnx transform instead (nnx.jit, nnx.grad, nnx.vmap, "
    "nnx.scan, nnx.cond, nnx.fori_loop...), which carries the new value back out, e.g. "
    "nnx.jit(lambda model, x: ...)(model, x); or pass the module to the JAX transform as an "
    "argument and return its new state (nnx.split / nnx.merge)."
)


def check_frame(var: Variable, value: Any) -> None:
    """Raises TraceContextError if giving `var` the traced `value` would leak the tracer.

    Called only for Tracer values (an ``isinstance`` on the hot path of ``v.value = x``).
    Leaking means `var` belongs to another trace than the one running: an nnx transform that
    did not rebuild it, or a JAX transform other than the one (or outside the one) that was
    running when the Variable was created, rebuilt or unflattened.
    """
    if FRAMES and id(var) not in FRAMES[-1]:
        message = _LEAK_MESSAGE
    else:
        born = getattr(var, "_nnx_trace", None)
        if born is None or born == jax_trace.value:
            return
        message = _JAX_LEAK_MESSAGE
    from .errors import TraceContextError

    raise TraceContextError(message.format(what=_describe(var)))


def _describe(var: Variable) -> str:
    """``Param Model.layers[0].kernel``: the Variable's class and, when it can be found, where
    it sits; else its class and metadata. For error messages only (it searches the heap)."""
    try:
        path = find_path(var)
    except Exception:  # best effort: never hide the real error behind this one
        path = None
    if path:
        return f"{type(var).__name__} {path}"
    meta = dict(var._meta)
    detail = f", metadata {meta}" if meta else ""
    return f"{type(var).__name__} (not found in any module{detail})"


_LEAKED_MESSAGE = (
    "This {cls} was created inside an nnx transform (jit, grad, vmap, scan...) and used "
    "after that transform finished: it leaked out of the trace (through a closure, a global "
    "or a container the transform cannot see), and its value was a tracer that no longer "
    "means anything.\nFix: return the object from the transformed function (nnx writes "
    "state changes back to the objects you pass in), instead of storing it elsewhere."
)


class Leaked:
    """Stands in for the value of a Variable that leaked out of a transform's trace."""

    __slots__ = ("cls",)

    def __init__(self, cls: str):
        self.cls = cls

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        from .errors import TraceContextError

        raise TraceContextError(_LEAKED_MESSAGE.format(cls=self.cls))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()

    def __repr__(self) -> str:
        return f"<leaked {self.cls} value>"


for _dunder in [
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__truediv__",
    "__rtruediv__",
    "__matmul__",
    "__rmatmul__",
    "__pow__",
    "__rpow__",
    "__neg__",
    "__getitem__",
    "__setitem__",
    "__len__",
    "__iter__",
    "__bool__",
    "__float__",
    "__int__",
    "__array__",
    "__jax_array__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__abs__",
]:
    setattr(Leaked, _dunder, Leaked._fail)
