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

import builtins
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import jax
import numpy as np
from jax.tree_util import GetAttrKey

from . import _treescope, _version
from ._meta import EMPTY_META, Meta
from ._repr import shown_fields
from ._sharding_meta import place_new_value, use_eager_sharding, using_eager_sharding
from ._variable_trace import FRAMES, JaxTracer, check_frame, jax_trace
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




def _binary(name: str) -> Callable[[Any, Any], Any]:
    def op(self: Variable[Any], other: Any) -> Any:
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


def _inplace(op: str) -> Callable[[Any, Any], Any]:
    def method(self: Variable[Any], other: Any) -> Any:
        from .errors import VariableInPlaceError

        raise VariableInPlaceError(_INPLACE_MESSAGE.format(cls=type(self).__name__, op=op))

    return method


def _unary(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def op(self: Variable[Any]) -> Any:
        return fn(self._value)

    return op


Hook = Callable[..., Any]
_HOOK_NAMES = ("on_set_value", "on_get_value", "on_create_value", "on_add_axis", "on_remove_axis")


@dataclasses.dataclass
class VariableMetadata(Generic[A]):
    """A value with the metadata (and hooks) of the Variable it is meant for.

    What an initializer wrapped by :func:`with_metadata` (or ``nnx.with_partitioning``)
    returns: a layer passes it to ``nnx.Param(...)``, which unwraps it and merges `metadata`
    into its own (an entry here wins over a keyword argument of the same name, as in flax).

    Attributes:
      raw_value: the value (usually an array).
      on_set_value: hooks ``(variable, value) -> value`` run, in order, on every assignment.
      on_get_value: hooks ``(variable, value) -> value`` run, in order, on every read.
      on_create_value: hooks ``(variable, value) -> value`` run once, when it is created.
      on_add_axis: hooks ``(variable, axis_index, axis_name) -> None`` run by
        ``Variable.add_axis`` (a transform stacking the Variable along a new axis).
      on_remove_axis: hooks ``(variable, axis_index, axis_name) -> None`` run by
        ``Variable.remove_axis``.
      metadata: the Variable metadata to add.

    Example:
      >>> v = nnx.Param(nnx.VariableMetadata(jnp.ones(2), metadata={'note': 'tied'}))
      >>> v.note
      'tied'
    """

    raw_value: A
    on_set_value: tuple[Hook, ...] = ()
    on_get_value: tuple[Hook, ...] = ()
    on_create_value: tuple[Hook, ...] = ()
    on_add_axis: tuple[Hook, ...] = ()
    on_remove_axis: tuple[Hook, ...] = ()
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        legacy: object = self.on_set_value
        if isinstance(legacy, Mapping):  # the older two-field form (raw, metadata)
            self.metadata = {**legacy, **self.metadata}
            self.on_set_value = ()
        for name in _HOOK_NAMES:
            setattr(self, name, _as_hooks(getattr(self, name), name))

    def _hooks(self) -> dict[str, tuple[Hook, ...]]:
        return {name: getattr(self, name) for name in _HOOK_NAMES if getattr(self, name)}


def _as_hooks(hooks: Any, name: str) -> tuple[Hook, ...]:
    if not hooks:
        return ()
    if callable(hooks):
        return (hooks,)
    hooks = tuple(hooks)
    bad = [h for h in hooks if not callable(h)]
    if bad:
        raise ArgumentError(
            f"{name} takes a function or a sequence of functions; {bad[0]!r} is not callable."
            f"\nFix: pass e.g. {name}=lambda variable, value: value."
        )
    return hooks


def with_metadata(
    initializer: Callable[..., Any],
    on_set_value: Hook | tuple[Hook, ...] = (),
    on_get_value: Hook | tuple[Hook, ...] = (),
    on_create_value: Hook | tuple[Hook, ...] = (),
    on_add_axis: Hook | tuple[Hook, ...] = (),
    on_remove_axis: Hook | tuple[Hook, ...] = (),
    **metadata: Any,
) -> Callable[..., Any]:
    """Wraps an initializer so the Variable created from its result carries `metadata`.

    The wrapped initializer returns a :class:`VariableMetadata`; Variables unwrap it. Any
    layer argument that takes an initializer (``kernel_init``, ``bias_init``...) accepts it.

    Args:
      initializer: a function ``(key, shape, dtype) -> array``.
      on_set_value: a hook (or hooks) ``(variable, value) -> value`` run on every assignment.
      on_get_value: a hook (or hooks) ``(variable, value) -> value`` run on every read.
      on_create_value: a hook (or hooks) ``(variable, value) -> value`` run at creation.
      on_add_axis: a hook (or hooks) ``(variable, axis_index, axis_name)`` run by
        ``Variable.add_axis``.
      on_remove_axis: a hook (or hooks) ``(variable, axis_index, axis_name)`` run by
        ``Variable.remove_axis``.
      **metadata: the metadata to attach (readable as attributes of the Variable).

    Returns:
      An initializer with the same arguments.

    Example:
      >>> init = nnx.with_metadata(nnx.initializers.ones, note='tied')
      >>> layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
      >>> layer.kernel.note, layer.kernel.value.sum().item()
      ('tied', 6.0)
      >>> clip = nnx.with_metadata(nnx.initializers.ones, on_set_value=lambda v, x: x.clip(0, 1))
      >>> w = nnx.Param(clip(jax.random.key(0), (2,)))
      >>> w.value = jnp.array([-3.0, 3.0])
      >>> w.value.tolist()
      [0.0, 1.0]
    """
    given = {
        "on_set_value": on_set_value,
        "on_get_value": on_get_value,
        "on_create_value": on_create_value,
        "on_add_axis": on_add_axis,
        "on_remove_axis": on_remove_axis,
    }
    hooks = {k: _as_hooks(v, k) for k, v in given.items()}
    return MetadataInitializer(initializer, metadata, {k: v for k, v in hooks.items() if v})


class MetadataInitializer:
    """An initializer whose result carries Variable metadata (what :func:`with_metadata`
    returns). A plain object rather than a closure: layers holding one pickle, and two
    built alike compare equal, so identically built layers share a GraphDef."""

    __slots__ = ("__wrapped__", "hooks", "metadata")

    def __init__(
        self,
        initializer: Callable[..., Any],
        metadata: dict[str, Any],
        hooks: dict[str, tuple[Hook, ...]] | None = None,
    ):
        self.__wrapped__ = initializer
        self.metadata = dict(metadata)
        self.hooks = dict(hooks or {})

    def __call__(self, *args: Any, **kwargs: Any) -> VariableMetadata:
        value = self.__wrapped__(*args, **kwargs)
        return VariableMetadata(value, metadata=dict(self.metadata), **self.hooks)

    def _key(self) -> tuple:
        hooks = tuple(sorted(self.hooks.items()))
        return (self.__wrapped__, tuple(sorted(self.metadata.items())), hooks)

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
        return (self.__wrapped__, self.metadata, self.hooks)

    def __setstate__(self, state: tuple) -> None:
        self.__wrapped__, self.metadata, *hooks = state
        self.hooks = hooks[0] if hooks else {}

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.metadata.items())
        return f"with_metadata({self.__wrapped__!r}, {items})"


def _run_hooks(hooks: Any, var: Variable, value: Any) -> Any:
    for hook in hooks if isinstance(hooks, tuple) else (hooks,):
        value = hook(var, value)
    return value


_REFS_MESSAGE = (
    "{where} got {given}: nnx Variables never hold JAX array refs (flax's `ref`/`hijax` "
    "modes). They are not needed: nnx keeps graph semantics through every transform and "
    "its structure cache gives the speed flax gets from refs.\nFix: drop the argument (or "
    "pass False); in-place updates (`v[...] = x`, `v.value = x`) already work everywhere."
)


def _refuse_refs(where: str, **flags: Any) -> None:
    """Raises ArgumentError for a ``hijax=True`` / ``ref=True`` request."""
    given = ", ".join(f"{k}={v!r}" for k, v in flags.items() if v)
    raise ArgumentError(_REFS_MESSAGE.format(where=where, given=given))


def _take_flag(cls: type, name: str, given: Any, extra: dict) -> Any:
    """Pops flag `name` from VariableMetadata's metadata; it must agree with the argument."""
    if name not in extra:
        return given
    value = extra.pop(name)
    if given is not None and given != value:
        raise ArgumentError(
            f"nnx.{cls.__name__}: {name}={given!r} was passed, but the VariableMetadata "
            f"value says {name}={value!r}.\nFix: give {name} in one place only."
        )
    return value


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
        may be a :class:`VariableMetadata`, whose metadata and hooks are added.
      hijax: flax's mutable-array-ref Variable mode. nnx never uses array refs (its structure
        cache gives the speed): ``None``/``False`` are accepted, ``True`` raises ArgumentError.
      ref: as `hijax`, for flax's plain array refs.
      eager_sharding: place the value on the mesh now (``True``) or only annotate it
        (``False``), overriding ``nnx.use_eager_sharding`` for this Variable; ``None`` follows it.

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
    # unflattened or copied in; assigning it a tracer of another trace raises (check_frame).
    __slots__ = ("__weakref__", "_meta", "_nnx_stamp", "_nnx_trace", "_value")
    _meta: Meta
    _nnx_stamp: int
    _nnx_trace: Any
    _value: A
    _nnx_collection: ClassVar[str | None] = None
    _nnx_class_hooks: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        value: A | VariableMetadata[A],
        *,
        hijax: bool | None = None,
        ref: bool | None = None,
        eager_sharding: bool | None = None,
        **metadata: Any,
    ):
        cls = type(self)
        if isinstance(value, VariableMetadata):
            extra = dict(value.metadata)
            hijax = _take_flag(cls, "hijax", hijax, extra)
            ref = _take_flag(cls, "ref", ref, extra)
            if "eager_sharding" in extra:
                eager_sharding = _take_flag(cls, "eager_sharding", eager_sharding, extra)
            metadata = {**metadata, **extra}
            for name, hooks in value._hooks().items():
                metadata.setdefault(name, hooks)
            value = value.raw_value
        if hijax or ref:
            _refuse_refs(f"nnx.{cls.__name__}", hijax=hijax, ref=ref)
        if isinstance(value, Variable):
            metadata = {**value._meta, **metadata}
            value = value._value
        for name in cls._nnx_class_hooks:  # hooks defined as methods of a Variable subclass
            metadata.setdefault(name, getattr(cls, name))
        if eager_sharding is not None:
            metadata["eager_sharding"] = bool(eager_sharding)
        object.__setattr__(self, "_meta", Meta(metadata) if metadata else EMPTY_META)
        if metadata:
            create = metadata.get("on_create_value")
            if create:
                object.__setattr__(self, "_value", value)
                value = _run_hooks(create, self, value)
        if cls.create_value is not Variable.create_value:
            object.__setattr__(self, "_value", value)
            value = self.create_value(cast(A, value))  # the raw value by now
        if metadata:
            # Places the value of a new Variable whose metadata asks for a sharding
            # (``out_sharding``) on the mesh; see nnx._sharding_meta (the floor below this one).
            if eager_sharding and not using_eager_sharding():
                with use_eager_sharding(True):
                    value = place_new_value(cls, value, metadata)
            else:
                value = place_new_value(cls, value, metadata)
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_nnx_stamp", 0)
        _set_trace(self, jax_trace.value)
        if FRAMES:
            FRAMES[-1].register(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._nnx_class_hooks = tuple(n for n in _HOOK_NAMES if callable(getattr(cls, n, None)))
        _register_pytree(cls)

    # -- value access -----------------------------------------------------------------
    @property
    def value(self) -> A:
        """The held value (after the ``on_get_value`` hooks, if it has any)."""
        meta = self._meta
        if meta and "on_get_value" in meta:
            return _run_hooks(meta["on_get_value"], self, self._value)
        return self._value

    @value.setter
    def value(self, value: A) -> None:
        if isinstance(value, Variable):
            value = value._value
        meta = self._meta
        if meta and "on_set_value" in meta:
            value = _run_hooks(meta["on_set_value"], self, value)
        if isinstance(value, JaxTracer):  # the only cost on the hot path
            check_frame(self, value)
        object.__setattr__(self, "_value", value)

    @property
    def raw_value(self) -> A:
        """The held value as stored, without running hooks."""
        return self._value

    @raw_value.setter
    def raw_value(self, value: A) -> None:
        self.set_raw_value(value)

    def get_value(self, *, index: Any = None) -> A:
        """Returns the held value (same as ``v.value``), or ``v.value[index]``."""
        if index is None:
            return self.value
        return self[index]

    def set_value(self, value: A, *, index: Any = None) -> None:
        """Sets the held value (same as ``v.value = value``), or ``v[index] = value``."""
        if index is None:
            self.value = value
        else:
            self[index] = value

    def create_value(self, value: A) -> A:
        """Called once with the initial value (after ``on_create_value`` hooks); a subclass
        may override it to transform the value a Variable starts with."""
        return value

    def get_raw_value(self) -> A:
        """Returns the held value as stored, without running hooks."""
        return self._value

    def set_raw_value(self, value: A, *, _unsafe_bypass_check: bool = False) -> None:
        """Sets the held value, without running hooks."""
        if isinstance(value, Variable):
            value = value._value
        if isinstance(value, JaxTracer):
            check_frame(self, value)
        object.__setattr__(self, "_value", value)

    def add_axis(self, axis_index: int, axis_name: Any | None) -> None:
        """Runs the ``on_add_axis`` hooks: a transform stacked this Variable along a new
        axis at `axis_index` (named `axis_name`)."""
        hooks = self._meta.get("on_add_axis")
        if hooks:
            for hook in hooks if isinstance(hooks, tuple) else (hooks,):
                hook(self, axis_index, axis_name)

    def remove_axis(self, axis_index: int, axis_name: Any | None) -> None:
        """Runs the ``on_remove_axis`` hooks: a transform removed the axis `axis_index`
        (named `axis_name`) from this Variable."""
        hooks = self._meta.get("on_remove_axis")
        if hooks:
            for hook in hooks if isinstance(hooks, tuple) else (hooks,):
                hook(self, axis_index, axis_name)

    # (type: ignores here and in the array protocol below: the value is an unconstrained A, and
    # these forward to its own indexing, length, iteration... as JAX arrays provide them)
    def __getitem__(self, key: Any) -> Any:
        meta = self._meta
        if meta and "on_get_value" in meta:
            return _run_hooks(meta["on_get_value"], self, self._value[key])  # type: ignore[index]
        return self._value[key]  # type: ignore[index]

    def __setitem__(self, key: Any, item: Any) -> None:
        if isinstance(item, Variable):
            item = item._value
        meta = self._meta
        if meta and "on_set_value" in meta:
            item = _run_hooks(meta["on_set_value"], self, item)
        current = self._value
        if isinstance(current, jax.Array) or hasattr(current, "at"):
            new = current.at[key].set(item)
        elif isinstance(current, np.ndarray):
            new = current.copy()
            new[key] = item
        elif key is Ellipsis:
            new = item
        else:
            current[key] = item  # type: ignore[index]
            return
        if isinstance(new, JaxTracer):
            check_frame(self, new)
        object.__setattr__(self, "_value", new)

    # -- metadata ---------------------------------------------------------------------
    def get_metadata(
        self,
        name: str | None = None,
        default: Any = _MISSING,
        *,
        exclude_required: bool | None = None,
    ) -> Any:
        """Returns all metadata as a dict, or one entry by name.

        Args:
          name: the entry to read; all metadata when omitted.
          default: returned when `name` is absent.
          exclude_required: flax's switch to leave out its always-present entries
            (``hijax``, ``ref``); nnx has none, so it changes nothing.

        Raises:
          KeyNotFoundError: `name` is absent and no default was given (also a KeyError).
          ArgumentError: both `name` and `exclude_required` were given.
        """
        if name is not None and exclude_required is not None:
            raise ArgumentError(
                f"{type(self).__name__}.get_metadata: give a name or exclude_required, not "
                f"both.\nFix: v.get_metadata({name!r})."
            )
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
        object.__setattr__(self, "_meta", Meta({**self._meta, **updates}))
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
        object.__setattr__(self, "_meta", Meta(meta))
        object.__setattr__(self, "_nnx_stamp", _version.bump())

    @property
    def type(self) -> type[Variable]:
        """The Variable's class (``nnx.Param`` for a Param)."""
        return type(self)

    def replace(
        self, value: Any = _MISSING, *, _copy_ref: bool = True, **updates: Any
    ) -> Self:
        """A new Variable of the same type, with a new value and/or updated metadata.

        (`_copy_ref` is flax's array-ref switch; nnx holds no refs, so it changes nothing.)
        """
        metadata = updates
        if value is _MISSING and "value" in metadata:
            value = metadata.pop("value")
        new = self.copy()
        if value is not _MISSING:
            object.__setattr__(new, "_value", value)
        if metadata:
            object.__setattr__(new, "_meta", Meta({**self._meta, **metadata}))
        return new

    def has_metadata(self, name: str) -> bool:
        """Whether the Variable has a metadata entry `name`."""
        return name in self._meta

    def copy_from(self, other: Variable[A]) -> None:
        """Takes the value and metadata of `other` (a Variable of the same type), in place.

        Raises:
          ArgumentError: `other` is of another type.
        """
        if type(other) is not type(self):
            raise ArgumentError(
                f"{type(self).__name__}.copy_from got a {type(other).__name__}: a Variable "
                f"copies only from its own type.\nFix: pass a {type(self).__name__}, or "
                f"v.set_value(other.get_value()) to take just the value."
            )
        if other is self:
            return
        self.set_raw_value(other._value)
        if other._meta != self._meta:
            object.__setattr__(self, "_meta", other._meta)
            object.__setattr__(self, "_nnx_stamp", _version.bump())

    def update_from_state(self, variable_state: Variable[A]) -> None:
        """Takes the value (and metadata, when it differs) of `variable_state`, in place."""
        self.set_raw_value(variable_state._value)
        if variable_state._meta != self._meta:
            object.__setattr__(self, "_meta", variable_state._meta)
            object.__setattr__(self, "_nnx_stamp", _version.bump())

    @classmethod
    def from_metadata(cls, value: A, attributes: Mapping[str, Any]) -> Variable[A]:
        """A Variable of this type holding `value` with metadata `attributes`, built without
        ``__init__`` (no hooks or placement run). flax's ``hijax``/``ref`` entries are
        dropped when False and refused when True."""
        meta = dict(attributes)
        hijax, ref = meta.pop("hijax", None), meta.pop("ref", None)
        if hijax or ref:
            _refuse_refs(f"nnx.{cls.__name__}.from_metadata", hijax=hijax, ref=ref)
        new = _new(cls)
        _set_value(new, value)
        _set_meta(new, Meta(meta) if meta else EMPTY_META)
        _set_stamp(new, 0)
        _set_trace(new, jax_trace.value)
        if FRAMES:
            FRAMES[-1].register(new)
        return new

    def copy(
        self, value: Any = _MISSING, *, _copy_ref: bool = True, **updates: Any
    ) -> Self:
        """A shallow copy: a new Variable sharing the (immutable) array value; with `value`
        and/or metadata `updates`, the copy holds those instead."""
        if value is not _MISSING or updates:
            return self.replace(value, **updates)
        new = _new(type(self))
        _set_value(new, self._value)  # slot descriptors directly: merge copies every leaf
        _set_meta(new, self._meta)
        _set_stamp(new, 0)
        _set_trace(new, jax_trace.value)
        if FRAMES:
            FRAMES[-1].register(new)
        return new

    __copy__ = copy
    to_state = copy

    def __deepcopy__(self, memo: dict) -> Variable[A]:
        import copy as _copy

        new = object.__new__(type(self))
        memo[id(self)] = new
        object.__setattr__(new, "_value", _copy.deepcopy(self._value, memo))
        object.__setattr__(new, "_meta", Meta(_copy.deepcopy(dict(self._meta), memo)))
        object.__setattr__(new, "_nnx_stamp", 0)
        object.__setattr__(new, "_nnx_trace", jax_trace.value)
        return new

    def __getstate__(self) -> dict:
        return {"value": self._value, "metadata": dict(self._meta)}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "_value", state["value"])
        object.__setattr__(self, "_meta", Meta(state["metadata"]))
        object.__setattr__(self, "_nnx_stamp", 0)
        object.__setattr__(self, "_nnx_trace", jax_trace.value)

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
    def _nnx_display(self) -> tuple[str, builtins.type, list[tuple[str, Any]]]:
        """The value, then the metadata (sharding annotations...), private or None entries
        and plain callables left out."""
        meta = shown_fields(type(self), self._meta.items())
        return "object", type(self), [("value", self._value), *meta]

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    # -- array protocol (forwarded to the value: see the note above __getitem__) --------
    def __jax_array__(self) -> jax.Array:
        return self._value  # type: ignore[return-value]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self._value, dtype=dtype)

    def __len__(self) -> int:
        return len(self._value)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
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
    __eq__ = _binary("__eq__")
    __ne__ = _binary("__ne__")
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

    def unflatten(meta: Meta, children: Any) -> Variable:
        new = object.__new__(cls)
        object.__setattr__(new, "_value", children[0])
        object.__setattr__(new, "_meta", meta)
        object.__setattr__(new, "_nnx_stamp", 0)
        object.__setattr__(new, "_nnx_trace", jax_trace.value)
        if FRAMES:
            FRAMES[-1].register(new)
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


def register_variable_name(
    name: str, typ: type[Variable] | None = None, *, overwrite: bool = False
) -> Any:
    """Associates a collection name (as flax linen used: 'params') with a Variable type.

    Returns the type; without `typ`, returns a class decorator that registers it.

    Example:
      >>> @nnx.register_variable_name('my_stats_doc')
      ... class MyStat(nnx.Variable):
      ...   pass
      >>> nnx.variable_type_from_name('my_stats_doc') is MyStat
      True
    """
    if typ is None:
        return lambda cls: register_variable_name(name, cls, overwrite=overwrite)
    if not overwrite and name in _NAME_TO_TYPE and _NAME_TO_TYPE[name] is not typ:
        raise ArgumentError(
            f"register_variable_name: the collection name {name!r} is already registered for "
            f"{_NAME_TO_TYPE[name].__name__}, so it cannot name {typ.__name__} too.\nFix: "
            f"pick another name, or pass overwrite=True to replace it."
        )
    _NAME_TO_TYPE[name] = typ
    _TYPE_TO_NAME[typ] = name
    return typ


def variable_type_from_name(
    name: str, /, *, base: type[Variable] = Variable, allow_register: bool = False
) -> type[Variable]:
    """The Variable type registered for a collection name; with ``allow_register=True`` an
    unknown name gets a new subclass of `base`, registered under it.

    Example:
      >>> nnx.variable_type_from_name('params') is nnx.Param
      True
      >>> typ = nnx.variable_type_from_name('my_stats', base=nnx.BatchStat, allow_register=True)
      >>> issubclass(typ, nnx.BatchStat), typ.__name__
      (True, 'my_stats')
    """
    if name not in _NAME_TO_TYPE:
        if not allow_register:
            raise ArgumentError(
                f"No Variable type is registered for collection {name!r}; known: "
                f"{sorted(_NAME_TO_TYPE)}.\nFix: nnx.register_variable_name({name!r}, MyType), "
                "or pass allow_register=True to create a Variable type for it."
            )
        typ = type(name, (base,), {"__slots__": ()})
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
