"""Weight reparametrisation wrappers: :class:`WeightNorm` and :class:`SpectralNorm`.

A wrapper holds another layer (``layer_instance``) and runs it with some of its weights
replaced by a function of them (``scale * v / ||v||``, ``W / sigma``); the wrapper's own
state (scales, power-iteration vectors) lives next to the wrapped layer. Unlike flax.nnx
0.12, the wrapped layer's weights are never overwritten: the reparametrised weights are
substituted only while the wrapped layer runs, so the stored weights stay the trainable
direction and calling twice gives the same result.

Example:
  >>> inner = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> wn = nnx.WeightNorm(inner, rngs=nnx.Rngs(1))
  >>> kernel = inner.kernel.value
  >>> _ = wn(jnp.ones((1, 3)))
  >>> bool(jnp.array_equal(inner.kernel.value, kernel))   # the stored weights are untouched
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from ..errors import ConfigError, ShapeError
from ..filters import Filter, Path, PathContains, to_predicate
from ..graph import iter_graph
from ..locate import describe
from ..module import Module
from ..rngs import Rngs
from ..variablelib import BatchStat, Param
from . import initializers
from ._layer import Axes, config_axes, config_epsilon, feature_param_shape, materialize
from .dtypes import canonicalize_dtype
from .dtypes import promote_dtype as _promote_dtype

__all__ = ["SpectralNorm", "WeightNorm"]

_KERNELS = PathContains("kernel", exact=True)


def _key(path: Path) -> str:
    return "/".join(str(p) for p in path)


def _l2_normalize(x: jax.Array, axes: tuple[int, ...] | None, eps: float) -> jax.Array:
    return x * lax.rsqrt(jnp.sum(x * x, axis=axes, keepdims=True) + eps)


def _as_tuple(axes: Axes) -> tuple[int, ...]:
    return (axes,) if isinstance(axes, int) else tuple(axes)


class _Wrapper(Module):
    """Runs the wrapped layer (``layer_instance``) with some of its weights temporarily
    replaced."""

    layer_instance: Module

    def _params(self) -> list[tuple[Path, Param[jax.Array]]]:
        return [(p, v) for p, v in iter_graph(self.layer_instance) if isinstance(v, Param)]

    def _run_with(
        self, replace: Callable[[Path, jax.Array], jax.Array], call: Callable[[], Any]
    ) -> Any:
        saved: list[tuple[Param[jax.Array], jax.Array]] = []
        try:
            for path, var in self._targets():
                new = replace(path, var.value)
                saved.append((var, var.value))
                var.value = new
            return call()
        finally:
            for var, value in reversed(saved):
                var.value = value

    def _call_layer(self, *args: Any, **kwargs: Any) -> Any:
        # Module declares no __call__ (each layer defines its own, with its own signature).
        return self.layer_instance(*args, **kwargs)  # type: ignore[operator]

    def _targets(self) -> list[tuple[Path, Param[jax.Array]]]:
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

    feature_axes: int | tuple[int, ...] | None
    dtype: DTypeLike | None
    promote_dtype: Callable[..., tuple[Any, ...]]
    scales: dict[str, Param[jax.Array]] | None

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
        variable_filter: Filter = _KERNELS,
        promote_dtype: Callable = _promote_dtype,
        rngs: Rngs,
    ):
        config_epsilon("WeightNorm", epsilon)
        self.layer_instance = layer_instance
        self.feature_axes = (
            None
            if feature_axes is None
            else config_axes("WeightNorm", "feature_axes", feature_axes)
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
        scales: dict[str, Param[jax.Array]] = {}
        for path, var in targets:
            axes = self._axes(path, var.value)[0]
            shape = tuple(var.value.shape[a] for a in axes)
            scales[_key(path)] = Param(materialize(scale_init, rngs.params, shape, param_dtype))
        self.scales = scales if use_scale else None

    def _targets(self) -> list[tuple[Path, Param[jax.Array]]]:
        predicate = to_predicate(self.variable_filter)
        return [(p, v) for p, v in self._params() if predicate(p, v)]

    def _axes(self, path: Path, w: jax.Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
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

    def _normalized(self, path: Path, w: jax.Array) -> jax.Array:
        features, reduction = self._axes(path, w)
        scale = self.scales[_key(path)].value if self.scales is not None else None
        w, scale = self.promote_dtype((w, scale), dtype=self.dtype)
        out_dtype = w.dtype
        w32 = jnp.asarray(w, jnp.promote_types(w.dtype, jnp.float32))
        y = _l2_normalize(w32, reduction, self.epsilon)
        if scale is not None:
            y = y * scale.reshape(feature_param_shape(w, features))
        return jnp.asarray(y, out_dtype)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self._run_with(self._normalized, lambda: self._call_layer(x, *args, **kwargs))


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

    dtype: DTypeLike | None
    batch_stats: dict[str, dict[str, BatchStat[jax.Array]]]

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
        config_epsilon("SpectralNorm", epsilon)
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
        stats: dict[str, dict[str, BatchStat[jax.Array]]] = {}
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

    def _targets(self) -> list[tuple[Path, Param[jax.Array]]]:
        if self.n_steps < 1:
            return []
        return [(p, v) for p, v in self._params() if v.value.ndim > 1]

    def _normalized(self, path: Path, w: jax.Array, update: bool) -> jax.Array:
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
            lambda: self._call_layer(x),
        )
