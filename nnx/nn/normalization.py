"""Normalization layers.

Per-example norms (:class:`LayerNorm`, :class:`RMSNorm`, :class:`GroupNorm`,
:class:`InstanceNorm`) and :class:`BatchNorm` standardise their input with statistics taken
over some axes, then apply a learned ``scale`` and ``bias`` over the feature axes. Statistics
are computed in at least float32, whatever the computation dtype; with ``axis_name`` they are
averaged across the devices (or ``nnx.vmap`` lanes) of that named axis, optionally within
``axis_index_groups``. ``num_features=None`` infers the feature count from the first input.

:class:`WeightNorm` and :class:`SpectralNorm`, which wrap another layer and reparametrise its
weights, live in :mod:`nnx.nn.reparam`.

Example:
  >>> ln = nnx.LayerNorm(4, rngs=nnx.Rngs(0))
  >>> y = ln(jnp.array([[1.0, 2.0, 3.0, 4.0]]))
  >>> bool(jnp.abs(y.mean()) < 1e-6), bool(jnp.abs(y.std() - 1) < 1e-3)
  (True, True)
  >>> bn = nnx.BatchNorm(None, momentum=0.9, rngs=nnx.Rngs(0))  # num_features inferred
  >>> _ = bn(jnp.ones((8, 3)))                                   # train mode: updates stats
  >>> bn.mean.shape, bn.mean.value.round(3).tolist()
  ((3,), [0.1, 0.1, 0.1])
  >>> bn.eval(); bn.use_running_average
  True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..module import Module
from ..rngs import Rngs, RngStream
from ..variablelib import BatchStat, Param, Variable
from . import initializers
from ._layer import (
    Axes,
    check_features,
    check_positive,
    check_rank,
    config_axes,
    config_epsilon,
    feature_param_shape,
    lazy_stream,
    materialize,
)
from .dtypes import canonicalize_dtype
from .dtypes import promote_dtype as _promote_dtype
from .lazy import note_created

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
]



# --------------------------------------------------------------------------- argument checks


def _canonical_axes(module: Any, x: Any, axes: Axes, name: str) -> tuple[int, ...]:
    """Sorted, non-negative, de-duplicated axes of `x`; ShapeError if one does not exist."""
    ndim = getattr(x, "ndim", 0)
    items = (axes,) if isinstance(axes, int) else tuple(axes)
    missing = [a for a in items if not -ndim <= a < ndim]
    if missing:
        raise ShapeError(
            f"{describe(module)} normalizes with {name}={axes!r} but got an array of shape "
            f"{getattr(x, 'shape', None)}, which has no axis {missing[0]}.\n"
            f"Fix: give inputs with at least {max(a + 1 if a >= 0 else -a for a in items)} "
            f"dimensions, or build the layer with a different {name}."
        )
    return tuple(sorted({a % ndim for a in items}))


# ------------------------------------------------------------------------------- the maths


def _abs_sq(x: jax.Array) -> jax.Array:
    return (x * jnp.conj(x)).real if jnp.iscomplexobj(x) else x * x


def _upcast(x: jax.Array, dtype: DTypeLike | None) -> jax.Array:
    """`x` in the computation dtype (`dtype`, else x's own), made at least float32."""
    return jnp.asarray(x, jnp.promote_types(x.dtype if dtype is None else dtype, jnp.float32))


def _apply(
    x: jax.Array,
    mean: jax.Array | None,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    feature_axes: tuple[int, ...],
    epsilon: float,
    dtype: Any,
) -> jax.Array:
    """``(x - mean) / sqrt(var + epsilon) * scale + bias``; `mean` and `var` have x's rank."""
    feature_shape = feature_param_shape(x, feature_axes)
    y = x - mean if mean is not None else x
    mul = lax.rsqrt(var + epsilon)
    if scale is not None:
        mul = mul * scale.reshape(feature_shape)
    y = y * mul
    if bias is not None:
        y = y + bias.reshape(feature_shape)
    return jnp.asarray(y, canonicalize_dtype(x, scale, bias, dtype=dtype))


def _arguments(values: dict[str, Any], *own: str) -> dict[str, Any]:
    """A constructor's arguments (its ``locals()``) but `own`, ``self`` and ``rngs``."""
    return {k: v for k, v in values.items() if k not in ("self", "rngs", "__class__", *own)}


def _value(var: Variable[jax.Array] | None) -> jax.Array | None:
    return None if var is None else var.value


# ------------------------------------------------------------------- the shared base class


class _Norm(Module):
    """Configuration, lazy creation and checks shared by the normalization layers."""

    _feature_name = "feature axes"

    # Set by `_setup` from the constructor's arguments.
    num_features: int | None
    epsilon: float
    dtype: DTypeLike | None
    param_dtype: DTypeLike
    use_bias: bool
    use_scale: bool
    bias_init: Callable[..., jax.Array]
    scale_init: Callable[..., jax.Array]
    axis_name: str | None
    axis_index_groups: Sequence[Sequence[int]] | None
    use_fast_variance: bool
    promote_dtype: Callable[..., tuple[Any, ...]]
    # Set by `_start` / `_create`.
    scale: Param[jax.Array] | None
    bias: Param[jax.Array] | None
    lazy_rngs: RngStream

    def _setup(
        self,
        layer: str,
        num_features: int | None,
        *,
        epsilon: float,
        bias_metadata: Mapping[str, Any] = {},
        scale_metadata: Mapping[str, Any] = {},
        **config: Any,
    ) -> None:
        """Checks and stores the shared configuration (`config`: dtype, param_dtype, use_bias,
        use_scale, bias_init, scale_init, axis_name, axis_index_groups, use_fast_variance,
        promote_dtype)."""
        check_positive(layer, num_features=num_features)
        config_epsilon(layer, epsilon)
        self.num_features = num_features
        self.epsilon = epsilon
        for name, value in config.items():
            setattr(self, name, value)
        self._meta = (tuple(bias_metadata.items()), tuple(scale_metadata.items()))

    def _start(self, rngs: Rngs | None, layer: str) -> None:
        """Creates the state now, or keeps an RNG stream for the first call (lazy)."""
        if self.num_features is None:
            self.scale = None
            self.bias = None
            self.lazy_rngs = lazy_stream(rngs, layer)
        else:
            if rngs is None:
                raise ConfigError(f"{layer} needs rngs=nnx.Rngs(...) to initialise it.")
            self._create(self.num_features, rngs.params)

    def _create(self, num_features: int, stream: RngStream) -> None:
        bias_meta, scale_meta = (dict(m) for m in self._meta)
        self.num_features = num_features
        shape = (num_features,)
        self.scale = (
            Param(materialize(self.scale_init, stream, shape, self.param_dtype), **scale_meta)
            if self.use_scale
            else None
        )
        self.bias = (
            Param(materialize(self.bias_init, stream, shape, self.param_dtype), **bias_meta)
            if self.use_bias
            else None
        )

    def _check_features(self, x: jax.Array, feature_axes: tuple[int, ...]) -> None:
        """Creates the lazy state from `x`, or checks that `x` fits ``num_features``."""
        count = math.prod(x.shape[a] for a in feature_axes)
        if self.num_features is None:
            self._create(count, self.lazy_rngs)
            del self.lazy_rngs
            return
        if len(feature_axes) == 1:
            check_features(self, x, self.num_features, axis=feature_axes[0], name="num_features")
        elif count != self.num_features:
            raise ShapeError(
                f"{describe(self)} expects inputs whose {self._feature_name} "
                f"{feature_axes} hold {self.num_features} values together "
                f"(num_features={self.num_features}) but got an array of shape {x.shape} "
                f"({count}).\nFix: build it with num_features={count}, use num_features=None "
                "to infer it from the first input, or reshape the input."
            )

    def _means(
        self, axes: tuple[int, ...], mask: jax.Array | None, *arrays: jax.Array
    ) -> tuple[jax.Array, ...]:
        """Means of `arrays` over `axes`, kept as size-1 axes, averaged over ``axis_name``
        when it is set."""
        # `where` only with a mask: a plain mean is the same value and exports everywhere
        # (jax2onnx, for one, has no conversion for a mean with `where`).
        out = tuple(
            jnp.mean(a, axis=axes, keepdims=True)
            if mask is None
            else jnp.mean(a, axis=axes, keepdims=True, where=mask)
            for a in arrays
        )
        if self.axis_name is not None:
            out = lax.pmean(out, self.axis_name, axis_index_groups=self.axis_index_groups)
        return out

    def _moments(
        self, x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """Mean and variance of `x` over `axes` (see `_means`), in at least float32."""
        x = _upcast(x, self.dtype)
        if self.use_fast_variance:
            mu, mu2 = self._means(axes, mask, x, _abs_sq(x))
            return mu, jnp.maximum(0.0, mu2 - _abs_sq(mu))
        (mu,) = self._means(axes, mask, x)
        (var,) = self._means(axes, mask, _abs_sq(x - mu))
        return mu, var

    def _mean_square(
        self, x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        """Mean of ``|x|^2`` over `axes` (see `_means`), in at least float32."""
        (mean_sq,) = self._means(axes, mask, _abs_sq(_upcast(x, self.dtype)))
        return mean_sq


# ------------------------------------------------------------------------- the layers


class LayerNorm(_Norm):
    """Layer normalization: standardises each example over `reduction_axes`.

    Args:
      num_features: number of values in the feature axes (the size of ``scale`` and
        ``bias``), or None to infer it on the first call.
      epsilon: added to the variance for numerical stability.
      dtype: computation dtype (default: inferred from input and parameters).
      param_dtype: parameter storage dtype.
      use_bias, use_scale: learn a bias / a scale.
      bias_init, scale_init: initializers.
      reduction_axes: axes the statistics are taken over.
      feature_axes: axes the scale and bias vary over.
      axis_name: a named axis (``nnx.vmap``, ``nnx.shard_map``, ``nnx.pmap``) to average the
        statistics over; axis_index_groups: sub-groups of that axis.
      use_fast_variance: ``E[x^2] - E[x]^2`` (one pass) rather than ``E[(x - E[x])^2]``.
      promote_dtype: how inputs and parameters are brought to one dtype.
      rngs: random streams; ``params`` (or ``default``) initialises the parameters.
      bias_metadata, scale_metadata: extra Variable metadata.

    Example:
      >>> ln = nnx.LayerNorm(None, rngs=nnx.Rngs(0))
      >>> ln(jnp.ones((2, 6))).shape, ln.scale.shape
      ((2, 6), (6,))
    """

    def __init__(
        self,
        num_features: int | None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable = initializers.zeros,
        scale_init: Callable = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        bias_metadata: Mapping[str, Any] = {},
        scale_metadata: Mapping[str, Any] = {},
    ):
        self._setup("LayerNorm", **_arguments(locals(), "reduction_axes", "feature_axes"))
        self.reduction_axes = config_axes("LayerNorm", "reduction_axes", reduction_axes)
        self.feature_axes = config_axes("LayerNorm", "feature_axes", feature_axes)
        self._start(rngs, "LayerNorm")

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        reduction = _canonical_axes(self, x, self.reduction_axes, "reduction_axes")
        features = _canonical_axes(self, x, self.feature_axes, "feature_axes")
        self._check_features(x, features)
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        mean, var = self._moments(x, reduction, mask)
        return _apply(x, mean, var, scale, bias, features, self.epsilon, self.dtype)


class RMSNorm(_Norm):
    """Root-mean-square normalization: ``x / sqrt(mean(x^2) + epsilon) * scale`` (no mean
    subtraction, no bias).

    Args: as :class:`LayerNorm`, without the bias.

    Example:
      >>> rms = nnx.RMSNorm(2, rngs=nnx.Rngs(0))
      >>> rms(jnp.array([[3.0, 4.0]])).round(3).tolist()   # rms = sqrt(12.5)
      [[0.849, 1.131]]
    """

    def __init__(
        self,
        num_features: int | None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Callable = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        scale_metadata: Mapping[str, Any] = {},
    ):
        self._setup(
            "RMSNorm",
            use_bias=False,
            bias_init=initializers.zeros,
            **_arguments(locals(), "reduction_axes", "feature_axes"),
        )
        self.reduction_axes = config_axes("RMSNorm", "reduction_axes", reduction_axes)
        self.feature_axes = config_axes("RMSNorm", "feature_axes", feature_axes)
        self._start(rngs, "RMSNorm")

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        reduction = _canonical_axes(self, x, self.reduction_axes, "reduction_axes")
        features = _canonical_axes(self, x, self.feature_axes, "feature_axes")
        self._check_features(x, features)
        x, scale = self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)
        mean_sq = self._mean_square(x, reduction, mask)
        return _apply(x, None, mean_sq, scale, None, features, self.epsilon, self.dtype)


class InstanceNorm(_Norm):
    """Instance normalization: standardises each example and each feature over the remaining
    axes (all but the leading batch axis and `feature_axes`).

    Args: as :class:`LayerNorm`, without `reduction_axes`.

    Example:
      >>> norm = nnx.InstanceNorm(3, rngs=nnx.Rngs(0))
      >>> y = norm(jax.random.normal(jax.random.key(0), (2, 5, 5, 3)))
      >>> bool(jnp.all(jnp.abs(y.mean(axis=(1, 2))) < 1e-5))
      True
    """

    def __init__(
        self,
        num_features: int | None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable = initializers.zeros,
        scale_init: Callable = initializers.ones,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        bias_metadata: Mapping[str, Any] = {},
        scale_metadata: Mapping[str, Any] = {},
    ):
        self._setup("InstanceNorm", **_arguments(locals(), "feature_axes"))
        self.feature_axes = config_axes("InstanceNorm", "feature_axes", feature_axes)
        self._start(rngs, "InstanceNorm")

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        check_rank(self, x, 2, "a batch of examples with features")
        features = _canonical_axes(self, x, self.feature_axes, "feature_axes")
        self._check_features(x, features)
        reduction = tuple(a for a in range(1, x.ndim) if a not in features)
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        mean, var = self._moments(x, reduction, mask)
        return _apply(x, mean, var, scale, bias, features, self.epsilon, self.dtype)


class GroupNorm(_Norm):
    """Group normalization: the last axis (features) is split into groups, and each example
    and group is standardised over the group's features and `reduction_axes`.

    Give exactly one of `num_groups` and `group_size` (pass ``num_groups=None`` to use
    `group_size`); it must divide `num_features`.

    Args:
      num_features: size of the last axis, or None to infer it on the first call.
      num_groups: number of groups.
      group_size: features per group.
      reduction_axes: axes the statistics are taken over; must include the last axis. Default:
        every axis but the first (the batch axis).
      others: as :class:`LayerNorm`.

    Example:
      >>> gn = nnx.GroupNorm(6, num_groups=2, rngs=nnx.Rngs(0))
      >>> gn(jnp.ones((4, 7, 6))).shape, gn.group_size
      ((4, 7, 6), 3)
    """

    _feature_name = "feature axis"

    num_groups: int | None
    group_size: int | None
    reduction_axes: int | tuple[int, ...] | None

    def __init__(
        self,
        num_features: int | None,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable = initializers.zeros,
        scale_init: Callable = initializers.ones,
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        bias_metadata: Mapping[str, Any] = {},
        scale_metadata: Mapping[str, Any] = {},
    ):
        self._setup(
            "GroupNorm", **_arguments(locals(), "num_groups", "group_size", "reduction_axes")
        )
        if (num_groups is None) == (group_size is None):
            raise ConfigError(
                f"GroupNorm: give exactly one of num_groups and group_size, got "
                f"num_groups={num_groups!r}, group_size={group_size!r}.\nFix: "
                "GroupNorm(n, num_groups=g), or GroupNorm(n, num_groups=None, group_size=s) "
                "(num_groups defaults to 32, so it must be set to None to use group_size)."
            )
        check_positive("GroupNorm", num_groups=num_groups, group_size=group_size)
        self.feature_axis = -1
        self.num_groups = num_groups
        self.group_size = group_size
        self.reduction_axes = (
            None
            if reduction_axes is None
            else config_axes("GroupNorm", "reduction_axes", reduction_axes)
        )
        if num_features is not None:
            self._resolve_groups(num_features, ConfigError)
        self._start(rngs, "GroupNorm")

    def _resolve_groups(self, num_features: int, error: type[Exception]) -> None:
        if self.num_groups is not None:
            given, name = self.num_groups, "num_groups"
        else:
            assert self.group_size is not None  # the constructor requires one of the two
            given, name = self.group_size, "group_size"
        if num_features % given:
            raise error(
                f"GroupNorm: {name}={given} does not divide the number of features "
                f"({num_features}).\nFix: choose a {name} that divides {num_features}."
            )
        num_groups = given if self.num_groups is not None else num_features // given
        self.num_groups = num_groups
        self.group_size = num_features // num_groups

    def _create(self, num_features: int, stream: RngStream) -> None:
        self._resolve_groups(num_features, ShapeError)
        super()._create(num_features, stream)

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        check_rank(self, x, 1, "inputs with a feature axis")
        last = x.ndim - 1
        self._check_features(x, (last,))
        if self.reduction_axes is None:
            reduction = (*range(1, last), last)
        else:
            reduction = _canonical_axes(self, x, self.reduction_axes, "reduction_axes")
            if last not in reduction:
                raise ShapeError(
                    f"{describe(self)}: reduction_axes={self.reduction_axes!r} must include "
                    f"the last (feature) axis of the input, shape {x.shape}.\nFix: add -1 to "
                    "reduction_axes."
                )
        groups, size = self.num_groups, self.group_size
        assert groups is not None and size is not None  # resolved once num_features is known
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        grouped = x.reshape((*x.shape[:-1], groups, size))
        if mask is not None:
            mask = mask.reshape((*mask.shape[:-1], groups, size))
        axes = (*(a for a in reduction if a != last), last + 1)
        mean, var = self._moments(grouped, axes, mask)

        def ungroup(stat: jax.Array) -> jax.Array:
            return jnp.broadcast_to(stat, (*stat.shape[:-1], size)).reshape(
                (*stat.shape[:-2], groups * size)
            )

        return _apply(
            x, ungroup(mean), ungroup(var), scale, bias, (last,), self.epsilon, self.dtype
        )


class BatchNorm(_Norm):
    """Batch normalization, with running statistics in ``nnx.BatchStat`` ``mean`` and ``var``.

    In training (``use_running_average=False``) each call normalises with the statistics of
    the batch (every axis but `axis`) and moves the running statistics towards them:
    ``mean <- momentum * mean + (1 - momentum) * batch_mean``. In evaluation
    (``use_running_average=True``) it normalises with the running statistics.
    ``model.train()`` / ``model.eval()`` flip the attribute; the call argument overrides it.

    Args:
      num_features: size of the feature axis, or None to infer it on the first call.
      use_running_average: the default mode (see above).
      axis: the feature axis.
      momentum: decay of the running statistics, in [0, 1].
      epsilon: added to the variance for numerical stability.
      axis_name: a named axis (``nnx.vmap``, ``nnx.shard_map``, ``nnx.pmap``) over which the
        batch statistics are averaged; axis_index_groups: sub-groups of that axis.
      others: as :class:`LayerNorm`.

    Example:
      >>> bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
      >>> y = bn(jnp.array([[0.0, 1.0], [2.0, 3.0]]))          # batch statistics
      >>> y.round(3).tolist()
      [[-1.0, -1.0], [1.0, 1.0]]
      >>> bn(jnp.ones((1, 2)), use_running_average=True).shape  # running statistics
      (1, 2)
    """

    use_running_average: bool | None
    axis: int
    momentum: float
    mean: BatchStat[jax.Array] | None
    var: BatchStat[jax.Array] | None

    def __init__(
        self,
        num_features: int | None,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Callable = initializers.zeros,
        scale_init: Callable = initializers.ones,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
        bias_metadata: Mapping[str, Any] = {},
        scale_metadata: Mapping[str, Any] = {},
    ):
        self._setup("BatchNorm", **_arguments(locals(), "use_running_average", "axis", "momentum"))
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ConfigError(f"BatchNorm: axis must be an int, got {axis!r}.")
        if not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
            raise ConfigError(f"BatchNorm: momentum must be a number in [0, 1], got {momentum!r}.")
        self.use_running_average = use_running_average
        self.axis = int(axis)
        self.momentum = float(momentum)
        if num_features is None:
            self.mean = None
            self.var = None
        self._start(rngs, "BatchNorm")

    def _create(self, num_features: int, stream: RngStream) -> None:
        with jax.ensure_compile_time_eval():
            self.mean = BatchStat(jnp.zeros((num_features,), jnp.float32))
            self.var = BatchStat(jnp.ones((num_features,), jnp.float32))
        note_created(self.mean)
        note_created(self.var)
        super()._create(num_features, stream)

    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if use_running_average is None:
            raise ConfigError(
                f"{describe(self)} does not know whether to use its running statistics: "
                "use_running_average is None both in the constructor and in the call.\nFix: "
                "call model.train() or model.eval(), or pass use_running_average=True/False."
            )
        (axis,) = _canonical_axes(self, x, self.axis, "axis")
        self._check_features(x, (axis,))
        running_mean, running_var = self.mean, self.var
        assert running_mean is not None and running_var is not None  # made by _check_features
        reduction = tuple(a for a in range(x.ndim) if a != axis)
        feature_shape = feature_param_shape(x, (axis,))
        x, mean, var, scale, bias = self.promote_dtype(
            (x, running_mean.value, running_var.value, _value(self.scale), _value(self.bias)),
            dtype=self.dtype,
        )
        if use_running_average:
            mean, var = mean.reshape(feature_shape), var.reshape(feature_shape)
        else:
            mean, var = self._moments(x, reduction, mask)
            m = self.momentum
            running_mean.value = m * running_mean.value + (1 - m) * mean.reshape(-1)
            running_var.value = m * running_var.value + (1 - m) * var.reshape(-1)
        return _apply(x, mean, var, scale, bias, (axis,), self.epsilon, self.dtype)
