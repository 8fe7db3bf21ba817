"""Where an object sits, found from the heap: ``Model.layers[0].kernel`` for a Variable.

Ground floor (no nnx imports). Only error messages use it (it walks ``gc`` referrers, which
is slow), e.g. to name a Variable that was given a leaked tracer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["find_path"]

_MISSING: Any = object()


def find_path(var: Any, depth: int = 8, budget: int = 24) -> str | None:
    """The attribute path to `var` from the outermost object found holding it, e.g.
    ``Rngs.dropout.count`` or ``Optimizer.opt_state[0].mu['w']``, or None."""
    import gc

    calls = [budget]

    def climb(obj: Any, depth: int, seen: frozenset[int]) -> tuple[Any, list[str]] | None:
        if depth == 0 or calls[0] <= 0:
            return None
        calls[0] -= 1
        found = None
        for owner, step in _holders(obj, gc):
            if id(owner) in seen:
                continue
            up = climb(owner, depth - 1, seen | {id(owner)})
            if up is not None:
                return up[0], [*up[1], step]
            if found is None and not isinstance(owner, list | tuple | dict):
                found = (owner, [step])
        return found

    result = climb(var, depth, frozenset({id(var)}))
    if result is None:
        return None
    root, steps = result
    return type(root).__name__ + "".join(steps)


def _holders(obj: Any, gc: Any) -> list[tuple[Any, str]]:
    """The objects holding `obj` directly, with the step from each to it (``.name``, ``[i]``,
    ``['k']``): attributes of objects first, then tracked containers, namedtuples and tuples.
    Plain lists and dicts (caches, locals) and private or JAX-internal classes are skipped."""
    attrs: list[tuple[Any, str]] = []
    items: list[tuple[Any, str]] = []
    refs = gc.get_referrers(obj)
    for ref in refs:
        if isinstance(ref, dict):
            owner = _dict_owner(ref, gc, refs)
            key = next((k for k, v in dict.items(ref) if v is obj), _MISSING)
            if key is _MISSING:
                continue
            if owner is not None and isinstance(key, str):
                attrs.append((owner, f".{key}"))
            elif owner is None and type(ref) is not dict and _public(ref):
                items.append((ref, f"[{key!r}]"))
        elif isinstance(ref, list | tuple) and type(ref) is not list and _public(ref):
            i = next((i for i, v in enumerate(ref) if v is obj), None)
            if i is None:
                continue
            fields = getattr(type(ref), "_fields", None)
            items.append((ref, f".{fields[i]}" if fields else f"[{i}]"))
        elif not isinstance(ref, list | tuple | dict) and _public(ref):
            d = getattr(ref, "__dict__", None)  # objects whose attributes are not a dict
            if isinstance(d, dict):
                key = next((k for k, v in d.items() if v is obj), None)
                if isinstance(key, str):
                    attrs.append((ref, f".{key}"))
    return attrs + items


def _dict_owner(d: dict, gc: Any, skip: list) -> Any:
    """The object whose ``__dict__`` is `d`, if it is an ordinary (public, non-JAX) object."""
    for ref in gc.get_referrers(d):
        if ref is skip or isinstance(ref, dict | list | tuple):
            continue
        try:
            if object.__getattribute__(ref, "__dict__") is d:
                return ref if _public(ref) else None
        except Exception:
            continue
    return None


def _public(obj: Any) -> bool:
    """Not a class, module, function, frame or cell, not private, not JAX's own."""
    import types

    if isinstance(
        obj,
        type | types.ModuleType | types.FunctionType | types.FrameType | types.CellType,
    ):
        return False
    typ = type(obj)
    return not typ.__name__.startswith("_") and not typ.__module__.startswith(("jax", "jaxlib"))
