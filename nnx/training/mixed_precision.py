"""Mixed precision: dtype policies for whole models, and dynamic loss scaling.

A :class:`Policy` names three dtypes: the one parameters are stored in (the float32 "master
weights"), the one layers compute in (bfloat16 or float16), and the one outputs are returned
in. :func:`apply_policy` sets the ``dtype``/``param_dtype`` attributes of every layer in a
model (different policies per layer type through ``overrides``) and casts the parameters it
owns, so the usual train step then computes in low precision while the optimizer updates
float32 parameters.

float16 needs loss scaling (its small range underflows gradients): :class:`DynamicLossScale`
keeps the scale as Variables (jit-safe, checkpointable). :func:`scaled_step` runs a whole
train step (forward pass, gradients, update) and, when the loss or a gradient is not finite,
puts back every Variable the step wrote (parameters, optimizer state, batch statistics, RNG
counters). :func:`scaled_update` is the lower-level piece for a step you write yourself: it
unscales the gradients and applies the optimizer only when all of them are finite, but it
cannot undo what the forward pass already wrote.

Example:
  >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> policy = nnx.Policy.from_string('params=float32,compute=bfloat16,output=float32')
  >>> model = nnx.apply_policy(model, policy)
  >>> y = model(jnp.ones((1, 2)))
  >>> model.kernel.value.dtype, y.dtype, policy.cast_to_output(y).dtype
  (dtype('float32'), dtype(bfloat16), dtype('float32'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import NNXError
from ..filters import Filter, to_predicate
from ..graph import flatten as _flatten
from ..graph import is_node, iter_graph
from ..graph import update as _update
from ..module import Module
from ..pytreelib import Pytree
from ..state import from_flat_state
from ..transforms.autodiff import DiffState, value_and_grad
from ..variablelib import Param, Variable

__all__ = [
    "DynamicLossScale",
    "LossScaleState",
    "Policy",
    "StepResult",
    "all_finite",
    "apply_policy",
    "scaled_step",
    "scaled_update",
]

M = TypeVar("M")

_DTYPE_NAMES = {
    "f16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "f32": "float32",
    "full": "float32",
    "single": "float32",
    "f64": "float64",
    "double": "float64",
}
_ROLE_NAMES = {
    "p": "param_dtype",
    "param": "param_dtype",
    "params": "param_dtype",
    "param_dtype": "param_dtype",
    "c": "compute_dtype",
    "compute": "compute_dtype",
    "compute_dtype": "compute_dtype",
    "o": "output_dtype",
    "output": "output_dtype",
    "output_dtype": "output_dtype",
}
_POLICY_FORMAT = (
    "Fix: 'params=float32,compute=bfloat16,output=float32' (short: 'p=f32,c=bf16,o=f32'), "
    "or one dtype name for all three."
)


def _dtype(name: str, spec: str) -> Any:
    try:
        return jnp.dtype(_DTYPE_NAMES.get(name.strip().lower(), name.strip().lower()))
    except TypeError:
        raise NNXError(
            f"Policy.from_string({spec!r}): {name.strip()!r} is not a dtype. " + _POLICY_FORMAT
        ) from None


def _cast_floats(tree: Any, dtype: Any) -> Any:
    if dtype is None:
        return tree

    def cast(x: Any) -> Any:
        if isinstance(x, jax.Array | np.ndarray | float) and jnp.issubdtype(
            jnp.result_type(x), jnp.floating
        ):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(cast, tree)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtypes a model stores its parameters in, computes in, and returns.

    ``None`` leaves that role alone: :func:`apply_policy` keeps the layers' ``dtype`` (by
    default ``None``: inferred from inputs and parameters) or their parameters' dtype, and
    the ``cast_to_*`` methods return their input.

    Args:
      param_dtype: the parameters' storage dtype (the optimizer's "master weights").
      compute_dtype: the dtype layers compute in (their ``dtype`` attribute).
      output_dtype: the dtype :meth:`cast_to_output` gives a model's outputs.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = None
    output_dtype: Any = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, jnp.dtype(value))

    @classmethod
    def from_string(cls, spec: str) -> Policy:
        """Parses ``'params=float32,compute=bfloat16,output=float32'`` (roles ``p``/``c``/``o``
        and dtypes ``f32``/``bf16``/``f16`` also work); a single dtype name sets all three."""
        if "=" not in spec:
            d = _dtype(spec, spec)
            return cls(d, d, d)
        values: dict[str, Any] = {}
        for part in spec.split(","):
            role, sep, name = part.partition("=")
            key = _ROLE_NAMES.get(role.strip().lower())
            if not sep or key is None:
                raise NNXError(
                    f"Policy.from_string({spec!r}): cannot read {part.strip()!r}; roles are "
                    "params, compute and output. " + _POLICY_FORMAT
                )
            values[key] = _dtype(name, spec)
        return cls(**values)

    def cast_to_param(self, tree: Any) -> Any:
        """The floating arrays of ``tree`` in ``param_dtype``."""
        return _cast_floats(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """The floating arrays of ``tree`` in ``compute_dtype``."""
        return _cast_floats(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """The floating arrays of ``tree`` in ``output_dtype`` (use it on the model's output:
        ``loss_fn(policy.cast_to_output(model(x)), y)``)."""
        return _cast_floats(tree, self.output_dtype)


def _policy_for(module: Module, policy: Policy, overrides: Mapping[type, Policy]) -> Policy:
    for cls in type(module).__mro__:
        if cls in overrides:
            return overrides[cls]
    return policy


def apply_policy(
    model: M,
    policy: Policy,
    *,
    overrides: Mapping[type, Policy] | None = None,
    wrt: Filter = Param,
) -> M:
    """Applies a dtype policy to every module of ``model``, in place, and returns it.

    Each module gets the policy of its type in ``overrides`` (the most specific class in
    its MRO wins), else ``policy``: its ``dtype`` attribute (if it has one) becomes the
    compute dtype, its ``param_dtype`` attribute (if it has one) the parameter dtype, and
    the floating Variables it owns directly that match ``wrt`` are cast to the parameter
    dtype. Modules without those attributes (containers, your own modules) only get their
    parameters cast.

    Args:
      model: a Module (or any graph holding modules).
      policy: the default policy.
      overrides: per-layer-type policies, e.g. ``{nnx.LayerNorm: Policy(compute_dtype=
        jnp.float32)}`` keeps normalisations in float32.
      wrt: which Variables are parameters (default ``nnx.Param``; batch statistics stay as
        they are).

    Raises:
      NNXError: an ``overrides`` key is not a class, or a value not a Policy.

    Example:
      >>> class Net(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.dense = nnx.Linear(2, 2, rngs=rngs)
      ...     self.head = nnx.Linear(2, 1, rngs=rngs)
      >>> net = nnx.apply_policy(Net(nnx.Rngs(0)), nnx.Policy(compute_dtype=jnp.bfloat16),
      ...                        overrides={nnx.Linear: nnx.Policy(compute_dtype=jnp.float32)})
      >>> net.dense.dtype
      dtype('float32')
    """
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if not isinstance(key, type) or not isinstance(value, Policy):
            raise NNXError(
                f"apply_policy: overrides maps layer classes to Policies; got {key!r}: "
                f"{value!r}. Fix: overrides={{nnx.LayerNorm: nnx.Policy(...)}}."
            )
    if not isinstance(policy, Policy):
        raise NNXError(
            f"apply_policy: expected a Policy, got {policy!r}. Fix: nnx.Policy(param_dtype=..., "
            "compute_dtype=..., output_dtype=...) or nnx.Policy.from_string('p=f32,c=bf16')."
        )
    nodes = list(iter_graph(model))
    module_policy = {
        path: _policy_for(node, policy, overrides)
        for path, node in nodes
        if isinstance(node, Module)
    }
    pred = to_predicate(wrt)
    casts: dict[int, tuple[Variable, Any]] = {}
    for path, node in nodes:
        if not isinstance(node, Variable) or not pred(path, node):
            continue
        value = node._value
        if not (hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.floating)):
            continue
        owner = next(
            (path[:i] for i in range(len(path) - 1, -1, -1) if path[:i] in module_policy), None
        )
        p = module_policy[owner] if owner is not None else policy
        if p.param_dtype is not None and value.dtype != p.param_dtype:
            casts[id(node)] = (node, p.param_dtype)
    for path, node in nodes:
        if isinstance(node, Module):
            p = module_policy[path]
            if "dtype" in node.__dict__ and p.compute_dtype is not None:
                node.dtype = p.compute_dtype
            if "param_dtype" in node.__dict__ and p.param_dtype is not None:
                node.param_dtype = p.param_dtype
    for var, dtype in casts.values():
        var.value = jnp.asarray(var._value, dtype)
    return model


# -- dynamic loss scaling -----------------------------------------------------------------
class LossScaleState(Variable):
    """The Variable type of a loss scale's state (its scale and good-step counter)."""

    __slots__ = ()


def all_finite(tree: Any) -> jax.Array:
    """A boolean scalar: True when every array of ``tree`` is free of inf and nan."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack(leaves))


class DynamicLossScale(Pytree):
    """Dynamic loss scaling for float16 training.

    Multiply the loss by ``scale`` before differentiating (:meth:`scale_loss`), divide the
    gradients by it (:meth:`unscale`), then :meth:`adjust`: on non-finite gradients the scale
    shrinks by ``factor`` (not below ``min_scale``) and the step should be skipped; after
    ``growth_interval`` finite steps in a row it grows by ``factor``. :func:`scaled_update`
    does the last three in one call.

    Args:
      scale: the initial scale.
      growth_interval: finite steps in a row before the scale grows.
      factor: the growth and back-off factor (> 1).
      min_scale: the scale never goes below this.

    Attributes:
      scale: a ``LossScaleState`` holding the current scale (float32).
      good_steps: a ``LossScaleState`` counting finite steps since the last change.

    Example:
      >>> loss_scale = nnx.DynamicLossScale(scale=2.0**10, growth_interval=2)
      >>> loss_scale.adjust(jnp.array(False)); float(loss_scale.scale.value)
      512.0
      >>> loss_scale.adjust(jnp.array(True)); loss_scale.adjust(jnp.array(True))
      >>> float(loss_scale.scale.value)
      1024.0
    """

    def __init__(
        self,
        scale: float = 2.0**15,
        *,
        growth_interval: int = 2000,
        factor: float = 2.0,
        min_scale: float = 1.0,
    ):
        if not (factor > 1.0 and growth_interval >= 1 and 0 < min_scale <= scale):
            raise NNXError(
                f"DynamicLossScale(scale={scale}, growth_interval={growth_interval}, "
                f"factor={factor}, min_scale={min_scale}): needs factor > 1, growth_interval "
                ">= 1 and 0 < min_scale <= scale. Fix: e.g. DynamicLossScale(2.0**15)."
            )
        self.scale = LossScaleState(jnp.asarray(scale, jnp.float32))
        self.good_steps = LossScaleState(jnp.asarray(0, jnp.int32))
        self.growth_interval = int(growth_interval)
        self.factor = float(factor)
        self.min_scale = float(min_scale)

    def scale_loss(self, loss: Any) -> jax.Array:
        """``loss * scale`` (in at least float32, so a float16 loss cannot overflow here)."""
        loss = jnp.asarray(loss)
        return loss.astype(jnp.promote_types(loss.dtype, jnp.float32)) * self.scale.value

    def unscale(self, grads: Any) -> Any:
        """The gradients divided by ``scale``, each in its own dtype."""
        inv = 1.0 / self.scale.value

        def unscale_one(g: Any) -> Any:
            g = jnp.asarray(g)
            if not jnp.issubdtype(g.dtype, jnp.inexact):
                return g
            return (g.astype(jnp.promote_types(g.dtype, jnp.float32)) * inv).astype(g.dtype)

        return jax.tree.map(unscale_one, grads)

    def adjust(self, grads_finite: Any) -> None:
        """Updates the scale after a step whose gradients were (not) all finite."""
        finite = jnp.asarray(grads_finite, bool)
        scale, good = self.scale.value, self.good_steps.value
        good = jnp.where(finite, good + 1, 0)
        grown = scale * self.factor
        grow = finite & (good >= self.growth_interval) & jnp.isfinite(grown)
        shrunk = jnp.maximum(scale / self.factor, self.min_scale)
        self.scale.value = jnp.where(grow, grown, jnp.where(finite, scale, shrunk))
        self.good_steps.value = jnp.where(grow | ~finite, 0, good).astype(jnp.int32)


def _leaf_value(leaf: Any) -> Any:
    return leaf._value if isinstance(leaf, Variable) else leaf


def _snapshot(roots: list[Any]) -> dict:
    """Path -> value of every leaf of `roots`, for :func:`_restore_unless`."""
    return {path: _leaf_value(leaf) for path, leaf in _flatten(roots)[1]}


def _same_kind(a: Any, b: Any) -> bool:
    """Whether ``jnp.where`` can choose between values ``a`` and ``b`` leaf by leaf, keeping
    their structure, shapes and dtypes."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    # (jaxlib ships no type stub for PyTreeDef yet)
    return ta == tb and all(  # type: ignore[operator, unused-ignore]
        jnp.shape(x) == jnp.shape(y) and jnp.result_type(x) == jnp.result_type(y)
        for x, y in zip(la, lb, strict=True)
    )


def _restore_unless(applied: jax.Array, roots: list[Any], before: Mapping) -> None:
    """Where ``applied`` is False, puts back the values ``before`` (path -> value) recorded
    for the leaves of ``roots``; leaves the step did not replace are not touched."""
    pairs = []
    for path, leaf in _flatten(roots)[1]:
        if path not in before:
            continue
        new, old = _leaf_value(leaf), before[path]
        if new is old or not _same_kind(new, old):
            continue
        pairs.append((path, jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)))
    if pairs:
        _update(roots, from_flat_state(pairs))


def scaled_update(
    optimizer: Any,
    model: Any,
    grads: Any,
    loss_scale: DynamicLossScale | None = None,
    **kwargs: Any,
) -> jax.Array:
    """``optimizer.update(model, grads)`` only if the gradients are all finite.

    With a ``loss_scale``, the gradients (of a loss scaled by ``loss_scale.scale_loss``) are
    unscaled first, and the scale adjusted afterwards. On non-finite gradients the model's
    trained Variables (those ``optimizer.wrt`` selects), the optimizer state and its step
    keep the values they had when ``scaled_update`` was called. Works inside and outside
    ``nnx.jit`` (the skip is a select, not a Python branch).

    It does not undo what the forward pass already wrote: the gradients are computed before
    this call, so a NaN batch has by then put NaN into BatchNorm's running statistics,
    advanced the RNG counters and updated any metric the loss function touched. Use
    :func:`scaled_step`, which owns the forward pass, to roll those back as well.

    Returns:
      A boolean scalar: whether the update was applied.

    Example:
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1))
      >>> loss_scale = nnx.DynamicLossScale(2.0**8)
      >>> @nnx.jit
      ... def step(model, optimizer, loss_scale, x):
      ...   loss_fn = lambda m: loss_scale.scale_loss(jnp.mean(m(x) ** 2))
      ...   grads = nnx.grad(loss_fn)(model)
      ...   return nnx.training.scaled_update(optimizer, model, grads, loss_scale)
      >>> bool(step(model, optimizer, loss_scale, jnp.ones((1, 2))))
      True
      >>> bool(step(model, optimizer, loss_scale, jnp.full((1, 2), jnp.inf)))
      False
      >>> float(loss_scale.scale.value), int(optimizer.step.value)
      (128.0, 1)
    """
    if loss_scale is not None:
        grads = loss_scale.unscale(grads)
    finite = all_finite(grads)
    roots = [model, optimizer]
    before = _snapshot(roots)
    optimizer.update(model, grads, **kwargs)
    _restore_unless(finite, roots, before)
    if loss_scale is not None:
        loss_scale.adjust(finite)
    return finite


# -- a whole train step -------------------------------------------------------------------
class StepResult(NamedTuple):
    """What :func:`scaled_step` returns (a pytree, so it passes out of ``nnx.jit``).

    Attributes:
      loss: the loss as ``loss_fn`` returned it (not multiplied by the loss scale).
      applied: a boolean scalar: whether the step was applied (False: it was rolled back).
      aux: the auxiliary output of ``loss_fn`` with ``has_aux=True``, else None.
    """

    loss: jax.Array
    applied: jax.Array
    aux: Any = None


def _graph_roots(tree: Any) -> list[Any]:
    """The graph objects (nodes and Variables) inside a pytree of arguments."""
    is_graph = lambda x: is_node(x) or isinstance(x, Variable)
    return [x for x in jax.tree.leaves(tree, is_leaf=is_graph) if is_graph(x)]


def scaled_step(
    optimizer: Any,
    model: Any,
    loss_fn: Callable[..., Any],
    *batch: Any,
    loss_scale: DynamicLossScale | None = None,
    has_aux: bool = False,
    **kwargs: Any,
) -> StepResult:
    """One train step that leaves no trace when its loss or gradients are not finite.

    Computes ``loss_fn(model, *batch, **kwargs)`` and its gradients with respect to the
    Variables the optimizer trains (``optimizer.wrt``), multiplied by ``loss_scale`` if one
    is given and unscaled again, then calls ``optimizer.update(model, grads)``. When the loss
    or any gradient is inf or nan, every Variable the step wrote goes back to its value from
    before the call: the parameters, the optimizer state and step, and what the forward pass
    wrote (BatchNorm statistics, RNG counters, metrics kept on the model), in ``model``,
    ``optimizer`` and any graph object in ``batch``/``kwargs``. Then ``loss_scale`` (if any)
    is adjusted. Works inside and outside ``nnx.jit``: the roll-back is a select, not a
    Python branch.

    Variables the step creates or reshapes are left as the step wrote them (sown
    ``nnx.Intermediate`` values grow a tuple): pop them as usual. For optax transforms that
    need extra ``tx.update`` arguments, write the step yourself with :func:`scaled_update`
    (which protects only the trained Variables and the optimizer).

    Args:
      optimizer: an ``nnx.Optimizer`` for ``model``.
      model: the model; ``loss_fn``'s first argument.
      loss_fn: ``loss_fn(model, *batch, **kwargs)`` returning a scalar loss, or
        ``(loss, aux)`` with ``has_aux=True``. It returns the plain loss: the scaling is done
        here.
      *batch: the remaining positional arguments of ``loss_fn``.
      loss_scale: a :class:`DynamicLossScale` (for float16 training), or None.
      has_aux: ``loss_fn`` returns ``(loss, aux)``.
      **kwargs: keyword arguments of ``loss_fn``.

    Returns:
      A :class:`StepResult` ``(loss, applied, aux)``.

    Example:
      >>> class Net(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(2, 2, rngs=rngs)
      ...     self.norm = nnx.BatchNorm(2, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.norm(self.linear(x))
      >>> model = Net(nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, optax.adam(1e-2))
      >>> loss_scale = nnx.DynamicLossScale(2.0**8)
      >>> loss_fn = lambda model, x: jnp.mean(model(x) ** 2)
      >>> @nnx.jit
      ... def step(model, optimizer, loss_scale, x):
      ...   return nnx.training.scaled_step(optimizer, model, loss_fn, x, loss_scale=loss_scale)
      >>> bool(step(model, optimizer, loss_scale, jnp.ones((4, 2))).applied)
      True
      >>> mean = model.norm.mean.value
      >>> loss, applied, _ = step(model, optimizer, loss_scale, jnp.full((4, 2), jnp.nan))
      >>> bool(applied), bool((model.norm.mean.value == mean).all())
      (False, True)
      >>> float(loss_scale.scale.value), int(optimizer.step.value)
      (128.0, 1)
    """
    roots = [model, optimizer, *_graph_roots((batch, kwargs))]
    before = _snapshot(roots)

    def objective(model: Any, *batch: Any, **kwargs: Any) -> Any:
        out = loss_fn(model, *batch, **kwargs)
        loss, aux = out if has_aux else (out, None)
        scaled = loss if loss_scale is None else loss_scale.scale_loss(loss)
        return scaled, (loss, aux)

    grad_fn = value_and_grad(objective, argnums=DiffState(0, optimizer.wrt), has_aux=True)
    (_, (loss, aux)), grads = grad_fn(model, *batch, **kwargs)
    if loss_scale is not None:
        grads = loss_scale.unscale(grads)
    applied = all_finite(grads) & jnp.all(jnp.isfinite(loss))
    optimizer.update(model, grads)
    _restore_unless(applied, roots, before)
    if loss_scale is not None:
        loss_scale.adjust(applied)
    return StepResult(loss, applied, aux)
