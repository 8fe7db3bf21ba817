"""Normalization layers.

Per-example norms (:class:`LayerNorm`, :class:`RMSNorm`, :class:`GroupNorm`,
:class:`InstanceNorm`) and :class:`BatchNorm` standardise their input with statistics taken
over some axes, then apply a learned ``scale`` and ``bias`` over the feature axes. Statistics
are computed in at least float32, whatever the computation dtype; with ``axis_name`` they are
averaged across the devices (or ``nnx.vmap`` lanes) of that named axis, optionally within
``axis_index_groups``. ``num_features=None`` infers the feature count from the first input.

:class:`WeightNorm` and :class:`SpectralNorm` wrap another layer and reparametrise its
weights. Unlike flax.nnx 0.12, they never overwrite the wrapped layer's weights: the
normalised weights are substituted only while the wrapped layer runs, so the stored weights
stay the trainable direction and calling twice gives the same result.

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
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..errors import ConfigError, ShapeError
from ..filters import PathContains, to_predicate
from ..graph import iter_graph
from ..locate import describe
from ..module import Module
from ..rngs import Rngs
from ..variablelib import BatchStat, Param, Variable
from . import initializers
from ._layer import check_features, check_positive, check_rank, lazy_stream, materialize
from .dtypes import canonicalize_dtype
from .dtypes import promote_dtype as _promote_dtype
from .lazy import note_created

__all__ = [
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "RMSNorm",
    "SpectralNorm",
    "WeightNorm",
]

Axes = int | Sequence[int]


# --------------------------------------------------------------------------- argument checks


def _config_axes(layer: str, name: str, axes: Any, *, allow_none: bool = False) -> Any:
    """`axes` as given (int or tuple of ints), or ConfigError."""
    if axes is None and allow_none:
        return None
    items = (axes,) if not isinstance(axes, Sequence) else tuple(axes)
    if not items or any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in items):
        raise ConfigError(
            f"{layer}: {name} must be an int or a non-empty sequence of ints, got {axes!r}."
        )
    return int(axes) if isinstance(axes, numbers.Integral) else tuple(int(a) for a in items)


def _config_epsilon(layer: str, epsilon: Any) -> None:
    if not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not epsilon >= 0:
        raise ConfigError(f"{layer}: epsilon must be a non-negative number, got {epsilon!r}.")


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


def _stats(
    x: jax.Array,
    axes: tuple[int, ...],
    *,
    dtype: Any,
    axis_name: Any,
    axis_index_groups: Any,
    use_mean: bool,
    use_fast_variance: bool,
    mask: Any,
) -> tuple[jax.Array | None, jax.Array]:
    """Mean (None if not `use_mean`) and variance of `x` over `axes`, kept as size-1 axes;
    computed in at least float32 and averaged over `axis_name` when it is set."""
    compute = jnp.promote_types(x.dtype if dtype is None else dtype, jnp.float32)
    x = jnp.asarray(x, compute)

    def means(*arrays: jax.Array) -> tuple[jax.Array, ...]:
        out = tuple(jnp.mean(a, axis=axes, keepdims=True, where=mask) for a in arrays)
        if axis_name is not None:
            out = lax.pmean(out, axis_name, axis_index_groups=axis_index_groups)
        return out

    if not use_mean:
        (mean_sq,) = means(_abs_sq(x))
        return None, mean_sq
    if use_fast_variance:
        mu, mu2 = means(x, _abs_sq(x))
        return mu, jnp.maximum(0.0, mu2 - _abs_sq(mu))
    (mu,) = means(x)
    (var,) = means(_abs_sq(x - mu))
    return mu, var


def _feature_shape(x: jax.Array, feature_axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))


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
    feature_shape = _feature_shape(x, feature_axes)
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


def _value(var: Variable | None) -> Any:
    return None if var is None else var.value


# ------------------------------------------------------------------- the shared base class


class _Norm(Module):
    """Configuration, lazy creation and checks shared by the normalization layers."""

    _feature_name = "feature axes"

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
        _config_epsilon(layer, epsilon)
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

    def _create(self, num_features: int, stream: Any) -> None:
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

    def _stats(self, x: jax.Array, axes: tuple[int, ...], mask: Any, use_mean: bool = True):
        return _stats(
            x,
            axes,
            dtype=self.dtype,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            use_mean=use_mean,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
        )


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
        self.reduction_axes = _config_axes("LayerNorm", "reduction_axes", reduction_axes)
        self.feature_axes = _config_axes("LayerNorm", "feature_axes", feature_axes)
        self._start(rngs, "LayerNorm")

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        reduction = _canonical_axes(self, x, self.reduction_axes, "reduction_axes")
        features = _canonical_axes(self, x, self.feature_axes, "feature_axes")
        self._check_features(x, features)
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        mean, var = self._stats(x, reduction, mask)
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
        self.reduction_axes = _config_axes("RMSNorm", "reduction_axes", reduction_axes)
        self.feature_axes = _config_axes("RMSNorm", "feature_axes", feature_axes)
        self._start(rngs, "RMSNorm")

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        reduction = _canonical_axes(self, x, self.reduction_axes, "reduction_axes")
        features = _canonical_axes(self, x, self.feature_axes, "feature_axes")
        self._check_features(x, features)
        x, scale = self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)
        _, mean_sq = self._stats(x, reduction, mask, use_mean=False)
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
        self.feature_axes = _config_axes("InstanceNorm", "feature_axes", feature_axes)
        self._start(rngs, "InstanceNorm")

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        check_rank(self, x, 2, "a batch of examples with features")
        features = _canonical_axes(self, x, self.feature_axes, "feature_axes")
        self._check_features(x, features)
        reduction = tuple(a for a in range(1, x.ndim) if a not in features)
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        mean, var = self._stats(x, reduction, mask)
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
        self.reduction_axes = _config_axes(
            "GroupNorm", "reduction_axes", reduction_axes, allow_none=True
        )
        if num_features is not None:
            self._resolve_groups(num_features, ConfigError)
        self._start(rngs, "GroupNorm")

    def _resolve_groups(self, num_features: int, error: type[Exception]) -> None:
        given, name = (
            (self.num_groups, "num_groups")
            if self.num_groups is not None
            else (self.group_size, "group_size")
        )
        if num_features % given:  # type: ignore[operator]
            raise error(
                f"GroupNorm: {name}={given} does not divide the number of features "
                f"({num_features}).\nFix: choose a {name} that divides {num_features}."
            )
        self.num_groups = num_features // self.group_size if self.num_groups is None else given
        self.group_size = num_features // self.num_groups  # type: ignore[operator]

    def _create(self, num_features: int, stream: Any) -> None:
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
        x, scale, bias = self.promote_dtype(
            (x, _value(self.scale), _value(self.bias)), dtype=self.dtype
        )
        grouped = x.reshape((*x.shape[:-1], groups, size))
        if mask is not None:
            mask = mask.reshape((*mask.shape[:-1], groups, size))
        axes = (*(a for a in reduction if a != last), last + 1)
        mean, var = self._stats(grouped, axes, mask)

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

    def _create(self, num_features: int, stream: Any) -> None:
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
        reduction = tuple(a for a in range(x.ndim) if a != axis)
        feature_shape = _feature_shape(x, (axis,))
        x, mean, var, scale, bias = self.promote_dtype(
            (x, self.mean.value, self.var.value, _value(self.scale), _value(self.bias)),  # type: ignore[union-attr]
            dtype=self.dtype,
        )
        if use_running_average:
            mean, var = mean.reshape(feature_shape), var.reshape(feature_shape)
        else:
            mean, var = self._stats(x, reduction, mask)
            m = self.momentum
            self.mean.value = m * self.mean.value + (1 - m) * mean.reshape(-1)  # type: ignore[union-attr]
            self.var.value = m * self.var.value + (1 - m) * var.reshape(-1)  # type: ignore[union-attr]
        return _apply(x, mean, var, scale, bias, (axis,), self.epsilon, self.dtype)


# ------------------------------------------------------------ weight reparametrisations


_KERNELS = PathContains("kernel", exact=True)


def _key(path: tuple[Hashable, ...]) -> str:
    return "/".join(str(p) for p in path)


def _l2_normalize(x: jax.Array, axes: tuple[int, ...] | None, eps: float) -> jax.Array:
    return x * lax.rsqrt(jnp.sum(x * x, axis=axes, keepdims=True) + eps)


class _Wrapper(Module):
    """Runs the wrapped layer (``layer_instance``) with some of its weights temporarily
    replaced."""

    def _params(self) -> list[tuple[tuple[Hashable, ...], Param]]:
        return [(p, v) for p, v in iter_graph(self.layer_instance) if isinstance(v, Param)]

    def _run_with(self, replace: Callable, call: Callable) -> Any:
        saved: list[tuple[Variable, Any]] = []
        try:
            for path, var in self._targets():
                new = replace(path, var.value)
                saved.append((var, var.value))
                var.value = new
            return call()
        finally:
            for var, value in reversed(saved):
                var.value = value

    def _targets(self) -> list[tuple[tuple[Hashable, ...], Param]]:
        raise NotImplementedError


class WeightNorm(_Wrapper):
    """Weight normalization: the wrapped layer's weights ``v`` (the Params matching
    `variable_filter`, its ``kernel`` by default) are used as ``scale * v / ||v||``, the norm
    taken over every axis but `feature_axes`.

    Args:
      layer_instance: the layer to wrap; its parameters must exist (for a lazy layer, call
        ``nnx.lazy_init`` on it first).
      feature_axes: axes of each weight that keep their own norm and scale (None: one norm
        for the whole weight).
      use_scale: learn the scale (one Param per weight, in ``scales``).
      scale_init: initializer of the scales.
      epsilon: added to the squared norm for numerical stability.
      dtype: dtype of the normalised weights (default: inferred from weight and scale).
      param_dtype: dtype of the scales.
      variable_filter: which Params of the wrapped layer are normalised.
      promote_dtype: how weight and scale are brought to one dtype.
      rngs: random streams; ``params`` initialises the scales.

    Example:
      >>> layer = nnx.WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
      >>> layer(jnp.ones((4, 3))).shape, layer.scales['kernel'].shape
      ((4, 2), (2,))
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        feature_axes: Axes | None = -1,
        use_scale: bool = True,
        scale_init: Callable = initializers.ones,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        variable_filter: Any = _KERNELS,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
    ):
        _config_epsilon("WeightNorm", epsilon)
        self.layer_instance = layer_instance
        self.feature_axes = _config_axes(
            "WeightNorm", "feature_axes", feature_axes, allow_none=True
        )
        self.use_scale = use_scale
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = variable_filter
        self.promote_dtype = promote_dtype
        targets = self._targets()
        if not targets:
            raise ConfigError(
                f"WeightNorm: no parameter of the wrapped {type(layer_instance).__name__} "
                f"matches variable_filter={variable_filter!r}.\nFix: pass a variable_filter "
                "that selects its weights, or, for a lazy layer, create its parameters first "
                "(nnx.lazy_init(layer, example_input))."
            )
        scales = {}
        for path, var in targets:
            axes = self._axes(path, var.value)[0]
            shape = tuple(var.value.shape[a] for a in axes)
            scales[_key(path)] = Param(materialize(scale_init, rngs.params, shape, param_dtype))
        self.scales = scales if use_scale else None

    def _targets(self) -> list[tuple[tuple[Hashable, ...], Param]]:
        predicate = to_predicate(self.variable_filter)
        return [(p, v) for p, v in self._params() if predicate(p, v)]

    def _axes(self, path: Any, w: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(feature axes, reduction axes) of weight `w`."""
        if self.feature_axes is None:
            return (), tuple(range(w.ndim))
        items = _as_tuple(self.feature_axes)
        if any(not -w.ndim <= a < w.ndim for a in items):
            raise ConfigError(
                f"WeightNorm: feature_axes={self.feature_axes!r} do not fit the weight "
                f"{_key(path)!r} of shape {w.shape}.\nFix: choose axes of that weight, or "
                "feature_axes=None for one norm over the whole weight."
            )
        features = tuple(sorted({a % w.ndim for a in items}))
        return features, tuple(a for a in range(w.ndim) if a not in features)

    def _normalized(self, path: Any, w: jax.Array) -> jax.Array:
        features, reduction = self._axes(path, w)
        scale = self.scales[_key(path)].value if self.scales is not None else None
        w, scale = self.promote_dtype((w, scale), dtype=self.dtype)
        out_dtype = w.dtype
        w32 = jnp.asarray(w, jnp.promote_types(w.dtype, jnp.float32))
        y = _l2_normalize(w32, reduction, self.epsilon)
        if scale is not None:
            y = y * scale.reshape(_feature_shape(w, features))
        return jnp.asarray(y, out_dtype)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self._run_with(self._normalized, lambda: self.layer_instance(x, *args, **kwargs))


def _as_tuple(axes: Axes) -> tuple[int, ...]:
    return (axes,) if isinstance(axes, int) else tuple(axes)


class SpectralNorm(_Wrapper):
    """Spectral normalization: every matrix-shaped Param ``W`` of the wrapped layer is used as
    ``W / sigma``, sigma its largest singular value, estimated by power iteration.

    The power-iteration state (``u``, and the last ``sigma``) lives in ``nnx.BatchStat``
    variables in ``batch_stats[<param path>]``; it is updated while ``update_stats`` (in
    training: ``model.train()`` / ``model.eval()`` flip it, like BatchNorm's running
    statistics; the call argument overrides). Weights with more than two dimensions are
    reshaped to ``(-1, last)``.

    Args:
      layer_instance: the layer to wrap; its parameters must exist.
      n_steps: power-iteration steps per call (0: no normalization).
      epsilon: added to squared norms for numerical stability.
      dtype: dtype of the normalised weights (default: inferred).
      param_dtype: dtype of the power-iteration state.
      error_on_non_matrix: raise for weights with more than two dimensions.
      update_stats: the default mode (see above).
      rngs: random streams; ``params`` initialises ``u``.

    Example:
      >>> sn = nnx.SpectralNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), n_steps=20,
      ...                       rngs=nnx.Rngs(1))
      >>> _ = sn(jnp.ones((1, 3)))
      >>> w = sn.layer_instance.kernel.value
      >>> bool(jnp.allclose(sn.batch_stats['kernel']['sigma'].value,
      ...                   jnp.linalg.norm(w, 2), rtol=1e-4))
      True
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: Rngs,
    ):
        _config_epsilon("SpectralNorm", epsilon)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ConfigError(f"SpectralNorm: n_steps must be an int >= 0, got {n_steps!r}.")
        self.layer_instance = layer_instance
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        # train()/eval() set use_running_average; update_stats is its opposite.
        self.use_running_average = not update_stats
        if not any(v.value.ndim > 1 for _, v in self._params()):
            raise ConfigError(
                f"SpectralNorm: the wrapped {type(layer_instance).__name__} has no parameter "
                "with two or more dimensions to normalise.\nFix: wrap a layer with a weight "
                "matrix; for a lazy layer, create its parameters first "
                "(nnx.lazy_init(layer, example_input))."
            )
        stats = {}
        for path, var in self._targets():
            shape = var.value.shape
            if len(shape) > 2 and error_on_non_matrix:
                raise ConfigError(
                    f"SpectralNorm: parameter {_key(path)!r} has shape {shape} (more than two "
                    "dimensions) and error_on_non_matrix=True.\nFix: pass "
                    "error_on_non_matrix=False to normalise it as a (-1, last) matrix."
                )
            u = materialize(initializers.normal(), rngs.params, (1, shape[-1]), param_dtype)
            with jax.ensure_compile_time_eval():
                sigma = jnp.ones((), param_dtype)
            stats[_key(path)] = {"u": BatchStat(u), "sigma": BatchStat(sigma)}
        self.batch_stats = stats

    def _targets(self) -> list[tuple[tuple[Hashable, ...], Param]]:
        if self.n_steps < 1:
            return []
        return [(p, v) for p, v in self._params() if v.value.ndim > 1]

    def _normalized(self, path: Any, w: jax.Array, update: bool) -> jax.Array:
        key = _key(path)
        if key not in self.batch_stats:
            raise ShapeError(
                f"{describe(self)}: the wrapped layer's parameter {key!r} appeared after "
                "construction, so it has no power-iteration state.\nFix: create the wrapped "
                "layer's parameters before wrapping it."
            )
        stats = self.batch_stats[key]
        shape = w.shape
        u = stats["u"].value
        compute = jnp.promote_types(jnp.result_type(w, u), jnp.float32)
        mat = jnp.asarray(w, compute).reshape(-1, shape[-1])
        u = jnp.asarray(u, compute)
        for _ in range(self.n_steps):
            v = _l2_normalize(u @ mat.T, None, self.epsilon)
            u = _l2_normalize(v @ mat, None, self.epsilon)
        u, v = lax.stop_gradient(u), lax.stop_gradient(v)
        sigma = (v @ mat @ u.T)[0, 0]
        mat = mat / jnp.where(sigma != 0, sigma, 1)
        if update:
            stats["u"].value = jnp.asarray(u, stats["u"].value.dtype)
            stats["sigma"].value = jnp.asarray(sigma, stats["sigma"].value.dtype)
        dtype = canonicalize_dtype(w, stats["u"].value, dtype=self.dtype)
        return jnp.asarray(mat.reshape(shape), dtype)

    def __call__(self, x: Any, update_stats: bool | None = None) -> Any:
        if update_stats is None:
            update_stats = not self.use_running_average
        return self._run_with(
            lambda path, w: self._normalized(path, w, update_stats),
            lambda: self.layer_instance(x),
        )
