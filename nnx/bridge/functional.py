"""Functional: an nnx Module class used in linen's init/apply style, without linen.

``functional(cls)(*args)`` returns a :class:`Functional` whose ``init(rngs=...)`` builds the
module and returns its State (keeping the GraphDef) and whose ``apply(state)`` gives a callable
proxy, as ``nnx.call`` does: ``out, (graphdef, state) = f.apply(state)(x)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..errors import ArgumentError
from ..graph import GraphDef, call, split
from ..module import Module
from ..rngs import Rngs

__all__ = ["Functional", "functional"]

M = TypeVar("M", bound=Module)


@dataclasses.dataclass
class Functional(Generic[M]):
    """An nnx Module class with its constructor arguments; see :func:`functional`.

    Attributes:
      module_type: the nnx Module class.
      graphdef: the GraphDef, known after :meth:`init`.
      args: positional constructor arguments.
      kwargs: keyword constructor arguments.
    """

    module_type: type[M]
    graphdef: GraphDef | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def init(self, *, rngs: Rngs | None = None) -> Any:
        """Builds the module and returns its State (the GraphDef is kept on `self`)."""
        extra = {} if rngs is None else {"rngs": rngs}
        module = self.module_type(*self.args, **self.kwargs, **extra)
        self.graphdef, state = split(module)
        return state

    def apply(self, *states: Any) -> Any:
        """A proxy calling the module (or ``.method``) on `states`; it returns
        ``(output, (graphdef, new_state))``."""
        if self.graphdef is None:
            raise ArgumentError(
                f"Functional({self.module_type.__name__}).apply was called before init, so "
                "there is no GraphDef to rebuild the module from.\nFix: "
                "state = f.init(rngs=nnx.Rngs(0)) first, then f.apply(state)(x)."
            )
        return call((self.graphdef, states[0]), *states[1:])


def functional(cls: type[M]) -> Callable[..., Functional[M]]:
    """Turns an nnx Module class into a constructor of :class:`Functional` objects.

    Example:
      >>> f = nnx.bridge.functional(nnx.Linear)(3, 4)
      >>> state = f.init(rngs=nnx.Rngs(0))
      >>> y, (graphdef, state) = f.apply(state)(jnp.ones((1, 3)))
      >>> y.shape
      (1, 4)
    """

    def make(*args: Any, **kwargs: Any) -> Functional[M]:
        return Functional(cls, None, args, kwargs)

    return make
