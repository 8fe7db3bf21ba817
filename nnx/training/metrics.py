"""Metrics that accumulate across batches: ``Average``, ``Accuracy``, ``Welford``,
``MultiMetric``. Their running sums are Variables, so ``update`` works inside ``nnx.jit``.

Example:
  >>> metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average('loss'))
  >>> metrics.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]),
  ...                loss=jnp.array([0.5, 1.5]))
  >>> {k: float(v) for k, v in metrics.compute().items()}
  {'accuracy': 0.5, 'loss': 1.0}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..errors import ArgumentError, NNXError
from ..filters import Filter
from ..graph import split as _split
from ..pytreelib import Pytree
from ..variablelib import Variable

__all__ = ["Accuracy", "Average", "Metric", "MetricState", "MultiMetric", "Statistics", "Welford"]


class MetricState(Variable):
    """The Variable type of a metric's running state."""

    __slots__ = ()


class Metric(Pytree):
    """Base class: ``update(**batch)``, ``compute()``, ``reset()``."""

    def __init__(self) -> None:
        pass

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def compute(self) -> Any:
        raise NotImplementedError

    def split(self, *filters: Filter) -> tuple[Any, ...]:
        """``nnx.split(self, *filters)``."""
        return _split(self, *filters)


class Average(Metric):
    """The mean of all values seen (weighted by element count across uneven batches).

    ``update(values=x, mask=m)`` ignores the entries where ``m`` is False (``m`` broadcasts
    to the shape of ``x`` by the usual rules).

    Args:
      argname: the keyword of ``update`` holding the values.
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.total = MetricState(jnp.array(0, dtype=jnp.float32))
        self.count = MetricState(jnp.array(0, dtype=jnp.int32))

    def reset(self) -> None:
        self.total.value = jnp.zeros_like(self.total.value)
        self.count.value = jnp.zeros_like(self.count.value)

    def update(self, mask: Any = None, **kwargs: Any) -> None:
        values = jnp.asarray(_get(self, kwargs))
        count: int | jax.Array
        if mask is None:
            total, count = jnp.sum(values, dtype=jnp.float32), values.size
        else:
            mask = _broadcast_mask(self, jnp.asarray(mask), values.shape)
            total = jnp.sum(jnp.where(mask, values, 0), dtype=jnp.float32)
            count = jnp.sum(mask, dtype=self.count.value.dtype)
        self.total.value = self.total.value + total
        self.count.value = self.count.value + count

    def compute(self) -> jax.Array:
        return self.total.value / self.count.value


class Accuracy(Average):
    """Fraction of ``argmax(logits, -1) == labels``.

    Also accepted: integer ``logits`` of the labels' shape (already class ids), and, with a
    ``threshold``, binary scores of the labels' shape: ``(logits >= threshold) == (labels > 0)``.
    ``mask=`` ignores entries, as in :class:`Average`.

    Args:
      threshold: the decision threshold for binary scores.
      *args: passed on to :class:`Average` (its `argname`), as in flax.
      **kwargs: passed on to :class:`Average`.
    """

    def __init__(self, threshold: float | None = None, *args: Any, **kwargs: Any):
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float)
        ):
            raise ArgumentError(
                f"Accuracy(threshold={threshold!r}): the threshold must be a number (the score "
                "at or above which a prediction counts as positive).\nFix: e.g. "
                "Accuracy(threshold=0.5), or Accuracy() for class scores."
            )
        super().__init__(*args, **kwargs)
        self.threshold = None if threshold is None else float(threshold)

    # flax's signature: keyword-only logits and labels where Average.update takes **kwargs
    def update(  # type: ignore[override]
        self, *, logits: Any, labels: Any, mask: Any = None, **_: Any
    ) -> None:
        logits, labels = jnp.asarray(logits), jnp.asarray(labels)
        if self.threshold is not None and logits.shape == labels.shape:
            correct = (logits >= self.threshold) == (labels > 0)
        elif logits.ndim == labels.ndim + 1 and logits.shape[:-1] == labels.shape:
            correct = jnp.argmax(logits, axis=-1) == labels
        elif logits.shape == labels.shape and jnp.issubdtype(logits.dtype, jnp.integer):
            correct = logits == labels
        else:
            raise NNXError(
                f"Accuracy.update: logits of shape {logits.shape} ({logits.dtype}) do not fit "
                f"labels of shape {labels.shape}. Accuracy takes, one of:\n"
                "  1. scores (..., num_classes) with integer labels (...);\n"
                "  2. predicted class ids of the labels' shape (an integer array);\n"
                "  3. binary scores of the labels' shape with Accuracy(threshold=0.5)."
            )
        super().update(values=correct, mask=mask)


class Statistics(NamedTuple):
    mean: jax.Array
    standard_error_of_mean: jax.Array
    standard_deviation: jax.Array


class Welford(Metric):
    """Running mean and variance (Welford/Chan's parallel update, stable across batches).

    ``update(values=x, mask=m)`` ignores the entries where ``m`` is False, as in
    :class:`Average` (flax's Welford ignores `mask`).
    """

    def __init__(self, argname: str = "values"):
        self.argname = argname
        self.count = MetricState(jnp.array(0, dtype=jnp.int32))
        self.mean = MetricState(jnp.array(0, dtype=jnp.float32))
        self.m2 = MetricState(jnp.array(0, dtype=jnp.float32))

    def reset(self) -> None:
        for v in (self.count, self.mean, self.m2):
            v.value = jnp.zeros_like(v.value)

    def update(self, **kwargs: Any) -> None:
        mask = kwargs.pop("mask", None)
        values = jnp.asarray(_get(self, kwargs), jnp.float32)
        if mask is None:
            if values.size == 0:
                return
            weights = None
            n_b: Any = values.size
            mean_b = jnp.mean(values)
            m2_b = jnp.sum((values - mean_b) ** 2)
        else:
            weights = _broadcast_mask(self, jnp.asarray(mask), values.shape).astype(jnp.float32)
            n_b = jnp.sum(weights)
            mean_b = jnp.sum(weights * values) / jnp.maximum(n_b, 1.0)
            m2_b = jnp.sum(weights * (values - mean_b) ** 2)
        n_a = self.count.value.astype(jnp.float32)
        n = jnp.maximum(n_a + n_b, 1.0)  # 0 only for an all-masked batch on an empty metric
        delta = mean_b - self.mean.value
        self.mean.value = self.mean.value + delta * n_b / n
        self.m2.value = self.m2.value + m2_b + delta**2 * n_a * n_b / n
        self.count.value = self.count.value + jnp.asarray(n_b).astype(jnp.int32)

    def compute(self) -> Statistics:
        n = self.count.value.astype(jnp.float32)
        var = self.m2.value / n
        std = jnp.sqrt(var)
        return Statistics(self.mean.value, std / jnp.sqrt(n), std)


class MultiMetric(Metric):
    """Several named metrics updated together: ``update(**batch)`` passes every keyword to
    every metric; ``compute()`` returns a dict.

    A ``mask=`` keyword goes to every metric, or, as a dict ``{metric_name: mask}``, to the
    named metrics only (as in flax).
    """

    def __init__(self, **metrics: Metric):
        clash = sorted(n for n in metrics if hasattr(MultiMetric, n) or n.startswith("_"))
        if clash:
            raise NNXError(
                f"MultiMetric: the metric name(s) {clash} would hide MultiMetric's own "
                "attributes. Fix: choose other names, e.g. MultiMetric(loss_avg=...)."
            )
        self._names = tuple(metrics)
        for name, metric in metrics.items():
            setattr(self, name, metric)

    def reset(self) -> None:
        for name in self._names:
            getattr(self, name).reset()

    def update(self, **updates: Any) -> None:
        mask = updates.pop("mask", None)
        for name in self._names:
            m = mask.get(name) if isinstance(mask, dict) else mask
            getattr(self, name).update(**updates, **({} if m is None else {"mask": m}))

    def compute(self) -> dict[str, Any]:
        return {name: getattr(self, name).compute() for name in self._names}


def _get(metric: Average | Welford, kwargs: dict) -> Any:
    if metric.argname not in kwargs:
        name = metric.argname
        raise NNXError(
            f"{type(metric).__name__}.update expects the keyword {name!r}; got "
            f"{sorted(kwargs)}. Fix: pass {name}=..., or build it with argname=<your keyword>."
        )
    return kwargs[metric.argname]


def _broadcast_mask(metric: Metric, mask: jax.Array, shape: tuple) -> jax.Array:
    try:
        return jnp.broadcast_to(mask, shape).astype(bool)
    except ValueError:
        raise NNXError(
            f"{type(metric).__name__}.update: a mask of shape {mask.shape} does not broadcast "
            f"to the values' shape {shape}. Fix: a mask of the values' shape."
        ) from None
