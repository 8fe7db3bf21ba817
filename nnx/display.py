"""``nnx.display``: show models, States, GraphDefs, optimizers... the best way the place allows.

In a notebook (Jupyter, Colab) each object is drawn by treescope as foldable HTML: nested
modules fold and unfold, arrays show their statistics (and pictures, once
``treescope.basic_interactive_setup()`` has turned on array visualisation), and a layer
shared by two parents is drawn once, the second place naming the first. Elsewhere (a
terminal, a script, a log) it prints the text form, which is also what ``repr`` returns.

Both come from the same rendering (see ``_treescope.py``): there is one display engine.

Example:
  >>> nnx.display(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  Linear(
    in_features=2,
    out_features=3,
    use_bias=True,
    bias=Param(value=Array(shape=(3,), dtype=float32)),
    kernel=Param(value=Array(shape=(2, 3), dtype=float32)),
  )
"""

from __future__ import annotations

from typing import Any

from . import _treescope

__all__ = ["display"]


def _in_notebook() -> bool:
    """True inside a kernel that can show HTML (Jupyter, Colab), not a terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def display(*args: Any) -> None:
    """Shows each object: interactive treescope HTML in a notebook, text elsewhere.

    Args:
      *args: anything; nnx objects (modules, Variables, States, GraphDefs, optimizers,
        metrics, ``nnx.List``/``nnx.Dict``) show their public configuration and their
        arrays' shapes and dtypes, without initializers or private fields.
    """
    if _in_notebook():
        for obj in args:
            _treescope.show(obj)
        return
    for obj in args:
        print(_treescope.text(obj))
