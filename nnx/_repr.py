"""Plain-text rendering shared by Variable, State and Module.

This is the one place that decides how nnx objects print; a richer display (treescope)
plugs in above this floor and may call these helpers for its one-line forms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["object_repr", "value_summary"]

_INDENT = "  "


def value_summary(value: Any) -> str:
    """A short description of a leaf value: shape and dtype for arrays, repr otherwise."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        kind = "Array" if not isinstance(value, np.ndarray) else "ndarray"
        if type(value).__name__ == "ShapeDtypeStruct":
            kind = "ShapeDtypeStruct"
        if len(shape) == 0 and kind != "ShapeDtypeStruct":
            try:
                return f"{kind}({value.item()!r}, dtype={dtype})"
            except Exception:  # tracers and abstract values have no item()
                pass
        return f"{kind}(shape={tuple(shape)}, dtype={dtype})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def object_repr(name: str, fields: list[tuple[str, Any]], depth: int = 0) -> str:
    """Renders ``Name(\\n  field=value,\\n)`` with nested objects indented."""
    if not fields:
        return f"{name}()"
    texts = [f"{k}={v}" for k, v in fields]
    one_line = f"{name}({', '.join(texts)})"
    if len(one_line) <= 80 and "\n" not in one_line:
        return one_line
    pad = _INDENT * (depth + 1)
    lines = [f"{name}("]
    for key, text in fields:
        text = str(text).replace("\n", "\n" + _INDENT)
        lines.append(f"{pad}{key}={text},")
    lines.append(_INDENT * depth + ")")
    return "\n".join(lines)
