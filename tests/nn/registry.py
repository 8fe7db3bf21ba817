"""The layer registry: how to build and call every public layer.

Each layer family adds its cases in a ``cases_<family>.py`` module beside this one, as a
module-level ``CASES`` list; :data:`CASES` collects them all. ``test_registry.py`` runs every
case through eager, jit, grad, vmap, split/merge and bfloat16, and fails if a public layer
has no case.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

import nnx


@dataclasses.dataclass(frozen=True)
class Case:
    """One way to build and call a layer.

    Attributes:
      name: unique id of the case (used in test ids).
      cls: the public layer class this case covers.
      build: ``build(rngs, dtype)`` -> module; `dtype` is the computation dtype (None or
        jnp.bfloat16); ignore it if the layer has none.
      inputs: ``inputs(key)`` -> tuple of positional arguments for one call.
      call: how to call the module (default ``module(*inputs)``).
      lazy_build: like `build` but leaving inferable sizes as None (lazy layers only).
      bf16: whether the bfloat16 check applies.
      batchable: whether ``vmap`` over a leading batch of inputs applies.
      tol: absolute tolerance for comparisons in float32.
    """

    name: str
    cls: type
    build: Callable[[Any, Any], Any]
    inputs: Callable[[jax.Array], tuple]
    call: Callable[..., Any] | None = None
    lazy_build: Callable[[Any, Any], Any] | None = None
    bf16: bool = True
    batchable: bool = True
    tol: float = 1e-5

    def run(self, module: Any, *args: Any) -> Any:
        return self.call(module, *args) if self.call is not None else module(*args)


def _collect() -> list[Case]:
    cases: list[Case] = []
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        if info.name.startswith("cases_"):
            module = importlib.import_module(
                f"{__package__}.{info.name}" if __package__ else info.name
            )
            cases.extend(module.CASES)
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"duplicate registry case names: {duplicates}"
    return cases


CASES: list[Case] = _collect()


def build_stacked(case: Case, n: int, rngs: Any, dtype: Any = None) -> Any:
    """`n` independently initialised copies of `case`'s layer, stacked along a leading axis
    of every array (the layout ``nnx.scan`` over layers expects): the constructor runs under
    ``nnx.vmap`` with `rngs` split `n` ways."""
    with nnx.split_rngs(rngs, splits=n):
        return nnx.vmap(lambda r: case.build(r, dtype))(rngs)
