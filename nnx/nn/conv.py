"""Convolutions: :class:`Conv` and :class:`ConvTranspose`, in 1, 2 or 3 spatial dimensions.

The number of spatial dimensions is ``len(kernel_size)`` (an int kernel size means 1D).
Inputs are channels-last, ``(*batch, *spatial, features)``: any number of leading batch axes
(flattened into one for the convolution and restored after), or none at all for a single
example. Kernels are ``(*kernel_size, in_features // feature_group_count, out_features)``.

Padding is ``'SAME'``, ``'VALID'``, ``'SAME_LOWER'``, ``'CIRCULAR'`` (periodic),
``'REFLECT'``, ``'CAUSAL'`` (1D ``Conv`` only: the output at step t sees inputs up to t), an
int (the same on both sides of every spatial axis), or one int or ``(low, high)`` pair per
spatial axis.

Example:
  >>> conv = nnx.Conv(3, 8, kernel_size=(3, 3), strides=2, rngs=nnx.Rngs(0))
  >>> conv(jnp.ones((4, 32, 32, 3))).shape, conv.kernel.shape
  ((4, 16, 16, 8), (3, 3, 3, 8))
  >>> lazy = nnx.Conv(None, 8, 5, padding='CAUSAL', rngs=nnx.Rngs(0))  # 1D, in_features inferred
  >>> lazy(jnp.ones((10, 6))).shape, lazy.kernel.shape                # unbatched input
  ((10, 8), (5, 6, 8))
  >>> up = nnx.ConvTranspose(8, 3, (2, 2), strides=2, rngs=nnx.Rngs(0))
  >>> up(jnp.ones((4, 16, 16, 8))).shape
  (4, 32, 32, 3)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..module import Module
from ..rngs import Rngs, RngStream
from ..variablelib import Param
from . import initializers
from ._layer import check_features, check_positive, lazy_stream, materialize
from .dtypes import promote_dtype as _promote_dtype
from .linear import default_kernel_init, dequantized

__all__ = ["Conv", "ConvTranspose", "PaddingLike", "canonicalize_padding"]

PaddingLike = str | int | Sequence[int | tuple[int, int]]

_CONV_PADDINGS = ("SAME", "VALID", "SAME_LOWER", "CIRCULAR", "REFLECT", "CAUSAL")
_TRANSPOSE_PADDINGS = ("SAME", "VALID", "CIRCULAR")

_PADDING_HELP = (
    "{layer}: padding must be one of {allowed} (any case), an int, or a sequence of {rank} "
    "entries (one per spatial axis), each an int or a (low, high) pair; got {padding!r}.\n"
    "Fix: e.g. padding='SAME', padding=1 or padding={example}."
)


def _as_int(value: Any) -> int | None:
    """`value` as an int if it is an integer (numpy ints included, bools excluded)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _kernel_size(layer: str, kernel_size: Any) -> tuple[int, ...]:
    single = _as_int(kernel_size)
    items: list[int | None]
    if single is not None:
        items = [single]
    elif isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        items = [_as_int(k) for k in kernel_size]
    else:
        items = []
    sizes = tuple(k for k in items if k is not None and k > 0)
    if not sizes or len(sizes) != len(items):
        raise ConfigError(
            f"{layer}: kernel_size must be a positive int (1D) or a non-empty sequence of "
            f"positive ints, one per spatial axis; got {kernel_size!r}.\n"
            "Fix: e.g. kernel_size=3 or kernel_size=(3, 3)."
        )
    return sizes


def _per_axis(layer: str, name: str, value: Any, rank: int) -> tuple[int, ...]:
    """None -> ones, int -> repeated, sequence -> one positive int per spatial axis."""
    if value is None:
        return (1,) * rank
    single = _as_int(value)
    if single is not None and single > 0:
        return (single,) * rank
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = [_as_int(v) for v in value]
        values = tuple(v for v in items if v is not None and v > 0)
        if len(items) == rank and len(values) == rank:
            return values
    raise ConfigError(
        f"{layer}: {name} must be a positive int or a sequence of {rank} positive ints (one per "
        f"spatial axis of kernel_size, which has {rank}); got {value!r}.\n"
        f"Fix: e.g. {name}={(2,) * rank}, or give kernel_size as many entries as {name}."
    )


def canonicalize_padding(padding: PaddingLike, rank: int) -> str | tuple[tuple[int, int], ...]:
    """Upper-cased padding string, or one ``(low, high)`` pair per spatial axis.

    Raises:
      ConfigError: for anything that is not a padding.

    Example:
      >>> nnx.nn.conv.canonicalize_padding(1, 2)
      ((1, 1), (1, 1))
      >>> nnx.nn.conv.canonicalize_padding([0, (1, 2)], 2)
      ((0, 0), (1, 2))
    """
    return _padding("padding", padding, rank, _CONV_PADDINGS)


def _padding(
    layer: str, padding: Any, rank: int, allowed: tuple[str, ...]
) -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        upper = padding.upper()
        if upper in allowed:
            if upper == "CAUSAL" and rank != 1:
                raise ConfigError(
                    f"{layer}: padding='CAUSAL' is only defined for 1D convolutions, but "
                    f"kernel_size has {rank} spatial axes.\nFix: use explicit padding, e.g. "
                    f"padding={((2, 0),) + ((1, 1),) * (rank - 1)} for a 3-wide kernel causal "
                    "along the first axis."
                )
            return upper
    else:
        single = _as_int(padding)
        if single is not None:
            return ((single, single),) * rank
        if isinstance(padding, Sequence) and len(padding) == rank:
            pairs = []
            for p in padding:
                both = _as_int(p)
                if both is not None:
                    pairs.append((both, both))
                elif isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2:
                    low, high = _as_int(p[0]), _as_int(p[1])
                    if low is None or high is None:
                        break
                    pairs.append((low, high))
                else:
                    break
            else:
                return tuple(pairs)
    raise ConfigError(
        _PADDING_HELP.format(
            layer=layer, allowed=allowed, rank=rank, padding=padding, example=((1, 1),) * rank
        )
    )


def _check_out_features(layer: str, out_features: Any) -> None:
    if out_features is None:
        raise ConfigError(
            f"{layer}: out_features cannot be None (only in_features is inferred from the "
            "input).\nFix: give the number of output channels, e.g. out_features=64."
        )


def _stored(value: Any) -> Any:
    """A hashable form of a constructor argument, as close as possible to what was given."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_stored(v) for v in value)
    return value


def _flatten_batch(module: Any, x: jax.Array, rank: int) -> tuple[jax.Array, tuple | None]:
    """``(*batch, *spatial, C)`` -> ``(B, *spatial, C)`` plus the batch shape to restore."""
    if getattr(x, "ndim", 0) < rank + 1:
        spatial = ", ".join(f"s{i}" for i in range(rank))
        raise ShapeError(
            f"{describe(module)} (kernel_size={module.kernel_size}) is a {rank}D convolution: "
            f"it expects channels-last inputs of shape (*batch, {spatial}, features), at least "
            f"{rank + 1} dimensions, but got an array of shape {getattr(x, 'shape', None)}.\n"
            f"Fix: add the missing axes (a single example of shape ({spatial}, features) also "
            "works), or build the layer with as many kernel_size entries as spatial axes."
        )
    if x.ndim == rank + 2:
        return x, None
    batch = x.shape[: x.ndim - rank - 1]
    return jnp.reshape(x, (math.prod(batch), *x.shape[len(batch) :])), batch


def _unflatten_batch(y: jax.Array, batch: tuple | None) -> jax.Array:
    return y if batch is None else jnp.reshape(y, batch + y.shape[1:])


def _dimension_numbers(ndim: int) -> jax.lax.ConvDimensionNumbers:
    """Channels-last inputs/outputs, ``(*spatial, in, out)`` kernels."""
    spatial = tuple(range(1, ndim - 1))
    io = (ndim - 1, ndim - 2, *tuple(range(ndim - 2)))
    return jax.lax.ConvDimensionNumbers((0, ndim - 1, *spatial), io, (0, ndim - 1, *spatial))


def _add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    if bias is None:
        return y
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


class _Kernel:
    """Parameter creation and checks shared by Conv and ConvTranspose (a plain mixin)."""

    kernel_size: tuple[int, ...]
    in_features: int | None
    out_features: int
    mask: Any
    use_bias: bool
    param_dtype: Any
    kernel_init: Callable
    bias_init: Callable
    lazy_rngs: RngStream
    kernel_shape: tuple[int, ...] | None  # None until a lazy layer's first call
    kernel: Param[jax.Array] | None
    bias: Param[jax.Array] | None
    _meta: tuple[tuple, tuple]

    def _kernel_shape(self, in_features: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _check_mask(self, shape: tuple[int, ...], error: type[Exception]) -> None:
        if self.mask is not None and tuple(self.mask.shape) != shape:
            raise error(
                f"{type(self).__name__}: mask must have the kernel's shape {shape} but has "
                f"shape {tuple(self.mask.shape)}.\n"
                f"Fix: build the mask with shape {shape}."
            )

    def _create(self, in_features: int, stream: RngStream) -> None:
        kernel_meta, bias_meta = (dict(m) for m in self._meta)
        shape = self._kernel_shape(in_features)
        self.in_features = in_features
        self.kernel_shape = shape
        self.kernel = Param(
            materialize(self.kernel_init, stream, shape, self.param_dtype),
            **kernel_meta,
        )
        self.bias = (
            Param(
                materialize(self.bias_init, stream, (self.out_features,), self.param_dtype),
                **bias_meta,
            )
            if self.use_bias
            else None
        )

    def _weights(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Creates lazy parameters on the first call, checks the features, applies the mask."""
        if self.kernel is None:
            self._materialize(inputs.shape[-1])
            del self.lazy_rngs
        assert self.kernel is not None and self.in_features is not None  # created by now
        check_features(self, inputs, self.in_features)
        kernel = dequantized(self, "kernel")
        if self.mask is not None:
            kernel = kernel * self.mask
        bias = self.bias.value if self.bias is not None else None
        return kernel, bias

    def _materialize(self, in_features: int) -> None:
        self._check_mask(self._kernel_shape(in_features), ShapeError)
        self._create(in_features, self.lazy_rngs)


class Conv(_Kernel, Module):
    """Convolution (cross-correlation, as in ``jax.lax.conv_general_dilated``) over the
    spatial axes of channels-last inputs.

    Args:
      in_features: number of input channels, or None to infer it on the first call.
      out_features: number of output channels.
      kernel_size: the window size; its length (an int means 1) sets the number of spatial
        axes.
      strides: an int or one int per spatial axis (None means 1).
      padding: see the module docstring.
      input_dilation: an int or one int per spatial axis: dilation of the input (a
        fractionally strided convolution).
      kernel_dilation: an int or one int per spatial axis: dilation of the kernel (atrous
        convolution).
      feature_group_count: split the channels into this many groups convolved separately
        (``in_features`` for a depthwise convolution); must divide both feature counts.
      use_bias: add a learned bias.
      mask: an array of the kernel's shape multiplied into the kernel (e.g. for a masked,
        causal 2D convolution).
      dtype: computation dtype (default: inferred from input and parameters).
      param_dtype: parameter storage dtype.
      precision: ``jax.lax`` convolution precision.
      kernel_init, bias_init: initializers.
      conv_general_dilated: the convolution function (e.g. a quantised one).
      promote_dtype: how inputs and parameters are brought to one dtype.
      preferred_element_type: accumulation dtype passed to `conv_general_dilated`.
      rngs: random streams; ``params`` (or ``default``) initialises the parameters.
      kernel_metadata, bias_metadata: extra Variable metadata (e.g. sharding names).
    """

    def __init__(
        self,
        in_features: int | None,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: PaddingLike = "SAME",
        input_dilation: int | Sequence[int] | None = 1,
        kernel_dilation: int | Sequence[int] | None = 1,
        feature_group_count: int = 1,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = default_kernel_init,
        bias_init: Callable = initializers.zeros,
        conv_general_dilated: Callable = jax.lax.conv_general_dilated,
        promote_dtype: Callable = _promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = {},
        bias_metadata: Mapping[str, Any] = {},
    ):
        _check_out_features("Conv", out_features)
        check_positive(
            "Conv",
            in_features=in_features,
            out_features=out_features,
            feature_group_count=feature_group_count,
        )
        self.kernel_size = _kernel_size("Conv", kernel_size)
        rank = len(self.kernel_size)
        for name, value in (
            ("strides", strides),
            ("input_dilation", input_dilation),
            ("kernel_dilation", kernel_dilation),
        ):
            _per_axis("Conv", name, value, rank)
        _padding("Conv", padding, rank, _CONV_PADDINGS)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value is not None and value % feature_group_count:
                raise ConfigError(
                    f"Conv: feature_group_count={feature_group_count} must divide {name}="
                    f"{value}.\nFix: choose a feature_group_count that divides both "
                    f"in_features and out_features (in_features for a depthwise convolution "
                    "with out_features a multiple of it)."
                )
        self.in_features = in_features
        self.out_features = out_features
        self.strides = _stored(strides)
        self.padding = _stored(padding)
        self.input_dilation = _stored(input_dilation)
        self.kernel_dilation = _stored(kernel_dilation)
        self.feature_group_count = feature_group_count
        self.use_bias = use_bias
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.conv_general_dilated = conv_general_dilated
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self._meta = (tuple(kernel_metadata.items()), tuple(bias_metadata.items()))
        if in_features is None:
            self.kernel_shape = None
            self.kernel = None
            self.bias = None
            self.lazy_rngs = lazy_stream(rngs, "Conv")
        else:
            self._check_mask(self._kernel_shape(in_features), ConfigError)
            self._create(in_features, rngs.params)

    def _kernel_shape(self, in_features: int) -> tuple[int, ...]:
        return (*self.kernel_size, in_features // self.feature_group_count, self.out_features)

    def _materialize(self, in_features: int) -> None:
        if in_features % self.feature_group_count:
            raise ShapeError(
                f"{describe(self)} (feature_group_count={self.feature_group_count}) got inputs "
                f"with {in_features} features, which the groups do not divide.\nFix: give "
                "inputs whose last dimension is a multiple of feature_group_count."
            )
        super()._materialize(in_features)

    def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
        """Convolves `inputs` of shape ``(*batch, *spatial, in_features)``.

        Args:
          inputs: channels-last input; no batch axis (a single example) or several work too.
          out_sharding: output sharding, passed on to `conv_general_dilated` when given.

        Returns:
          An array of shape ``(*batch, *out_spatial, out_features)``.
        """
        rank = len(self.kernel_size)
        x, batch = _flatten_batch(self, inputs, rank)
        kernel, bias = self._weights(x)
        strides = _per_axis("Conv", "strides", self.strides, rank)
        input_dilation = _per_axis("Conv", "input_dilation", self.input_dilation, rank)
        kernel_dilation = _per_axis("Conv", "kernel_dilation", self.kernel_dilation, rank)
        padding: str | Sequence[tuple[int, int]] = _padding(
            "Conv", self.padding, rank, _CONV_PADDINGS
        )
        if padding in ("CIRCULAR", "REFLECT"):
            # Pad so that a VALID convolution keeps the size: the dilated kernel's extent minus
            # one, split with the odd one on the high side.
            extents = [(k - 1) * d for k, d in zip(self.kernel_size, kernel_dilation, strict=True)]
            pads = [(0, 0)] + [(e // 2, e - e // 2) for e in extents] + [(0, 0)]
            x = jnp.pad(x, pads, mode="wrap" if padding == "CIRCULAR" else "reflect")
            padding = "VALID"
        elif padding == "CAUSAL":
            # Everything on the low side: output step t sees inputs up to t only.
            x = jnp.pad(x, [(0, 0), ((self.kernel_size[0] - 1) * kernel_dilation[0], 0), (0, 0)])
            padding = "VALID"
        if isinstance(padding, str) and any(d > 1 for d in input_dilation):
            # jax.lax wants explicit pads with input dilation: those of the dilated input.
            dilated = [(n - 1) * d + 1 for n, d in zip(x.shape[1:-1], input_dilation, strict=True)]
            window = [
                (k - 1) * d + 1 for k, d in zip(self.kernel_size, kernel_dilation, strict=True)
            ]
            padding = jax.lax.padtype_to_pads(dilated, window, strides, padding)
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        extra = {}
        if self.preferred_element_type is not None:
            extra["preferred_element_type"] = self.preferred_element_type
        if out_sharding is not None:
            extra["out_sharding"] = out_sharding
        y = self.conv_general_dilated(
            x,
            kernel,
            strides,
            padding,
            lhs_dilation=input_dilation,
            rhs_dilation=kernel_dilation,
            dimension_numbers=_dimension_numbers(x.ndim),
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            **extra,
        )
        return _unflatten_batch(_add_bias(y, bias), batch)


class ConvTranspose(_Kernel, Module):
    """Transposed convolution (``jax.lax.conv_transpose``): upsamples by `strides`.

    With ``transpose_kernel=True`` and the kernel of a :class:`Conv` (same kernel size,
    strides and padding), it computes that convolution's transpose (its gradient with respect
    to the input) for ``'SAME'`` and ``'VALID'`` padding. With CIRCULAR padding (periodic, as
    flax places it) this holds where ``ceil((k - s) / 2) == (k - 1) // 2`` on every axis
    (kernel size k, stride s dividing the input size): odd kernels with stride 1, k = 2, 3 or
    4 with s = 2.

    Args:
      in_features: number of input channels, or None to infer it on the first call.
      out_features: number of output channels.
      kernel_size: the window size; its length (an int means 1) sets the number of spatial
        axes.
      strides: an int or one int per spatial axis (None means 1): the upsampling factor.
      padding: ``'SAME'`` (output size = input size * strides), ``'VALID'``, ``'CIRCULAR'``
        (periodic: output size = input size * strides), an int, or one int or ``(low, high)``
        pair per spatial axis (applied to the dilated input, as in ``jax.lax.conv_transpose``).
      kernel_dilation: an int or one int per spatial axis (None means 1).
      use_bias: add a learned bias.
      mask: an array of the kernel's shape multiplied into the kernel.
      dtype: computation dtype (default: inferred from input and parameters).
      param_dtype: parameter storage dtype.
      precision: ``jax.lax`` convolution precision.
      kernel_init, bias_init: initializers.
      transpose_kernel: flip the kernel spatially and swap its feature axes; the kernel then
        has shape ``kernel_size + (out_features, in_features)``, that of the Conv it
        transposes.
      promote_dtype: how inputs and parameters are brought to one dtype.
      preferred_element_type: accumulation dtype of the convolution.
      rngs: random streams; ``params`` (or ``default``) initialises the parameters.
      kernel_metadata, bias_metadata: extra Variable metadata (e.g. sharding names).
    """

    def __init__(
        self,
        in_features: int | None,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        padding: PaddingLike = "SAME",
        kernel_dilation: int | Sequence[int] | None = None,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = default_kernel_init,
        bias_init: Callable = initializers.zeros,
        transpose_kernel: bool = False,
        promote_dtype: Callable = _promote_dtype,
        preferred_element_type: Any = None,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = {},
        bias_metadata: Mapping[str, Any] = {},
    ):
        _check_out_features("ConvTranspose", out_features)
        check_positive("ConvTranspose", in_features=in_features, out_features=out_features)
        self.kernel_size = _kernel_size("ConvTranspose", kernel_size)
        rank = len(self.kernel_size)
        _per_axis("ConvTranspose", "strides", strides, rank)
        _per_axis("ConvTranspose", "kernel_dilation", kernel_dilation, rank)
        _padding("ConvTranspose", padding, rank, _TRANSPOSE_PADDINGS)
        self.in_features = in_features
        self.out_features = out_features
        self.strides = _stored(strides)
        self.padding = _stored(padding)
        self.kernel_dilation = _stored(kernel_dilation)
        self.use_bias = use_bias
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.kernel_init = kernel_init
        self.bias_init = bias_init
        self.transpose_kernel = transpose_kernel
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self._meta = (tuple(kernel_metadata.items()), tuple(bias_metadata.items()))
        if in_features is None:
            self.kernel_shape = None
            self.kernel = None
            self.bias = None
            self.lazy_rngs = lazy_stream(rngs, "ConvTranspose")
        else:
            self._check_mask(self._kernel_shape(in_features), ConfigError)
            self._create(in_features, rngs.params)

    def _kernel_shape(self, in_features: int) -> tuple[int, ...]:
        if self.transpose_kernel:
            return (*self.kernel_size, self.out_features, in_features)
        return (*self.kernel_size, in_features, self.out_features)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the transposed convolution to `inputs` of shape
        ``(*batch, *spatial, in_features)`` (no batch axis, or several, work too)."""
        rank = len(self.kernel_size)
        x, batch = _flatten_batch(self, inputs, rank)
        kernel, bias = self._weights(x)
        strides = _per_axis("ConvTranspose", "strides", self.strides, rank)
        kernel_dilation = _per_axis("ConvTranspose", "kernel_dilation", self.kernel_dilation, rank)
        padding = _padding("ConvTranspose", self.padding, rank, _TRANSPOSE_PADDINGS)
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = jax.lax.conv_transpose(
            x,
            kernel,
            strides,
            "VALID" if padding == "CIRCULAR" else padding,
            rhs_dilation=kernel_dilation,
            dimension_numbers=_dimension_numbers(x.ndim),
            transpose_kernel=self.transpose_kernel,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )
        if padding == "CIRCULAR":
            periods = [n * s for n, s in zip(x.shape[1:-1], strides, strict=True)]
            y = _wrap_periodic(y, periods, self.transpose_kernel)
        return _unflatten_batch(_add_bias(y, bias), batch)


def _wrap_periodic(y: jax.Array, periods: Sequence[int], transpose_kernel: bool) -> jax.Array:
    """Folds each spatial axis of a VALID transposed convolution onto its period.

    Along an axis, the full result is longer than the period `p` by an excess `e`; it is
    centred on the period (``floor(e / 2)`` cut from the low side, or ``ceil(e / 2)`` with
    `transpose_kernel`, which mirrors how :class:`Conv` places its CIRCULAR padding) and every
    element lands at its position modulo `p`.
    """
    for axis, p in enumerate(periods, start=1):
        n = y.shape[axis]
        excess = n - p
        shift = (excess + 1) // 2 if transpose_kernel else excess // 2
        blocks = -(-n // p)
        pads = [(0, 0)] * y.ndim
        pads[axis] = (0, blocks * p - n)
        y = jnp.pad(y, pads)
        y = jnp.reshape(y, (*y.shape[:axis], blocks, p, *y.shape[axis + 1 :])).sum(axis=axis)
        y = jnp.roll(y, -shift, axis=axis)
    return y
