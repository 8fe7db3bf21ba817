"""Treescope renderings of nnx objects: the one engine behind ``repr``, IPython and HTML.

Each nnx class describes itself with ``_nnx_display()`` (see ``_repr.py``) and defines::

    def __treescope_repr__(self, path, subtree_renderer):
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self):
        return _treescope.text(self)

treescope is imported inside these functions, so ``import nnx`` does not load it.

Shared objects and cycles. One rendering keeps a table of the nnx objects it has drawn (by
``id``, with the path where each was drawn). An nnx object met again — a layer shared by two
parents, tied weights, a module holding its parent — is drawn as a reference to the first
place, ``<same Linear as .encoder>`` (``root`` for the object rendered), never a second time
and never in a loop. Children are handed to treescope behind a small proxy, so treescope's
own repeated-object marker (which prints memory addresses) is not triggered.

Two modes for arrays. ``text`` (``repr``, ``nnx.display`` outside a notebook) summarises
every array as shape and dtype: fast, stable, no device reads, fine on tracers and abstract
values. A plain treescope rendering (``treescope.render_to_html``, ``treescope.display``,
the HTML of ``nnx.display``) hands arrays to treescope, which adds statistics and, with an
autovisualizer, pictures.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._repr import fallback_repr, value_summary

__all__ = ["Leaf", "Outline", "reference", "render", "show", "text"]

_local = threading.local()
_PLAIN = frozenset({bool, int, float, complex, str, bytes, type(None), type(...)})
_TEXT_WIDTH = 80


def _seen() -> dict[int, tuple[Any, str | None]] | None:
    return getattr(_local, "seen", None)


@contextlib.contextmanager
def _session(fresh: bool = False) -> Iterator[dict[int, tuple[Any, str | None]]]:
    """The table of objects drawn by the rendering in progress (a new one if none is, or if
    `fresh`: a ``repr`` called while another rendering runs starts its own)."""
    outer = _seen()
    if outer is not None and not fresh:
        yield outer
        return
    _local.seen = {}
    try:
        yield _local.seen
    finally:
        _local.seen = outer


def _summarising() -> bool:
    return getattr(_local, "summary", False)


def _describes_itself(value: Any) -> bool:
    return hasattr(type(value), "_nnx_display")


class Leaf:
    """A piece of text drawn as is (an array summary, a reference, a dtype name)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        from treescope import rendering_parts

        return rendering_parts.text(self.text)


class _Reference(Leaf):
    __slots__ = ()

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        from treescope import rendering_parts

        return rendering_parts.comment_color(rendering_parts.text(self.text))


def reference(name: str, where: str | None) -> Leaf:
    """``<same Linear as .encoder>``: an object drawn before, at the path `where` (a
    treescope path: ``""`` is the root, None unknown)."""
    place = "above" if where is None else (where or "root")
    return _Reference(f"<same {name} as {place}>")


def _reference(obj: Any, where: str | None) -> Leaf:
    name = type(obj).__name__
    with contextlib.suppress(Exception):
        name = obj._nnx_display()[1].__name__
    return reference(name, where)


class Outline:
    """An object that is only a display, ``(kind, type, items)`` as ``_nnx_display``
    returns: how a GraphDef draws the nodes it describes."""

    __slots__ = ("cls", "items", "kind")

    def __init__(self, kind: str, cls: type, items: list[tuple[Any, Any]]):
        self.kind, self.cls, self.items = kind, cls, items

    def _nnx_display(self) -> tuple[str, type, list[tuple[Any, Any]]]:
        return self.kind, self.cls, self.items

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return text(self)


class _Child:
    """Hands an nnx object to treescope: at drawing time, the object itself the first time
    this rendering meets it, a reference after that."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        seen = _seen()
        entry = seen.get(id(self.obj)) if seen is not None else None
        if entry is not None:
            return _reference(self.obj, entry[1]).__treescope_repr__(path, subtree_renderer)
        return render(self.obj, path, subtree_renderer)


def _dtype_name(value: Any) -> str | None:
    """``float32`` for a dtype or a scalar type (``jnp.float32``), None for anything else."""
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    if isinstance(value, type):
        dtype = getattr(value, "dtype", None)
        if isinstance(dtype, np.dtype):
            return dtype.name  # jax.numpy.float32 and friends
    return None


def _prepare(value: Any) -> Any:
    """What to hand treescope for one child `value` (see the module docstring)."""
    try:
        if _describes_itself(value):
            return _Child(value)
        name = _dtype_name(value)
        if name is not None:
            return Leaf(name)
        t = type(value)
        if t is tuple or t is list:
            return t(_prepare(v) for v in value)
        if isinstance(value, tuple) and hasattr(t, "_fields"):  # a namedtuple (optax states)
            return t(*(_prepare(v) for v in value))
        if t is dict:
            return {k: _prepare(v) for k, v in value.items()}
        if not _summarising() or t in _PLAIN or hasattr(t, "__treescope_repr__"):
            return value
        if isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
            return Leaf(getattr(value, "__qualname__", None) or value.__name__)
        # Arrays as shape and dtype; any other object by its own repr (treescope would add
        # its memory address to some of them).
        return Leaf(value_summary(value))
    except Exception:  # an odd container: let treescope draw it as it is
        return value


def render(obj: Any, path: str | None, subtree_renderer: Any) -> Any:
    """The ``__treescope_repr__`` of an nnx object, from its ``_nnx_display()``."""
    from treescope import formatting_util, repr_lib

    with _session() as seen:
        entry = seen.get(id(obj))
        if entry is not None and entry[1] != path:  # met again outside an nnx parent
            return _reference(obj, entry[1]).__treescope_repr__(path, subtree_renderer)
        seen[id(obj)] = (obj, path)
        kind, cls, items = obj._nnx_display()
        items = [(k, _prepare(v)) for k, v in items]
        if kind == "dict":
            return repr_lib.render_dictionary_wrapper(cls, dict(items), path, subtree_renderer)
        if kind == "list":
            return repr_lib.render_list_wrapper(cls, [v for _, v in items], path, subtree_renderer)
        color = formatting_util.color_from_string(cls.__qualname__)
        if kind == "call":
            return _render_call(cls, [v for _, v in items], subtree_renderer, color)
        return repr_lib.render_object_constructor(
            cls, dict(items), path, subtree_renderer, color=color
        )


def _render_call(cls: type, args: list[Any], subtree_renderer: Any, color: str) -> Any:
    """``Name(arg, ...)``: positional children, without paths (they are not attributes)."""
    from treescope import rendering_parts as parts

    children = []
    for i, arg in enumerate(args):
        last = i == len(args) - 1
        comma = (
            parts.fold_condition(expanded=parts.text(","))
            if last
            else parts.siblings(",", parts.fold_condition(collapsed=parts.text(" ")))
        )
        children.append(
            parts.build_full_line_with_annotations(subtree_renderer(arg, path=None), comma)
        )
    return parts.build_foldable_tree_node_from_children(
        prefix=parts.text(f"{cls.__name__}("),
        children=children,
        suffix=parts.text(")"),
        background_color=color,
    )


def text(obj: Any) -> str:
    """The text form of `obj` (what ``repr`` returns): treescope's text rendering with arrays
    summarised, a node expanded when it does not fit in 80 columns. Falls back to plain text
    if treescope fails; never raises."""
    outer = _summarising()
    try:
        import treescope

        _local.summary = True
        with (
            _session(fresh=True),
            treescope.using_expansion_strategy(max_height=None, target_width=_TEXT_WIDTH),
        ):
            return treescope.render_to_text(_prepare(obj))
    except Exception:
        pass
    finally:
        _local.summary = outer
    if _describes_itself(obj):
        return fallback_repr(obj)
    return value_summary(obj)


def show(obj: Any) -> None:
    """Displays `obj` in IPython as treescope's interactive HTML (arrays drawn by treescope).
    Nested nnx objects reached through plain containers are drawn once too."""
    import treescope

    with _session(fresh=True):
        treescope.display(_prepare(obj), ignore_exceptions=True)
