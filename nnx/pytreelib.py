"""Objects whose attributes nnx discovers: :class:`Pytree`, and the tracked containers.

:class:`Pytree` is the base of :class:`nnx.Module` and :class:`nnx.Rngs`. Every attribute that
holds a Variable, another Pytree, an array, or a list/dict/tuple of those is *data* (part of
the State); everything else is *static* (part of the GraphDef, so it must be hashable).
``nnx.data(x)`` and ``nnx.static(x)`` override that choice for one attribute.

Plain lists and dicts assigned to an attribute become :class:`List` and :class:`Dict`: real
``list``/``dict`` subclasses whose mutations are tracked, so ``self.layers.append(...)`` is
seen by the next ``nnx.split``.

Setting or deleting an attribute is a structural change and stamps the object (see
``_version.py``); replacing an array attribute by another array is only a value change.

Example:
  >>> class Block(nnx.Pytree):
  ...   def __init__(self):
  ...     self.w = nnx.Param(jnp.ones(2))
  ...     self.layers = [nnx.Param(jnp.zeros(1))]
  ...     self.name = 'block'
  >>> b = Block()
  >>> type(b.layers).__name__, isinstance(b.layers, list)
  ('List', True)
  >>> b.layers.append(nnx.Param(jnp.ones(1)))
  >>> len(nnx.state(b).flat_state())
  3
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, ClassVar, Generic, Self, SupportsIndex, TypeVar

import jax
import numpy as np
from jax.tree_util import GetAttrKey

from . import _treescope, _version
from ._keys import sort_key as _sort_key
from ._repr import shown_fields
from .errors import ArgumentError, AttributeNotFoundError
from .variablelib import Variable

__all__ = [
    "Data",
    "Dict",
    "Initializer",
    "List",
    "Pytree",
    "Static",
    "check_pytree",
    "data",
    "dataclass",
    "has_data",
    "is_data",
    "register_data_type",
    "static",
]

T = TypeVar("T")
A = TypeVar("A")
TypeT = TypeVar("TypeT", bound=type)
_MISSING: Any = object()


class _Missing:
    """The default of ``nnx.data()`` / ``nnx.static()``: no value given."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclasses.dataclass(frozen=True)
class _DataMarker(Generic[T]):
    value: T


@dataclasses.dataclass(frozen=True)
class _StaticMarker(Generic[T]):
    value: T


_DATA_TAG = "__nnx_data__"
_STATIC_TAG = "__nnx_static__"

Data = Annotated[A, _DATA_TAG]
"""Type annotation marking a class attribute as data: ``x: nnx.Data[jax.Array]``.

Every instance's attribute of that name is a State leaf (or node), whatever its value. The
same as ``x: jax.Array = nnx.data()``; flax.nnx 0.12 deprecates this form, nnx keeps it.

Example:
  >>> class Counter(nnx.Pytree):
  ...   steps: nnx.Data[int]
  ...   def __init__(self):
  ...     self.steps = 0
  >>> jax.tree.leaves(Counter())
  [0]
"""

Static = Annotated[A, _STATIC_TAG]
"""Type annotation marking a class attribute as static (part of the GraphDef), e.g.
``n: nnx.Static[int]``. The same as ``n: int = nnx.static()``.

Example:
  >>> class Config(nnx.Pytree):
  ...   table: nnx.Static[tuple]
  ...   def __init__(self):
  ...     self.table = (1, 2)
  >>> jax.tree.leaves(Config())
  []
"""

Initializer = typing.Union[jax.nn.initializers.Initializer, Callable[..., Any]]  # noqa: UP007
"""The type of a parameter initializer: ``init(key, shape, dtype) -> Array``
(``nnx.initializers.lecun_normal()`` and the others return one).

Example:
  >>> init: nnx.Initializer = nnx.initializers.zeros_init()
  >>> init(jax.random.key(0), (2,), jnp.float32)
  Array([0., 0.], dtype=float32)
"""
Initializer.__doc__ = (  # typing aliases carry their own __doc__
    "The type of a parameter initializer: ``init(key, shape, dtype) -> Array``."
)
Data.__doc__ = "Annotation marking a class attribute as data: ``x: nnx.Data[jax.Array]``."
Static.__doc__ = "Annotation marking a class attribute as static: ``n: nnx.Static[int]``."


def _field(fn: str, value: Any, kwargs: dict[str, Any], is_static: bool) -> Any:
    if value is not MISSING:
        if kwargs:
            raise ArgumentError(
                f"nnx.{fn}() takes either one positional value (self.x = nnx.{fn}(value)) or "
                f"dataclass field keywords (x: int = nnx.{fn}(default=...)), not both; got "
                f"{value!r} and {sorted(kwargs)}.\nFix: pass the value as default=... in a "
                f"class body, or drop the keywords when assigning an attribute."
            )
        return (_StaticMarker if is_static else _DataMarker)(value)
    metadata = dict(kwargs.pop("metadata", None) or {})
    if "static" in metadata:
        raise ArgumentError(
            f"nnx.{fn}(metadata=...) must not contain the key 'static': nnx.{fn} sets it "
            f"(static={is_static}).\nFix: remove 'static' from metadata."
        )
    metadata["static"] = is_static
    return dataclasses.field(**kwargs, metadata=metadata)


def data(value: Any = MISSING, /, **kwargs: Any) -> Any:
    """Marks an attribute as data (a State leaf), whatever its value's type.

    Two forms, as in flax.nnx: assign ``nnx.data(value)`` to an attribute, or declare a
    class-level field ``x: int = nnx.data(default=0)``; the keywords are those of
    ``dataclasses.field`` (``default``, ``default_factory``, ``init``, ``repr``, ``hash``,
    ``compare``, ``metadata``, ``kw_only``), for ``nnx.dataclass`` classes.

    Args:
      value: the value to store (assignment form).
      **kwargs: ``dataclasses.field`` keywords (class-body form).

    Returns:
      A marker that the attribute assignment unwraps, or a ``dataclasses.Field``.

    Raises:
      ArgumentError: both a value and keywords were given, or ``metadata`` has ``'static'``.

    Example:
      >>> class Counter(nnx.Module):
      ...   def __init__(self):
      ...     self.steps = nnx.data(0)
      >>> nnx.state(Counter()).to_pure_dict()
      {'steps': 0}
      >>> @nnx.dataclass
      ... class Step(nnx.Pytree):
      ...   count: int = nnx.data(default=0)
      >>> jax.tree.leaves(Step())
      [0]
    """
    return _field("data", value, kwargs, False)


def static(value: Any = MISSING, /, **kwargs: Any) -> Any:
    """Marks an attribute as static (part of the GraphDef), whatever its value's type.

    Same two forms as :func:`nnx.data`: ``self.x = nnx.static(value)``, or a class-level
    field ``n: int = nnx.static(default=3)`` taking ``dataclasses.field`` keywords.

    Args:
      value: the value to store (assignment form).
      **kwargs: ``dataclasses.field`` keywords (class-body form).

    Returns:
      A marker that the attribute assignment unwraps, or a ``dataclasses.Field``.

    Raises:
      ArgumentError: both a value and keywords were given, or ``metadata`` has ``'static'``.

    Example:
      >>> class Foo(nnx.Pytree):
      ...   def __init__(self):
      ...     self.a = nnx.static(1)
      ...     self.b = nnx.data(2)
      >>> jax.tree.leaves(Foo())
      [2]
    """
    return _field("static", value, kwargs, True)


_DATA_TYPES: set[type] = set()


def register_data_type(type_: TypeT, /) -> TypeT:
    """Registers a type whose values are data when assigned to a Pytree attribute, without
    ``nnx.data(...)``. Usable as a decorator; returns the type.

    A value of a registered type is one State leaf. It is data only as the direct value of
    an attribute: inside a list, dict or tuple it is refused (wrap it in its own attribute).

    Example:
      >>> import dataclasses
      >>> @nnx.register_data_type
      ... @dataclasses.dataclass(frozen=True)
      ... class Scale:
      ...   value: float
      >>> class Foo(nnx.Pytree):
      ...   def __init__(self):
      ...     self.scale = Scale(2.0)
      >>> nnx.is_data(Scale(1.0)), jax.tree.leaves(Foo())
      (True, [Scale(value=2.0)])
    """
    if not isinstance(type_, type):
        raise ArgumentError(
            f"nnx.register_data_type takes a class, got {type_!r}.\nFix: pass the class "
            "itself (nnx.register_data_type(MyType)) or use it as a class decorator."
        )
    _DATA_TYPES.add(type_)
    return type_


_ARRAY_TYPES = jax.Array | np.ndarray | jax.ShapeDtypeStruct


def is_array(value: Any) -> bool:
    """True for array leaves: JAX arrays (tracers included), NumPy arrays, and the
    ``jax.ShapeDtypeStruct`` that stands for an array in an abstract model (what
    ``nnx.eval_shape`` returns), so an abstract model has its leaves where the concrete one
    has its arrays. Mark a ShapeDtypeStruct that is configuration with ``nnx.static``."""
    return isinstance(value, _ARRAY_TYPES)


def is_data(value: Any, /) -> bool:
    """True when a value is data by default, i.e. a State leaf or node when assigned to a
    Pytree attribute without ``nnx.data``/``nnx.static``.

    Data are Variables, Pytrees (Modules, Rngs) and tracked containers, arrays (and the
    ``jax.ShapeDtypeStruct`` standing for one in an abstract model), instances of types
    registered with :func:`nnx.register_data_type`, and, unlike flax.nnx, a list, tuple or
    mapping (a dict, a State) holding any of those: nnx makes such containers data
    (docs/coming-from-flax.md, "Plain lists and dicts of modules just work"), so
    ``is_data`` says so.

    Example:
      >>> nnx.is_data(jnp.ones(2)), nnx.is_data(nnx.Param(1)), nnx.is_data('relu')
      (True, True, False)
      >>> nnx.is_data([1, jnp.ones(1)]), nnx.is_data([1, 2])
      (True, False)
    """
    if isinstance(value, Variable | Pytree | List | Dict | _ARRAY_TYPES):
        return True
    if isinstance(value, list | tuple):
        return any(is_data(v) for v in value)
    if isinstance(value, dict | Mapping):
        return any(is_data(v) for v in value.values())
    return bool(_DATA_TYPES) and type(value) in _DATA_TYPES


def _is_data_leaf(value: Any) -> bool:
    return isinstance(value, Variable | Pytree | List | Dict | _ARRAY_TYPES) or (
        type(value) in _DATA_TYPES
    )


def has_data(value: Any, /) -> list[Any]:
    """The data found in a value, in order: Variables, Pytrees, tracked containers, arrays and
    registered data types, looked for through lists, dicts, tuples and other pytrees (a data
    object is not looked into). An object found twice is listed twice, as in flax.nnx.

    Example:
      >>> w = nnx.Param(jnp.ones(1))
      >>> found = nnx.has_data([1, 'a', {'w': w}])
      >>> len(found), found[0] is w
      (1, True)
      >>> nnx.has_data((1, 'a'))
      []
    """
    seen: set[int] = set()

    def is_leaf(x: Any) -> bool:
        if id(x) in seen:
            return True
        seen.add(id(x))
        return _is_data_leaf(x)

    return [x for x in jax.tree_util.tree_leaves(value, is_leaf=is_leaf) if _is_data_leaf(x)]


def _is_marker(x: Any) -> bool:
    return isinstance(x, _DataMarker | _StaticMarker) or (
        isinstance(x, dataclasses.Field) and "static" in x.metadata
    )


def _marker_name(x: Any) -> str:
    if isinstance(x, dataclasses.Field):
        return "nnx.static()" if x.metadata["static"] else "nnx.data()"
    return "nnx.data(...)" if isinstance(x, _DataMarker) else "nnx.static(...)"


def check_pytree(pytree: Any) -> None:
    """Checks that a Pytree's attributes are consistent; raises on the first problem.

    Refused: a static attribute holding a Variable, a Module or other Pytree, a tracked
    container or a concrete array (it would be baked into the GraphDef, so never updated
    or trained), and an ``nnx.data(...)``/``nnx.static(...)`` marker left inside a list,
    dict or tuple (a marker only works assigned directly to an attribute).

    Args:
      pytree: the object to check.

    Raises:
      ArgumentError: `pytree` is not a Pytree, or one of the problems above.

    Example:
      >>> class Foo(nnx.Module):
      ...   def __init__(self):
      ...     self.w = nnx.Param(jnp.ones(1))
      ...     self.opts = [nnx.static(1)]
      >>> nnx.check_pytree(Foo())
      Traceback (most recent call last):
      ...
      nnx.errors.ArgumentError: Foo.opts holds nnx.static(...) inside a List...
    """
    if not isinstance(pytree, Pytree):
        raise ArgumentError(
            f"nnx.check_pytree expects a Pytree (an nnx.Module, nnx.Pytree...), got "
            f"{type(pytree).__name__}.\nFix: pass the object whose attributes to check."
        )
    cls = type(pytree).__name__
    for name, value in pytree._nnx_items():
        markers = [x for x in jax.tree_util.tree_leaves(value, is_leaf=_is_marker)
                   if _is_marker(x)] if not _is_marker(value) else [value]
        if markers:
            raise ArgumentError(
                f"{cls}.{name} holds {_marker_name(markers[0])} inside a "
                f"{type(value).__name__}: nnx.data/nnx.static mark an attribute only when "
                f"assigned to it directly.\nFix: mark the whole attribute "
                f"(self.{name} = nnx.data([...])) or drop the marker."
            )
        if pytree._nnx_is_data(name, value):
            continue
        bad = [x for x in has_data(value) if not isinstance(x, jax.ShapeDtypeStruct)]
        if bad:
            kinds = sorted({type(x).__name__ for x in bad})
            raise ArgumentError(
                f"{cls}.{name} is static but holds data ({', '.join(kinds)}): a static "
                f"attribute is part of the GraphDef, so its data would never be updated or "
                f"trained.\nFix: assign it as data (self.{name} = nnx.data(...)), or keep "
                f"only configuration in it."
            )


@typing.dataclass_transform(field_specifiers=(dataclasses.field, data, static))
def dataclass(
    cls: Any = None,
    /,
    *,
    init: bool = True,
    eq: bool = True,
    order: bool = False,
    unsafe_hash: bool = False,
    match_args: bool = True,
    kw_only: bool = False,
    slots: bool = False,
    weakref_slot: bool = False,
) -> Any:
    """``dataclasses.dataclass`` for Pytree and Module subclasses.

    Fields are data or static as their annotation or field says (``x: nnx.Data[...]``,
    ``n: int = nnx.static(default=3)``), otherwise by their value, as for any attribute.
    The repr stays nnx's (``repr=False``). Use it with or without arguments.

    Note that ``eq=True`` (the default, as in dataclasses) makes instances unhashable and
    compares them field by field; pass ``eq=False`` to keep identity comparison.

    Example:
      >>> @nnx.dataclass
      ... class Affine(nnx.Module):
      ...   w: nnx.Param
      ...   b: nnx.Param
      ...   act: str = nnx.static(default='relu')
      >>> m = Affine(nnx.Param(jnp.ones(2)), nnx.Param(jnp.zeros(2)))
      >>> sorted(nnx.state(m).to_pure_dict()), m.act
      (['b', 'w'], 'relu')
    """
    options = dict(init=init, eq=eq, order=order, unsafe_hash=unsafe_hash,
                   match_args=match_args, kw_only=kw_only, slots=slots,
                   weakref_slot=weakref_slot, repr=False)

    def wrap(c: Any) -> Any:
        return dataclasses.dataclass(c, **options)

    return wrap if cls is None else wrap(cls)


def _track(value: Any) -> Any:
    t = type(value)
    if t is list:
        return List(value)
    if t is dict:
        return Dict(value)
    return value


def _stamp(obj: Any) -> None:
    object.__setattr__(obj, "_nnx_stamp", _version.bump())


class Pytree:
    """Base class for objects whose attributes nnx discovers (Module and Rngs derive from it).

    Subclasses are also registered as JAX pytrees: their data attributes are the children, so
    ``jax.tree.leaves(obj)`` lists the arrays it holds.
    """

    # name -> True (data) / False (static), declared in the class body (nnx.Data[...],
    # nnx.Static[...], x: T = nnx.data()/nnx.static()), inherited.
    _nnx_class_fields: ClassVar[dict[str, bool]] = {}

    def __init_subclass__(cls, *, pytree: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._nnx_class_fields = _class_fields(cls)
        if pytree:
            _register_pytree(cls)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_nnx_"):
            object.__setattr__(self, name, value)
            return
        d = self.__dict__
        marked = isinstance(value, _DataMarker | _StaticMarker)
        if marked:
            fields = d.get("_nnx_fields")
            if fields is None:
                fields = d["_nnx_fields"] = {}
            fields[name] = isinstance(value, _DataMarker)
            value = value.value
        else:
            declared = self._nnx_class_fields
            kind = declared.get(name) if declared else None
            if kind is None and _DATA_TYPES:
                kind = _registered_kind(self, name, value)
            if kind is not None:
                fields = d.get("_nnx_fields")
                if fields is None:
                    fields = d["_nnx_fields"] = {}
                if name not in fields:  # an explicit marking made earlier stays
                    fields[name] = kind
                    marked = True
            value = _track(value)
        old = d.get(name, _MISSING)
        object.__setattr__(self, name, value)
        # An array replacing an array is a value change; anything else, or an explicit
        # nnx.data / nnx.static marking (it changes the GraphDef's fields), is structural.
        if marked or not (is_array(value) and is_array(old)):
            d["_nnx_stamp"] = _version.bump()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        fields = self.__dict__.get("_nnx_fields")
        if fields:
            fields.pop(name, None)
        self.__dict__["_nnx_stamp"] = _version.bump()

    def __getstate__(self) -> dict:
        # The flatten caches refer to this very object graph (the multi-root one to other roots
        # as well); a copy or pickle must not carry them.
        return {k: v for k, v in self.__dict__.items() if k not in _CACHE_FIELDS}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _nnx_items(self) -> list[tuple[str, Any]]:
        """The attributes nnx sees, sorted by name (internal ``_nnx_*`` fields excluded)."""
        d = self.__dict__
        return [(k, d[k]) for k in sorted(d) if not k.startswith("_nnx_")]

    def _nnx_is_data(self, name: str, value: Any) -> bool:
        fields = self.__dict__.get("_nnx_fields")
        if fields and name in fields:
            return fields[name]
        return is_data(value)

    # -- display (see _repr.py and _treescope.py) -------------------------------------
    # Names a subclass keeps out of its display, on top of the rule of ``shown_fields``
    # (private names, None, plain callables, constructor defaults).
    _nnx_repr_hide: ClassVar[tuple[str, ...]] = ()

    def _nnx_display(self) -> tuple[str, type, list[tuple[str, Any]]]:
        """Configuration first, then data; each sorted by name (the same order however the
        object was built, by hand or by ``nnx.merge`` inside a transform)."""
        static: list[tuple[str, Any]] = []
        data: list[tuple[str, Any]] = []
        for name, value in self._nnx_items():
            (data if self._nnx_is_data(name, value) else static).append((name, value))
        return "object", type(self), shown_fields(type(self), static + data)

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)


Object = Pytree  # older flax name


def _annotation_kind(annotation: Any, cls: type) -> bool | None:
    """True for ``nnx.Data[...]``, False for ``nnx.Static[...]``, else None. A string
    annotation (``from __future__ import annotations``) is read by its spelling
    (``Data[...]``, ``nnx.Static[...]``): nnx never evaluates code it is given."""
    if isinstance(annotation, str):
        head = annotation.strip().split("[", 1)[0].rsplit(".", 1)[-1]
        return {"Data": True, "Static": False}.get(head) if "[" in annotation else None
    tags = getattr(annotation, "__metadata__", ())
    if _DATA_TAG in tags:
        return True
    if _STATIC_TAG in tags:
        return False
    return None


def _class_fields(cls: type) -> dict[str, bool]:
    fields: dict[str, bool] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("_nnx_class_fields", {}))
    own: dict[str, bool] = {}
    for name, annotation in inspect.get_annotations(cls).items():
        kind = _annotation_kind(annotation, cls)
        if kind is not None:
            own[name] = kind
    for name, value in list(cls.__dict__.items()):
        if not (isinstance(value, dataclasses.Field) and "static" in value.metadata):
            continue
        flag = value.metadata["static"]
        if not isinstance(flag, bool):
            raise ArgumentError(
                f"{cls.__name__}.{name}: the field's metadata 'static' must be True or False, "
                f"got {flag!r}.\nFix: use nnx.static(...) or nnx.data(...) for the field."
            )
        if name in own and own[name] == flag:
            was = "nnx.Data[...]" if own[name] else "nnx.Static[...]"
            now = "nnx.static(...)" if flag else "nnx.data(...)"
            raise ArgumentError(
                f"{cls.__name__}.{name} is annotated {was} but its field is {now}: an "
                f"attribute is either data or static.\nFix: keep one of the two."
            )
        own[name] = not flag
    fields.update(own)
    return fields


def _registered_inside(value: Any, seen: set[int]) -> Any:
    """The first instance of a registered data type inside plain lists, tuples and dicts (a
    walk of their items: dict keys of mixed types are fine, nothing is sorted)."""
    if id(value) in seen:
        return None
    seen.add(id(value))
    for item in value.values() if isinstance(value, dict) else value:
        if type(item) in _DATA_TYPES:
            return item
        if isinstance(item, list | tuple | dict):
            found = _registered_inside(item, seen)
            if found is not None:
                return found
    return None


def _registered_kind(obj: Pytree, name: str, value: Any) -> bool | None:
    """True for an instance of a registered data type; refuses one inside a container."""
    if type(value) in _DATA_TYPES:
        return True
    if isinstance(value, list | tuple | dict):
        inner = _registered_inside(value, set())
        if inner is not None:
            kind = type(inner).__name__
            raise ArgumentError(
                f"{type(obj).__name__}.{name}: a {type(value).__name__} holding a "
                f"{kind} (registered with nnx.register_data_type) cannot be stored: a "
                f"registered data type is one State leaf only as the direct value of an "
                f"attribute.\nFix: give each {kind} its own attribute, or make {kind} a JAX "
                f"pytree (jax.tree_util.register_dataclass) holding arrays."
            )
    return None
_CACHE_FIELDS = frozenset({"_nnx_cache", "_nnx_multi"})


def _register_pytree(cls: type[Pytree]) -> None:
    def flatten_with_keys(obj: Pytree):
        children, names, statics = [], [], []
        for name, value in obj._nnx_items():
            if obj._nnx_is_data(name, value):
                names.append(name)
                children.append((GetAttrKey(name), value))
            else:
                statics.append((name, value))
        fields = obj.__dict__.get("_nnx_fields")
        aux = (tuple(names), tuple(statics), tuple(sorted(fields.items())) if fields else ())
        return children, aux

    def flatten(obj: Pytree):
        children, aux = flatten_with_keys(obj)
        return [c for _, c in children], aux

    def unflatten(aux: Any, children: Iterable[Any]) -> Pytree:
        names, statics, fields = aux
        new = object.__new__(cls)
        d = new.__dict__
        d.update(zip(names, children, strict=True))
        d.update(statics)
        if fields:
            d["_nnx_fields"] = dict(fields)
        return new

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


# -- tracked containers -------------------------------------------------------------------
def _bumping(name: str):
    base = getattr(list, name)

    def method(self, *args: Any, **kwargs: Any):
        out = base(self, *args, **kwargs)
        _stamp(self)
        return out

    method.__name__ = name
    return method


class List(list):
    """A list whose mutations nnx tracks; plain lists on Pytree attributes become one.

    Example:
      >>> layers = nnx.List([nnx.Param(jnp.ones(1))])
      >>> layers.append(nnx.Param(jnp.zeros(1)))
      >>> len(nnx.state(layers))
      2
    """

    __slots__ = ("__weakref__", "_nnx_cache", "_nnx_stamp")

    def __init__(self, it: Iterable[Any] | None = None, /):
        super().__init__(_track(v) for v in (it or ()))
        self._nnx_stamp = _version.bump()

    def __setitem__(self, index: Any, value: Any) -> None:
        value = [_track(v) for v in value] if isinstance(index, slice) else _track(value)
        list.__setitem__(self, index, value)
        _stamp(self)

    def append(self, value: Any) -> None:
        list.append(self, _track(value))
        _stamp(self)

    def insert(self, index: SupportsIndex, value: Any) -> None:
        list.insert(self, index, _track(value))
        _stamp(self)

    def extend(self, values: Iterable[Any]) -> None:
        list.extend(self, [_track(v) for v in values])
        _stamp(self)

    # As list.__iadd__: any iterable, where list.__add__ takes only a list.
    def __iadd__(self, values: Iterable[Any]) -> Self:  # type: ignore[misc]
        self.extend(values)
        return self

    __delitem__ = _bumping("__delitem__")
    __imul__ = _bumping("__imul__")
    pop = _bumping("pop")
    remove = _bumping("remove")
    clear = _bumping("clear")
    sort = _bumping("sort")
    reverse = _bumping("reverse")

    def _nnx_display(self) -> tuple[str, type, list[tuple[int, Any]]]:
        return "list", type(self), list(enumerate(self))

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    def __reduce__(self):
        # Items as a listitems iterator (not constructor args), so deepcopy/pickle register the
        # new List before copying its items: a cycle back to it keeps pointing at the copy.
        return (List, (), None, iter(self))

    def __copy__(self) -> List:
        return List(self)


def _dict_bumping(name: str):
    base = getattr(dict, name)

    def method(self, *args: Any, **kwargs: Any):
        out = base(self, *args, **kwargs)
        _stamp(self)
        return out

    method.__name__ = name
    return method


class Dict(dict):
    """A dict whose mutations nnx tracks; plain dicts on Pytree attributes become one.
    String keys are also readable as attributes (``d.encoder``).
    """

    __slots__ = ("__weakref__", "_nnx_cache", "_nnx_stamp")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        dict.update(self, {k: _track(v) for k, v in dict(*args, **kwargs).items()})
        self._nnx_stamp = _version.bump()

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, _track(value))
        _stamp(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self, {k: _track(v) for k, v in dict(*args, **kwargs).items()})
        _stamp(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    # As dict.__ior__: any mapping or iterable of pairs, where dict.__or__ takes only a dict.
    def __ior__(self, other: Any) -> Self:  # type: ignore[misc]
        self.update(other)
        return self

    __delitem__ = _dict_bumping("__delitem__")
    pop = _dict_bumping("pop")
    popitem = _dict_bumping("popitem")
    clear = _dict_bumping("clear")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith("_nnx_"):
            raise AttributeError(name)
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            raise AttributeNotFoundError(
                f"Dict has no key {name!r}; keys: {list(self)}.\nFix: check the spelling, or "
                f"set it first (d[{name!r}] = value)."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_nnx_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeNotFoundError(
                f"Cannot delete Dict attribute {name!r}: the Dict has no such key; keys: "
                f"{list(self)}."
            ) from None

    def _nnx_display(self) -> tuple[str, type, list[tuple[Any, Any]]]:
        return "dict", type(self), list(dict.items(self))

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    def __reduce__(self):
        # dictitems, not constructor args: see List.__reduce__.
        return (Dict, (), None, None, iter(dict.items(self)))

    def __copy__(self) -> Dict:
        return Dict(self)


# The pytree registrations of List (aux: its length) and Dict (aux: its keys, sorted).
def _list_flatten_with_keys(obj: List) -> tuple[list[tuple[jax.tree_util.SequenceKey, Any]], int]:
    return [(jax.tree_util.SequenceKey(i), v) for i, v in enumerate(obj)], len(obj)


def _list_flatten(obj: List) -> tuple[list[Any], int]:
    return list(obj), len(obj)


def _list_unflatten(aux: int, children: Iterable[Any]) -> List:
    new = List.__new__(List)
    list.extend(new, children)
    object.__setattr__(new, "_nnx_stamp", 0)
    return new


def _dict_flatten_with_keys(
    obj: Dict,
) -> tuple[list[tuple[jax.tree_util.DictKey, Any]], tuple[Any, ...]]:
    keys = tuple(sorted(obj, key=_sort_key))
    return [(jax.tree_util.DictKey(k), dict.__getitem__(obj, k)) for k in keys], keys


def _dict_flatten(obj: Dict) -> tuple[list[Any], tuple[Any, ...]]:
    keys = tuple(sorted(obj, key=_sort_key))
    return [dict.__getitem__(obj, k) for k in keys], keys


def _dict_unflatten(aux: tuple[Any, ...], children: Iterable[Any]) -> Dict:
    new = Dict.__new__(Dict)
    dict.update(new, zip(aux, children, strict=True))
    object.__setattr__(new, "_nnx_stamp", 0)
    return new


jax.tree_util.register_pytree_with_keys(
    List, _list_flatten_with_keys, _list_unflatten, _list_flatten
)
jax.tree_util.register_pytree_with_keys(
    Dict, _dict_flatten_with_keys, _dict_unflatten, _dict_flatten
)
