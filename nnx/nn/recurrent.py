"""Recurrent layers: the cells :class:`LSTMCell`, :class:`OptimizedLSTMCell`,
:class:`GRUCell`, :class:`SimpleCell`, and the sequence wrappers :class:`RNN` and
:class:`Bidirectional`.

A cell maps ``(carry, inputs) -> (new_carry, outputs)`` for one time step; :class:`RNN`
scans a cell over the time axis with ``jax.lax.scan`` (the cell is split into its parameters,
closed over, and its other state, carried through the scan and written back afterwards).

Example:
  >>> cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))
  >>> carry = cell.initialize_carry((2, 3))
  >>> (c, h), y = cell(carry, jnp.ones((2, 3)))
  >>> y.shape
  (2, 4)
  >>> rnn = nnx.RNN(nnx.GRUCell(None, 4, rngs=nnx.Rngs(0)))   # in_features from the input
  >>> rnn(jnp.ones((2, 7, 3))).shape
  (2, 7, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from ..filters import All, Nothing
from ..filters import Any as Any_
from ..graph import iter_graph, merge, split, update
from ..module import Module
from ..rngs import Rngs, RngState
from ..state import State
from ..variablelib import Param
from . import activations, initializers
from ._layer import check_positive, check_rank
from .dtypes import promote_dtype as _promote_dtype
from .linear import Linear

__all__ = [
    "Bidirectional",
    "GRUCell",
    "LSTMCell",
    "OptimizedLSTMCell",
    "RNN",
    "RNNCellBase",
    "SimpleCell",
]

default_kernel_init = initializers.lecun_normal()
default_recurrent_kernel_init = initializers.orthogonal()


def modified_orthogonal(
    key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32
) -> jax.Array:
    """The orthogonal initializer computed in float32 and then cast to `dtype` (stays
    accurate for half-precision parameters); :class:`LSTMCell`'s recurrent default, as in
    flax."""
    return default_recurrent_kernel_init(key, shape, jnp.float32).astype(dtype)


class RNNCellBase(Module):
    """Base of the recurrent cells: one time step, ``(carry, inputs) -> (carry, outputs)``."""

    hidden_features: int
    param_dtype: Any
    carry_init: Callable

    @property
    def num_feature_axes(self) -> int:
        """Number of trailing feature axes of the inputs (1 for every cell here)."""
        return 1

    def _carry_key(self, rngs: Any) -> jax.Array:
        if rngs is None:
            return jax.random.key(0)
        if isinstance(rngs, Rngs):
            return rngs.carry() if "carry" in rngs else rngs.params()
        return rngs()

    def _one_carry(self, input_shape: tuple[int, ...], key: Any, carry_init: Any) -> jax.Array:
        init = carry_init if carry_init is not None else self.carry_init
        shape = (*tuple(input_shape[:-1]), self.hidden_features)
        return init(key, shape, self.param_dtype)

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | Any | None = None,
        carry_init: Callable | None = None,
    ) -> Any:
        """The initial carry for inputs of `input_shape` (batch axes + features)."""
        return self._one_carry(input_shape, self._carry_key(rngs), carry_init)


def _linear(
    cell: Any, in_features: int | None, out_features: int, init: Callable, bias: bool, rngs: Rngs
) -> Linear:
    return Linear(
        in_features,
        out_features,
        use_bias=bias,
        dtype=cell.dtype,
        param_dtype=cell.param_dtype,
        kernel_init=init,
        bias_init=cell.bias_init,
        promote_dtype=cell.promote_dtype,
        rngs=rngs,
        kernel_metadata=cell._kernel_meta if init is cell.kernel_init else cell._rec_meta,
        bias_metadata=cell._bias_meta,
    )


def _arguments(frame_locals: dict[str, Any]) -> dict[str, Any]:
    """A cell ``__init__``'s arguments, to hand on to ``_GatedCell.__init__``: each cell spells
    out flax's full signature (so ``inspect.signature`` and editors show it) and forwards it."""
    return {k: v for k, v in frame_locals.items() if k not in ("self", "__class__")}


class _GatedCell(RNNCellBase):
    """Shared constructor of the cells (argument storage and checks)."""

    _name = "Cell"

    def __init__(
        self,
        in_features: int | None,
        hidden_features: int,
        *,
        gate_fn: Callable = activations.sigmoid,
        activation_fn: Callable = activations.tanh,
        kernel_init: Callable = default_kernel_init,
        recurrent_kernel_init: Callable = default_recurrent_kernel_init,
        bias_init: Callable = initializers.zeros,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Callable | None = None,
        promote_dtype: Callable = _promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = {},
        recurrent_kernel_metadata: Mapping[str, Any] = {},
        bias_metadata: Mapping[str, Any] = {},
    ):
        check_positive(type(self).__name__, in_features=in_features)
        if hidden_features is None:
            raise ConfigError(f"{type(self).__name__}: hidden_features cannot be None.")
        check_positive(type(self).__name__, hidden_features=hidden_features)
        if rngs is None:
            raise ConfigError(
                f"{type(self).__name__} needs rngs=nnx.Rngs(...) to initialise its parameters."
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.kernel_init = kernel_init
        self.recurrent_kernel_init = recurrent_kernel_init
        self.bias_init = bias_init
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.carry_init = carry_init if carry_init is not None else initializers.zeros
        self.promote_dtype = promote_dtype
        self._kernel_meta = dict(kernel_metadata)
        self._rec_meta = dict(recurrent_kernel_metadata)
        self._bias_meta = dict(bias_metadata)

    def _cast_carry(self, *xs: jax.Array) -> tuple:
        """Brings the carry to the computation dtype when one is set."""
        if self.dtype is None:
            return xs
        return tuple(jnp.asarray(x, self.dtype) for x in xs)


class LSTMCell(_GatedCell):
    """Long short-term memory cell; carry ``(c, h)``.

    ``i = gate(W_ii x + W_hi h + b_i)``, ``f``, ``o`` likewise, ``g = act(W_ig x + W_hg h
    + b_g)``, ``c' = f * c + i * g``, ``h' = o * act(c')``; the output is ``h'``.

    Args:
      in_features: size of the input's last axis, or None to infer it on the first call.
      hidden_features: size of the hidden state.
      gate_fn, activation_fn: gate and cell activations.
      kernel_init, recurrent_kernel_init, bias_init: initializers (input kernels, hidden
        kernels, biases).
      dtype, param_dtype: computation and parameter dtypes.
      carry_init: initializer of the carry in :meth:`initialize_carry` (default zeros).
      promote_dtype: how inputs and parameters are brought to one dtype.
      keep_rngs: accepted for compatibility (the cell holds no random state).
      rngs: random streams for the parameters.
      kernel_metadata, recurrent_kernel_metadata, bias_metadata: extra Variable metadata.

    Example:
      >>> cell = nnx.LSTMCell(2, 3, rngs=nnx.Rngs(0))
      >>> (c, h), y = cell(cell.initialize_carry((5, 2)), jnp.ones((5, 2)))
      >>> c.shape, h.shape
      ((5, 3), (5, 3))
    """

    # Per gate (i, f, g, o): the input kernel (no bias) and the hidden kernel (with bias).
    ii: Linear
    if_: Linear
    ig: Linear
    io: Linear
    hi: Linear
    hf: Linear
    hg: Linear
    ho: Linear

    def __init__(
        self,
        in_features: int | None,
        hidden_features: int,
        *,
        gate_fn: Callable = activations.sigmoid,
        activation_fn: Callable = activations.tanh,
        kernel_init: Callable = default_kernel_init,
        recurrent_kernel_init: Callable = modified_orthogonal,
        bias_init: Callable = initializers.zeros,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Callable | None = None,
        promote_dtype: Callable = _promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        recurrent_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        _GatedCell.__init__(self, **_arguments(locals()))
        hid = hidden_features
        for name in ("ii", "if_", "ig", "io"):
            setattr(self, name, _linear(self, in_features, hid, self.kernel_init, False, rngs))
        for name in ("hi", "hf", "hg", "ho"):
            setattr(self, name, _linear(self, hid, hid, self.recurrent_kernel_init, True, rngs))

    def __call__(self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array) -> tuple:
        c, h = self._cast_carry(*carry)
        i = self.gate_fn(self.ii(inputs) + self.hi(h))
        f = self.gate_fn(self.if_(inputs) + self.hf(h))
        g = self.activation_fn(self.ig(inputs) + self.hg(h))
        o = self.gate_fn(self.io(inputs) + self.ho(h))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: Rngs | Any | None = None,
        carry_init: Callable | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        key_c, key_h = jax.random.split(self._carry_key(rngs))
        return (
            self._one_carry(input_shape, key_c, carry_init),
            self._one_carry(input_shape, key_h, carry_init),
        )


class OptimizedLSTMCell(LSTMCell):
    """The LSTM of :class:`LSTMCell` computed with two fused matmuls (``dense_i``:
    inputs -> 4 gates without bias, ``dense_h``: hidden -> 4 gates with bias; gate order
    i, f, g, o). Same arguments as :class:`LSTMCell`.

    Example:
      >>> cell = nnx.OptimizedLSTMCell(2, 3, rngs=nnx.Rngs(0))
      >>> cell.dense_h.kernel.shape
      (3, 12)
    """

    def __init__(
        self,
        in_features: int | None,
        hidden_features: int,
        *,
        gate_fn: Callable = activations.sigmoid,
        activation_fn: Callable = activations.tanh,
        kernel_init: Callable = default_kernel_init,
        recurrent_kernel_init: Callable = default_recurrent_kernel_init,
        bias_init: Callable = initializers.zeros,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Callable | None = None,
        promote_dtype: Callable = _promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        recurrent_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        _GatedCell.__init__(self, **_arguments(locals()))
        hid = hidden_features
        self.dense_i = _linear(self, in_features, 4 * hid, self.kernel_init, False, rngs)
        self.dense_h = _linear(self, hid, 4 * hid, self.recurrent_kernel_init, True, rngs)

    def __call__(self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array) -> tuple:
        c, h = self._cast_carry(*carry)
        y = self.dense_i(inputs) + self.dense_h(h)
        i, f, g, o = jnp.split(y, 4, axis=-1)
        new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
        new_h = self.gate_fn(o) * self.activation_fn(new_c)
        return (new_c, new_h), new_h


class GRUCell(_GatedCell):
    """Gated recurrent unit; the carry is the hidden state ``h``.

    ``r = gate(W_ir x + b_r + W_hr h)``, ``z = gate(W_iz x + b_z + W_hz h)``,
    ``n = act(W_in x + b_n + r * (W_hn h))``, ``h' = (1 - z) * n + z * h``. Parameters:
    ``dense_i`` (inputs -> r, z, n, with bias) and ``dense_h`` (hidden -> r, z, n, no bias).
    Same arguments as :class:`LSTMCell`.

    Example:
      >>> cell = nnx.GRUCell(2, 3, rngs=nnx.Rngs(0))
      >>> h, y = cell(cell.initialize_carry((2,)), jnp.ones(2))
      >>> h.shape
      (3,)
    """

    def __init__(
        self,
        in_features: int | None,
        hidden_features: int,
        *,
        gate_fn: Callable = activations.sigmoid,
        activation_fn: Callable = activations.tanh,
        kernel_init: Callable = default_kernel_init,
        recurrent_kernel_init: Callable = default_recurrent_kernel_init,
        bias_init: Callable = initializers.zeros,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        carry_init: Callable | None = None,
        promote_dtype: Callable = _promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        recurrent_kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        _GatedCell.__init__(self, **_arguments(locals()))
        hid = hidden_features
        self.dense_i = _linear(self, in_features, 3 * hid, self.kernel_init, True, rngs)
        self.dense_h = _linear(self, hid, 3 * hid, self.recurrent_kernel_init, False, rngs)

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        (h,) = self._cast_carry(carry)
        xr, xz, xn = jnp.split(self.dense_i(inputs), 3, axis=-1)
        hr, hz, hn = jnp.split(self.dense_h(h), 3, axis=-1)
        r = self.gate_fn(xr + hr)
        z = self.gate_fn(xz + hz)
        n = self.activation_fn(xn + r * hn)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


class SimpleCell(_GatedCell):
    """Elman cell: ``h' = act(W_i x + b + W_h h)`` (``+ h`` when `residual`).

    Same arguments as :class:`LSTMCell` except `gate_fn`, plus ``residual``. As in
    flax.nnx, ``dtype`` defaults to float32 here.

    Example:
      >>> cell = nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0))
      >>> h, y = cell(jnp.zeros((4, 3)), jnp.ones((4, 2)))
      >>> y.shape
      (4, 3)
    """

    def __init__(
        self,
        in_features: int | None,
        hidden_features: int,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        carry_init: Callable | None = None,
        residual: bool = False,
        activation_fn: Callable = activations.tanh,
        kernel_init: Callable = default_kernel_init,
        recurrent_kernel_init: Callable = default_recurrent_kernel_init,
        bias_init: Callable = initializers.zeros,
        promote_dtype: Callable = _promote_dtype,
        keep_rngs: bool = False,
        rngs: Rngs,
        kernel_metadata: Mapping[str, Any] = {},
        recurrent_kernel_metadata: Mapping[str, Any] = {},
        bias_metadata: Mapping[str, Any] = {},
    ):
        super().__init__(
            in_features,
            hidden_features,
            activation_fn=activation_fn,
            kernel_init=kernel_init,
            recurrent_kernel_init=recurrent_kernel_init,
            bias_init=bias_init,
            dtype=dtype,
            param_dtype=param_dtype,
            carry_init=carry_init,
            promote_dtype=promote_dtype,
            keep_rngs=keep_rngs,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            recurrent_kernel_metadata=recurrent_kernel_metadata,
            bias_metadata=bias_metadata,
        )
        self.residual = residual
        hid = hidden_features
        self.dense_i = _linear(self, in_features, hid, self.kernel_init, True, rngs)
        self.dense_h = _linear(self, hid, hid, self.recurrent_kernel_init, False, rngs)

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        (h,) = self._cast_carry(carry)
        new_h = self.activation_fn(self.dense_i(inputs) + self.dense_h(h))
        if self.residual:
            new_h = new_h + h
        return new_h, new_h


# -- sequences ------------------------------------------------------------------------------


def _flip(xs: jax.Array, seq_lengths: jax.Array | None) -> jax.Array:
    """Reverses time-major `xs` (time, *batch, ...) along time; with `seq_lengths`, only the
    first ``seq_lengths[b]`` steps of each sequence are reversed (padding stays at the end)."""
    if seq_lengths is None:
        return jnp.flip(xs, axis=0)
    steps = xs.shape[0]
    lengths = jnp.asarray(seq_lengths)
    t = jnp.arange(steps).reshape((steps,) + (1,) * lengths.ndim)
    idx = jnp.where(t < lengths[None], lengths[None] - 1 - t, t)
    idx = jnp.reshape(idx, idx.shape + (1,) * (xs.ndim - idx.ndim))
    idx = jnp.broadcast_to(idx, idx.shape[: lengths.ndim + 1] + xs.shape[lengths.ndim + 1 :])
    return jnp.take_along_axis(xs, idx, axis=0)


def _cast_like(value: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, value)


class RNN(Module):
    """Runs a cell over the time axis of a sequence.

    Args:
      cell: the recurrent cell (e.g. :class:`LSTMCell`).
      time_major: inputs are ``(time, *batch, features)`` rather than
        ``(*batch, time, features)``.
      return_carry: return ``(final_carry, outputs)`` instead of ``outputs``.
      reverse: process the sequence from its end (respecting `seq_lengths` padding).
      keep_order: with `reverse`, give the outputs back in the original time order.
      unroll: ``jax.lax.scan`` unroll factor.
      broadcast_rngs: the RNG streams whose keys every time step shares (a stream name such
        as ``'dropout'``, a tuple of names, or a filter on the cell's RNG state): each step
        draws from the same stream state, so e.g. Dropout applies one mask to the whole
        sequence, and afterwards the stream has advanced as one step advanced it. Other RNG
        streams advance from step to step.
      state_axes, rngs: accepted for flax.nnx compatibility (unused: the cell's
        non-parameter state is carried through the scan and written back).

    ``__call__`` takes the same flags as keyword overrides, plus `initial_carry` (default
    ``cell.initialize_carry``) and `seq_lengths` (``(*batch,)`` ints): past its length a
    sequence's carry stops changing, so the final carry is the one at its last valid step.

    Example:
      >>> rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)), return_carry=True)
      >>> (c, h), ys = rnn(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
      >>> ys.shape, h.shape
      ((2, 5, 4), (2, 4))
    """

    def __init__(
        self,
        cell: RNNCellBase,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        state_axes: Any = None,
        broadcast_rngs: Any = None,
        rngs: Any = True,
    ):
        if not callable(cell) or not hasattr(cell, "initialize_carry"):
            raise ConfigError(
                f"RNN: cell must be a recurrent cell with initialize_carry (e.g. "
                f"nnx.LSTMCell), got {type(cell).__name__}."
            )
        check_positive("RNN", unroll=unroll)
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.broadcast_rngs = _rng_filter(broadcast_rngs)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Any | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: Any = None,
    ) -> Any:
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order
        n_feat = getattr(self.cell, "num_feature_axes", 1)
        check_rank(self, inputs, n_feat + 1, "inputs with a time axis and feature axes")
        time_axis = 0 if time_major else inputs.ndim - (n_feat + 1)
        xs = jnp.moveaxis(inputs, time_axis, 0)
        if initial_carry is None:
            initial_carry = self.cell.initialize_carry(xs.shape[1:])
            cell_dtype = getattr(self.cell, "dtype", None)
            if cell_dtype is not None:
                initial_carry = _cast_like(initial_carry, cell_dtype)
        if seq_lengths is not None:
            seq_lengths = jnp.asarray(seq_lengths)
        if reverse:
            xs = _flip(xs, seq_lengths)
        self._materialize(initial_carry, xs)
        shared = self.broadcast_rngs if self.broadcast_rngs is not None else Nothing
        graphdef, params, bcast, rest = split(self.cell, Param, shared, ...)

        # carry and y: whatever pytrees of arrays the cell takes and returns.
        def step(
            state: tuple[Any, State, State], x_t: tuple[jax.Array, jax.Array]
        ) -> tuple[tuple[Any, State, State], Any]:
            carry, rest_state, _ = state
            t, x = x_t
            # Every step starts from the same broadcast RNG state (`bcast`, not carried).
            cell = merge(graphdef, params, bcast, rest_state, copy=True)
            new_carry, y = cell(carry, x)
            if seq_lengths is not None:
                valid = t < seq_lengths

                def keep(new: jax.Array, old: jax.Array) -> jax.Array:
                    mask = jnp.reshape(valid, valid.shape + (1,) * (new.ndim - valid.ndim))
                    return jnp.where(mask, new, jnp.asarray(old, new.dtype))

                new_carry = jax.tree.map(keep, new_carry, carry)
            _, _, bcast_out, rest_out = split(cell, Param, shared, ...)
            return (new_carry, rest_out, bcast_out), y

        steps = jnp.arange(xs.shape[0])
        (carry, rest, bcast), ys = jax.lax.scan(
            step, (initial_carry, rest, bcast), (steps, xs), unroll=self.unroll
        )
        if rest.flat_state() or bcast.flat_state():
            update(self.cell, rest, bcast)
        if reverse and keep_order:
            ys = jax.tree.map(lambda y: _flip(y, seq_lengths), ys)
        ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
        return (carry, ys) if return_carry else ys

    def _materialize(self, carry: Any, xs: jax.Array) -> None:
        """Runs the cell once on the first step when it still has lazy (None) parameters."""
        if not _has_lazy(self.cell):
            return
        self.cell(carry, xs[0])


def _rng_filter(broadcast_rngs: Any) -> Any:
    """The filter on RNG state that ``RNN(broadcast_rngs=...)`` names (None for none)."""
    if broadcast_rngs is None or broadcast_rngs is False:
        return None
    if isinstance(broadcast_rngs, str):
        broadcast_rngs = (broadcast_rngs,)
    if isinstance(broadcast_rngs, tuple):  # stream names (or filters): any of them
        broadcast_rngs = Any_(*broadcast_rngs)
    return All(RngState, broadcast_rngs)  # a string matches a stream's tag or path part


def _has_lazy(module: Any) -> bool:
    for _, node in iter_graph(module):
        if isinstance(node, Module) and hasattr(node, "lazy_rngs"):
            return True
    return False


def _concatenate(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(Module):
    """Runs one RNN forwards and another backwards over the sequence and merges their outputs.

    Args:
      forward_rnn: the forward :class:`RNN`.
      backward_rnn: the backward :class:`RNN` (run with ``reverse=True, keep_order=True``).
      merge_fn: combines the two outputs (default: concatenation on the feature axis).
      time_major: inputs are time-major.
      return_carry: return ``((forward_carry, backward_carry), outputs)``.
      rngs: accepted for flax.nnx compatibility.

    Example:
      >>> bi = nnx.Bidirectional(nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))),
      ...                        nnx.RNN(nnx.GRUCell(3, 5, rngs=nnx.Rngs(1))))
      >>> bi(jnp.ones((2, 6, 3))).shape
      (2, 6, 9)
    """

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: Callable[[jax.Array, jax.Array], jax.Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
        rngs: Any = True,
    ):
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: tuple[Any, Any] | None = None,
        rngs: Any = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ) -> Any:
        """`reverse` and `keep_order` are accepted for compatibility and ignored: the
        directions are fixed (forward, then backward with ``keep_order=True``)."""
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        carry_f, carry_b = (None, None) if initial_carry is None else initial_carry
        carry_f, out_f = self.forward_rnn(
            inputs,
            initial_carry=carry_f,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=False,
        )
        carry_b, out_b = self.backward_rnn(
            inputs,
            initial_carry=carry_b,
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            reverse=True,
            keep_order=True,
        )
        outputs = jax.tree.map(self.merge_fn, out_f, out_b)
        return ((carry_f, carry_b), outputs) if return_carry else outputs
