"""flax's ``nnx.visualization`` namespace: ``display`` (the same function as ``nnx.display``)
and ``render_object_constructor`` for writing treescope reprs of your own classes.
"""

from __future__ import annotations

from typing import Any

from .display import display

__all__ = ["display", "render_object_constructor"]


def render_object_constructor(*args: Any, **kwargs: Any) -> Any:
    """treescope's ``repr_lib.render_object_constructor`` (treescope is imported on first use,
    so ``import nnx`` stays light).

    Example:
      >>> class Point:
      ...     def __init__(self, x):
      ...         self.x = x
      ...     def __treescope_repr__(self, path, subtree_renderer):
      ...         return nnx.visualization.render_object_constructor(
      ...             object_type=type(self), attributes={'x': self.x},
      ...             path=path, subtree_renderer=subtree_renderer)
      >>> import treescope
      >>> treescope.render_to_text(Point(1))
      'Point(x=1)'
    """
    from treescope.repr_lib import render_object_constructor as render

    return render(*args, **kwargs)
