"""``nnx.lazy_init``: materialise every lazy layer of a model at once, without computing.

Example:
  >>> model = nnx.Sequential(nnx.Linear(None, 8, rngs=nnx.Rngs(0)), nnx.relu,
  ...                        nnx.Linear(None, 2, rngs=nnx.Rngs(1)))
  >>> _ = nnx.lazy_init(model, jnp.ones((1, 3)))
  >>> model.layers[0].kernel.shape, model.layers[2].kernel.shape
  ((3, 8), (8, 2))
"""

from __future__ import annotations

import threading
from typing import Any

import jax

from .._flatten import flatten_full
from .._sharding_meta import place_new_value, use_eager_sharding, using_eager_sharding
from ..errors import ShapeError
from ..graph import state
from ..state import flat_pairs
from ..variablelib import Variable

__all__ = ["lazy_init", "note_created"]

_created = threading.local()


def note_created(variable: Variable) -> None:
    """Called by a layer that creates a Variable during a call and may then overwrite it in
    that same call (BatchNorm's running statistics): under :func:`lazy_init`, the Variable is
    put back to the value it was created with."""
    log = getattr(_created, "log", None)
    if log is not None:
        log[id(variable)] = (variable, variable._value)


def _abstract(x: Any) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x


def _has_tracer(value: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))


def lazy_init(model: Any, *example_args: Any, **example_kwargs: Any) -> Any:
    """Runs ``model(*example_args, **example_kwargs)`` abstractly (``jax.eval_shape``): lazy
    layers create their parameters (real values, from their Rngs) while no layer computes
    anything. State the call would have changed (BatchNorm statistics, counters) is left as
    it was. Returns `model`, ready to split, checkpoint or jit.
    """
    before = dict(flat_pairs(state(model)))
    args, kwargs = jax.tree_util.tree_map(_abstract, (example_args, example_kwargs))

    def run(args: Any, kwargs: Any) -> None:
        model(*args, **kwargs)

    outer, _created.log = getattr(_created, "log", None), {}
    try:
        # Placing a new annotated Variable on the mesh inside the trace would make its value
        # abstract: place the new ones afterwards instead (below).
        with use_eager_sharding(False):
            jax.eval_shape(run, args, kwargs)
    finally:
        created, _created.log = _created.log, outer
        leftover = []
        for path, leaf in zip(*_paths_and_leaves(model), strict=True):
            if isinstance(leaf, Variable) and _has_tracer(leaf._value):
                old = before.get(path)
                if old is not None:
                    object.__setattr__(leaf, "_value", old._value)
                elif id(leaf) in created:
                    object.__setattr__(leaf, "_value", created[id(leaf)][1])
                else:
                    leftover.append(path)
    if leftover:
        raise ShapeError(
            f"lazy_init: the model created state from its inputs rather than their shapes at "
            f"{leftover[:5]}; such state cannot be created abstractly. Fix: call the model "
            "once on real data instead of lazy_init."
        )
    if using_eager_sharding():
        for path, leaf in zip(*_paths_and_leaves(model), strict=True):
            if isinstance(leaf, Variable) and path not in before:
                meta = leaf.get_metadata()
                object.__setattr__(leaf, "_value", place_new_value(type(leaf), leaf._value, meta))
    return model


def _paths_and_leaves(model: Any) -> tuple[list, list]:
    flat = flatten_full(model)
    return flat.paths, flat.leaves
