"""Variables: the mutable boxes that hold a model's state.

A :class:`Variable` holds one value (an array or any pytree) plus free-form metadata. Its
subclasses name the kind of state: :class:`Param` (trained), :class:`BatchStat` (running
statistics), :class:`Cache` (decoding caches), :class:`Intermediate` (sown values) and
:class:`Perturbation`. Users subclass :class:`Variable` for kinds of their own.

Assigning a value (``v.value = x``, ``v[...] = x``, ``v.set_value(x)``) is cheap and never
invalidates cached graph structure; changing metadata is a structural change.

Example:
  >>> w = nnx.Param(jnp.ones((2, 3)), tag='dense')
  >>> w.shape, w.tag
  ((2, 3), 'dense')
  >>> (jnp.ones((1, 2)) @ w).tolist()
  [[2.0, 2.0, 2.0]]
  >>> w[...] = 0.5
  >>> float(w.sum())
  3.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import jax
import numpy as np
from jax.tree_util import GetAttrKey

from . import _treescope, _version
from ._heap_path import find_path
from ._repr import shown_fields
from ._sharding_meta import _place_new_value
from .errors import ArgumentError, AttributeNotFoundError, KeyNotFoundError

__all__ = [
    "BatchStat",
    "Cache",
    "Intermediate",
    "Param",
    "Perturbation",
    "Variable",
    "VariableMetadata",
    "register_variable_name",
    "variable_name_from_type",
    "variable_type_from_name",
    "with_metadata",
]

A = TypeVar("A")
_MISSING: Any = object()
_OWN_FIELDS = frozenset({"_value", "_meta", "_nnx_stamp", "_nnx_trace"})


class _Meta(dict):
    """Variable metadata: a dict that is hashable so it can be pytree aux data.

    Never mutated in place once attached to a Variable (set_metadata copies), so its hash is
    stable. Unhashable entries (lists, dicts) hash by their repr.
    """

    __slots__ = ("_hash",)

    def __hash__(self) -> int:  # type: ignore[override]
        try:
            return self._hash
        except AttributeError:
            pass
        try:
            h = hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))
        except TypeError:
            h = hash(repr(sorted(self.items(), key=lambda kv: kv[0])))
        self._hash = h
        return h


_EMPTY_META = _Meta()


# Transform frames: while an nnx transform traces a function, the ids of the Variables it
# rebuilt (or that were created during the trace) are in _FRAMES[-1]. Assigning a traced value
# to any other Variable would leak the tracer into an object the transform cannot write back.
class _Frame(set):
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
                object.__setattr__(var, "_value", _Leaked(type(var).__name__))
        self.objs.clear()


_FRAMES: list[_Frame] = []

try:  # a weak reference to the JAX trace now running (the eval trace outside any transform)
    from jax._src.core import trace_state as _jax_trace
except ImportError:  # pragma: no cover - a JAX without it: the public, slower equivalent

    class _OpaqueTrace:
        @property
        def value(self) -> Any:
            from jax.extend.core import get_opaque_trace_state

            return get_opaque_trace_state()

    _jax_trace = _OpaqueTrace()  # type: ignore[assignment]

_Tracer = jax.core.Tracer

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


def _check_frame(var: Variable, value: Any) -> None:
    """Raises TraceContextError if giving `var` the traced `value` would leak the tracer.

    Called only for Tracer values (an ``isinstance`` on the hot path of ``v.value = x``).
    Leaking means `var` belongs to another trace than the one running: an nnx transform that
    did not rebuild it, or a JAX transform other than the one (or outside the one) that was
    running when the Variable was created, rebuilt or unflattened.
    """
    if _FRAMES and id(var) not in _FRAMES[-1]:
        message = _LEAK_MESSAGE
    else:
        born = getattr(var, "_nnx_trace", None)
        if born is None or born == _jax_trace.value:
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


class _Leaked:
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
    setattr(_Leaked, _dunder, _Leaked._fail)


def _binary(name: str):
    def op(self, other):
        if isinstance(other, Variable):
            other = other._value
        return getattr(self._value, name)(other)

    op.__name__ = name
    return op


_INPLACE_MESSAGE = (
    "`{cls} {op}= x` would replace the {cls} by a plain array (Python falls back to "
    "`v = v {op} x`), silently dropping its type and metadata from the model's state; as in "
    "flax.nnx, in-place operators on a Variable itself are not supported.\n"
    "Fix: update its value in place, `v[...] {op}= x` or `v.value = v.value {op} x`."
)


def _inplace(op: str):
    def method(self, other):
        from .errors import VariableInPlaceError

        raise VariableInPlaceError(_INPLACE_MESSAGE.format(cls=type(self).__name__, op=op))

    return method


def _unary(fn):
    def op(self):
        return fn(self._value)

    return op


@dataclasses.dataclass
class VariableMetadata(Generic[A]):
    """A value with the metadata of the Variable it is meant for.

    What an initializer wrapped by :func:`with_metadata` (or ``nnx.with_partitioning``)
    returns: a layer passes it to ``nnx.Param(...)``, which unwraps it and merges `metadata`
    into its own (an entry here wins over a keyword argument of the same name, as in flax).

    Attributes:
      raw_value: the value (usually an array).
      metadata: the Variable metadata to add.
    """

    raw_value: A
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_HOOK_NAMES = ("on_set_value", "on_get_value", "on_create_value", "on_add_axis", "on_remove_axis")
_HOOKS_MESSAGE = (
    "nnx.with_metadata got {names}: Variable hooks are not supported (flax.nnx 0.12 deprecates "
    "them), so nothing would run them.\nFix: transform the value in the initializer itself "
    "(what on_create_value did), or where your code reads or writes it, e.g. "
    "`v.value = jnp.clip(x, -1, 1)`."
)


def with_metadata(initializer: Callable[..., Any], **metadata: Any) -> Callable[..., Any]:
    """Wraps an initializer so the Variable created from its result carries `metadata`.

    The wrapped initializer returns a :class:`VariableMetadata`; Variables unwrap it. Any
    layer argument that takes an initializer (``kernel_init``, ``bias_init``...) accepts it.

    Args:
      initializer: a function ``(key, shape, dtype) -> array``.
      **metadata: the metadata to attach (readable as attributes of the Variable).

    Returns:
      An initializer with the same arguments.

    Raises:
      ArgumentError: a Variable hook (``on_set_value``...) was given; nnx has no hooks.

    Example:
      >>> init = nnx.with_metadata(nnx.initializers.ones, note='tied')
      >>> layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
      >>> layer.kernel.note, layer.kernel.value.sum().item()
      ('tied', 6.0)
    """
    hooks = sorted(k for k in _HOOK_NAMES if metadata.get(k))
    if hooks:
        raise ArgumentError(_HOOKS_MESSAGE.format(names=", ".join(hooks)))
    metadata = {k: v for k, v in metadata.items() if k not in _HOOK_NAMES}
    return MetadataInitializer(initializer, metadata)


class MetadataInitializer:
    """An initializer whose result carries Variable metadata (what :func:`with_metadata`
    returns). A plain object rather than a closure: layers holding one pickle, and two
    built alike compare equal, so identically built layers share a GraphDef."""

    __slots__ = ("__wrapped__", "metadata")

    def __init__(self, initializer: Callable[..., Any], metadata: dict[str, Any]):
        self.__wrapped__ = initializer
        self.metadata = dict(metadata)

    def __call__(self, *args: Any, **kwargs: Any) -> VariableMetadata:
        return VariableMetadata(self.__wrapped__(*args, **kwargs), dict(self.metadata))

    def _key(self) -> tuple:
        return (self.__wrapped__, tuple(sorted(self.metadata.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetadataInitializer):
            return NotImplemented
        try:
            return bool(self._key() == other._key())
        except Exception:
            return self is other

    def __hash__(self) -> int:
        try:
            return hash(self._key())
        except TypeError:  # unhashable metadata (a list): equal objects still hash alike
            return hash((self.__wrapped__, tuple(sorted(self.metadata))))

    def __getstate__(self) -> tuple:
        return (self.__wrapped__, self.metadata)

    def __setstate__(self, state: tuple) -> None:
        self.__wrapped__, self.metadata = state

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.metadata.items())
        return f"with_metadata({self.__wrapped__!r}, {items})"


class Variable(Generic[A]):
    """A mutable container for one piece of model state, with metadata.

    A Variable reads like its value: arithmetic, comparisons and array attributes act on the
    value. That includes equality, as in flax.nnx: ``v == x`` and ``v != x`` compare values
    elementwise (an array for an array value), so test whether two names hold the same
    Variable with ``is``, and avoid ``in``, ``list.index`` and ``list.remove`` on lists of
    Variables (they call ``==``). Unlike flax.nnx, Variables stay hashable, by identity:
    they can key dicts and go in sets (``v in {v}`` is identity-based).

    Args:
      value: the initial value: an array, a scalar, or any pytree.
      **metadata: free-form metadata (e.g. ``out_sharding=('in', 'out')``, see ``nnx.spmd``),
        readable as attributes (``v.out_sharding``) and through :meth:`get_metadata`. `value`
        may be a :class:`VariableMetadata`, whose metadata is added.

    Example:
      >>> w = nnx.Param(jnp.array([1.0, 2.0]))
      >>> (w == 1.0).tolist(), len({w: 'first'})
      ([True, False], 1)
      >>> v = nnx.Variable(jnp.zeros(3), note='counter')
      >>> v.value = v.value + 1
      >>> v.get_metadata()
      {'note': 'counter'}
      >>> v.set_metadata(note='steps')
      >>> v.note
      'steps'
    """

    # _nnx_trace: (a weak reference to) the JAX trace the Variable was created, rebuilt,
    # unflattened or copied in; assigning it a tracer of another trace raises (_check_frame).
    __slots__ = ("__weakref__", "_meta", "_nnx_stamp", "_nnx_trace", "_value")
    _nnx_collection: ClassVar[str | None] = None

    def __init__(self, value: A, **metadata: Any):
        if isinstance(value, VariableMetadata):
            metadata = {**metadata, **value.metadata}
            value = value.raw_value
        if isinstance(value, Variable):
            metadata = {**value._meta, **metadata}
            value = value._value
        if metadata:
            # Places the value of a new Variable whose metadata asks for a sharding
            # (``out_sharding``) on the mesh; see nnx._sharding_meta (the floor below this one).
            value = _place_new_value(type(self), value, metadata)
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_meta", _Meta(metadata) if metadata else _EMPTY_META)
        object.__setattr__(self, "_nnx_stamp", 0)
        _set_trace(self, _jax_trace.value)
        if _FRAMES:
            _FRAMES[-1].register(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    # -- value access -----------------------------------------------------------------
    @property
    def value(self) -> A:
        """The held value."""
        return self._value

    @value.setter
    def value(self, value: A) -> None:
        if isinstance(value, Variable):
            value = value._value
        if isinstance(value, _Tracer):  # the only cost on the hot path
            _check_frame(self, value)
        object.__setattr__(self, "_value", value)

    raw_value = value

    def get_value(self) -> A:
        """Returns the held value (same as ``v.value``)."""
        return self._value

    def set_value(self, value: A) -> None:
        """Sets the held value (same as ``v.value = value``)."""
        self.value = value

    get_raw_value = get_value
    set_raw_value = set_value

    def __getitem__(self, key: Any) -> Any:
        return self._value[key]  # type: ignore[index]

    def __setitem__(self, key: Any, item: Any) -> None:
        if isinstance(item, Variable):
            item = item._value
        current = self._value
        if isinstance(current, jax.Array) or hasattr(current, "at"):
            new = current.at[key].set(item)  # type: ignore[union-attr]
        elif isinstance(current, np.ndarray):
            new = current.copy()
            new[key] = item
        elif key is Ellipsis:
            new = item
        else:
            current[key] = item  # type: ignore[index]
            return
        if isinstance(new, _Tracer):
            _check_frame(self, new)
        object.__setattr__(self, "_value", new)

    # -- metadata ---------------------------------------------------------------------
    def get_metadata(self, name: str | None = None, default: Any = _MISSING) -> Any:
        """Returns all metadata as a dict, or one entry by name.

        Args:
          name: the entry to read; all metadata when omitted.
          default: returned when `name` is absent.

        Raises:
          KeyNotFoundError: `name` is absent and no default was given (also a KeyError).
        """
        if name is None:
            return dict(self._meta)
        if name in self._meta:
            return self._meta[name]
        if default is _MISSING:
            raise KeyNotFoundError(
                f"{type(self).__name__} has no metadata {name!r}; it has "
                f"{sorted(self._meta) or 'none'}.\nFix: pass a default, "
                f"v.get_metadata({name!r}, None), or set it first, "
                f"v.set_metadata({name!r}, value)."
            )
        return default

    def set_metadata(self, *args: Any, **kwargs: Any) -> None:
        """Sets metadata entries: ``set_metadata(k=v)``, ``set_metadata({'k': v})`` or
        ``set_metadata('k', v)``. A structural change: cached graph structure is refreshed."""
        if len(args) == 1 and isinstance(args[0], Mapping):
            updates = dict(args[0])
        elif len(args) == 2 and isinstance(args[0], str):
            updates = {args[0]: args[1]}
        elif args:
            raise ArgumentError(
                f"{type(self).__name__}.set_metadata takes a mapping, a (name, value) pair, or "
                f"keyword arguments; got positional arguments {args!r}.\nFix: "
                "v.set_metadata(name=value), v.set_metadata('name', value) or "
                "v.set_metadata({'name': value})."
            )
        else:
            updates = {}
        updates.update(kwargs)
        if not updates:
            return
        object.__setattr__(self, "_meta", _Meta({**self._meta, **updates}))
        object.__setattr__(self, "_nnx_stamp", _version.bump())

    def del_metadata(self, name: str) -> None:
        """Removes one metadata entry.

        Raises:
          KeyNotFoundError: the Variable has no metadata `name` (also a KeyError).
        """
        meta = dict(self._meta)
        if name not in meta:
            raise KeyNotFoundError(
                f"{type(self).__name__}.del_metadata({name!r}): it has no such metadata; it "
                f"has {sorted(meta) or 'none'}.\nFix: check the name first, "
                f"`if {name!r} in v.get_metadata(): v.del_metadata({name!r})`."
            )
        del meta[name]
        object.__setattr__(self, "_meta", _Meta(meta))
        object.__setattr__(self, "_nnx_stamp", _version.bump())

    @property
    def type(self) -> type[Variable]:
        """The Variable's class (``nnx.Param`` for a Param)."""
        return type(self)

    def replace(self, value: Any = _MISSING, **metadata: Any) -> Variable[A]:
        """A new Variable of the same type, with a new value and/or updated metadata."""
        new = self.copy()
        if value is not _MISSING:
            object.__setattr__(new, "_value", value)
        if metadata:
            object.__setattr__(new, "_meta", _Meta({**self._meta, **metadata}))
        return new

    def copy(self) -> Variable[A]:
        """A shallow copy: a new Variable sharing the (immutable) array value."""
        new = _new(type(self))
        _set_value(new, self._value)  # slot descriptors directly: merge copies every leaf
        _set_meta(new, self._meta)
        _set_stamp(new, 0)
        _set_trace(new, _jax_trace.value)
        if _FRAMES:
            _FRAMES[-1].register(new)
        return new

    __copy__ = copy

    def __deepcopy__(self, memo: dict) -> Variable[A]:
        import copy as _copy

        new = object.__new__(type(self))
        memo[id(self)] = new
        object.__setattr__(new, "_value", _copy.deepcopy(self._value, memo))
        object.__setattr__(new, "_meta", _Meta(_copy.deepcopy(dict(self._meta), memo)))
        object.__setattr__(new, "_nnx_stamp", 0)
        object.__setattr__(new, "_nnx_trace", _jax_trace.value)
        return new

    def __getstate__(self) -> dict:
        return {"value": self._value, "metadata": dict(self._meta)}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "_value", state["value"])
        object.__setattr__(self, "_meta", _Meta(state["metadata"]))
        object.__setattr__(self, "_nnx_stamp", 0)
        object.__setattr__(self, "_nnx_trace", _jax_trace.value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: metadata first, then the value's attributes
        # (shape, dtype, sum, ...), so a Variable reads like the array it holds.
        if name.startswith("__") or name in _OWN_FIELDS:
            raise AttributeError(name)
        meta = object.__getattribute__(self, "_meta")
        if name in meta:
            return meta[name]
        value = object.__getattribute__(self, "_value")
        try:
            return getattr(value, name)
        except AttributeError:
            raise AttributeNotFoundError(
                f"{type(self).__name__} has no attribute or metadata {name!r}, and its value "
                f"({type(value).__name__}) has no such attribute either.\nFix: check the "
                f"spelling, or set it as metadata first, v.set_metadata({name!r}, value)."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in ("value", "raw_value")
            or name in _OWN_FIELDS
            or (hasattr(type(self), name) and not name.startswith("_"))
        ):
            object.__setattr__(self, name, value)
        else:
            self.set_metadata(**{name: value})

    def __delattr__(self, name: str) -> None:
        if name in self._meta:
            self.del_metadata(name)
        else:
            object.__delattr__(self, name)

    # -- display (see _repr.py and _treescope.py) -------------------------------------
    def _nnx_display(self) -> tuple[str, type, list[tuple[str, Any]]]:
        """The value, then the metadata (sharding annotations...), private or None entries
        and plain callables left out."""
        meta = shown_fields(type(self), self._meta.items())
        return "object", type(self), [("value", self._value), *meta]

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    # -- array protocol ---------------------------------------------------------------
    def __jax_array__(self) -> jax.Array:
        return self._value  # type: ignore[return-value]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self._value, dtype=dtype)

    def __len__(self) -> int:
        return len(self._value)  # type: ignore[arg-type]

    def __iter__(self):
        return iter(self._value)  # type: ignore[call-overload]

    def __bool__(self) -> bool:
        return bool(self._value)

    def __contains__(self, item: Any) -> bool:
        return item in self._value  # type: ignore[operator]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._value(*args, **kwargs)  # type: ignore[operator]

    __add__ = _binary("__add__")
    __radd__ = _binary("__radd__")
    __sub__ = _binary("__sub__")
    __rsub__ = _binary("__rsub__")
    __mul__ = _binary("__mul__")
    __rmul__ = _binary("__rmul__")
    __truediv__ = _binary("__truediv__")
    __rtruediv__ = _binary("__rtruediv__")
    __floordiv__ = _binary("__floordiv__")
    __rfloordiv__ = _binary("__rfloordiv__")
    __mod__ = _binary("__mod__")
    __rmod__ = _binary("__rmod__")
    __pow__ = _binary("__pow__")
    __rpow__ = _binary("__rpow__")
    __matmul__ = _binary("__matmul__")
    __rmatmul__ = _binary("__rmatmul__")
    __and__ = _binary("__and__")
    __rand__ = _binary("__rand__")
    __or__ = _binary("__or__")
    __ror__ = _binary("__ror__")
    __xor__ = _binary("__xor__")
    __rxor__ = _binary("__rxor__")
    __lshift__ = _binary("__lshift__")
    __rlshift__ = _binary("__rlshift__")
    __rshift__ = _binary("__rshift__")
    __rrshift__ = _binary("__rrshift__")
    __lt__ = _binary("__lt__")
    __le__ = _binary("__le__")
    __gt__ = _binary("__gt__")
    __ge__ = _binary("__ge__")
    # Elementwise, as in flax.nnx: `v == x` compares the values (an array for an array
    # value). Hashing stays by identity, so Variables still key dicts and sets.
    __eq__ = _binary("__eq__")  # type: ignore[assignment]
    __ne__ = _binary("__ne__")  # type: ignore[assignment]
    __hash__ = object.__hash__
    __iadd__ = _inplace("+")
    __isub__ = _inplace("-")
    __imul__ = _inplace("*")
    __itruediv__ = _inplace("/")
    __ifloordiv__ = _inplace("//")
    __imod__ = _inplace("%")
    __ipow__ = _inplace("**")
    __imatmul__ = _inplace("@")
    __iand__ = _inplace("&")
    __ior__ = _inplace("|")
    __ixor__ = _inplace("^")
    __ilshift__ = _inplace("<<")
    __irshift__ = _inplace(">>")
    __neg__ = _unary(lambda x: -x)
    __pos__ = _unary(lambda x: +x)
    __abs__ = _unary(abs)
    __invert__ = _unary(lambda x: ~x)
    __float__ = _unary(float)
    __int__ = _unary(int)
    __complex__ = _unary(complex)
    __index__ = _unary(lambda x: x.__index__())


def _register_pytree(cls: type[Variable]) -> None:
    def flatten_with_keys(v: Variable):
        return ((_VALUE_KEY, v._value),), v._meta

    def flatten(v: Variable):
        return (v._value,), v._meta

    def unflatten(meta: _Meta, children: Any) -> Variable:
        new = object.__new__(cls)
        object.__setattr__(new, "_value", children[0])
        object.__setattr__(new, "_meta", meta)
        object.__setattr__(new, "_nnx_stamp", 0)
        object.__setattr__(new, "_nnx_trace", _jax_trace.value)
        if _FRAMES:
            _FRAMES[-1].register(new)
        return new

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


_VALUE_KEY = GetAttrKey("value")
_register_pytree(Variable)


_new = object.__new__
_set_value = Variable.__dict__["_value"].__set__
_set_meta = Variable.__dict__["_meta"].__set__
_set_stamp = Variable.__dict__["_nnx_stamp"].__set__
_set_trace = Variable.__dict__["_nnx_trace"].__set__


class Param(Variable[A]):
    """A trainable parameter. ``nnx.Optimizer`` and ``nnx.grad`` act on Params by default."""

    __slots__ = ()


class BatchStat(Variable[A]):
    """Statistics updated during training but not by gradients (e.g. BatchNorm means)."""

    __slots__ = ()


class Cache(Variable[A]):
    """State kept between calls at inference time (e.g. an attention KV cache)."""

    __slots__ = ()


class Intermediate(Variable[A]):
    """Values captured with ``Module.sow`` for inspection."""

    __slots__ = ()


class Perturbation(Variable[A]):
    """Zero-valued offsets added by ``Module.perturb`` to read gradients of intermediates."""

    __slots__ = ()


_NAME_TO_TYPE: dict[str, type[Variable]] = {}
_TYPE_TO_NAME: dict[type[Variable], str] = {}


def register_variable_name(name: str, typ: type[Variable], *, overwrite: bool = False) -> None:
    """Associates a collection name (as flax linen used: 'params') with a Variable type."""
    if not overwrite and name in _NAME_TO_TYPE and _NAME_TO_TYPE[name] is not typ:
        raise ArgumentError(
            f"register_variable_name: the collection name {name!r} is already registered for "
            f"{_NAME_TO_TYPE[name].__name__}, so it cannot name {typ.__name__} too.\nFix: "
            f"pick another name, or pass overwrite=True to replace it."
        )
    _NAME_TO_TYPE[name] = typ
    _TYPE_TO_NAME[typ] = name


def variable_type_from_name(name: str, *, allow_register: bool = False) -> type[Variable]:
    """The Variable type registered for a collection name."""
    if name not in _NAME_TO_TYPE:
        if not allow_register:
            raise ArgumentError(
                f"No Variable type is registered for collection {name!r}; known: "
                f"{sorted(_NAME_TO_TYPE)}.\nFix: nnx.register_variable_name({name!r}, MyType), "
                "or pass allow_register=True to create a Variable type for it."
            )
        typ = type(name, (Variable,), {"__slots__": ()})
        register_variable_name(name, typ)
    return _NAME_TO_TYPE[name]


def variable_name_from_type(typ: type[Variable], *, allow_register: bool = False) -> str:
    """The collection name registered for a Variable type (its lower-cased name otherwise)."""
    for base in typ.__mro__:
        if base in _TYPE_TO_NAME:
            return _TYPE_TO_NAME[base]
    if not allow_register:
        raise ArgumentError(
            f"No collection name is registered for {typ.__name__} (nor for its bases).\nFix: "
            f"nnx.register_variable_name('my_name', {typ.__name__}), or pass "
            "allow_register=True to register its lower-cased class name."
        )
    name = typ.__name__.lower()
    register_variable_name(name, typ)
    return name


for _name, _typ in (
    ("params", Param),
    ("batch_stats", BatchStat),
    ("cache", Cache),
    ("intermediates", Intermediate),
    ("perturbations", Perturbation),
):
    register_variable_name(_name, _typ)
