"""``nnx.TrainState``: the functional training state (graphdef + params + optax state).

For code that prefers pure functions and plain ``jax.jit`` to in-place updates: a
TrainState is an immutable pytree dataclass; ``apply_gradients`` returns a new one.
``graphdef`` and ``tx`` are static (part of the treedef), ``params``, ``opt_state`` and
``step`` are its leaves. Subclass it to carry more state (batch statistics, RNG keys):
subclasses are dataclasses and pytrees by themselves; mark static fields with
``dataclasses.field(metadata={'static': True})`` (flax's ``pytree_node=False`` works too).

Example:
  >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> graphdef, params = nnx.split(model, nnx.Param)
  >>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1))
  >>> @jax.jit
  ... def train_step(state, x, y):
  ...   def loss_fn(params):
  ...     return jnp.mean((nnx.merge(state.graphdef, params)(x) - y) ** 2)
  ...   return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))
  >>> state = train_step(state, jnp.ones((4, 2)), jnp.zeros((4, 1)))
  >>> int(state.step)
  1
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar, dataclass_transform

import jax
import jax.numpy as jnp
import optax

from ..errors import NNXError

__all__ = ["TrainState"]

TS = TypeVar("TS", bound="TrainState")


def _is_static(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("static", False)) or f.metadata.get("pytree_node", True) is False


def _make_pytree_dataclass(cls: type[TrainState]) -> None:
    if "__dataclass_fields__" not in cls.__dict__:
        dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    cls._data_fields = tuple(f.name for f in fields if not _is_static(f))
    cls._static_fields = tuple(f.name for f in fields if _is_static(f))
    jax.tree_util.register_dataclass(
        cls, data_fields=list(cls._data_fields), meta_fields=list(cls._static_fields)
    )


# TrainState is a frozen dataclass, and so is every subclass (made one by __init_subclass__);
# dataclass_transform tells type checkers the latter.
@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
@dataclasses.dataclass(frozen=True)
class TrainState:
    """An immutable training state for the functional style.

    Attributes:
      graphdef: the model's GraphDef (static).
      params: the trained State (e.g. ``nnx.split(model, nnx.Param)[1]``).
      opt_state: the optax state of ``params``.
      step: the number of applied updates (an int array).
      tx: the optax transformation (static).
    """

    _data_fields: ClassVar[tuple[str, ...]]
    _static_fields: ClassVar[tuple[str, ...]]

    graphdef: Any = dataclasses.field(metadata={"static": True})
    params: Any
    opt_state: Any
    step: Any
    tx: optax.GradientTransformation = dataclasses.field(metadata={"static": True})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _make_pytree_dataclass(cls)

    @classmethod
    def create(
        cls: type[TS],
        graphdef: Any,
        *,
        params: Any,
        tx: optax.GradientTransformation,
        step: int = 0,
        **kwargs: Any,
    ) -> TS:
        """A new TrainState at ``step``, with ``opt_state = tx.init(params)``. Extra keyword
        arguments fill the fields a subclass declares."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise NNXError(
                f"{cls.__name__}.create got {unknown}, which are not fields of {cls.__name__}. "
                "Fix: declare them in a subclass:\n"
                f"  class MyState(nnx.TrainState):\n    {unknown[0]}: Any\n"
                f"  MyState.create(graphdef, params=..., tx=..., {unknown[0]}=...)"
            )
        return cls(
            graphdef=graphdef,
            params=params,
            opt_state=tx.init(params),
            step=jnp.asarray(step),
            tx=tx,
            **kwargs,
        )

    def replace(self: TS, **changes: Any) -> TS:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def apply_gradients(self: TS, grads: Any, **kwargs: Any) -> TS:
        """One optax step: a new TrainState with updated ``params``, ``opt_state`` and
        ``step + 1``; other keyword arguments replace fields (e.g. ``batch_stats=``)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(params=params, opt_state=opt_state, step=self.step + 1, **kwargs)

    def apply(self, state: Any, *states: Any) -> Any:
        """``graphdef.apply`` over states, or over the names of fields holding states:
        ``state.apply('params', 'batch_stats')(x)`` returns ``(y, (graphdef, new_state))``."""
        resolved = [getattr(self, s) if isinstance(s, str) else s for s in (state, *states)]
        return self.graphdef.apply(*resolved)


_make_pytree_dataclass(TrainState)
