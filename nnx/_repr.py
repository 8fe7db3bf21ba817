"""What nnx objects show when printed, and the plain-text form used when treescope cannot run.

Every displayable nnx object (Module and the other Pytrees, Variable, State, GraphDef, the
tracked List and Dict) describes itself with one method, ``_nnx_display()``, returning
``(kind, type, items)``:

- ``kind`` is ``"object"`` (``Name(key=value, ...)``), ``"dict"`` (``Name({key: value})``),
  ``"list"`` (``Name([value, ...])``) or ``"call"`` (``Name(value, ...)``);
- ``items`` are ``(key, value)`` pairs, already reduced to what a reader should see.

``_treescope.py`` turns that description into treescope renderings (``repr``, IPython, HTML);
:func:`fallback_repr` turns it into plain text if treescope fails. Which attributes an object
shows is decided here, by :func:`shown_fields`, one rule for every class.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["fallback_repr", "object_repr", "shown_fields", "value_summary"]

_INDENT = "  "


def _kind_of_array(value: Any) -> str:
    name = type(value).__name__
    if isinstance(value, np.ndarray):
        return "ndarray"
    if name == "ShapeDtypeStruct":
        return "ShapeDtypeStruct"
    if "Tracer" in name:  # JitTracer, BatchTracer, JVPTracer...: a value being traced
        return "Tracer"
    return "Array"


def value_summary(value: Any) -> str:
    """A short description of a leaf value: shape and dtype for arrays, repr otherwise.

    Never raises (a value whose attributes or repr fail is named by its type), and never
    reads array contents except the one number of a scalar.
    """
    try:
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
    except Exception:  # e.g. the stand-in for a value that leaked out of a trace
        shape = dtype = None
    if isinstance(value, np.generic):  # a NumPy scalar: np.float32(1.0)
        return safe_repr(value)
    if shape is not None and dtype is not None:
        kind = _kind_of_array(value)
        if len(shape) == 0 and kind in ("Array", "ndarray"):
            try:
                return f"{kind}({value.item()!r}, dtype={dtype})"
            except Exception:  # keys, deleted buffers: no item()
                pass
        return f"{kind}(shape={tuple(shape)}, dtype={dtype})"
    text = safe_repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def safe_repr(value: Any) -> str:
    """``repr(value)``, or ``<Type object>`` if that repr raises."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"


def object_repr(name: str, fields: list[tuple[str, Any]], depth: int = 0) -> str:
    """Renders ``Name(\\n  field=value,\\n)`` with nested objects indented (a field with
    an empty name shows its value alone)."""
    if not fields:
        return f"{name}()"
    texts = [f"{k}={v}" if k else str(v) for k, v in fields]
    one_line = f"{name}({', '.join(texts)})"
    if len(one_line) <= 80 and "\n" not in one_line:
        return one_line
    pad = _INDENT * (depth + 1)
    lines = [f"{name}("]
    for key, text in fields:
        text = str(text).replace("\n", "\n" + _INDENT)
        lines.append(f"{pad}{key}={text}," if key else f"{pad}{text},")
    lines.append(_INDENT * depth + ")")
    return "\n".join(lines)


# -- which attributes show ----------------------------------------------------------------
_SIMPLE = (int, float, complex, str, bytes, tuple, frozenset)
_DEFAULTS: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()
_HIDDEN: weakref.WeakKeyDictionary[type, frozenset[str]] = weakref.WeakKeyDictionary()


def _init_defaults(cls: type) -> dict[str, Any]:
    """The default of each named parameter of ``cls.__init__`` (cached per class), and of
    the ``__init__`` of its bases for names it does not take itself (a subclass that passes
    ``**kwargs`` on to its base)."""
    try:
        return _DEFAULTS[cls]
    except (KeyError, TypeError):
        pass
    defaults: dict[str, Any] = {}
    named: set[str] = set()
    for base in cls.__mro__:
        init = vars(base).get("__init__")
        if init is None or base is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # no signature to read
            continue
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in named:
                continue
            named.add(p.name)
            if p.default is not p.empty:
                defaults[p.name] = p.default
    with contextlib.suppress(TypeError):  # an unhashable or non-weakrefable class
        _DEFAULTS[cls] = defaults
    return defaults


def _hidden_names(cls: type) -> frozenset[str]:
    """The names hidden by ``_nnx_repr_hide`` on `cls` or any of its bases."""
    try:
        return _HIDDEN[cls]
    except (KeyError, TypeError):
        pass
    names: set[str] = set()
    for base in cls.__mro__:
        names.update(vars(base).get("_nnx_repr_hide", ()))
    hidden = frozenset(names)
    with contextlib.suppress(TypeError):
        _HIDDEN[cls] = hidden
    return hidden


def _has_value_equality(cls: type) -> bool:
    """Instances compare and hash by value (numbers, strings, frozen mappings, enums...)."""
    return cls.__eq__ is not object.__eq__ and cls.__hash__ not in (None, object.__hash__)


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    cls = type(value)
    if cls is not type(default) or not (isinstance(default, _SIMPLE) or _has_value_equality(cls)):
        return False
    try:
        return bool(value == default)
    except Exception:  # a tuple holding arrays
        return False


def is_plain_callable(value: Any) -> bool:
    """A function-like value (function, partial, initializer, jitted function): constructor
    noise in a display. Classes and nnx objects (Modules are callable) do not count."""
    try:
        return (
            callable(value)
            and not isinstance(value, type)
            and not hasattr(type(value), "_nnx_display")
        )
    except Exception:
        return False


def shown_fields(cls: type, items: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The attributes of an object of class `cls` that its display shows, in order.

    Hidden: private names (``_...``), names listed in ``_nnx_repr_hide`` (a class attribute,
    merged over the bases: ``_nnx_repr_hide = ("tx",)``), ``None``, functions and other
    plain callables (initializers, ``dot_general``, ``promote_dtype``...), and values equal
    to the default of the ``__init__`` parameter of the same name (``param_dtype=float32``,
    ``epsilon=1e-5``). Booleans always show: they are switches a reader checks
    (``use_bias``, ``deterministic``, ``use_running_average``).
    """
    hidden = _hidden_names(cls)
    defaults = _init_defaults(cls)
    shown = []
    for name, value in items:
        if isinstance(name, str) and (name.startswith("_") or name in hidden):
            continue
        if value is None or is_plain_callable(value):
            continue
        if not isinstance(value, bool) and name in defaults and _is_default(value, defaults[name]):
            continue
        shown.append((name, value))
    return shown


# -- the plain-text fallback --------------------------------------------------------------
def _describes_itself(value: Any) -> bool:
    return hasattr(type(value), "_nnx_display")


def fallback_repr(obj: Any, _active: set[int] | None = None) -> str:
    """Plain text from ``obj._nnx_display()``, for when treescope cannot render: nested nnx
    objects indented, arrays summarised, an object met again inside itself as ``Name(...)``.
    Never raises."""
    active = set() if _active is None else _active
    name = type(obj).__name__
    if id(obj) in active:
        return f"{name}(...)"
    try:
        kind, cls, items = obj._nnx_display()
        name = cls.__name__
    except Exception:
        return f"<{name} object at {hex(id(obj))}>"
    active.add(id(obj))
    try:
        fields = []
        for i, (key, value) in enumerate(items):
            text = (
                fallback_repr(value, active) if _describes_itself(value) else value_summary(value)
            )
            if kind == "object" and isinstance(key, str):
                label = key
            elif kind == "call":
                label = ""
            elif kind == "list":
                label = str(i)
            else:
                label = safe_repr(key)
            fields.append((label, text))
        return object_repr(name, fields)
    finally:
        active.discard(id(obj))
