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
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import jax
import numpy as np
from jax.tree_util import GetAttrKey

from . import _treescope, _version
from ._keys import sort_key as _sort_key
from ._repr import shown_fields
from .errors import AttributeNotFoundError
from .variablelib import Variable

__all__ = ["Dict", "List", "Pytree", "data", "is_data", "static"]

T = TypeVar("T")
_MISSING: Any = object()


@dataclasses.dataclass(frozen=True)
class _DataMarker(Generic[T]):
    value: T


@dataclasses.dataclass(frozen=True)
class _StaticMarker(Generic[T]):
    value: T


def data(value: T, /) -> T:
    """Marks an attribute value as data (a State leaf), whatever its type.

    Example:
      >>> class Counter(nnx.Module):
      ...   def __init__(self):
      ...     self.steps = nnx.data(0)
      >>> nnx.state(Counter()).to_pure_dict()
      {'steps': 0}
    """
    return _DataMarker(value)  # type: ignore[return-value]


def static(value: T, /) -> T:
    """Marks an attribute value as static (part of the GraphDef), whatever its type."""
    return _StaticMarker(value)  # type: ignore[return-value]


_ARRAY_TYPES = jax.Array | np.ndarray | jax.ShapeDtypeStruct


def is_array(value: Any) -> bool:
    """True for array leaves: JAX arrays (tracers included), NumPy arrays, and the
    ``jax.ShapeDtypeStruct`` that stands for an array in an abstract model (what
    ``nnx.eval_shape`` returns), so an abstract model has its leaves where the concrete one
    has its arrays. Mark a ShapeDtypeStruct that is configuration with ``nnx.static``."""
    return isinstance(value, _ARRAY_TYPES)


def is_data(value: Any) -> bool:
    """True when a value is data by default: a Variable, a Pytree or tracked container, an
    array (or its abstract ShapeDtypeStruct), or a list/tuple/mapping (a dict, a State) that
    contains any of those."""
    if isinstance(value, Variable | Pytree | List | Dict | _ARRAY_TYPES):
        return True
    if isinstance(value, list | tuple):
        return any(is_data(v) for v in value)
    if isinstance(value, dict | Mapping):
        return any(is_data(v) for v in value.values())
    return False


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

    def __init_subclass__(cls, *, pytree: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
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
        static, data = [], []
        for name, value in self._nnx_items():
            (data if self._nnx_is_data(name, value) else static).append((name, value))
        return "object", type(self), shown_fields(type(self), static + data)

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)


Object = Pytree  # older flax name
_CACHE_FIELDS = frozenset({"_nnx_cache", "_nnx_multi"})


def _register_pytree(cls: type) -> None:
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

    def __init__(self, items: Iterable[Any] = (), /):
        super().__init__(_track(v) for v in items)
        self._nnx_stamp = _version.bump()

    def __setitem__(self, index: Any, value: Any) -> None:
        value = [_track(v) for v in value] if isinstance(index, slice) else _track(value)
        list.__setitem__(self, index, value)
        _stamp(self)

    def append(self, value: Any) -> None:
        list.append(self, _track(value))
        _stamp(self)

    def insert(self, index: int, value: Any) -> None:  # type: ignore[override]
        list.insert(self, index, _track(value))
        _stamp(self)

    def extend(self, values: Iterable[Any]) -> None:
        list.extend(self, [_track(v) for v in values])
        _stamp(self)

    def __iadd__(self, values: Iterable[Any]) -> List:  # type: ignore[override]
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

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        dict.update(self, {k: _track(v) for k, v in dict(*args, **kwargs).items()})
        _stamp(self)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> Dict:  # type: ignore[override]
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


def _register_container(cls: type, is_list: bool) -> None:
    def flatten_with_keys(obj: Any):
        if is_list:
            return [(jax.tree_util.SequenceKey(i), v) for i, v in enumerate(obj)], len(obj)
        keys = tuple(sorted(obj, key=_sort_key))
        return [(jax.tree_util.DictKey(k), dict.__getitem__(obj, k)) for k in keys], keys

    def flatten(obj: Any):
        if is_list:
            return list(obj), len(obj)
        keys = tuple(sorted(obj, key=_sort_key))
        return [dict.__getitem__(obj, k) for k in keys], keys

    def unflatten(aux: Any, children: Iterable[Any]) -> Any:
        new = cls.__new__(cls)
        if is_list:
            list.extend(new, children)
        else:
            dict.update(new, zip(aux, children, strict=True))
        object.__setattr__(new, "_nnx_stamp", 0)
        return new

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


_register_container(List, True)
_register_container(Dict, False)
