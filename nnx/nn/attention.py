"""Attention: :class:`MultiHeadAttention`, :func:`dot_product_attention` and mask helpers.

Shapes follow one convention: queries, keys and values are ``(*batch, length, heads, depth)``;
attention weights and masks are ``(*batch, heads, q_length, kv_length)`` (a mask may use 1 for
the heads axis, or leave out leading axes). A mask entry that is zero/False hides that key.

Numerics: the logits are accumulated, masked and soft-maxed in float32 (or wider) whatever
the input dtype, then cast back, so bfloat16 models neither overflow nor lose the largest
logits' precision; the weighted sum of values is accumulated in float32 too.

Autoregressive decoding: build with ``decode=True`` (or pass ``decode=True`` to the call),
call ``init_cache((batch, max_length, features))`` once, then feed one position at a time;
keys and values are kept in ``nnx.Cache`` Variables (``cached_key``, ``cached_value``,
``cache_index``) and each step attends to the positions seen so far.

Example:
  >>> mha = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=nnx.Rngs(0))
  >>> x = jnp.ones((4, 5, 8))                        # (batch, length, features)
  >>> mha(x).shape                                   # self-attention
  (4, 5, 8)
  >>> mha(x, jnp.ones((4, 7, 8))).shape              # cross-attention over 7 positions
  (4, 5, 8)
  >>> mha(x, mask=nnx.make_causal_mask(jnp.ones((4, 5)))).shape
  (4, 5, 8)
  >>> lazy = nnx.MultiHeadAttention(2, None, rngs=nnx.Rngs(0))  # features from the first call
  >>> lazy(x).shape, lazy.query.kernel.shape
  ((4, 5, 8), (8, 2, 4))

Decoding one token at a time:
  >>> dec = nnx.MultiHeadAttention(2, 8, decode=True, rngs=nnx.Rngs(0))
  >>> dec.init_cache((4, 5, 8))                      # (batch, max_length, features)
  >>> steps = [dec(x[:, i : i + 1]) for i in range(5)]
  >>> full = dec(x, mask=nnx.make_causal_mask(x[..., 0]), decode=False)
  >>> bool(jnp.allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5))
  True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..module import Module
from ..rngs import Rngs, RngStream
from ..variablelib import Cache, Intermediate
from . import initializers
from ._layer import check_features, check_positive, check_rank, lazy_stream
from .dtypes import promote_dtype as _promote_dtype
from .linear import default_kernel_init
from .linear_general import LinearGeneral
from .normalization import LayerNorm

__all__ = [
    "MultiHeadAttention",
    "combine_masks",
    "dot_product_attention",
    "dot_product_attention_weights",
    "make_attention_mask",
    "make_causal_mask",
]

_SHAPES = (
    "{fn} expects query, key and value of shape (*batch, length, heads, depth) with the same "
    "batch axes; {problem}. Got query {q}, key {k}{v}.\nFix: {fix}"
)


def _accumulation_dtype(dtype: Any) -> Any:
    """float32, or the input dtype where it is wider (float64 with x64 enabled)."""
    return jnp.promote_types(dtype, jnp.float32)


def _left_pad(x: jax.Array, ndim: int, what: str) -> jax.Array:
    """`x` with leading size-1 axes up to `ndim` (explicit broadcasting of masks and biases)."""
    if x.ndim > ndim:
        raise ShapeError(
            f"dot_product_attention: the {what} has shape {x.shape}, more dimensions than the "
            f"attention weights (*batch, heads, q_length, kv_length) it applies to ({ndim}).\n"
            f"Fix: give the {what} the shape (*batch, heads or 1, q_length, kv_length)."
        )
    return jnp.reshape(x, (1,) * (ndim - x.ndim) + x.shape)


def _check_qkv(fn: str, query: Any, key: Any, value: Any = None) -> None:
    q, k = query.shape, key.shape
    v = "" if value is None else f", value {value.shape}"

    def fail(problem: str, fix: str) -> None:
        raise ShapeError(_SHAPES.format(fn=fn, problem=problem, q=q, k=k, v=v, fix=fix))

    arrays = [query, key] + ([value] if value is not None else [])
    if any(a.ndim < 3 for a in arrays):
        fail("some have fewer than 3 dimensions", "add the heads axis, e.g. x[..., None, :].")
    if len({a.ndim for a in arrays}) != 1 or len({a.shape[:-3] for a in arrays}) != 1:
        fail("their batch axes differ", "give all three the same batch axes.")
    if q[-1] != k[-1]:
        fail(f"query depth {q[-1]} != key depth {k[-1]}", "project both to the same depth.")
    if q[-2] % k[-2] != 0:
        fail(
            f"the query's {q[-2]} heads are not a multiple of the key's {k[-2]}",
            "use a number of key/value heads that divides the number of query heads.",
        )
    if value is not None:
        if value.shape[-3] != k[-3]:
            fail(
                f"key length {k[-3]} != value length {value.shape[-3]}",
                "give one value per key position.",
            )
        if q[-2] % value.shape[-2] != 0:
            fail(
                f"the query's {q[-2]} heads are not a multiple of the value's {value.shape[-2]}",
                "use a number of value heads that divides the number of query heads.",
            )


# The numerical kernels are jitted so that an eager call compiles one program instead of a
# dozen small ones; inside an outer jit they are simply inlined.


@functools.partial(jax.jit, static_argnames=("precision", "is_causal"))
def _softmax_weights(
    query: jax.Array,
    key: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    *,
    precision: Any,
    is_causal: bool,
) -> jax.Array:
    dtype = query.dtype
    acc = _accumulation_dtype(dtype)
    heads, kv_heads = query.shape[-2], key.shape[-2]
    if heads == kv_heads:
        logits = jnp.einsum(
            "...qhd,...khd->...hqk", query, key, precision=precision, preferred_element_type=acc
        )
    else:  # grouped-query attention: query heads h * group + g share key head h
        grouped = jnp.reshape(query, (*query.shape[:-2], kv_heads, heads // kv_heads, -1))
        logits = jnp.einsum(
            "...qhgd,...khd->...hgqk", grouped, key, precision=precision, preferred_element_type=acc
        )
        logits = jnp.reshape(logits, (*logits.shape[:-4], heads, *logits.shape[-2:]))
    logits = logits.astype(acc) * jnp.asarray(1.0 / float(query.shape[-1]) ** 0.5, acc)
    if bias is not None:
        logits = logits + _left_pad(jnp.asarray(bias), logits.ndim, "bias").astype(acc)
    keep = None if mask is None else _left_pad(jnp.asarray(mask), logits.ndim, "mask")
    if keep is not None:
        keep = keep.astype(jnp.bool_)
    if is_causal:
        causal = jnp.tril(jnp.ones(logits.shape[-2:], jnp.bool_))
        causal = jnp.reshape(causal, (1,) * (logits.ndim - 2) + causal.shape)
        keep = causal if keep is None else jnp.logical_and(keep, causal)
    if keep is not None:
        logits = jnp.where(keep, logits, jnp.finfo(acc).min)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


@functools.partial(jax.jit, static_argnames=("rate", "broadcast"))
def _dropout(weights: jax.Array, rng: jax.Array, rate: float, broadcast: bool) -> jax.Array:
    if rate >= 1.0:
        return jnp.zeros_like(weights)
    keep_prob = 1.0 - rate
    shape = weights.shape
    if broadcast:
        shape = (1,) * (weights.ndim - 2) + shape[-2:]
    kept = jax.random.bernoulli(rng, keep_prob, shape)
    return weights * (kept.astype(weights.dtype) / jnp.asarray(keep_prob, weights.dtype))


@functools.partial(jax.jit, static_argnames=("precision",))
def _weighted_values(weights: jax.Array, value: jax.Array, *, precision: Any) -> jax.Array:
    dtype = jnp.result_type(weights, value)
    acc = _accumulation_dtype(dtype)
    heads, v_heads = weights.shape[-3], value.shape[-2]
    if heads == v_heads:
        out = jnp.einsum(
            "...hqk,...khd->...qhd", weights, value, precision=precision, preferred_element_type=acc
        )
    else:
        grouped = jnp.reshape(weights, (*weights.shape[:-3], v_heads, -1, *weights.shape[-2:]))
        out = jnp.einsum(
            "...hgqk,...khd->...qhgd",
            grouped,
            value,
            precision=precision,
            preferred_element_type=acc,
        )
        out = jnp.reshape(out, (*out.shape[:-3], heads, out.shape[-1]))
    return out.astype(dtype)


def dot_product_attention_weights(
    query: jax.Array,
    key: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    promote_dtype: Callable = _promote_dtype,
    is_causal: bool = False,
) -> jax.Array:
    """``softmax(query·keyᵀ / sqrt(depth) + bias)`` with masking and dropout.

    Args:
      query: ``(*batch, q_length, heads, depth)``.
      key: ``(*batch, kv_length, kv_heads, depth)``; ``heads`` must be a multiple of
        ``kv_heads`` (grouped-query attention: each key head serves ``heads // kv_heads``
        consecutive query heads).
      bias: added to the logits; broadcastable to ``(*batch, heads, q_length, kv_length)``.
      mask: zero/False entries are hidden; broadcastable like `bias`.
      broadcast_dropout: use one dropout pattern for all batch and head axes.
      dropout_rng: key for dropout (needed when dropping).
      dropout_rate: probability of dropping a weight.
      deterministic: disable dropout.
      dtype: computation dtype (default: inferred from query and key).
      precision: ``jax.lax`` precision of the logits' matmul.
      module: if given, the weights are sown into it as ``nnx.Intermediate``
        ``attention_weights``.
      promote_dtype: how query and key are brought to one dtype.
      is_causal: also hide keys after each query position (``k > q``).

    Returns:
      The weights, ``(*batch, heads, q_length, kv_length)`` in the computation dtype. The
      softmax itself runs in float32 (or wider).
    """
    query, key = promote_dtype((query, key), dtype=dtype)
    _check_qkv("dot_product_attention_weights", query, key)
    weights = _softmax_weights(query, key, bias, mask, precision=precision, is_causal=is_causal)
    if module is not None:
        module.sow(Intermediate, "attention_weights", weights)
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ConfigError(
                "dot_product_attention: dropout_rate > 0 and deterministic=False need a "
                "dropout_rng.\nFix: pass dropout_rng=rngs.dropout(), or deterministic=True."
            )
        weights = _dropout(weights, dropout_rng, dropout_rate, broadcast_dropout)
    return weights


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Module | None = None,
    promote_dtype: Callable = _promote_dtype,
    is_causal: bool = False,
) -> jax.Array:
    """Scaled dot-product attention: the values averaged with
    :func:`dot_product_attention_weights`.

    Args:
      query: ``(*batch, q_length, heads, depth)``.
      key: ``(*batch, kv_length, kv_heads, depth)``.
      value: ``(*batch, kv_length, kv_heads, v_depth)``.
      bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic, dtype,
        precision, module, promote_dtype, is_causal: see :func:`dot_product_attention_weights`.

    Returns:
      ``(*batch, q_length, heads, v_depth)`` in the computation dtype.

    Example:
      >>> q = k = v = jnp.ones((2, 5, 4, 8))         # (batch, length, heads, depth)
      >>> nnx.dot_product_attention(q, k, v, is_causal=True).shape
      (2, 5, 4, 8)
    """
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    dtype = query.dtype
    _check_qkv("dot_product_attention", query, key, value)
    weights = dot_product_attention_weights(
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        dropout_rng,
        dropout_rate,
        deterministic,
        dtype,
        precision,
        module,
        promote_dtype,
        is_causal,
    )
    return _weighted_values(weights, value, precision=precision)


def make_attention_mask(
    query_input: jax.Array,
    key_input: jax.Array,
    pairwise_fn: Callable[..., Any] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """A ``(*extra, *batch, 1, q_length, kv_length)`` mask from per-position inputs.

    Entry ``[..., 0, i, j]`` is ``pairwise_fn(query_input[..., i], key_input[..., j])``; with the
    default ``multiply``, padding masks (1 = real token) combine into "both are real".

    Example:
      >>> q = jnp.array([[1, 1, 0]]); k = jnp.array([[1, 0]])
      >>> nnx.make_attention_mask(q, k)[0, 0].astype(int).tolist()
      [[1, 0], [1, 0], [0, 0]]
    """
    mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
    mask = jnp.expand_dims(mask, -3)
    return jnp.reshape(mask, (1,) * extra_batch_dims + mask.shape).astype(dtype)


def make_causal_mask(
    x: jax.Array, extra_batch_dims: int = 0, dtype: Any = jnp.float32
) -> jax.Array:
    """A ``(*extra, *batch, 1, length, length)`` mask letting position i see positions j <= i
    (`x` is ``(*batch, length)``; only its shape is used).

    Example:
      >>> nnx.make_causal_mask(jnp.ones((1, 3)))[0, 0].astype(int).tolist()
      [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    positions = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
    return make_attention_mask(positions, positions, jnp.greater_equal, extra_batch_dims, dtype)


def combine_masks(*masks: jax.Array | None, dtype: Any = jnp.float32) -> jax.Array | None:
    """The logical AND of the given masks (None entries skipped; None if nothing is left).

    Raises:
      ShapeError: the masks have different numbers of dimensions.
    """
    given = [m for m in masks if m is not None]
    if not given:
        return None
    if len({m.ndim for m in given}) != 1:
        raise ShapeError(
            "combine_masks: all masks must have the same number of dimensions, got shapes "
            f"{[tuple(m.shape) for m in given]}.\nFix: add size-1 axes, e.g. m[None], so that "
            "they broadcast explicitly."
        )
    out = jnp.asarray(given[0], jnp.bool_)
    for m in given[1:]:
        out = jnp.logical_and(out, m)
    return out.astype(dtype)


class MultiHeadAttention(Module):
    """Multi-head dot-product attention with learned query, key, value and output projections.

    Sub-modules: ``query``, ``key``, ``value`` (LinearGeneral to ``(heads, head_dim)``),
    ``out`` (LinearGeneral from ``(heads, head_dim)``), and ``query_ln``/``key_ln``
    (LayerNorm over ``head_dim``) with ``normalize_qk``.

    Args:
      num_heads: number of attention heads.
      in_features: size of the query inputs' last axis; None to infer it (and every size that
        defaults to it) on the first call.
      qkv_features: total size of the projected queries/keys/values (default: in_features);
        must be divisible by num_heads.
      out_features: size of the output's last axis (default: in_features).
      num_kv_heads: number of key/value heads (default: num_heads); fewer gives grouped-query
        attention and must divide num_heads.
      in_kv_features: size of the key/value inputs' last axis (default: in_features).
      dtype: computation dtype (default: inferred from inputs and parameters).
      param_dtype: parameter storage dtype.
      broadcast_dropout: one dropout pattern for all batch and head axes.
      dropout_rate: dropout probability of the attention weights, in [0, 1].
      deterministic: disable dropout (None: must be given at call time, or set by
        ``model.train()``/``model.eval()``, when dropout_rate > 0).
      precision: ``jax.lax`` matmul precision.
      kernel_init, bias_init: initializers of the query/key/value projections.
      out_kernel_init, out_bias_init: initializers of the output projection (default: the
        above).
      use_bias: projections have biases.
      attention_fn: ``attention_fn(query, key, value, mask=..., dropout_rng=..., ...)`` like
        :func:`dot_product_attention`.
      decode: autoregressive decoding with a KV cache (see :meth:`init_cache`); None means
        False.
      normalize_qk: apply a LayerNorm (no bias) to each head's queries and keys.
      qkv_promote_dtype, out_promote_dtype, ln_promote_dtype: dtype promotion of the
        projections and norms.
      qkv_dot_general, out_dot_general, qkv_dot_general_cls, out_dot_general_cls: contraction
        functions (or classes) of the projections.
      rngs: ``params`` initialises the projections; ``dropout`` is kept for dropout.
      keep_rngs: keep a fork of ``rngs.dropout`` for dropout (otherwise pass ``rngs`` to each
        call).
      kernel_metadata, out_kernel_metadata, bias_metadata, out_bias_metadata,
        query_ln_scale_metadata, key_ln_scale_metadata: extra Variable metadata.
    """

    # Sizes left None are inferred on a lazy layer's first call, with the sublayers.
    in_features: int | None
    in_kv_features: int | None
    qkv_features: int | None
    out_features: int | None
    head_dim: int | None
    query: LinearGeneral | None
    key: LinearGeneral | None
    value: LinearGeneral | None
    out: LinearGeneral | None
    query_ln: LayerNorm | None  # None as well without normalize_qk
    key_ln: LayerNorm | None
    lazy_rngs: RngStream

    def __init__(
        self,
        num_heads: int,
        in_features: int | None,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision: Any = None,
        kernel_init: Callable = default_kernel_init,
        out_kernel_init: Callable | None = None,
        bias_init: Callable = initializers.zeros,
        out_bias_init: Callable | None = None,
        use_bias: bool = True,
        attention_fn: Callable[..., jax.Array] = dot_product_attention,
        decode: bool | None = None,
        normalize_qk: bool = False,
        qkv_promote_dtype: Callable = _promote_dtype,
        out_promote_dtype: Callable = _promote_dtype,
        ln_promote_dtype: Callable = _promote_dtype,
        qkv_dot_general: Callable | None = None,
        out_dot_general: Callable | None = None,
        qkv_dot_general_cls: Any = None,
        out_dot_general_cls: Any = None,
        rngs: Rngs,
        keep_rngs: bool = True,
        kernel_metadata: Mapping[str, Any] = {},
        out_kernel_metadata: Mapping[str, Any] = {},
        bias_metadata: Mapping[str, Any] = {},
        out_bias_metadata: Mapping[str, Any] = {},
        query_ln_scale_metadata: Mapping[str, Any] = {},
        key_ln_scale_metadata: Mapping[str, Any] = {},
    ):
        layer = "MultiHeadAttention"
        if num_heads is None:
            raise ConfigError(f"{layer}: num_heads must be a positive int, got None.")
        check_positive(
            layer,
            num_heads=num_heads,
            in_features=in_features,
            qkv_features=qkv_features,
            out_features=out_features,
            num_kv_heads=num_kv_heads,
            in_kv_features=in_kv_features,
        )
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads != 0:
            raise ConfigError(
                f"{layer}: num_heads={num_heads} must be a multiple of num_kv_heads="
                f"{num_kv_heads} (each key/value head serves a group of query heads).\n"
                f"Fix: choose num_kv_heads among the divisors of {num_heads}."
            )
        resolved = qkv_features if qkv_features is not None else in_features
        if resolved is not None and resolved % num_heads != 0:
            default = "" if qkv_features is not None else " (it defaults to in_features)"
            raise ConfigError(
                f"{layer}: qkv_features={resolved}{default} must be divisible by num_heads="
                f"{num_heads} (each head gets qkv_features // num_heads features).\n"
                f"Fix: e.g. qkv_features={num_heads * max(1, resolved // num_heads)}."
            )
        if isinstance(dropout_rate, bool) or not 0.0 <= dropout_rate <= 1.0:
            raise ConfigError(f"{layer}: dropout_rate must be in [0, 1], got {dropout_rate!r}.")
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = qkv_features if qkv_features is not None else in_features
        self.out_features = out_features if out_features is not None else in_features
        self.in_kv_features = in_kv_features if in_kv_features is not None else in_features
        self.num_kv_heads = num_kv_heads
        self.head_dim = None if self.qkv_features is None else self.qkv_features // num_heads
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.attention_fn = attention_fn
        self.decode = decode
        self.normalize_qk = normalize_qk
        self.qkv_promote_dtype = qkv_promote_dtype
        self.out_promote_dtype = out_promote_dtype
        self.ln_promote_dtype = ln_promote_dtype
        self.qkv_dot_general = qkv_dot_general
        self.out_dot_general = out_dot_general
        self.qkv_dot_general_cls = qkv_dot_general_cls
        self.out_dot_general_cls = out_dot_general_cls
        self._inits = (kernel_init, bias_init, out_kernel_init, out_bias_init)
        self._meta = tuple(
            tuple(m.items())
            for m in (
                kernel_metadata,
                out_kernel_metadata,
                bias_metadata,
                out_bias_metadata,
                query_ln_scale_metadata,
                key_ln_scale_metadata,
            )
        )
        self.rngs = rngs.dropout.fork() if keep_rngs and dropout_rate > 0 else None
        self.cached_key: Cache | None = None
        self.cached_value: Cache | None = None
        self.cache_index: Cache | None = None
        if in_features is None:
            self.query = self.key = self.value = self.out = None
            self.query_ln = self.key_ln = None
            self.lazy_rngs = lazy_stream(rngs, layer)
        else:
            kv = in_kv_features if in_kv_features is not None else in_features
            self._build(in_features, kv, rngs)

    def _build(self, in_features: int, in_kv_features: int, rngs: Rngs) -> None:
        """Creates the projections (at construction, or on the first call when lazy)."""
        qkv_features = self.qkv_features if self.qkv_features is not None else in_features
        if qkv_features % self.num_heads != 0:
            raise ShapeError(
                f"{describe(self)}: qkv_features defaults to the inferred in_features="
                f"{in_features}, which is not divisible by num_heads={self.num_heads}.\n"
                "Fix: give qkv_features explicitly (a multiple of num_heads)."
            )
        self.in_features = in_features
        self.in_kv_features = in_kv_features
        self.qkv_features = qkv_features
        self.out_features = self.out_features if self.out_features is not None else in_features
        self.head_dim = qkv_features // self.num_heads
        kernel_init, bias_init, out_kernel_init, out_bias_init = self._inits
        kernel_meta, out_kernel_meta, bias_meta, out_bias_meta, q_ln_meta, k_ln_meta = (
            dict(m) for m in self._meta
        )
        projection = functools.partial(
            LinearGeneral,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            use_bias=self.use_bias,
            precision=self.precision,
            promote_dtype=self.qkv_promote_dtype,
            dot_general=self.qkv_dot_general,
            dot_general_cls=self.qkv_dot_general_cls,
            kernel_metadata=kernel_meta,
            bias_metadata=bias_meta,
            rngs=rngs,
        )
        self.query = projection(in_features, (self.num_heads, self.head_dim))
        self.key = projection(in_kv_features, (self.num_kv_heads, self.head_dim))
        self.value = projection(in_kv_features, (self.num_kv_heads, self.head_dim))
        if self.normalize_qk:
            norm = functools.partial(
                LayerNorm,
                self.head_dim,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                promote_dtype=self.ln_promote_dtype,
                rngs=rngs,
            )
            self.query_ln = norm(scale_metadata=q_ln_meta)
            self.key_ln = norm(scale_metadata=k_ln_meta)
        else:
            self.query_ln = self.key_ln = None
        self.out = LinearGeneral(
            (self.num_heads, self.head_dim),
            self.out_features,
            axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            promote_dtype=self.out_promote_dtype,
            dot_general=self.out_dot_general,
            dot_general_cls=self.out_dot_general_cls,
            kernel_metadata=out_kernel_meta or kernel_meta,
            bias_metadata=out_bias_meta or bias_meta,
            rngs=rngs,
        )

    def _materialize(self, in_features: int, in_kv_features: int | None) -> None:
        if self.query is None:
            kv = self.in_kv_features or in_kv_features or in_features
            self._build(in_features, kv, Rngs(params=self.lazy_rngs))
            del self.lazy_rngs

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        is_causal: bool = False,
        out_sharding: Any = None,
        qkv_sharding: Any = None,
    ) -> jax.Array:
        """Attends from `inputs_q` to `inputs_k`/`inputs_v` (self-attention when omitted).

        Args:
          inputs_q: ``(*batch, q_length, in_features)``.
          inputs_k: ``(*batch, kv_length, in_kv_features)`` (default: `inputs_q`).
          inputs_v: like `inputs_k` (default: `inputs_k`).
          mask: ``(*batch, heads or 1, q_length, kv_length)``; zero/False hides a key.
          deterministic: disable dropout (overrides the attribute).
          rngs: Rngs or stream for dropout (default: the ones kept at construction).
          sow_weights: store the attention weights as ``nnx.Intermediate``
            ``attention_weights``.
          decode: use and update the KV cache (overrides the attribute); inputs then hold
            one position, ``(*batch, 1, in_features)``.
          is_causal: hide keys after each query position (ignored when decoding, where the
            cache already only holds earlier positions).
          out_sharding, qkv_sharding: output shardings of the output and q/k/v projections.

        Returns:
          ``(*batch, q_length, out_features)``.
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ConfigError(
                    f"{describe(self)}: inputs_v was given without inputs_k.\nFix: pass "
                    "inputs_k too, or pass only inputs_k to use it as both keys and values."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        what = "inputs of shape (*batch, length, features)"
        for x in (inputs_q, inputs_k, inputs_v):
            check_rank(self, x, 2, what)
        self._materialize(inputs_q.shape[-1], inputs_k.shape[-1])
        # _materialize has built a lazy layer by now.
        assert self.in_features is not None and self.in_kv_features is not None
        assert self.query is not None and self.key is not None and self.value is not None
        assert self.out is not None
        check_features(self, inputs_q, self.in_features)
        check_features(self, inputs_k, self.in_kv_features, name="in_kv_features")
        check_features(self, inputs_v, self.in_kv_features, name="in_kv_features")

        query = self.query(inputs_q, out_sharding=qkv_sharding)
        key = self.key(inputs_k, out_sharding=qkv_sharding)
        value = self.value(inputs_v, out_sharding=qkv_sharding)
        if self.normalize_qk:
            assert self.query_ln is not None and self.key_ln is not None  # built with them
            query = self.query_ln(query)
            key = self.key_ln(key)

        decode = decode if decode is not None else bool(self.decode)
        if decode:
            key, value, mask = self._decode_step(key, value, mask)
            is_causal = False

        dropout_rng = None
        if self.dropout_rate > 0.0:
            deterministic = deterministic if deterministic is not None else self.deterministic
            if deterministic is None:
                raise ConfigError(
                    f"{describe(self)} has dropout_rate={self.dropout_rate} but was not told "
                    "whether to apply it.\nFix: call model.train() or model.eval(), build it "
                    "with deterministic=..., or pass deterministic=... to the call."
                )
            if not deterministic:
                stream = self.rngs if rngs is None else rngs
                if isinstance(stream, Rngs):
                    stream = stream.dropout
                if stream is None:
                    raise ConfigError(
                        f"{describe(self)} was built with keep_rngs=False, so dropout needs "
                        "random keys at call time.\nFix: pass rngs=nnx.Rngs(dropout=...) to "
                        "the call, or build it with keep_rngs=True."
                    )
                dropout_rng = stream()
        else:
            deterministic = True

        extra = {"is_causal": True} if is_causal else {}
        x = self.attention_fn(
            query,
            key,
            value,
            mask=mask,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout,
            deterministic=deterministic,
            dtype=self.dtype,
            precision=self.precision,
            module=self if sow_weights else None,
            **extra,
        )
        return self.out(x, out_sharding=out_sharding)

    def _decode_step(
        self, key: jax.Array, value: jax.Array, mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """Writes this step's key/value into the cache; returns the whole cache and a mask
        hiding the positions not written yet."""
        if self.cached_key is None or self.cached_value is None or self.cache_index is None:
            raise ConfigError(
                f"{describe(self)} is decoding (decode=True) but its cache was never "
                "initialised.\nFix: call .init_cache((batch, max_length, in_features)) first."
            )
        cached_key = self.cached_key.value
        *batch, max_length, kv_heads, head_dim = cached_key.shape
        expected = (*batch, 1, kv_heads, head_dim)
        if tuple(key.shape) != expected:
            raise ShapeError(
                f"{describe(self)} decodes one position at a time with the cache's batch shape "
                f"{tuple(batch)}: it expects inputs of shape {(*batch, 1, self.in_kv_features)} "
                f"but the keys projected from them have shape {tuple(key.shape)} instead of "
                f"{expected}.\nFix: feed x[:, i:i+1] at step i, or call init_cache with this "
                "batch shape."
            )
        index = self.cache_index.value
        if not isinstance(index, jax.core.Tracer) and int(index) >= max_length:
            raise ShapeError(
                f"{describe(self)}: the decoding cache is full ({max_length} positions, "
                "max_length of init_cache).\nFix: call init_cache with a larger max_length, "
                "or re-initialise it to start a new sequence."
            )
        zero = jnp.zeros((), index.dtype)
        start = (zero,) * len(batch) + (index, zero, zero)
        key = jax.lax.dynamic_update_slice(cached_key, key.astype(cached_key.dtype), start)
        value = jax.lax.dynamic_update_slice(
            self.cached_value.value, value.astype(self.cached_value.value.dtype), start
        )
        self.cached_key.value = key
        self.cached_value.value = value
        self.cache_index.value = index + 1
        seen = jnp.broadcast_to(jnp.arange(max_length) <= index, (*batch, 1, 1, max_length))
        return key, value, combine_masks(mask, seen)

    def init_cache(self, input_shape: Sequence[int], dtype: Any = jnp.float32) -> None:
        """Creates an empty KV cache for decoding sequences of ``input_shape``
        ``(*batch, max_length, in_features)``; resets it when called again.

        A lazy layer (``in_features=None``) takes its sizes from `input_shape` here.
        """
        input_shape = tuple(input_shape)
        if len(input_shape) < 2:
            raise ShapeError(
                f"{describe(self)}.init_cache expects input_shape (*batch, max_length, "
                f"in_features), got {input_shape}."
            )
        self._materialize(input_shape[-1], None)
        shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
        self.cached_key = Cache(jnp.zeros(shape, dtype))
        self.cached_value = Cache(jnp.zeros(shape, dtype))
        self.cache_index = Cache(jnp.array(0, dtype=jnp.int32))

    def set_view(
        self,
        deterministic: bool | None = None,
        decode: bool | None = None,
        batch_size: int | Sequence[int] | None = None,
        max_length: int | None = None,
    ) -> None:
        """Sets ``deterministic`` and/or ``decode``; switching decoding on without a cache
        creates one for ``(*batch_size, max_length)``."""
        if deterministic is not None:
            self.deterministic = deterministic
        if decode is not None:
            self.decode = decode
            if decode and self.cached_key is None:
                if batch_size is None or max_length is None:
                    raise ConfigError(
                        f"{describe(self)}: turning decoding on needs batch_size and max_length "
                        "to create the cache.\nFix: set_view(decode=True, batch_size=..., "
                        "max_length=...)."
                    )
                batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
                if self.in_features is None:
                    raise ConfigError(
                        f"{describe(self)} does not know its in_features yet.\nFix: call it "
                        "once, or use init_cache((*batch, max_length, in_features))."
                    )
                self.init_cache((*batch, max_length, self.in_features), self.dtype or jnp.float32)
