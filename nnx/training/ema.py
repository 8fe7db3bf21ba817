"""``nnx.EMA``: an exponential moving average of a model's parameters.

The averages are Variables of the same types and paths as the model's (``ema.params``
mirrors ``nnx.state(model, wrt)``), so an EMA passes through ``nnx.jit`` and checkpoints like
any graph object. Evaluate with the averaged weights in place, and get the trained ones back
afterwards, with ``with ema.swap(model): ...``.

Unlike flax (which averages every Variable unless ``only=`` says otherwise), the default is
``wrt=nnx.Param``: batch statistics and RNG counters are not averaged.

Example:
  >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> ema = nnx.EMA(model, decay=0.5)
  >>> model.bias.value = jnp.ones(2)        # a training step
  >>> ema.update(model)                     # ema = 0.5 * ema + 0.5 * model
  >>> ema.params['bias'].value.tolist()
  [0.5, 0.5]
  >>> with ema.swap(model):                 # the averaged weights, for evaluation
  ...   print(model.bias.value.tolist())
  [0.5, 0.5]
  >>> model.bias.value.tolist()             # the trained ones are back
  [1.0, 1.0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import jax.numpy as jnp

from .._graph_mode import check_tree_mode
from ..errors import NNXError, format_path, short_list
from ..filters import Filter
from ..graph import merge as _merge
from ..graph import split as _split
from ..graph import state as _state
from ..graph import update as _update
from ..pytreelib import Pytree, data
from ..state import flat_pairs, from_flat_state, merge_state
from ..variablelib import Param, Variable

__all__ = ["EMA"]

M = TypeVar("M")
_MISSING: Any = object()


class EMA(Pytree):
    """The exponential moving average ``ema = decay * ema + (1 - decay) * value`` of a
    model's Variables.

    Args:
      params: the model (any graph object) whose Variables are averaged; the average starts
        at their current values.
      decay: the weight of the old average, in [0, 1].
      only: a filter choosing the averaged Variables (default ``nnx.Param``; flax's default
        is every Variable, ``...``).
      graph: False refuses a model with shared references or cycles (flax's tree mode).
      wrt: another name for `only` (as ``nnx.Optimizer`` calls it).

    Attributes:
      params: a State of Variables (same paths and types as ``nnx.state(model, wrt)``)
        holding the averages.
    """

    def __init__(
        self,
        params: Any,
        decay: float,
        *,
        only: Filter = Param,
        graph: bool | None = None,
        wrt: Filter = _MISSING,
    ):
        if not 0.0 <= decay <= 1.0:
            raise NNXError(
                f"EMA: decay={decay} is not in [0, 1]. Fix: a value close to 1, e.g. 0.999."
            )
        check_tree_mode(graph, params, "EMA")
        model = params
        wrt = only if wrt is _MISSING else wrt
        self.decay = decay
        self.wrt = wrt
        pairs = flat_pairs(_state(model, wrt))
        not_vars = [format_path(p) for p, v in pairs if not isinstance(v, Variable)]
        if not_vars:
            raise NNXError(
                "EMA: only Variables can be averaged; these are plain arrays:\n"
                + short_list(not_vars)
                + "\nFix: hold them in nnx.Param/nnx.Variable, or exclude them with wrt=."
            )
        self.params = data(from_flat_state(pairs))  # nnx.state made copies

    @property
    def filter(self) -> Filter:
        """The filter choosing the averaged Variables (flax's attribute name)."""
        return self.wrt

    def _pairs(self, model: Any) -> list[tuple[Any, Variable, Any]]:
        """(path, average Variable, model value) for every averaged path, checked first."""
        current = dict(flat_pairs(_state(model, self.wrt)))
        out, missing = [], []
        for path, avg in flat_pairs(self.params):
            value = current.get(path, _MISSING)
            if value is _MISSING:
                missing.append(format_path(path))
                continue
            out.append((path, avg, value._value if isinstance(value, Variable) else value))
        if missing:
            raise NNXError(
                f"EMA: the model has no {self.wrt!r} Variable at {len(missing)} averaged "
                "path(s):\n"
                + short_list(missing)
                + "\nFix: pass the model the EMA was built from (or one of the same structure)."
            )
        return out

    def update(self, updates: Any) -> None:
        """Moves the averages towards the current values of `updates` (the model, or a State
        of its structure), in place; works inside and outside ``nnx.jit``."""
        d = self.decay
        for _, avg, value in self._pairs(updates):
            old = avg._value
            avg.value = (d * old + (1.0 - d) * value).astype(jnp.result_type(old))

    def copy_to(self, model: Any) -> None:
        """Writes the averages into the model's Variables (their values, not the Variables)."""
        _update(model, from_flat_state([(p, avg._value) for p, avg, _ in self._pairs(model)]))

    @contextlib.contextmanager
    def swap(self, model: M) -> Iterator[M]:
        """Within the block the model holds the averaged weights; on exit (also on an
        exception) the trained weights are restored.

        Example: ``with ema.swap(model): accuracy = evaluate(model)``.
        """
        trained = _state(model, self.wrt)  # a snapshot
        self.copy_to(model)
        try:
            yield model
        finally:
            _update(model, trained)

    def apply_to(self, model: M) -> M:
        """A new model of ``model``'s structure whose averaged Variables *are* this EMA's
        (so it follows later ``update`` calls); other state is copied from ``model``."""
        self._pairs(model)
        graphdef, state = _split(model)
        return _merge(graphdef, merge_state(state, self.params), copy=False)
