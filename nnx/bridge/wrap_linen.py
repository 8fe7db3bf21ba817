"""ToNNX: a flax.linen module instance used as an nnx Module.

The wrapper keeps the linen module (static, in the GraphDef) and an ``Rngs`` forked from the
one it was given. Linen needs sample inputs to create its variables, so the first call (or
:func:`lazy_init` with sample inputs) runs linen ``init``; each collection then lives on the
wrapper as Variables at linen's paths (``model.Dense_0['kernel']``). Later calls run linen
``apply`` with those values and write the collections it returns back into the same Variables
(a value change: the structure cache of ``nnx.jit`` stays valid).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import flax.linen as linen
import jax

from ..errors import ArgumentError, AttributeNotFoundError
from ..graph import iter_graph
from ..module import Module
from ..rngs import Rngs
from ..variablelib import Variable
from . import variables as bv

__all__ = ["ToNNX", "lazy_init"]

_PREFIX = "to_nnx__"


class _Initializing(threading.local):
    def __init__(self) -> None:
        self.ids: set[int] = set()


_INITIALIZING = _Initializing()


def lazy_init(fn: Module | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a Module (or one of its methods) on sample inputs so that every :class:`ToNNX`
    inside it runs linen ``init`` and creates its Variables.

    Args:
      fn: an nnx Module, or a bound method of one.
      *args: sample inputs.
      **kwargs: keyword inputs.

    Returns:
      `fn` itself, now initialized.

    Raises:
      ArgumentError: `fn` is neither a Module nor a Module's method.

    Example:
      >>> import flax.linen as nn
      >>> model = nnx.bridge.ToNNX(nn.Dense(4), rngs=nnx.Rngs(0))
      >>> model = nnx.bridge.lazy_init(model, jnp.ones((1, 3)))
      >>> nnx.state(model, nnx.Param)['kernel'].shape
      (3, 4)
    """
    module = fn if isinstance(fn, Module) else getattr(fn, "__self__", None)
    if not isinstance(module, Module):
        raise ArgumentError(
            f"nnx.bridge.lazy_init needs an nnx Module or a method of one; got {fn!r}.\n"
            "Fix: nnx.bridge.lazy_init(model, *sample_inputs), or "
            "nnx.bridge.lazy_init(model.method, *sample_inputs)."
        )
    ids = {id(node) for _, node in iter_graph(module) if isinstance(node, ToNNX)}
    added = ids - _INITIALIZING.ids
    _INITIALIZING.ids |= added
    try:
        cast(Callable[..., Any], fn)(*args, **kwargs)  # a Module: through its __call__
    finally:
        _INITIALIZING.ids -= added
    return fn


def _current_linen_module() -> linen.Module | None:
    """The linen module whose method is running, if any (ToNNX used inside linen)."""
    context = getattr(linen.module, "_context", None)
    stack = getattr(context, "module_stack", None)
    return stack[-1] if stack else None


class _LinenRef:
    """Holds a linen module that is not hashable, compared by identity, so it can sit in the
    GraphDef."""

    __slots__ = ("module",)

    def __init__(self, module: linen.Module):
        self.module = module

    def __repr__(self) -> str:
        return repr(self.module)


def _rng_keys(rngs: Rngs | jax.Array | None) -> dict[str, jax.Array]:
    if isinstance(rngs, Rngs):
        keys = {name: stream() for name, stream in rngs.items()}
    elif rngs is None:
        keys = {}
    else:
        keys = {"params": rngs}
    if "params" not in keys and "default" in keys:
        keys["params"] = keys.pop("default")
    return keys


class ToNNX(Module):
    """A flax.linen module instance as an nnx Module.

    Use it alone or as a sub-module of an nnx model, with every nnx API (``nnx.jit``,
    ``nnx.Optimizer``, ``nnx.split``...). Linen creates variables from sample inputs, so call
    :meth:`lazy_init` (or just call the model: the first call initializes it).

    Collections become Variables of the type registered for their name (``params`` ->
    ``nnx.Param``, ``batch_stats`` -> ``nnx.BatchStat``, other names get a new type), at
    linen's paths: ``model.Dense_0['kernel']``, or ``model.kernel`` for a single layer. Boxed
    linen values (``nn.Partitioned``, ``nn.LogicallyPartitioned``) become Variables annotated
    with ``out_sharding`` (and ``mesh``, ``sharding_rules``).

    Args:
      module: the linen module instance.
      rngs: ``nnx.Rngs`` (forked: the wrapper draws one key per stream and call; ``default``
        serves as linen's ``params``), a PRNG key (the ``params`` stream), or None.

    Example:
      >>> import flax.linen as nn
      >>> model = nnx.bridge.ToNNX(nn.Dense(features=4), rngs=nnx.Rngs(0))
      >>> model = model.lazy_init(jnp.ones((1, 3)))
      >>> model(jnp.ones((2, 3))).shape
      (2, 4)
      >>> model.kernel.shape
      (3, 4)
    """

    def __init__(self, module: linen.Module, rngs: Rngs | jax.Array | None = None):
        if not isinstance(module, linen.Module):
            raise ArgumentError(
                f"ToNNX wraps a flax.linen module instance; got {type(module).__name__}.\n"
                "Fix: ToNNX(nn.Dense(4), rngs=nnx.Rngs(0)); an nnx module needs no wrapper."
            )
        held: linen.Module | _LinenRef = module
        try:
            hash(module)
        except TypeError:
            held = _LinenRef(module)
        self.to_nnx__module = held
        self.to_nnx__rngs: Rngs | None
        if isinstance(rngs, Rngs):
            self.to_nnx__rngs = rngs.fork()
        elif rngs is None:
            self.to_nnx__rngs = None
        else:
            self.to_nnx__rngs = Rngs(params=rngs)

    # -- the wrapped module and its variables ------------------------------------------------
    def _linen(self) -> linen.Module:
        module = self.__dict__["to_nnx__module"]
        return module.module if isinstance(module, _LinenRef) else module

    def _attrs(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.__dict__.items()
            if not k.startswith(_PREFIX) and not k.startswith("_nnx_")
        }

    def _linen_variables(self) -> dict[str, Any]:
        return bv.nnx_attrs_to_linen_vars(self._attrs())

    def _write_back(self, updates: Any) -> None:
        """Writes linen collections into the Variables: values into existing Variables of the
        same type, new Variables where there is none."""
        for col, tree in updates.items():
            for path, x in bv._flatten(tree).items():
                new = bv.to_nnx_var(col, x)
                old = self._find(path)
                if type(old) is type(new):
                    old.value = new.get_value()
                    if old.get_metadata() != new.get_metadata():
                        old.set_metadata(new.get_metadata())
                else:
                    self._insert(path, new)

    def _find(self, path: tuple) -> Any:
        node: Any = self.__dict__.get(path[0]) if path[0] in self._attrs() else None
        for key in path[1:]:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def _insert(self, path: tuple, var: Variable) -> None:
        if len(path) == 1:
            setattr(self, path[0], var)
            return
        if not isinstance(self.__dict__.get(path[0]), dict):
            setattr(self, path[0], {})
        node = getattr(self, path[0])
        for key in path[1:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = var

    # -- calling ------------------------------------------------------------------------------
    def lazy_init(self, *args: Any, **kwargs: Any) -> ToNNX:
        """Runs linen ``init`` on sample inputs (see :func:`lazy_init`); returns `self`."""
        return lazy_init(self, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: linen methods become callable here.
        if name.startswith("_") or name.startswith(_PREFIX) or _PREFIX + "module" not in (
            self.__dict__
        ):
            raise AttributeError(name)
        linen_module = self._linen()
        method = getattr(type(linen_module), name, None)
        if callable(method):
            bound = functools.partial(self.__call__, method=method)
            bound.__self__ = self  # type: ignore[attr-defined]  # so lazy_init finds the module
            return bound
        raise AttributeNotFoundError(
            f"ToNNX({type(linen_module).__name__}) has no attribute {name!r}: it is neither "
            f"one of its variables ({sorted(self._attrs()) or 'none yet: not initialized'}) nor "
            f"a method of {type(linen_module).__name__}.\nFix: check the name; variables exist "
            "after model.lazy_init(sample_input)."
        )

    def __call__(
        self,
        *args: Any,
        rngs: Rngs | jax.Array | None = None,
        method: Callable[..., Any] | str | None = None,
        mutable: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Runs the linen module: ``init`` the first time (or under :func:`lazy_init`),
        ``apply`` afterwards.

        Args:
          *args: inputs of the linen method.
          rngs: RNG streams for this call instead of the ones given at construction.
          method: the linen method (a function or its name) instead of ``__call__``.
          mutable: linen's ``mutable`` for ``apply``. By default: inside a linen module, its
            own; otherwise every collection the wrapper holds except ``params`` (so BatchNorm
            statistics and caches update in place, as nnx layers do).
          **kwargs: keyword inputs of the linen method.
        """
        linen_module = self._linen()
        if rngs is None:
            rngs = self.to_nnx__rngs
        counts = (
            [(s.count, s.count.value) for _, s in rngs.items()] if isinstance(rngs, Rngs) else []
        )
        updates: Mapping[str, Any] | None
        try:
            keys = _rng_keys(rngs)
            attrs = self._attrs()
            if id(self) in _INITIALIZING.ids or not attrs:
                out, updates = linen_module.init_with_output(
                    keys, *args, method=method, **kwargs
                )
            else:
                variables = bv.nnx_attrs_to_linen_vars(attrs)
                if mutable is None:
                    mutable = self._default_mutable(variables)
                out = linen_module.apply(
                    variables, *args, rngs=keys, method=method, mutable=mutable, **kwargs
                )
                out, updates = out if mutable is not False else (out, None)
        except BaseException:
            for count, value in counts:  # a failed call leaves the streams where they were
                count.value = value
            raise
        if updates:
            self._write_back(updates)
        return out

    @staticmethod
    def _default_mutable(variables: dict[str, Any]) -> Any:
        outer = _current_linen_module()
        if outer is not None and outer.scope is not None:
            return outer.scope.mutable
        held = [col for col in variables if col != "params"]
        return held or False
