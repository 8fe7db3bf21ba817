"""General dense layers: :class:`LinearGeneral` (contract several axes, batched kernels) and
:class:`Einsum` (any two-operand ``jnp.einsum`` with a learned kernel).

``LinearGeneral`` contracts the input axes ``axis`` (sizes ``in_features``) with a kernel of
shape ``(*batch sizes, *in_features, *out_features)``; the output keeps the other input axes in
order and appends ``out_features``. ``batch_axis`` maps leading input axes ``0..k-1`` to their
sizes: each index along them gets its own kernel slice (a batched matmul).

Example:
  >>> layer = nnx.LinearGeneral((2, 3), 4, axis=(-2, -1), rngs=nnx.Rngs(0))
  >>> layer(jnp.ones((5, 2, 3))).shape, layer.kernel.shape
  ((5, 4), (2, 3, 4))
  >>> heads = nnx.LinearGeneral(None, (2, 8), rngs=nnx.Rngs(0))  # in_features from the input
  >>> heads(jnp.ones((5, 7, 16))).shape, heads.kernel.shape
  ((5, 7, 2, 8), (16, 2, 8))
  >>> mix = nnx.Einsum('btd,dnh->btnh', (16, 2, 8), (2, 8), rngs=nnx.Rngs(0))
  >>> mix(jnp.ones((5, 7, 16))).shape
  (5, 7, 2, 8)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..module import Module
from ..rngs import Rngs, RngStream
from ..variablelib import Param, VariableMetadata
from . import initializers
from ._layer import lazy_stream, materialize
from .dtypes import promote_dtype as _promote_dtype
from .linear import default_kernel_init, dequantized

__all__ = ["Einsum", "LinearGeneral"]


def _int(value: Any) -> int | None:
    """`value` as an int if it is an integer (numpy ints included, bools excluded)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _sizes(layer: str, name: str, value: Any, *, allow_none: bool) -> tuple:
    """An int or a sequence of ints (None entries where allowed) -> a tuple of positive ints."""
    items = (value,) if _int(value) is not None else value
    if isinstance(items, Sequence) and not isinstance(items, str) and len(items) > 0:
        out: list = []
        for v in items:
            size = _int(v)
            if v is None and allow_none:
                out.append(None)
            elif size is not None and size > 0:
                out.append(size)
            else:
                break
        else:
            return tuple(out)
    lazy = " (None entries are inferred from the first input)" if allow_none else ""
    raise ConfigError(
        f"{layer}: {name} must be a positive int or a non-empty sequence of positive ints"
        f"{lazy}; got {value!r}.\nFix: e.g. {name}=64 or {name}=(8, 64)."
    )


class _FrozenMap(Mapping):
    """A small immutable, hashable mapping (static configuration such as ``batch_axis``)."""

    def __init__(self, items: Mapping | Sequence = ()):
        self._items = tuple(dict(items).items())

    def __getitem__(self, key: Any) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return repr(dict(self._items))


def _reshaped_init(init: Callable, flat_shape: tuple[int, ...]) -> Callable:
    """Runs `init` on `flat_shape` (so fan-in/fan-out are the total contracted and produced
    sizes) and reshapes the result to the requested shape."""

    def run(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> Any:
        value = init(key, flat_shape, dtype)
        if isinstance(value, VariableMetadata):  # nnx.with_metadata / with_partitioning
            return VariableMetadata(jnp.reshape(value.raw_value, shape), metadata=value.metadata)
        return jnp.reshape(value, shape)

    return run


class LinearGeneral(Module):
    """A dense layer contracting one or more input axes, optionally batched.

    Args:
      in_features: size(s) of the contracted axes, one per entry of `axis`; None (or None
        entries) to infer them on the first call.
      out_features: size(s) of the output axes appended to the result.
      axis: the input axis or axes to contract (negative counts from the end).
      batch_axis: ``{axis: size}`` for leading input axes ``0..k-1`` that index separate
        kernel slices instead of sharing one.
      use_bias: add a learned bias of shape ``(*batch sizes, *out_features)``.
      dtype: computation dtype (default: inferred from input and parameters).
      param_dtype: parameter storage dtype.
      kernel_init, bias_init: initializers; the kernel initializer sees the flattened 2D shape
        ``(prod(batch) * prod(in_features), prod(out_features))``.
      precision: ``jax.lax`` matmul precision.
      promote_dtype: how inputs and parameters are brought to one dtype.
      dot_general: the contraction function (default ``jax.lax.dot_general``).
      dot_general_cls: a class whose instances are the contraction function (e.g. a stateful
        quantised one); takes precedence over `dot_general`.
      preferred_element_type: accumulation dtype passed to the contraction.
      rngs: random streams; ``params`` (or ``default``) initialises the parameters.
      kernel_metadata, bias_metadata: extra Variable metadata (e.g. sharding names).
    """

    in_features: tuple[int | None, ...] | None  # None (entries) until the first call
    kernel: Param[jax.Array] | None  # None until a lazy layer's first call
    bias: Param[jax.Array] | None
    lazy_rngs: RngStream

    def __init__(
        self,
        in_features: int | Sequence[int] | None,
        out_features: int | Sequence[int],
        *,
        axis: int | Sequence[int] = -1,
        batch_axis: Mapping[int, int] = _FrozenMap(),
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Callable = default_kernel_init,
        bias_init: Callable = initializers.zeros,
        precision: Any = None,
        promote_dtype: Callable = _promote_dtype,
        dot_general: Callable | None = None,
        dot_general_cls: Any = None,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _FrozenMap(),
        bias_metadata: Mapping[str, Any] = _FrozenMap(),
    ):
        items = (axis,) if _int(axis) is not None else axis
        ints = [_int(a) for a in items] if isinstance(items, Sequence) else []
        axes = tuple(a for a in ints if a is not None)
        if not ints or len(axes) != len(ints):
            raise ConfigError(
                f"LinearGeneral: axis must be an int or a non-empty sequence of ints; got "
                f"{axis!r}.\nFix: e.g. axis=-1 or axis=(-2, -1)."
            )
        if len(set(axes)) != len(axes):
            raise ConfigError(f"LinearGeneral: axis {axes} names an axis twice.")
        self.axis = axes
        if in_features is None:
            canonical_in: tuple = (None,) * len(axes)
        else:
            canonical_in = _sizes("LinearGeneral", "in_features", in_features, allow_none=True)
        if len(canonical_in) != len(axes):
            raise ConfigError(
                f"LinearGeneral: in_features={in_features!r} gives {len(canonical_in)} sizes but "
                f"axis={axis!r} names {len(axes)} axes; they must match one to one.\n"
                f"Fix: give one in_features entry per contracted axis, or in_features=None."
            )
        self.out_features = _sizes("LinearGeneral", "out_features", out_features, allow_none=False)
        batch = dict(batch_axis)
        if batch:
            keys = sorted(-1 if (index := _int(k)) is None else index for k in batch)
            sizes = [_int(v) for v in batch.values()]
            if keys != list(range(len(batch))) or any(s is None or s <= 0 for s in sizes):
                raise ConfigError(
                    f"LinearGeneral: batch_axis must map the leading axes 0, 1, ..., k-1 to "
                    f"positive sizes; got {dict(batch_axis)!r}.\nFix: e.g. batch_axis={{0: 4}}."
                )
            clash = set(batch) & {a for a in axes if a >= 0}
            if clash:
                raise ConfigError(
                    f"LinearGeneral: axes {sorted(clash)} are both contracted (axis) and batch "
                    "axes (batch_axis); an axis can only be one of the two."
                )
        self.batch_axis = _FrozenMap(sorted(batch.items()))
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.dot_general = dot_general
        self.dot_general_cls = dot_general_cls
        self.preferred_element_type = preferred_element_type
        self._meta = (tuple(kernel_metadata.items()), tuple(bias_metadata.items()))
        if None in canonical_in:
            self.in_features = None if in_features is None else canonical_in
            self.kernel = None
            self.bias = None
            self.lazy_rngs = lazy_stream(rngs, "LinearGeneral")
        else:
            self._create(canonical_in, rngs.params)

    def _create(self, in_features: tuple[int, ...], stream: RngStream) -> None:
        kernel_meta, bias_meta = (dict(m) for m in self._meta)
        batch_shape = tuple(self.batch_axis.values())
        self.in_features = in_features
        flat = (
            math.prod(batch_shape) * math.prod(in_features),
            math.prod(self.out_features),
        )
        self.kernel = Param(
            materialize(
                _reshaped_init(self.kernel_init, flat),
                stream,
                (*batch_shape, *in_features, *self.out_features),
                self.param_dtype,
            ),
            **kernel_meta,
        )
        bias_shape = (*batch_shape, *self.out_features)
        self.bias = (
            Param(
                materialize(
                    _reshaped_init(self.bias_init, (math.prod(bias_shape),)),
                    stream,
                    bias_shape,
                    self.param_dtype,
                ),
                **bias_meta,
            )
            if self.use_bias
            else None
        )

    def _axes(self, inputs: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The contracted and batch axes of `inputs`, normalised; ShapeError if they don't fit."""
        shape = tuple(getattr(inputs, "shape", ()))
        ndim = len(shape)
        needed = max([a + 1 if a >= 0 else -a for a in self.axis] + [len(self.batch_axis)])
        if ndim < needed:
            raise ShapeError(
                f"{describe(self)} (axis={self.axis}, batch_axis={dict(self.batch_axis)}) expects "
                f"inputs with at least {needed} dimensions but got an array of shape {shape}.\n"
                "Fix: add the missing axes, e.g. x[None] for a batch of one."
            )
        axes = tuple(a % ndim for a in self.axis)
        batch = tuple(self.batch_axis)
        if set(axes) & set(batch):
            raise ShapeError(
                f"{describe(self)}: for inputs of shape {shape}, axis={self.axis} contracts the "
                f"batch axes {sorted(set(axes) & set(batch))} (batch_axis="
                f"{dict(self.batch_axis)}).\nFix: give inputs with more dimensions, or "
                "non-overlapping axis and batch_axis."
            )
        return axes, batch

    def _check(self, inputs: Any, axes: tuple[int, ...], batch: tuple[int, ...]) -> None:
        shape = tuple(inputs.shape)
        got = tuple(shape[a] for a in axes)
        got_batch = tuple(shape[b] for b in batch)
        if got != self.in_features or got_batch != tuple(self.batch_axis.values()):
            config, batch_sizes = f"in_features={self.in_features}, axis={self.axis}", ""
            if batch:
                config += f", batch_axis={dict(self.batch_axis)}"
                batch_sizes = f" and {tuple(self.batch_axis.values())} at the batch axes {batch}"
            raise ShapeError(
                f"{describe(self)} ({config}) expects inputs with sizes {self.in_features} at "
                f"axes {self.axis}{batch_sizes}, but got an array of shape {shape}.\nFix: build "
                f"it with in_features={got}, use in_features=None to infer it from the first "
                "input, or reshape the input."
            )

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Contracts ``inputs`` over `axis`; returns the remaining axes + ``out_features``."""
        axes, batch = self._axes(inputs)
        if self.kernel is None:
            given = self.in_features or (None,) * len(axes)
            inferred = tuple(
                inputs.shape[a] if n is None else n for a, n in zip(axes, given, strict=True)
            )
            self._create(inferred, self.lazy_rngs)
            del self.lazy_rngs
        self._check(inputs, axes, batch)
        assert self.kernel is not None  # created by now
        kernel = dequantized(self, "kernel")
        bias = self.bias.value if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        if self.dot_general_cls is not None:
            dot_general = self.dot_general_cls()
        else:
            dot_general = self.dot_general or jax.lax.dot_general
        kwargs: dict[str, Any] = {}
        if out_sharding is not None:
            kwargs["out_sharding"] = out_sharding
        if self.preferred_element_type is not None:
            kwargs["preferred_element_type"] = self.preferred_element_type
        n_batch = len(batch)
        contract = tuple(range(n_batch, n_batch + len(axes)))
        y = dot_general(
            inputs,
            kernel,
            ((axes, contract), (batch, tuple(range(n_batch)))),
            precision=self.precision,
            **kwargs,
        )
        if bias is not None:
            kept = [
                inputs.shape[a] if a in batch else 1 for a in range(inputs.ndim) if a not in axes
            ]
            y = y + jnp.reshape(bias, (*kept, *self.out_features))
        return y


def _parse_einsum(layer: str, einsum_str: Any) -> tuple[str, str, str]:
    """``'lhs,rhs->out'`` (spaces removed) -> its three terms; ConfigError if malformed."""
    if not isinstance(einsum_str, str):
        raise ConfigError(f"{layer}: einsum_str must be a string; got {einsum_str!r}.")
    s = einsum_str.replace(" ", "")
    if s.count("->") != 1 or s.count(",") != 1 or s.index(",") > s.index("->"):
        raise ConfigError(
            f"{layer}: einsum_str must be an explicit two-operand equation 'inputs,kernel->out' "
            f"(exactly one ',' and one '->'); got {einsum_str!r}.\n"
            "Fix: e.g. einsum_str='btd,dh->bth'."
        )
    operands, out = s.split("->")
    lhs, rhs = operands.split(",")
    return lhs, rhs, out


def _terms(term: str, ndim: int, ellipsis_dims: int) -> list:
    """The term's labels with '...' expanded to right-aligned markers ``('...', i)`` among
    `ellipsis_dims` shared broadcast axes (`ndim` is the operand's rank)."""
    if "..." not in term:
        return list(term)
    head, tail = term.split("...")
    n = ndim - len(head) - len(tail)
    return [*head, *(("...", ellipsis_dims - n + i) for i in range(n)), *tail]


class Einsum(Module):
    """``y = einsum(einsum_str, inputs, kernel) + bias`` with a learned kernel.

    Args:
      einsum_str: ``'inputs,kernel->output'``; the second operand is the kernel.
      kernel_shape: the kernel's shape (must match the kernel's term in `einsum_str`).
      bias_shape: the bias's shape (None: no bias). It is added to the output axes that come
        from the kernel, so its size must be the product of those axes' sizes.
      dtype, param_dtype, precision, kernel_init, bias_init, promote_dtype: as for Linear.
      einsum_op: the einsum function (default ``jnp.einsum``).
      preferred_element_type: accumulation dtype passed to `einsum_op`.
      rngs: random streams; ``params`` (or ``default``) initialises the parameters.
      kernel_metadata, bias_metadata: extra Variable metadata.
    """

    def __init__(
        self,
        einsum_str: str,
        kernel_shape: Sequence[int],
        bias_shape: Sequence[int] | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = default_kernel_init,
        bias_init: Callable = initializers.zeros,
        promote_dtype: Callable = _promote_dtype,
        einsum_op: Callable = jnp.einsum,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = _FrozenMap(),
        bias_metadata: Mapping[str, Any] = _FrozenMap(),
    ):
        _, rhs, out = _parse_einsum("Einsum", einsum_str)
        kernel_shape = _sizes("Einsum", "kernel_shape", kernel_shape, allow_none=False)
        n_named = len(rhs) - 3 if "..." in rhs else len(rhs)
        if len(kernel_shape) < n_named or ("..." not in rhs and len(kernel_shape) != n_named):
            raise ConfigError(
                f"Einsum: the kernel's term {rhs!r} in einsum_str={einsum_str!r} has {n_named} "
                f"named axes but kernel_shape={kernel_shape} has {len(kernel_shape)}.\nFix: give "
                "kernel_shape one size per letter of the second operand."
            )
        if bias_shape is not None:
            bias_shape = _sizes("Einsum", "bias_shape", bias_shape, allow_none=False)
            terms = _terms(rhs, len(kernel_shape), len(kernel_shape) - n_named)
            kept_axes = [
                (t if isinstance(t, str) else "...", size)
                for t, size in zip(terms, kernel_shape, strict=True)
                if (t in out if isinstance(t, str) else "..." in out)
            ]
            from_kernel = [t for t, _ in kept_axes]
            kept = math.prod(size for _, size in kept_axes)
            if math.prod(bias_shape) != kept:
                raise ConfigError(
                    f"Einsum: bias_shape={bias_shape} has {math.prod(bias_shape)} entries, but "
                    f"the output axes coming from the kernel ({list(from_kernel)} in "
                    f"{einsum_str!r}) have {kept}.\nFix: use their sizes as bias_shape."
                )
        self.einsum_str = einsum_str.replace(" ", "")
        self.kernel_shape = kernel_shape
        self.bias_shape = bias_shape
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.einsum_op = einsum_op
        self.preferred_element_type = preferred_element_type
        self.kernel = Param(
            materialize(kernel_init, rngs.params, kernel_shape, param_dtype),
            **dict(kernel_metadata),
        )
        self.bias = (
            Param(
                materialize(bias_init, rngs.params, bias_shape, param_dtype),
                **dict(bias_metadata),
            )
            if bias_shape is not None
            else None
        )

    def _check_inputs(self, inputs: Any, lhs: str, rhs: str, einsum_str: str) -> None:
        shape = tuple(getattr(inputs, "shape", ()))
        if "..." in lhs:
            return
        problem = len(shape) != len(lhs)
        if not problem and "..." not in rhs:
            problem = any(
                c in rhs and shape[i] != self.kernel_shape[rhs.index(c)] for i, c in enumerate(lhs)
            )
        if problem:
            raise ShapeError(
                f"{describe(self)} (einsum_str={einsum_str!r}, kernel_shape={self.kernel_shape}) "
                f"expects inputs matching the term {lhs!r}, with the sizes of the kernel's axes "
                f"for shared letters, but got an array of shape {shape}.\nFix: reshape the input "
                "or change einsum_str / kernel_shape."
            )

    def __call__(
        self, inputs: jax.Array, einsum_str: str | None = None, out_sharding: Any = None
    ) -> jax.Array:
        """Applies the einsum (`einsum_str` overrides the one given at construction)."""
        einsum_str = (einsum_str if einsum_str is not None else self.einsum_str).replace(" ", "")
        lhs, rhs, out = _parse_einsum(describe(self), einsum_str)
        self._check_inputs(inputs, lhs, rhs, einsum_str)
        bias = self.bias.value if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype(
            (inputs, dequantized(self, "kernel"), bias), dtype=self.dtype
        )
        kwargs: dict[str, Any] = {}
        if out_sharding is not None:
            kwargs["out_sharding"] = out_sharding
        if self.preferred_element_type is not None:
            kwargs["preferred_element_type"] = self.preferred_element_type
        y = self.einsum_op(einsum_str, inputs, kernel, precision=self.precision, **kwargs)
        if bias is not None:
            n_ell = y.ndim - (len(out) - 3) if "..." in out else 0
            kernel_axes = dict(zip(_terms(rhs, kernel.ndim, n_ell), self.kernel_shape, strict=True))
            shape = [kernel_axes.get(t, 1) for t in _terms(out, y.ndim, n_ell)]
            y = y + jnp.reshape(bias, shape)
        return y
