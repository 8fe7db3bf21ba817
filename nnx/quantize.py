"""Weight-only int8 quantisation: :func:`quantize` and the :class:`QuantScale` Variable kind.

Each selected layer keeps its kernel ``Param`` (same object, same metadata), now holding int8
values ``q = round(w / scale)`` in ``[-127, 127]``, and gains a sibling Variable
``<kernel>_scale`` (a :class:`QuantScale`, a ``Param`` kind) with one symmetric scale
``max|w| / 127`` per output channel, kept in the kernel's float dtype with size-1 axes where
the kernel's contracted axes are. The layers read their kernel through one hook
(``nnx.nn.linear.dequantized``): ``q.astype(scale.dtype) * scale`` feeds the matmul or
convolution; activations stay float (weight-only). ``Embed`` dequantises only the rows it
looks up.

What it saves and costs: a quarter of the kernel bytes (in memory, in checkpoints and in
:func:`nnx.export` files). On CPU it is not faster: XLA's CPU compiler writes the dequantised
kernel to a float buffer on every call before the matmul (``benchmarks/export.py`` measures
1.1-7.8x the float32 time for one ``Linear(K, K)``, worst at batch 1, and prints whether the
compiled program materialises the kernel). Accelerator compilers can fuse the conversion into
the matmul; that is not measured here.

Output channels per layer (the axes that keep their own scale):

* ``Linear`` ``(in, out)``, ``Conv`` ``(*window, in, out)``, ``ConvTranspose``: the output
  features axis;
* ``LinearGeneral`` ``(*batch, *in, *out)``: the batch and output axes;
* ``Einsum``: the kernel axes that appear in the output term of ``einsum_str``;
* ``Embed`` ``(num_embeddings, features)``: one scale per row (token), which serves both the
  lookup and ``attend``.

Quantisation is for inference: the int8 kernel is no longer trainable.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .errors import ConfigError
from .filters import Filter, to_predicate
from .locate import describe
from .module import Module, iter_modules
from .nn.conv import Conv, ConvTranspose
from .nn.embed import Embed
from .nn.linear import Linear
from .nn.linear_general import Einsum, LinearGeneral
from .variablelib import Param, Variable

__all__ = ["SUPPORTED_LAYERS", "QuantScale", "quantize"]


class QuantScale(Param):
    """Per-output-channel scales of an int8 kernel written by :func:`quantize` (a ``Param``
    kind, so it is saved, counted and cast with the parameters)."""

    __slots__ = ()


def _kept_axes_einsum(layer: Einsum) -> tuple[int, ...]:
    lhs_rhs, out = layer.einsum_str.split("->")
    rhs = lhs_rhs.split(",")[1]
    if "..." in rhs:
        raise ConfigError(
            f"nnx.quantize: {describe(layer)} has einsum_str={layer.einsum_str!r}, whose kernel "
            "term has an ellipsis, so its output channels are not known.\nFix: name every "
            "kernel axis in einsum_str, or leave this layer out of the filter."
        )
    return tuple(i for i, c in enumerate(rhs) if c in out)


def _kept_axes(layer: Module, kernel: jax.Array) -> tuple[int, ...]:
    """The kernel axes that keep their own scale (the output channels)."""
    if isinstance(layer, Embed):
        return (0,)
    if isinstance(layer, Einsum):
        return _kept_axes_einsum(layer)
    if isinstance(layer, LinearGeneral):
        n_out = len(layer.out_features)
        n_batch = len(layer.batch_axis)
        return (*range(n_batch), *range(kernel.ndim - n_out, kernel.ndim))
    if isinstance(layer, ConvTranspose) and layer.transpose_kernel:
        return (kernel.ndim - 2,)
    return (kernel.ndim - 1,)  # Linear, Conv, ConvTranspose


SUPPORTED_LAYERS: tuple[type[Module], ...] = (
    Linear,
    LinearGeneral,
    Einsum,
    Conv,
    ConvTranspose,
    Embed,
)


def _kernel_name(layer: Module) -> str:
    return "embedding" if isinstance(layer, Embed) else "kernel"


def _quantized(w: jax.Array, kept: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    reduce = tuple(i for i in range(w.ndim) if i not in kept)
    amax = jnp.max(jnp.abs(w), axis=reduce, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0).astype(w.dtype)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return q, scale


_UNSUPPORTED = (
    "nnx.quantize: the filter selected {where}, a {cls}, which owns float parameters "
    "{names} but is not a layer nnx.quantize knows how to quantise: only the kernels of "
    "{supported} have a known output-channel axis and read their kernel through the "
    "dequantising hook.\nFix: narrow the filter (the default selects exactly the supported "
    "layers), e.g. nnx.quantize(model, nnx.Any(nnx.Linear, nnx.Conv)); or leave this layer in "
    "float."
)


def _check(path_layers: list[tuple[tuple, Module]]) -> list[tuple[Module, str, Variable]]:
    """The (layer, kernel name, kernel) to quantise; raises before anything changes."""
    todo: list[tuple[Module, str, Variable]] = []
    seen: dict[int, str] = {}
    for _, layer in path_layers:
        if not isinstance(layer, SUPPORTED_LAYERS):
            own = [
                n
                for n, v in vars(layer).items()
                if isinstance(v, Param)
                and jnp.issubdtype(jnp.result_type(v.raw_value), jnp.floating)
            ]
            if own:
                raise ConfigError(
                    _UNSUPPORTED.format(
                        where=describe(layer),
                        cls=type(layer).__name__,
                        names=own,
                        supported=", ".join(c.__name__ for c in SUPPORTED_LAYERS),
                    )
                )
            continue  # a container: its children were matched (or not) on their own
        name = _kernel_name(layer)
        kernel = getattr(layer, name)
        if kernel is None:
            raise ConfigError(
                f"nnx.quantize: {describe(layer)} has no {name} yet (a lazy layer that was "
                "never called).\nFix: call the model once, or nnx.lazy_init(model, *example_args), "
                "before quantising."
            )
        if getattr(layer, f"{name}_scale", None) is not None:
            continue  # already quantised
        if not jnp.issubdtype(kernel.raw_value.dtype, jnp.floating):
            raise ConfigError(
                f"nnx.quantize: {describe(layer)}.{name} has dtype {kernel.raw_value.dtype}, not "
                "a float dtype, so there is nothing to quantise.\nFix: leave it out of the filter."
            )
        if id(kernel) in seen:
            raise ConfigError(
                f"nnx.quantize: {describe(layer)}.{name} is the same Variable as {seen[id(kernel)]}"
                " (tied weights); their output channels may differ, so one int8 copy with one "
                "scale cannot serve both.\nFix: leave one of the two layers out of the filter."
            )
        seen[id(kernel)] = f"{describe(layer)}.{name}"
        _kept_axes(layer, kernel.raw_value)  # raises for an Einsum it cannot read
        todo.append((layer, name, kernel))
    return todo


def quantize(model: Module, filter: Filter = SUPPORTED_LAYERS) -> Module:
    """Weight-only int8 quantisation of the selected layers' kernels, in place.

    Each selected ``Linear``, ``LinearGeneral``, ``Einsum``, ``Conv``, ``ConvTranspose`` or
    ``Embed`` gets int8 kernel values and a :class:`QuantScale` ``kernel_scale`` (``Embed``:
    ``embedding_scale``) with one symmetric scale per output channel (see the module
    docstring); calls then compute with ``q * scale``. Biases, norms and everything else stay
    as they are. Layers already quantised are skipped, so calling it twice is harmless.

    Args:
      model: the model, changed in place (returned too, for chaining).
      filter: which modules to quantise, matched against ``(path, module)`` for every module
        of the graph (default: every supported layer). A selected module of another class
        that owns float ``Param`` s raises; containers that own none are passed over.

    Returns:
      `model` itself.

    Raises:
      ConfigError: the filter selected an unsupported layer (the message names it and says
        why), a lazy layer that has no kernel yet, an ``Einsum`` whose kernel term has an
        ellipsis, or two layers sharing one kernel. Nothing is changed when it raises.

    Example:
      >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 4))
      >>> y = model(x)
      >>> _ = nnx.quantize(model)
      >>> model.kernel.dtype, model.kernel_scale.shape
      (dtype('int8'), (1, 3))
      >>> bool(jnp.allclose(model(x), y, atol=0.05))
      True
    """
    predicate: Callable = to_predicate(filter)
    selected = [(p, m) for p, m in iter_modules(model) if predicate(p, m)]
    for layer, name, kernel in _check(selected):
        w = kernel.raw_value
        q, scale = _quantized(w, _kept_axes(layer, w))
        kernel.set_raw_value(q)
        setattr(layer, f"{name}_scale", QuantScale(scale))
    return model
