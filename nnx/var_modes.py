"""flax.nnx's Variable-mode switches: :func:`var_defaults`, :func:`with_vars`, ``vars_as``.

flax.nnx 0.12 can back Variables with JAX mutable array refs (``ref=True``) or "hijax"
Variables (``hijax=True``), chosen per Variable, by default (``var_defaults``) or for a copy of
a model (``with_vars``). nnx has one kind of Variable: a plain box whose in-place updates
travel through every transform by the graph machinery, at tree-mode speed thanks to the
structure cache (docs/coming-from-flax.md, "One semantics"). So ``False``/``None`` are
accepted everywhere and ``True`` is refused with an explanation, rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from .errors import ArgumentError
from .filters import Filter
from .graph import flatten, is_node, unflatten

# The one refusal of flax's hijax/ref Variables, shared with Variable's own constructors
# (variablelib's public namespace, flax's, gets no extra name for it).
from .variablelib import _refuse_refs

__all__ = ["VarDefaults", "var_defaults", "vars_as", "with_vars"]

A = TypeVar("A")
F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class VarDefaults(Mapping[str, Any]):
    """The Variable defaults in force: always ``hijax=False, ref=False`` in nnx."""

    hijax: bool = False
    ref: bool = False

    def __getitem__(self, key: str) -> Any:
        if key not in ("hijax", "ref"):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(("hijax", "ref"))

    def __len__(self) -> int:
        return 2


class _VarDefaultsContext:
    """What ``var_defaults(...)`` returns: usable as a statement, a ``with`` block or a
    decorator. There is nothing to change (the defaults can only be False), so all three
    leave the defaults as they are."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def var_defaults(
    *, hijax: bool | None = None, ref: bool | None = None
) -> _VarDefaultsContext | VarDefaults:
    """Reads (no arguments) or sets (as a call, a ``with`` block or a decorator) the default
    ``hijax``/``ref`` of new Variables, as in flax.

    nnx Variables never hold array refs, so the defaults are always False: setting False is
    accepted (and changes nothing), setting True raises.

    Raises:
      ArgumentError: ``hijax=True`` or ``ref=True``.

    Example:
      >>> nnx.var_defaults()
      VarDefaults(hijax=False, ref=False)
      >>> with nnx.var_defaults(ref=False):
      ...   nnx.var_defaults()['ref']
      False
    """
    if hijax is None and ref is None:
        return VarDefaults()
    if hijax or ref:
        _refuse_refs("nnx.var_defaults", hijax=hijax, ref=ref)
    return _VarDefaultsContext()


def with_vars(
    node: A,
    /,
    *,
    hijax: bool | None = None,
    ref: bool | None = None,
    mutable: bool | None = None,
    only: Filter = ...,
    allow_duplicates: bool = False,
) -> A:
    """A copy of `node` whose Variables are switched to another mode (flax's ``with_vars``).

    In nnx every Variable is already what the allowed arguments ask for (no ref, no hijax,
    mutable), so no Variable changes: the result is a new structure (its own Modules and
    containers) holding the same Variables as `node`, which is what flax returns when no
    Variable needs to change. `only` and `allow_duplicates` select and check the Variables
    that would change; here there are none.

    Args:
      node: any object graph or pytree.
      hijax: False or None (True raises).
      ref: False or None (True raises).
      mutable: True or None (nnx has no read-only Variables; False raises).
      only: the Variables to switch (flax's filter).
      allow_duplicates: flax's permission to switch a Variable reached along two paths.

    Raises:
      ArgumentError: ``hijax=True``, ``ref=True`` or ``mutable=False``.

    Example:
      >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      >>> view = nnx.with_vars(model, ref=False)
      >>> view is model, view.kernel is model.kernel
      (False, True)
    """
    if hijax or ref:
        _refuse_refs("nnx.with_vars", hijax=hijax, ref=ref)
    if mutable is False:
        raise ArgumentError(
            "nnx.with_vars got mutable=False: nnx has no read-only Variables (flax's "
            "immutable ones exist only for its hijax mode).\nFix: drop mutable=False; to keep "
            "values from training, exclude them from the optimizer (wrt=) or use "
            "jax.lax.stop_gradient where they are read."
        )
    if not is_node(node) and not isinstance(node, list | tuple | dict):
        return node
    graphdef, pairs = flatten(node)
    return unflatten(graphdef, [leaf for _, leaf in pairs])


@functools.wraps(with_vars)
def vars_as(node: A, /, **kwargs: Any) -> A:
    """Deprecated name of :func:`with_vars` (as in flax)."""
    warnings.warn(
        "nnx.vars_as is deprecated; use nnx.with_vars (same arguments).",
        DeprecationWarning,
        stacklevel=2,
    )
    return with_vars(node, **kwargs)


vars_as.__doc__ = "Deprecated name of :func:`with_vars` (as in flax)."
