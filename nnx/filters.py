"""The filter language: which parts of the state an operation acts on.

A filter is any of:

* a Variable type (``nnx.Param``) or any class: matches values of that type;
* ``...`` or ``True``: everything; ``False`` or ``None``: nothing;
* a string: matches a path part with that name, or a Variable whose ``tag`` metadata is it;
* a callable ``(path, value) -> bool``;
* a list or tuple of filters: any of them;
* the combinators :class:`OfType`, :class:`PathContains`, :class:`PathIn`, :class:`WithTag`,
  :class:`All`, :class:`Any`, :class:`Not`, :data:`Everything`, :data:`Nothing`.

Example:
  >>> is_param = nnx.filterlib.to_predicate(nnx.Param)
  >>> is_param(('w',), nnx.Param(1.0)), is_param(('m',), nnx.BatchStat(0.0))
  (True, False)
  >>> f = nnx.filterlib.to_predicate(nnx.All(nnx.Param, nnx.Not(nnx.PathContains('bias'))))
  >>> f(('linear', 'bias'), nnx.Param(0.0))
  False
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Hashable
from typing import Any as _Any
from typing import TypeAlias

from .errors import ArgumentError

__all__ = [
    "All",
    "Any",
    "Everything",
    "Filter",
    "Not",
    "Nothing",
    "OfType",
    "PathContains",
    "PathIn",
    "WithTag",
    "filters_to_predicates",
    "to_predicate",
]

Path: TypeAlias = tuple[Hashable, ...]
Predicate: TypeAlias = Callable[[Path, _Any], bool]
Filter: TypeAlias = _Any  # type | str | Predicate | bool | Ellipsis | None | tuple | list


def to_predicate(filter: Filter) -> Predicate:
    """Turns any filter into a predicate ``(path, value) -> bool``.

    Raises:
      TypeError: the object is not a filter.
    """
    if isinstance(filter, _PredicateBase):
        return filter
    if isinstance(filter, type):
        return OfType(filter)
    if filter is Ellipsis or filter is True:
        return Everything()
    if filter is False or filter is None:
        return Nothing()
    if isinstance(filter, str):
        return _NameOrTag(filter)
    if isinstance(filter, tuple | list):
        return Any(*filter)
    if callable(filter):
        return filter
    raise ArgumentError(
        f"{filter!r} ({type(filter).__name__}) is not a filter. A filter is a Variable type "
        "(nnx.Param), ..., a string, a callable (path, value) -> bool, a tuple of filters, or "
        "one of nnx.All/Any/Not/PathContains/WithTag/OfType."
    )


def filters_to_predicates(filters: tuple[Filter, ...]) -> tuple[Predicate, ...]:
    """Converts a sequence of filters; ``...`` may only appear last (it matches all)."""
    for i, f in enumerate(filters[:-1]):
        if f is Ellipsis or f is True or isinstance(f, Everything):
            from .errors import FilterError

            raise FilterError(
                f"Filter #{i} is `...` (everything) but is not the last filter, so filters "
                f"after it would never match anything: {filters!r}. Fix: put `...` last."
            )
    return tuple(to_predicate(f) for f in filters)


class _PredicateBase:
    """Marker base for filter objects (hashable, comparable, with a readable repr)."""

    def __call__(self, path: Path, value: _Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class OfType(_PredicateBase):
    """Matches values that are instances of `type`.

    Also matches objects that describe a Variable of that type through a ``type`` attribute
    (abstract or converted state).
    """

    type: type

    def __call__(self, path: Path, value: _Any) -> bool:
        if isinstance(value, self.type):
            return True
        vtype = getattr(value, "type", None)
        return isinstance(vtype, type) and issubclass(vtype, self.type)

    def __repr__(self) -> str:
        return f"OfType({self.type.__name__})"


@dataclasses.dataclass(frozen=True)
class PathContains(_PredicateBase):
    """Matches values whose path contains `key` (``exact=False``: a part containing it)."""

    key: Hashable
    exact: bool = True

    def __call__(self, path: Path, value: _Any) -> bool:
        if self.exact:
            return self.key in path
        return builtins.any(str(self.key) in str(part) for part in path)


class PathIn(_PredicateBase):
    """Matches values whose whole path is one of `paths` (tuples of path parts).

    Example:
      >>> f = nnx.filterlib.PathIn(('linear', 'kernel'), ('bias',))
      >>> f(('linear', 'kernel'), None), f(('linear', 'bias'), None)
      (True, False)
    """

    def __init__(self, *paths: Path):
        bad = [p for p in paths if not isinstance(p, tuple)]
        if bad:
            raise ArgumentError(
                f"PathIn takes paths as tuples of path parts; got {bad[0]!r}.\nFix: e.g. "
                "nnx.filterlib.PathIn(('encoder', 'kernel'), ('layers', 0, 'bias'))."
            )
        self.paths = frozenset(paths)

    def __call__(self, path: Path, x: _Any) -> bool:
        return tuple(path) in self.paths

    def __repr__(self) -> str:
        return f"PathIn({', '.join(map(repr, sorted(self.paths, key=repr)))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathIn) and self.paths == other.paths

    def __hash__(self) -> int:
        return hash((PathIn, self.paths))


@dataclasses.dataclass(frozen=True)
class WithTag(_PredicateBase):
    """Matches values whose ``tag`` metadata equals `tag`."""

    tag: str

    def __call__(self, path: Path, value: _Any) -> bool:
        meta = getattr(value, "_meta", None)
        if meta is not None:
            return meta.get("tag") == self.tag
        return getattr(value, "tag", None) == self.tag


@dataclasses.dataclass(frozen=True)
class _NameOrTag(_PredicateBase):
    name: str

    def __call__(self, path: Path, value: _Any) -> bool:
        return self.name in path or WithTag(self.name)(path, value)

    def __repr__(self) -> str:
        return repr(self.name)


class Any(_PredicateBase):
    """Matches when any of the given filters matches."""

    def __init__(self, *filters: Filter):
        self.predicates = tuple(to_predicate(f) for f in filters)

    def __call__(self, path: Path, value: _Any) -> bool:
        return builtins.any(p(path, value) for p in self.predicates)

    def __repr__(self) -> str:
        return f"Any({', '.join(map(repr, self.predicates))})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.predicates == other.predicates

    def __hash__(self) -> int:
        return hash((type(self), self.predicates))


class All(Any):
    """Matches when all of the given filters match."""

    def __call__(self, path: Path, value: _Any) -> bool:
        return builtins.all(p(path, value) for p in self.predicates)

    def __repr__(self) -> str:
        return f"All({', '.join(map(repr, self.predicates))})"


class Not(_PredicateBase):
    """Matches when the given filter does not."""

    def __init__(self, collection_filter: Filter, /):
        self.collection_filter = collection_filter
        self.predicate = to_predicate(collection_filter)

    def __call__(self, path: Path, x: _Any) -> bool:
        return not self.predicate(path, x)

    def __repr__(self) -> str:
        return f"Not({self.predicate!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Not and self.predicate == other.predicate

    def __hash__(self) -> int:
        return hash((Not, self.predicate))


class Everything(_PredicateBase):
    """Matches everything (the filter ``...``)."""

    def __call__(self, path: Path, value: _Any) -> bool:
        return True

    def __repr__(self) -> str:
        return "Everything()"

    def __eq__(self, other: object) -> bool:
        return type(other) is Everything

    def __hash__(self) -> int:
        return hash(Everything)


class Nothing(_PredicateBase):
    """Matches nothing (the filters ``False`` and ``None``)."""

    def __call__(self, path: Path, value: _Any) -> bool:
        return False

    def __repr__(self) -> str:
        return "Nothing()"

    def __eq__(self, other: object) -> bool:
        return type(other) is Nothing

    def __hash__(self) -> int:
        return hash(Nothing)
