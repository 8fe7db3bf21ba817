"""ToLinen: an nnx Module class used as a flax.linen module.

Linen modules own no state: ``init`` returns variables and ``apply`` takes them. So the nnx
module is built inside every ``init``/``apply`` call from linen's RNG streams; at ``init`` its
fresh state becomes the linen collections, at ``apply`` the collections are written into it
before the call and its (possibly updated) state is written back to the mutable collections
afterwards. RNG state (``nnx.Rngs``) is never a collection: it comes from linen's streams.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import flax.linen as linen
from flax.core import FrozenDict, meta
from flax.core.scope import Scope

from .. import variablelib
from ..errors import ArgumentError, format_path
from ..filters import Not
from ..graph import state as nnx_state
from ..graph import update as nnx_update
from ..module import Module, iter_modules
from ..rngs import Rngs, RngState
from ..variablelib import Variable
from . import variables as bv
from .wrap_linen import ToNNX

__all__ = ["ToLinen", "to_linen", "to_linen_class"]

M = TypeVar("M", bound=Module)


def _rngs_from_linen(module: linen.Module, add_default: bool) -> Rngs:
    """One key from each of linen's RNG streams, as nnx Rngs."""
    scope = cast(Scope, module.scope)  # bound: called from ToLinen's compact __call__
    keys: dict[str, Any] = {name: module.make_rng(name) for name in scope.rngs}
    if add_default and "default" not in keys:
        keys["default"] = 0
    return Rngs(**keys)


def _method(module: Module, method: Callable[..., Any] | str | None) -> Callable[..., Any]:
    if method is None:
        method = "__call__"
    fn = getattr(type(module), method, None) if isinstance(method, str) else method
    if not callable(fn):
        raise ArgumentError(
            f"ToLinen({type(module).__name__}): nnx_method={method!r} is not a method of "
            f"{type(module).__name__}.\nFix: pass a method name or function of the nnx class, "
            "e.g. nnx_method='__call__'."
        )
    return fn


class ToLinen(linen.Module):
    """An nnx Module class as a flax.linen module.

    The nnx module is built in ``init``/``apply`` as ``nnx_class(*args, **kwargs, rngs=...)``
    with one key from each linen RNG stream. Its Variables become linen collections by type
    (``nnx.Param`` -> ``'params'``, ``nnx.BatchStat`` -> ``'batch_stats'``, others by their
    registered or lower-cased name); Variables with metadata are boxed by `metadata_fn`.
    Under ``apply(..., mutable=[...])`` the module's updated state is returned in those
    collections.

    Attributes:
      nnx_class: the nnx Module class (or any callable building one).
      args: positional arguments of `nnx_class`.
      kwargs: keyword arguments of `nnx_class`.
      skip_rng: do not pass ``rngs=`` (for classes that take none).
      metadata_fn: Variable -> linen value (default: plain value, the linen box it came from,
        or :class:`nnx.bridge.NNXMeta`); None stores plain values.

    Example:
      >>> model = nnx.bridge.ToLinen(nnx.Linear, args=(3, 4))
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> variables['params']['kernel'].shape
      (3, 4)
      >>> model.apply(variables, jnp.ones((2, 3))).shape
      (2, 4)
    """

    nnx_class: Callable[..., Module]
    args: Sequence = ()
    kwargs: Mapping[str, Any] = FrozenDict({})
    skip_rng: bool = False
    metadata_fn: Callable[[Variable], Any] | None = bv.to_linen_var

    @linen.compact
    def __call__(
        self, *args: Any, nnx_method: Callable[..., Any] | str | None = None, **kwargs: Any
    ) -> Any:
        initializing = self.is_initializing()
        module_kwargs = dict(self.kwargs)
        if not self.skip_rng:
            module_kwargs["rngs"] = _rngs_from_linen(self, add_default=not initializing)
        module = self.nnx_class(*self.args, **module_kwargs)
        fn = _method(module, nnx_method)
        if initializing:
            put = self._put_state(module)
            out = fn(module, *args, **kwargs)
            # Variables created by the call itself (a ToNNX inside initializes on first call).
            self._put_state(module, skip=put)
            return out
        self._load_state(module)
        out = fn(module, *args, **kwargs)
        self._put_state(module)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        kwargs = self.__dict__.get("kwargs")
        if kwargs is not None and name in kwargs:
            return kwargs[name]
        nnx_class = self.__dict__.get("nnx_class")
        method = getattr(nnx_class, name, None) if nnx_class is not None else None
        if callable(method) and not name.startswith("_"):
            bound = functools.partial(self.__call__, nnx_method=method)
            bound.__self__ = self  # type: ignore[attr-defined]  # so lazy_init finds the module
            return bound
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # -- state <-> collections ---------------------------------------------------------------
    def _load_state(self, module: Module) -> None:
        """Writes the linen variables into the freshly built module."""
        incoming: dict[tuple, tuple[str, Any]] = {}
        for col, tree in self.variables.items():
            for path, x in bv._flatten(tree).items():
                incoming[path] = (col, x)
        current = set(nnx_state(module, Not(RngState)).flat_state().paths)
        unknown = [p for p in incoming if p not in current]
        if unknown:
            unknown = self._adopt(module, {p: incoming[p] for p in unknown})
        if unknown:
            warnings.warn(
                f"ToLinen({getattr(self.nnx_class, '__name__', self.nnx_class)}): the linen "
                "variables hold paths the nnx module does not have; they are ignored:\n"
                + "\n".join(f"  - {format_path(p)}" for p in unknown),
                stacklevel=3,
            )
        values: dict[Any, Any] = {}
        for path, (_, x) in incoming.items():
            if path in current:
                node = values
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = x.unbox() if isinstance(x, meta.AxisMetadata) else x
        if values:
            nnx_update(module, values)

    @staticmethod
    def _adopt(module: Module, pending: dict[tuple, tuple[str, Any]]) -> list[tuple]:
        """Gives variables to ToNNX sub-modules that have not created theirs yet; returns
        the paths no ToNNX took."""
        wrappers = {path: m for path, m in iter_modules(module) if isinstance(m, ToNNX)}
        left = []
        for path, (col, x) in pending.items():
            for n in range(len(path) - 1, -1, -1):
                target = wrappers.get(path[:n])
                if target is not None:
                    target._insert(path[n:], bv.to_nnx_var(col, x))
                    break
            else:
                left.append(path)
        return left

    def _put_state(self, module: Module, skip: set[tuple] | None = None) -> set[tuple]:
        """Stores the module's state in the mutable linen collections; returns the paths."""
        grouped: dict[str, dict[tuple, Any]] = {}
        paths = set()
        for path, var in nnx_state(module, Not(RngState)).flat_state():
            paths.add(path)
            if skip is not None and path in skip:
                continue
            col = variablelib.variable_name_from_type(type(var), allow_register=True)
            value = self.metadata_fn(var) if self.metadata_fn is not None else var.get_value()
            grouped.setdefault(col, {})[path] = value
        for col, flat in grouped.items():
            if not self.is_mutable_collection(col):
                continue
            for key, subtree in bv._unflatten(flat).items():
                self.put_variable(col, key, subtree)
        return paths


def to_linen(
    nnx_class: Callable[..., Module],
    *args: Any,
    metadata_fn: Callable[[Variable], Any] | None = bv.to_linen_var,
    name: str | None = None,
    skip_rng: bool = False,
    abstract_init: bool = True,
    **kwargs: Any,
) -> ToLinen:
    """``ToLinen(nnx_class, args=args, kwargs=kwargs)`` in one call.

    Args:
      nnx_class: the nnx Module class.
      *args: its positional arguments.
      metadata_fn: see :class:`ToLinen`.
      name: the linen module name.
      skip_rng: do not pass ``rngs=`` to `nnx_class`.
      abstract_init: accepted for flax compatibility; has no effect.
      **kwargs: its keyword arguments.

    Example:
      >>> model = nnx.bridge.to_linen(nnx.Linear, 3, 4, use_bias=False)
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> list(variables['params'])
      ['kernel']
    """
    del abstract_init
    return ToLinen(
        nnx_class,
        args=args,
        kwargs=FrozenDict(kwargs),
        metadata_fn=metadata_fn,
        skip_rng=skip_rng,
        name=name,
    )


class _Missing:
    pass


_MISSING: Any = _Missing()


def to_linen_class(
    base_nnx_class: type[M],
    base_metadata_fn: Callable[[Variable], Any] | None = bv.to_linen_var,
    base_skip_rng: bool = False,
    **partial_kwargs: Any,
) -> type[ToLinen]:
    """A linen module class wrapping `base_nnx_class`, with some keyword arguments preset.

    Instances take the remaining keyword arguments of the nnx class directly (they override
    the preset ones), plus linen's ``name``/``parent``.

    Example:
      >>> LinenLinear = nnx.bridge.to_linen_class(nnx.Linear, in_features=3)
      >>> variables = LinenLinear(out_features=5).init(jax.random.key(0), jnp.ones((1, 3)))
      >>> variables['params']['kernel'].shape
      (3, 5)
    """

    class ToLinenPartial(ToLinen):
        pass

    def __init__(
        self: Any,
        args: Sequence | None = None,
        kwargs: Mapping[str, Any] | None = None,
        nnx_class: Callable[..., Module] | None = None,
        skip_rng: bool | None = None,
        metadata_fn: Any = _MISSING,
        name: Any = _MISSING,
        parent: Any = _MISSING,
        **other_kwargs: Any,
    ) -> None:
        linen_kwargs = {}
        if parent is not _MISSING:
            linen_kwargs["parent"] = parent
        if name is not _MISSING:
            linen_kwargs["name"] = name
        ToLinen.__init__(
            self,
            nnx_class=nnx_class or base_nnx_class,
            args=tuple(args or ()),
            kwargs=FrozenDict({**partial_kwargs, **(kwargs or {}), **other_kwargs}),
            skip_rng=base_skip_rng if skip_rng is None else skip_rng,
            metadata_fn=base_metadata_fn if metadata_fn is _MISSING else metadata_fn,
            **linen_kwargs,
        )

    # Linen modules are dataclasses: the looser __init__ goes on after the class is made (as
    # flax's to_linen_class does), and differs from the generated one on purpose.
    ToLinenPartial.__init__ = __init__  # type: ignore[method-assign, assignment]
    ToLinenPartial.__name__ = ToLinenPartial.__qualname__ = f"ToLinen_{base_nnx_class.__name__}"
    return ToLinenPartial
