"""Registry cases for attention, embeddings and the general dense layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnx
from tests.nn.registry import Case


def _rng(key):
    """numpy data seeded from the key: unlike jax.random, no XLA compilation per shape."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def _x(*shape):
    return lambda key: (jnp.asarray(_rng(key).standard_normal(shape), jnp.float32),)


def _ids(*shape, vocab=11):
    return lambda key: (jnp.asarray(_rng(key).integers(0, vocab, shape), jnp.int32),)


def _q_kv(key):
    rng = _rng(key)
    q, kv = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 7, 6))
    return jnp.asarray(q, jnp.float32), jnp.asarray(kv, jnp.float32)


def _decode_all(m, x):
    """Fills a fresh cache one position at a time; returns the stacked outputs."""
    m.init_cache(x.shape, x.dtype)
    return jnp.concatenate([m(x[:, i : i + 1]) for i in range(x.shape[1])], axis=1)


def _mha(in_features=8, **kwargs):
    """``build(rngs, dtype)`` for a 2-head MultiHeadAttention with `kwargs`."""
    return lambda rngs, dtype: nnx.MultiHeadAttention(
        in_features=in_features, dtype=dtype, rngs=rngs, **{"num_heads": 2, **kwargs}
    )


# Self-attention exercising grouped queries, causal masking and query/key normalisation at
# once (their numerics are tested one by one in test_attention.py).
_SELF = dict(num_heads=4, num_kv_heads=2, normalize_qk=True, decode=False)
_CROSS = dict(qkv_features=12, out_features=4)

CASES = [
    Case(
        name="LinearGeneral-multi-axis",
        cls=nnx.LinearGeneral,
        build=lambda rngs, dtype: nnx.LinearGeneral(
            (3, 4), (2, 5), axis=(-2, -1), dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: nnx.LinearGeneral(
            None, (2, 5), axis=(-2, -1), dtype=dtype, rngs=rngs
        ),
        inputs=_x(6, 3, 4),
    ),
    Case(
        name="LinearGeneral-batch-axis",
        cls=nnx.LinearGeneral,
        build=lambda rngs, dtype: nnx.LinearGeneral(
            4, 3, batch_axis={0: 2}, dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: nnx.LinearGeneral(
            None, 3, batch_axis={0: 2}, dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 5, 4),
        batchable=False,  # a leading vmap axis would displace the batch axis 0
    ),
    Case(
        name="Einsum",
        cls=nnx.Einsum,
        build=lambda rngs, dtype: nnx.Einsum(
            "...d,dnh->...nh", (6, 2, 3), (2, 3), dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 5, 6),
    ),
    Case(
        name="Embed",
        cls=nnx.Embed,
        build=lambda rngs, dtype: nnx.Embed(11, 4, dtype=dtype, rngs=rngs),
        inputs=_ids(3, 5),
    ),
    Case(
        name="Embed-attend",
        cls=nnx.Embed,
        build=lambda rngs, dtype: nnx.Embed(11, 4, dtype=dtype, rngs=rngs),
        inputs=_x(3, 4),
        call=lambda m, q: m.attend(q),
    ),
    Case(
        name="MultiHeadAttention-self",
        cls=nnx.MultiHeadAttention,
        build=_mha(**_SELF),
        lazy_build=_mha(None, **_SELF),
        inputs=_x(2, 5, 8),
        call=lambda m, x: m(x, is_causal=True),
    ),
    Case(
        name="MultiHeadAttention-cross",
        cls=nnx.MultiHeadAttention,
        build=_mha(in_kv_features=6, **_CROSS),
        lazy_build=_mha(None, **_CROSS),  # in_kv_features inferred from the keys
        inputs=_q_kv,
    ),
    Case(
        name="MultiHeadAttention-decode",
        cls=nnx.MultiHeadAttention,
        build=_mha(decode=True),
        inputs=_x(2, 3, 8),
        call=_decode_all,
        batchable=False,  # the registry broadcasts the model: a per-example cache is refused
    ),
]
