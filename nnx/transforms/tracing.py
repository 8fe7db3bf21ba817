"""Abstract evaluation and introspection: ``eval_shape``, ``make_jaxpr``, ``checkify``.

``nnx.eval_shape`` builds abstract models: every array becomes a ``jax.ShapeDtypeStruct``
and nothing is allocated, which is how a checkpoint is restored without paying for a
random initialisation first.

Example:
  >>> class Big(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.w = nnx.Param(jax.random.normal(rngs.params(), (4096, 4096)))
  >>> abstract = nnx.eval_shape(lambda: Big(nnx.Rngs(0)))
  >>> abstract.w.value
  ShapeDtypeStruct(shape=(4096, 4096), dtype=float32)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import checkify as _checkify

from ._lift import Frame, call_transformed, rebuild, replace_graph_args, split_args

__all__ = ["checkify", "eval_shape", "make_jaxpr"]


def eval_shape(f: Callable, *args: Any, **kwargs: Any) -> Any:
    """The output of ``f(*args, **kwargs)`` with ShapeDtypeStructs in place of arrays.

    Graph objects in the output (e.g. a Module built inside `f`) come back as abstract
    objects; graph arguments are not modified.
    """
    return call_transformed(
        f,
        args,
        kwargs,
        lambda pure: functools.partial(jax.eval_shape, pure),
        write=False,
        what="nnx.eval_shape",
    )


def make_jaxpr(f: Callable, **jaxpr_kwargs: Any) -> Callable[..., Any]:
    """``jax.make_jaxpr`` for functions of graph objects: the jaxpr of the state-in,
    state-out function nnx traces."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        spec, _, values = split_args(args, kwargs)
        graph_pos = set(spec.positions)
        dyn = [None if i in graph_pos else a for i, a in enumerate(args)]

        def pure(values: list, dyn: list) -> Any:
            with Frame():
                roots, _ = rebuild(spec, values)
                new_args, new_kwargs = replace_graph_args(dyn, kwargs, spec, roots)
                return f(*new_args, **new_kwargs)

        return jax.make_jaxpr(pure, **jaxpr_kwargs)(values, dyn)

    return wrapper


def checkify(f: Callable, errors: Any = _checkify.user_checks) -> Callable[..., Any]:
    """``jax.experimental.checkify.checkify`` over graph objects: returns ``(error, out)``
    and writes state changes back."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call_transformed(
            f,
            args,
            kwargs,
            lambda pure: _checkify.checkify(pure, errors=errors),
            what="nnx.checkify",
            finish=lambda res: (*res[1], res[0]),
        )

    return wrapper
