"""Module: the base class of every layer and model.

A Module is a plain Python class. Attributes holding Variables, sub-Modules, Rngs, arrays, or
lists/dicts/tuples of those are its state; everything else is static configuration. There is
no ``setup``, no ``init``/``apply``: build it and call it.

Threads: a Module is a mutable Python object and nnx adds no locking. Calls that only read
a model are safe from several threads at once, the same ``nnx.jit`` function included, and
its first (tracing) call: forward passes that write no Variable, ``nnx.state``,
``nnx.split``, ``nnx.graphdef``. A call that writes is a mutation: a train step, but also
BatchNorm with ``use_running_average=False``, Dropout or any other RNG draw (it advances the
stream's counter), and ``sow``. Mutating one object graph from several threads is not
synchronised: each call reads the values, computes and writes them back, so concurrent calls
lose updates (two threads may also draw the same random key), and a reader running
alongside may see some Variables from before a step and others from after it. Give each
thread its own model (``nnx.clone``), or hold a ``threading.Lock`` around every call that
mutates it, and around reads that must see a consistent state.

Example:
  >>> class Linear(nnx.Module):
  ...   def __init__(self, din, dout, *, rngs):
  ...     self.w = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))
  ...     self.b = nnx.Param(jnp.zeros(dout))
  ...     self.din, self.dout = din, dout
  ...   def __call__(self, x):
  ...     return x @ self.w + self.b
  >>> model = Linear(2, 3, rngs=nnx.Rngs(0))
  >>> model(jnp.ones((4, 2))).shape
  (4, 3)
  >>> sum(x.size for x in jax.tree.leaves(model))
  9
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from ._graph_mode import check_tree_mode
from .errors import ArgumentError, AttributeNotFoundError
from .filters import Filter, to_predicate
from .graph import iter_graph
from .pytreelib import Pytree
from .variablelib import Perturbation, Variable, variable_type_from_name

__all__ = ["Module", "iter_modules"]

Path = tuple[Hashable, ...]


M = TypeVar("M", bound="Module")  # flax.nnx.M: "some Module subclass" in annotations

def _append(old: tuple, value: Any) -> tuple:
    return (*old, value)


def _empty() -> tuple:
    return ()


class Module(Pytree):
    """Base class for layers and models; see the module docstring (also for threads)."""

    def sow(
        self,
        variable_type: type[Variable] | str,
        name: str,
        value: Any,
        reduce_fn: Callable[[Any, Any], Any] = _append,
        init_fn: Callable[[], Any] = _empty,
    ) -> bool:
        """Stores an intermediate value in a Variable attribute `name`; returns True.

        By default values accumulate in a tuple: the first call stores ``(value,)``, the next
        ``(value0, value1)``. Retrieve them with ``nnx.pop(model, nnx.Intermediate)``. As in
        flax.nnx, an existing attribute `name` must hold a Variable of exactly
        `variable_type` (an attribute set to None counts as absent).

        Raises:
          ArgumentError: `name` holds something else (another value or Variable type).

        Example:
          >>> class M(nnx.Module):
          ...   def __call__(self, x):
          ...     self.sow(nnx.Intermediate, 'h', x * 2)
          ...     return x
          >>> m = M(); _ = m(1); _ = m(2)
          >>> m.h.value
          (2, 4)
        """
        if isinstance(variable_type, str):
            variable_type = variable_type_from_name(variable_type, allow_register=True)
        current = self.__dict__.get(name)
        if current is None:
            setattr(self, name, variable_type(reduce_fn(init_fn(), value)))
        elif type(current) is variable_type:
            current.value = reduce_fn(current.value, value)
        else:
            vtype = variable_type.__name__
            raise ArgumentError(
                _SOW_CONFLICT.format(
                    cls=type(self).__name__, vtype=vtype, name=name, held=type(current).__name__
                )
            )
        return True

    def perturb(
        self, name: str, value: Any, variable_type: str | type[Variable] = Perturbation
    ) -> Any:
        """Adds a zero-valued Variable `name` to `value`, so gradients w.r.t. that Variable are
        gradients w.r.t. the intermediate `value`.

        The first call creates the Variable (zeros of the value's shape and dtype).

        Raises:
          ArgumentError: `name` already holds something that is not a `variable_type`.

        Example:
          >>> class M(nnx.Module):
          ...   def __call__(self, x):
          ...     return self.perturb('h', x * 2)
          >>> m = M(); _ = m(jnp.ones(2))
          >>> type(m.h).__name__, m.h.value.tolist()
          ('Perturbation', [0.0, 0.0])
        """
        if isinstance(variable_type, str):
            variable_type = variable_type_from_name(variable_type, allow_register=True)
        current = self.__dict__.get(name)
        if current is None:
            current = variable_type(jax.tree.map(jnp.zeros_like, value))
            setattr(self, name, current)
        elif not isinstance(current, variable_type):
            raise ArgumentError(
                _SOW_CONFLICT.format(
                    cls=type(self).__name__,
                    vtype=variable_type.__name__,
                    name=name,
                    held=type(current).__name__,
                ).replace("sow", "perturb")
            )
        return current.value + value

    def iter_modules(self) -> Iterator[tuple[Path, Module]]:
        """Yields ``(path, module)`` for this module and every sub-module, each once,
        children first (this module last, with path ``()``). Same as
        :func:`nnx.iter_modules`, the form flax.nnx recommends."""
        return iter_modules(self)

    def iter_children(self) -> Iterator[tuple[Hashable, Module]]:
        """Yields ``(name, module)`` for the direct sub-module attributes."""
        for name, value in self._nnx_items():
            if isinstance(value, Module):
                yield name, value

    def set_attributes(
        self,
        *filters: Filter,
        raise_if_not_found: bool = True,
        graph: bool | None = None,
        **attributes: Any,
    ) -> None:
        """Sets attributes on this module and its sub-modules that already have them.

        Args:
          *filters: restrict to modules matching any filter (by type, path...); all by default.
          raise_if_not_found: raise if some attribute exists on no selected module.
          graph: ``False`` refuses a model with shared references (flax's tree mode).
          **attributes: the attributes and their new values.

        Example:
          >>> class Drop(nnx.Module):
          ...   def __init__(self):
          ...     self.deterministic = False
          >>> m = nnx.List([Drop()])
          >>> outer = nnx.Module(); outer.layers = m
          >>> outer.set_attributes(deterministic=True)
          >>> m[0].deterministic
          True
        """
        predicates = [to_predicate(f) for f in filters]
        targets: list[tuple[Module, str]] = []
        check_tree_mode(graph, self, "set_attributes")
        for path, module in _iter_modules(self):
            if predicates and not any(p(path, module) for p in predicates):
                continue
            targets += [(module, name) for name in attributes if name in module.__dict__]
        missing = set(attributes) - {name for _, name in targets}
        if missing and raise_if_not_found:
            names = ", ".join(getattr(f, "__name__", repr(f)) for f in filters)
            selected = f" matching the filters ({names})" if filters else ""
            raise AttributeNotFoundError(
                f"set_attributes: no module in this {type(self).__name__}{selected} has the "
                f"attribute(s) {sorted(missing)}, so nothing was set.\nFix: check the "
                "spelling (an attribute is only set where a module already has it), or pass "
                "raise_if_not_found=False to set the others."
            )
        for module, name in targets:
            setattr(module, name, attributes[name])

    def train(self, **attributes: Any) -> None:
        """Training mode: ``deterministic=False`` (Dropout) and ``use_running_average=False``
        (BatchNorm) wherever a sub-module has them, plus any extra `attributes`.

        Unlike flax.nnx, an extra attribute that no sub-module has raises (a typo would
        otherwise be ignored silently).
        """
        self.set_attributes(
            deterministic=False, use_running_average=False, raise_if_not_found=False
        )
        if attributes:
            self.set_attributes(**attributes)

    def eval(self, **attributes: Any) -> None:
        """Evaluation mode: ``deterministic=True``, ``use_running_average=True`` (extra
        `attributes` as in :meth:`train`)."""
        self.set_attributes(deterministic=True, use_running_average=True, raise_if_not_found=False)
        if attributes:
            self.set_attributes(**attributes)


def iter_modules(module: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Module]]:
    """Yields ``(path, module)`` for every Module in a graph, the argument included.

    Each Module is reported once (at the first path it is reached by, so a shared layer
    appears once), children before their parent; the root comes last, with path ``()``.
    The root may be any graph (a Module, a list or dict of Modules...). Unlike flax.nnx,
    whose ``nnx.List``/``nnx.Dict`` are Modules, nnx's List and Dict are plain containers
    and are not reported.

    Args:
      module: the root of the graph to walk.
      graph: ``False`` refuses a graph with shared references (flax's tree mode).

    Example:
      >>> class Block(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 2, rngs=rngs)
      ...     self.dropout = nnx.Dropout(0.5)
      >>> for path, m in nnx.iter_modules(Block(nnx.Rngs(0))):
      ...   print(path, type(m).__name__)
      ('dropout',) Dropout
      ('linear',) Linear
      () Block
    """
    check_tree_mode(graph, module, "iter_modules")
    return _iter_modules(module)


def _iter_modules(module: Any) -> Iterator[tuple[Path, Module]]:
    for path, value in iter_graph(module):
        if isinstance(value, Module):
            yield path, value


_SOW_CONFLICT = (
    "{cls}.sow({vtype}, {name!r}, ...): the attribute {name!r} already holds a {held}, but "
    "sow keeps its values in a Variable of type {vtype}, so it would overwrite that {held}.\n"
    "Fix: sow under another name, e.g. self.sow({vtype}, '{name}_sown', value), or sow with "
    "the type the attribute holds."
)
