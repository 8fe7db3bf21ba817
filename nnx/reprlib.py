"""flax's text-repr protocol, for classes written against ``flax.nnx.reprlib``.

A class derives from :class:`Representable` and defines ``__nnx_repr__``, a generator that
yields one :class:`Object` (how to frame the object) and then one :class:`Attr` per field;
``repr`` lays them out one field per line, indenting nested multi-line values. nnx's own
objects do not use it: they render through treescope (``nnx.display``) and ``nnx/_repr.py``.
This module exists so user code written for flax's protocol runs unchanged.

Unlike flax's, the output never carries terminal colours (``str`` equals ``repr``).

Example:
  >>> class Point(nnx.reprlib.Representable):
  ...   def __init__(self, x, y):
  ...     self.x, self.y = x, y
  ...   def __nnx_repr__(self):
  ...     yield nnx.reprlib.Object(type=type(self))
  ...     yield nnx.reprlib.Attr('x', self.x)
  ...     yield nnx.reprlib.Attr('y', Point(0, 1) if self.y is None else self.y)
  >>> print(repr(Point(3, None)))
  Point(
    x=3,
    y=Point(
      x=0,
      y=1
    )
  )
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "Attr",
    "MappingReprMixin",
    "Object",
    "PrettyMapping",
    "PrettySequence",
    "Representable",
    "SequenceReprMixin",
    "get_repr",
]


@dataclasses.dataclass
class Object:
    """How an object is framed: ``{type}{start}`` ... ``{end}``.

    Attributes:
      type: the name shown first (a class shows its ``__name__``; ``''`` shows none).
      start, end: the brackets around the fields.
      kv_sep: between a field's key and its value.
      indent: the indentation of each field (and of nested lines).
      empty_repr: shown between the brackets when there are no fields.
      comment: shown right after ``start`` when the fields go on their own lines.
      same_line: all fields on one line, separated by ``', '``.
    """

    type: str | type
    start: str = "("
    end: str = ")"
    kv_sep: str = "="
    indent: str = "  "
    empty_repr: str = ""
    comment: str = ""
    same_line: bool = False

    @property
    def elem_sep(self) -> str:
        return ", " if self.same_line else ",\n"


@dataclasses.dataclass
class Attr:
    """One field: ``{start}{key}{kv_sep}{value}{end}``.

    Attributes:
      key: the field's name (shown as is).
      value: shown as flax shows values (builtin containers item by item, a class by its
        name, strings quoted, anything else by ``repr``), or as is with ``use_raw_value``
        (it must be a str then).
      start, end: text around the field.
      use_raw_value: show `value` itself rather than its ``repr``.
      use_raw_key: kept for flax compatibility; keys are always shown as given here (flax
        only colours the other ones).
    """

    key: str
    value: str | Any
    start: str = ""
    end: str = ""
    use_raw_value: bool = False
    use_raw_key: bool = False


class Representable:
    """Base class whose ``repr`` comes from ``__nnx_repr__`` (see the module docstring)."""

    __slots__ = ()

    def __nnx_repr__(self) -> Iterator[Object | Attr]:
        raise NotImplementedError(
            f"{type(self).__name__} derives from nnx.reprlib.Representable but defines no "
            "__nnx_repr__. Fix: define it as a generator yielding an nnx.reprlib.Object, then "
            "one nnx.reprlib.Attr per field."
        )

    def __repr__(self) -> str:
        return get_repr(self)

    def __str__(self) -> str:
        return get_repr(self)


def _show(x: Any) -> str:
    """A field value as flax's protocol shows it: builtin containers (subclasses included)
    item by item, classes by name, numbers and None as printed, strings quoted,
    Representables laid out, anything else by ``repr``."""
    if isinstance(x, list):
        return "[" + ", ".join(map(_show, x)) + "]"
    if isinstance(x, tuple):
        inner = ", ".join(map(_show, x))
        return f"({inner},)" if len(x) == 1 else f"({inner})"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in x.items()) + "}"
    if isinstance(x, set):
        return "{" + ", ".join(map(_show, x)) + "}"
    if isinstance(x, type):
        return x.__name__
    if isinstance(x, bool | int | float) or x is None:
        return f"{x}"
    if isinstance(x, str):
        return repr(x)
    if isinstance(x, Representable):
        return get_repr(x)
    return repr(x)


def _field(frame: Object, attr: Any) -> str:
    if not isinstance(attr, Attr):
        raise TypeError(
            f"__nnx_repr__ yielded {type(attr).__name__} after the Object; every later item "
            "must be an nnx.reprlib.Attr."
        )
    if attr.use_raw_value and not isinstance(attr.value, str):
        raise TypeError(
            f"Attr({attr.key!r}, use_raw_value=True) needs its value as a str, got "
            f"{type(attr.value).__name__}. Fix: pass the text to show, or drop use_raw_value."
        )
    shown = attr.value if attr.use_raw_value else _show(attr.value)
    shown = shown.replace("\n", "\n" + frame.indent)  # nested lines move in with the field
    lead = "" if frame.same_line else frame.indent
    return f"{lead}{attr.start}{attr.key}{frame.kv_sep}{shown}{attr.end}"


def get_repr(obj: Representable) -> str:
    """The text of a :class:`Representable`, laid out from its ``__nnx_repr__``.

    Raises:
      TypeError: `obj` is not Representable, or its generator does not yield an
        :class:`Object` first and :class:`Attr` items after it.
    """
    if not isinstance(obj, Representable):
        raise TypeError(f"get_repr needs an nnx.reprlib.Representable, got {type(obj).__name__}.")
    items = obj.__nnx_repr__()
    frame = next(items, None)
    if not isinstance(frame, Object):
        raise TypeError(
            f"{type(obj).__name__}.__nnx_repr__ must yield an nnx.reprlib.Object first, got "
            f"{type(frame).__name__}."
        )
    fields = [_field(frame, attr) for attr in items]
    name = frame.type if isinstance(frame.type, str) else frame.type.__name__
    if not fields:
        body = frame.empty_repr
    elif frame.same_line:
        body = frame.elem_sep.join(fields)
    else:
        body = frame.comment + "\n" + frame.elem_sep.join(fields) + "\n"
    return f"{name}{frame.start}{body}{frame.end}"


def _mapping_items(obj: Any, items: Iterator[tuple[Any, Any]]) -> Iterator[Object | Attr]:
    yield Object(type=type(obj), start="({", end="})", kv_sep=": ")
    for key, value in items:
        yield Attr(repr(key), value, use_raw_key=True)


def _sequence_items(obj: Any, values: Iterator[Any]) -> Iterator[Object | Attr]:
    yield Object(type=type(obj), start="([", end="])", kv_sep="")
    for value in values:
        yield Attr("", value, use_raw_key=True)


class MappingReprMixin(Representable):
    """``__nnx_repr__`` for a Mapping class: ``Name({key: value, ...})``, an item a line."""

    __slots__ = ()

    def __nnx_repr__(self) -> Iterator[Object | Attr]:
        return _mapping_items(self, iter(self.items()))  # type: ignore[attr-defined]


class SequenceReprMixin(Representable):
    """``__nnx_repr__`` for a Sequence class: ``Name([item, ...])``, an item a line."""

    __slots__ = ()

    def __nnx_repr__(self) -> Iterator[Object | Attr]:
        return _sequence_items(self, iter(self))  # type: ignore[call-overload]


@dataclasses.dataclass(repr=False)
class PrettyMapping(Representable):
    """Shows a mapping an item a line: ``PrettyMapping({'a': 1, ...})``."""

    mapping: Mapping

    def __nnx_repr__(self) -> Iterator[Object | Attr]:
        return _mapping_items(self, iter(self.mapping.items()))


@dataclasses.dataclass(repr=False)
class PrettySequence(Representable):
    """Shows a sequence an item a line: ``PrettySequence([1, ...])``."""

    sequence: Sequence

    def __nnx_repr__(self) -> Iterator[Object | Attr]:
        return _sequence_items(self, iter(self.sequence))
