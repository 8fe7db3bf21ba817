"""Attention: parity with hand-written jnp attention and flax.nnx, decoding, masks, dropout,
bfloat16 numerics and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError


def _normal(seed, shape, dtype=jnp.float32):
    """Test data from numpy: no XLA compilation per shape, unlike jax.random."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _bernoulli(seed, p, shape):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol
    )


def _lead(b, ndim):
    """`b` with leading size-1 axes up to `ndim` (the tests broadcast explicitly too)."""
    return jnp.reshape(b, (1,) * (ndim - b.ndim) + b.shape)


def _randomize(model, seed=11):
    for i, (_, var) in enumerate(nnx.state(model, nnx.Param).flat_state()):
        var.value = 0.5 * _normal(seed + i, var.value.shape)
    return model


# ------------------------------------------------------------------ reference implementations


@jax.jit
def _ref_attention(q, k, v, mask=None, bias=None):
    """Plain softmax attention; kv heads repeated for grouped queries."""
    group = q.shape[-2] // k.shape[-2]
    k, v = jnp.repeat(k, group, axis=-2), jnp.repeat(v, group, axis=-2)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + _lead(bias, logits.ndim)
    if mask is not None:
        logits = jnp.where(_lead(mask, logits.ndim) > 0, logits, -1e30)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("...hqk,...khd->...qhd", weights, v)


@jax.jit
def _ref_mha_arrays(params, xq, xkv, mask):
    def project(name, x):
        y = jnp.einsum("...tf,fhd->...thd", x, params[name, "kernel"])
        return y + _lead(params[name, "bias"], y.ndim)

    q, k, v = project("query", xq), project("key", xkv), project("value", xkv)
    o = _ref_attention(q, k, v, mask)
    y = jnp.einsum("...qhd,hdf->...qf", o, params["out", "kernel"])
    return y + _lead(params["out", "bias"], y.ndim)


def _ref_mha(m, xq, xkv=None, mask=None):
    params = {path: var.value for path, var in nnx.state(m, nnx.Param).flat_state()}
    return _ref_mha_arrays(params, xq, xq if xkv is None else xkv, mask)


# ------------------------------------------------------------------ dot_product_attention


def test_dot_product_attention_matches_reference_with_mask_and_bias():
    q, k, v = _normal(1, (2, 3, 5, 4, 8)), _normal(2, (2, 3, 6, 4, 8)), _normal(3, (2, 3, 6, 4, 7))
    mask = _bernoulli(4, 0.6, (2, 3, 1, 5, 6)).at[..., 0].set(True)
    bias = _normal(5, (4, 5, 6))
    out = nnx.dot_product_attention(q, k, v, bias=bias, mask=mask)
    assert out.shape == (2, 3, 5, 4, 7)
    _close(out, _ref_attention(q, k, v, mask, bias))


def test_grouped_query_attention_matches_repeated_heads():
    q, k, v = _normal(1, (2, 5, 6, 8)), _normal(2, (2, 7, 2, 8)), _normal(3, (2, 7, 2, 8))
    _close(nnx.dot_product_attention(q, k, v), _ref_attention(q, k, v))


def test_is_causal_equals_the_causal_mask():
    q, k, v = _normal(1, (2, 5, 2, 4)), _normal(2, (2, 5, 2, 4)), _normal(3, (2, 5, 2, 4))
    causal = nnx.make_causal_mask(jnp.ones((2, 5)))
    _close(
        nnx.dot_product_attention(q, k, v, is_causal=True),
        nnx.dot_product_attention(q, k, v, mask=causal),
        0,
    )
    padding = jnp.ones((2, 1, 5, 5)).at[..., 4].set(0)
    both = nnx.dot_product_attention(q, k, v, mask=padding, is_causal=True)
    _close(both, nnx.dot_product_attention(q, k, v, mask=causal * padding), 0)


def test_weights_are_a_distribution_and_fully_masked_rows_stay_finite():
    q, k = _normal(1, (2, 4, 3, 8)), _normal(2, (2, 6, 3, 8))
    mask = jnp.ones((2, 1, 4, 6)).at[:, :, 2].set(0)  # query 2 sees nothing
    w = nnx.dot_product_attention_weights(q, k, mask=mask)
    assert w.shape == (2, 3, 4, 6)
    _close(w.sum(-1), jnp.ones((2, 3, 4)))
    _close(w[:, :, 2], jnp.full((2, 3, 6), 1 / 6))  # uniform, not NaN


def test_bfloat16_softmax_runs_in_float32():
    # Logits 1000/sqrt(2) and 1001/sqrt(2) are the same number in bfloat16 (spacing 4 near
    # 700), so a bfloat16 softmax would give [0.5, 0.5]; accumulated in float32 they differ by
    # 1/sqrt(2) and the weights are softmax([0, 0.707]) = [0.330, 0.670].
    q = jnp.array([[[[1.0, 1.0]]]], jnp.bfloat16)  # (batch, q_len, heads, depth)
    k = jnp.array([[[[1000.0, 0.0]], [[1000.0, 1.0]]]], jnp.bfloat16)
    w = nnx.dot_product_attention_weights(q, k)
    assert w.dtype == jnp.bfloat16
    expected = jax.nn.softmax(jnp.array([0.0, 1.0 / np.sqrt(2.0)]))
    _close(w[0, 0, 0], expected, 1e-2)
    naive = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q[0], k[0]) / jnp.sqrt(2.0).astype(q.dtype))
    assert abs(float(naive[0, 0, 0]) - 0.5) < 1e-2  # what the bfloat16 softmax would give


def test_bfloat16_large_logits_match_a_float32_reference():
    q = (30 * _normal(1, (2, 8, 2, 16))).astype(jnp.bfloat16)
    k = (30 * _normal(2, (2, 8, 2, 16))).astype(jnp.bfloat16)
    v = _normal(3, (2, 8, 2, 16)).astype(jnp.bfloat16)
    mask = nnx.make_causal_mask(jnp.ones((2, 8)))
    out = nnx.dot_product_attention(q, k, v, mask=mask)
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
    f32 = lambda a: a.astype(jnp.float32)
    _close(out, _ref_attention(f32(q), f32(k), f32(v), mask), 2e-2)
    weights = nnx.dot_product_attention_weights(q, k, mask=mask, bias=jnp.full((8, 8), 1e4))
    assert bool(jnp.all(jnp.isfinite(weights)))


def test_dot_product_attention_dropout():
    q, k, v = _normal(1, (2, 4, 3, 8)), _normal(2, (2, 4, 3, 8)), _normal(3, (2, 4, 3, 8))
    rng = jax.random.key(0)
    plain = nnx.dot_product_attention_weights(q, k)
    kept = nnx.dot_product_attention_weights(q, k, dropout_rng=rng, dropout_rate=0.5)
    ratio = np.asarray(kept / plain)
    assert set(np.unique(np.round(ratio, 4))) <= {0.0, 2.0}
    # broadcast_dropout: one pattern for every batch entry and head
    assert (ratio == ratio[:1, :1]).all()
    separate = nnx.dot_product_attention_weights(
        q, k, dropout_rng=rng, dropout_rate=0.5, broadcast_dropout=False
    )
    assert not (np.asarray(separate / plain) == np.asarray(separate / plain)[:1, :1]).all()
    off = nnx.dot_product_attention_weights(q, k, dropout_rate=0.5, deterministic=True)
    _close(off, plain, 0)
    dropped = nnx.dot_product_attention(q, k, v, dropout_rng=rng, dropout_rate=1.0)
    _close(dropped, jnp.zeros_like(dropped), 0)
    with pytest.raises(ConfigError, match="need a dropout_rng"):
        nnx.dot_product_attention(q, k, v, dropout_rate=0.1)


def test_dot_product_attention_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    q, k, v = _normal(1, (2, 5, 4, 8)), _normal(2, (2, 6, 4, 8)), _normal(3, (2, 6, 4, 8))
    mask = _bernoulli(4, 0.6, (2, 1, 5, 6)).at[..., 0].set(True)
    bias = _normal(5, (2, 4, 5, 6))
    _close(
        nnx.dot_product_attention(q, k, v, bias=bias, mask=mask),
        flax_nnx.dot_product_attention(q, k, v, bias=bias, mask=mask),
    )


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((5, 8), (5, 8), (5, 8)), "fewer than 3 dimensions"),
        (((2, 5, 4, 8), (3, 5, 4, 8), (3, 5, 4, 8)), "batch axes differ"),
        (((2, 5, 4, 8), (2, 5, 4, 6), (2, 5, 4, 8)), "query depth 8 != key depth 6"),
        (((2, 5, 4, 8), (2, 5, 3, 8), (2, 5, 3, 8)), "4 heads are not a multiple of the key's 3"),
        (((2, 5, 4, 8), (2, 5, 4, 8), (2, 6, 4, 8)), "key length 5 != value length 6"),
    ],
)
def test_dot_product_attention_shape_errors(shapes, match):
    q, k, v = (jnp.ones(s) for s in shapes)
    with pytest.raises(ShapeError, match=match):
        nnx.dot_product_attention(q, k, v)


def test_mask_with_too_many_dimensions_is_rejected():
    q = jnp.ones((2, 5, 4, 8))
    with pytest.raises(ShapeError, match="the mask has shape"):
        nnx.dot_product_attention(q, q, q, mask=jnp.ones((1, 2, 1, 5, 5)))


# ------------------------------------------------------------------ masks


def test_make_attention_mask():
    q_valid = jnp.array([[1, 1, 0]])
    kv_valid = jnp.array([[1, 0, 1, 1]])
    mask = nnx.make_attention_mask(q_valid, kv_valid)
    assert mask.shape == (1, 1, 3, 4) and mask.dtype == jnp.float32
    _close(mask[0, 0], np.outer([1, 1, 0], [1, 0, 1, 1]), 0)
    extra = nnx.make_attention_mask(q_valid, kv_valid, extra_batch_dims=2, dtype=jnp.bool_)
    assert extra.shape == (1, 1, 1, 1, 3, 4) and extra.dtype == jnp.bool_
    greater = nnx.make_attention_mask(jnp.arange(3), jnp.arange(3), jnp.greater)
    _close(greater[0], np.tril(np.ones((3, 3)), -1), 0)


def test_make_causal_mask_and_combine_masks():
    causal = nnx.make_causal_mask(jnp.ones((2, 4)))
    assert causal.shape == (2, 1, 4, 4)
    _close(causal[1, 0], np.tril(np.ones((4, 4))), 0)
    padding = nnx.make_attention_mask(jnp.ones((2, 4)), jnp.array([[1, 1, 1, 0]] * 2))
    combined = nnx.combine_masks(causal, None, padding, dtype=jnp.bool_)
    assert combined.dtype == jnp.bool_
    _close(combined, causal * padding, 0)
    assert nnx.combine_masks(None, None) is None
    with pytest.raises(ShapeError, match="same number of dimensions"):
        nnx.combine_masks(causal, causal[0])


def test_masks_match_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    x = _bernoulli(0, 0.7, (2, 5)).astype(jnp.int32)
    y = _bernoulli(1, 0.7, (2, 3)).astype(jnp.int32)
    _close(nnx.make_attention_mask(x, y), flax_nnx.make_attention_mask(x, y), 0)
    _close(nnx.make_causal_mask(x, 1), flax_nnx.make_causal_mask(x, 1), 0)
    a, b = nnx.make_causal_mask(x), nnx.make_attention_mask(x, x)
    _close(nnx.combine_masks(a, b), flax_nnx.combine_masks(a, b), 0)


# ------------------------------------------------------------------ MultiHeadAttention


def test_self_attention_matches_reference():
    m = _randomize(nnx.MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(0)))
    x = _normal(1, (2, 5, 8))
    assert m.query.kernel.shape == (8, 2, 4) and m.out.kernel.shape == (2, 4, 8)
    _close(m(x), _ref_mha(m, x))
    mask = nnx.make_causal_mask(jnp.ones((2, 5)))
    _close(m(x, mask=mask), _ref_mha(m, x, mask=mask))
    _close(m(x, is_causal=True), _ref_mha(m, x, mask=mask))


def test_cross_attention_matches_reference():
    m = _randomize(
        nnx.MultiHeadAttention(
            3, 8, qkv_features=12, out_features=5, in_kv_features=6, rngs=nnx.Rngs(0)
        )
    )
    xq, xkv = _normal(1, (2, 4, 8)), _normal(2, (2, 7, 6))
    assert m.key.kernel.shape == (6, 3, 4) and m.out.kernel.shape == (3, 4, 5)
    _close(m(xq, xkv), _ref_mha(m, xq, xkv))
    _close(m(xq, inputs_k=xkv, inputs_v=xkv), _ref_mha(m, xq, xkv))


def test_separate_values_and_unbatched_inputs():
    m = _randomize(nnx.MultiHeadAttention(2, 4, rngs=nnx.Rngs(0)))
    xq, xk, xv = _normal(1, (3, 4)), _normal(2, (5, 4)), _normal(3, (5, 4))
    out = m(xq, xk, xv)
    assert out.shape == (3, 4)
    q = jnp.einsum("tf,fhd->thd", xq, m.query.kernel.value) + m.query.bias.value[None]
    k = jnp.einsum("tf,fhd->thd", xk, m.key.kernel.value) + m.key.bias.value[None]
    v = jnp.einsum("tf,fhd->thd", xv, m.value.kernel.value) + m.value.bias.value[None]
    o = jnp.einsum("qhd,hdf->qf", _ref_attention(q, k, v), m.out.kernel.value)
    _close(out, o + m.out.bias.value[None])


def test_grouped_query_attention_module():
    m = _randomize(nnx.MultiHeadAttention(4, 8, num_kv_heads=2, rngs=nnx.Rngs(0)))
    assert m.query.kernel.shape == (8, 4, 2) and m.key.kernel.shape == (8, 2, 2)
    x = _normal(1, (2, 5, 8))
    _close(m(x), _ref_mha(m, x))


def _copy_params(ours, theirs):
    for path, var in nnx.state(ours, nnx.Param).flat_state():
        target = theirs
        for part in path:
            target = getattr(target, part)
        target[...] = jnp.asarray(var.value)


def _flax_mha_parity(flax_nnx, kwargs, inputs, call_kwargs=None, normalize_qk=False):
    call_kwargs = call_kwargs or {}
    ours = _randomize(nnx.MultiHeadAttention(**kwargs, normalize_qk=normalize_qk, rngs=nnx.Rngs(0)))
    theirs = flax_nnx.MultiHeadAttention(
        **kwargs, normalize_qk=normalize_qk, decode=False, rngs=flax_nnx.Rngs(1)
    )
    _copy_params(ours, theirs)
    out, ref = ours(*inputs, **call_kwargs), theirs(*inputs, **call_kwargs)
    _close(out, ref)

    def loss(m, *xs):
        return jnp.sum(jnp.sin(m(*xs, **call_kwargs)))

    argnums = tuple(range(len(inputs) + 1))
    ours_g = nnx.grad(loss, argnums=argnums)(ours, *inputs)
    theirs_g = flax_nnx.grad(loss, argnums=argnums)(theirs, *inputs)
    ours_flat = {p: v.value for p, v in ours_g[0].flat_state()}
    theirs_flat = {p: v[...] for p, v in flax_nnx.to_flat_state(theirs_g[0])}
    assert set(ours_flat) == set(theirs_flat)
    for path, g in ours_flat.items():
        _close(g, theirs_flat[path], 1e-4)
    for a, b in zip(ours_g[1:], theirs_g[1:], strict=True):
        _close(a, b, 1e-4)
    return float(jnp.max(jnp.abs(out - ref)))


@pytest.mark.parametrize(
    "kwargs, shapes, masked, normalize_qk",
    [
        (dict(num_heads=4, in_features=8, num_kv_heads=2), [(2, 5, 8)], True, False),
        pytest.param(
            dict(num_heads=3, in_features=8, qkv_features=12, out_features=5, in_kv_features=6),
            [(2, 4, 8), (2, 7, 6)],
            False,
            True,
            marks=pytest.mark.slow,  # 14 s: now that CI installs flax, the default run pays it
        ),
        pytest.param(
            dict(num_heads=2, in_features=8), [(3, 2, 5, 8)], True, False, marks=pytest.mark.slow
        ),
    ],
    ids=["self-gqa-masked", "cross-normalize-qk", "self-two-batch-axes"],
)
def test_matches_flax_outputs_and_gradients(kwargs, shapes, masked, normalize_qk):
    flax_nnx = pytest.importorskip("flax.nnx")
    inputs = [_normal(i + 1, s) for i, s in enumerate(shapes)]
    call_kwargs = {}
    if masked:
        call_kwargs["mask"] = nnx.make_causal_mask(jnp.ones(shapes[0][:-1]))
    _flax_mha_parity(flax_nnx, kwargs, inputs, call_kwargs, normalize_qk)


# ------------------------------------------------------------------ decoding


def _decode(m, x):
    return jnp.concatenate([m(x[..., i : i + 1, :]) for i in range(x.shape[-2])], axis=-2)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(num_heads=2, in_features=8), (2, 6, 8)),
        (dict(num_heads=4, in_features=8, num_kv_heads=2, qkv_features=16), (3, 2, 5, 8)),
    ],
    ids=["mha", "gqa-two-batch-axes"],
)
def test_decoding_one_token_at_a_time_matches_full_causal_attention(kwargs, shape):
    m = _randomize(nnx.MultiHeadAttention(**kwargs, decode=True, rngs=nnx.Rngs(0)))
    x = _normal(1, shape)
    full = m(x, mask=nnx.make_causal_mask(jnp.ones(shape[:-1])), decode=False)
    m.init_cache(shape)
    assert isinstance(m.cached_key, nnx.Cache) and isinstance(m.cache_index, nnx.Cache)
    heads = kwargs.get("num_kv_heads", kwargs["num_heads"])
    assert m.cached_key.value.shape == (*shape[:-1], heads, m.head_dim)
    _close(_decode(m, x), full)
    assert int(m.cache_index.value) == shape[-2]
    # init_cache starts a new sequence
    m.init_cache(shape)
    _close(_decode(m, x), full)


def test_decoding_inside_jit_updates_the_cache():
    m = _randomize(nnx.MultiHeadAttention(2, 8, decode=True, rngs=nnx.Rngs(0)))
    x = _normal(1, (2, 4, 8))
    full = m(x, is_causal=True, decode=False)
    m.init_cache(x.shape)
    step = nnx.jit(lambda m, token: m(token))
    outs = [step(m, x[:, i : i + 1]) for i in range(4)]
    _close(jnp.concatenate(outs, axis=1), full)
    assert int(m.cache_index.value) == 4
    assert nnx.state(m, nnx.Cache).flat_state().paths == (
        ("cache_index",),
        ("cached_key",),
        ("cached_value",),
    )


def test_decoding_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    ours = _randomize(nnx.MultiHeadAttention(2, 8, decode=True, rngs=nnx.Rngs(0)))
    theirs = flax_nnx.MultiHeadAttention(2, 8, decode=True, rngs=flax_nnx.Rngs(1))
    _copy_params(ours, theirs)
    x = _normal(1, (2, 4, 8))
    ours.init_cache(x.shape)
    theirs.init_cache(x.shape)
    _close(_decode(ours, x), _decode(theirs, x))


def test_decoding_errors():
    m = nnx.MultiHeadAttention(2, 8, decode=True, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"(?s)cache was never initialised.*init_cache"):
        m(jnp.ones((2, 1, 8)))
    m.init_cache((2, 2, 8))
    with pytest.raises(ShapeError, match=r"one position at a time.*\(2, 1, 8\)"):
        m(jnp.ones((2, 3, 8)))
    m(jnp.ones((2, 1, 8)))
    m(jnp.ones((2, 1, 8)))
    with pytest.raises(ShapeError, match="cache is full"):
        m(jnp.ones((2, 1, 8)))
    with pytest.raises(ShapeError, match="init_cache expects input_shape"):
        m.init_cache((8,))


def test_lazy_layer_takes_its_sizes_from_init_cache():
    m = nnx.MultiHeadAttention(2, None, decode=True, rngs=nnx.Rngs(0))
    m.init_cache((2, 3, 8))
    assert m.in_features == 8 and m.query.kernel.shape == (8, 2, 4)
    assert m(jnp.ones((2, 1, 8))).shape == (2, 1, 8)


def test_set_view():
    m = nnx.MultiHeadAttention(2, 8, dropout_rate=0.1, rngs=nnx.Rngs(0))
    m.set_view(deterministic=True, decode=True, batch_size=2, max_length=3)
    assert m.deterministic and m.decode and m.cached_key.value.shape == (2, 3, 2, 4)
    with pytest.raises(ConfigError, match="needs batch_size and max_length"):
        nnx.MultiHeadAttention(2, 8, rngs=nnx.Rngs(0)).set_view(decode=True)


# ------------------------------------------------------------------ dropout, sowing


def test_dropout_follows_train_and_eval():
    m = nnx.MultiHeadAttention(2, 8, dropout_rate=0.5, rngs=nnx.Rngs(0))
    x = _normal(1, (2, 5, 8))
    with pytest.raises(
        ConfigError, match=r"(?s)dropout_rate=0.5 but was not told.*model.train\(\)"
    ):
        m(x)
    m.eval()
    assert m.deterministic is True
    ref = nnx.clone(m)
    ref.dropout_rate = 0.0
    _close(m(x), ref(x), 0)
    m.train()
    first, second = m(x), m(x)  # the kept dropout stream advances
    assert not np.allclose(first, second)
    assert not np.allclose(first, ref(x))
    _close(m(x, deterministic=True), ref(x), 0)


def test_dropout_keys_at_call_time():
    m = nnx.MultiHeadAttention(2, 8, dropout_rate=0.5, keep_rngs=False, rngs=nnx.Rngs(0))
    assert m.rngs is None
    x = _normal(1, (2, 5, 8))
    with pytest.raises(ConfigError, match="keep_rngs=False"):
        m(x, deterministic=False)
    a = m(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
    b = m(x, deterministic=False, rngs=nnx.Rngs(dropout=3).dropout)
    _close(a, b, 0)


def test_dropout_rate_one_leaves_only_the_output_bias():
    m = _randomize(nnx.MultiHeadAttention(2, 8, dropout_rate=1.0, rngs=nnx.Rngs(0)))
    out = m(_normal(1, (2, 5, 8)), deterministic=False)
    _close(out, jnp.broadcast_to(m.out.bias.value, out.shape), 1e-6)


def test_sow_weights():
    m = nnx.MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))
    m(_normal(1, (2, 5, 8)), _normal(2, (2, 3, 8)), sow_weights=True)
    (weights,) = m.attention_weights.value
    assert isinstance(m.attention_weights, nnx.Intermediate)
    assert weights.shape == (2, 2, 5, 3)
    _close(weights.sum(-1), jnp.ones((2, 2, 5)))


def test_custom_attention_fn_gets_the_flax_arguments():
    seen = {}

    def attention_fn(q, k, v, **kwargs):
        seen.update(kwargs)
        return nnx.dot_product_attention(q, k, v, **kwargs)

    m = nnx.MultiHeadAttention(2, 8, attention_fn=attention_fn, rngs=nnx.Rngs(0))
    m(jnp.ones((1, 3, 8)))
    assert {"mask", "dropout_rng", "dropout_rate", "deterministic", "dtype", "module"} <= set(seen)
    assert "is_causal" not in seen  # only passed when asked for
    m(jnp.ones((1, 3, 8)), is_causal=True)
    assert seen["is_causal"] is True


def test_bfloat16_module():
    m = nnx.MultiHeadAttention(2, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = _normal(1, (2, 5, 8))
    out = m(x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
    ref = nnx.MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))(x)
    _close(out, ref, 5e-2)


# ------------------------------------------------------------------ lazy sizes and errors


def test_lazy_cross_attention_infers_both_feature_sizes():
    m = nnx.MultiHeadAttention(2, None, qkv_features=8, out_features=3, rngs=nnx.Rngs(0))
    assert m.query is None
    out = m(jnp.ones((2, 4, 6)), jnp.ones((2, 7, 5)))
    assert out.shape == (2, 4, 3)
    assert (m.in_features, m.in_kv_features) == (6, 5)
    assert m.key.kernel.shape == (5, 2, 4)
    with pytest.raises(ShapeError, match=r"MultiHeadAttention .*in_features=6"):
        m(jnp.ones((2, 4, 7)), jnp.ones((2, 7, 5)))
    with pytest.raises(ShapeError, match=r"in_kv_features=5"):
        m(jnp.ones((2, 4, 6)), jnp.ones((2, 7, 6)))


def test_lazy_qkv_features_must_divide_into_heads():
    m = nnx.MultiHeadAttention(4, None, rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match="in_features=10, which is not divisible by num_heads=4"):
        m(jnp.ones((2, 3, 10)))


def test_wrong_input_size_names_the_path():
    class Block(nnx.Module):
        def __init__(self):
            self.attn = nnx.MultiHeadAttention(2, 8, rngs=nnx.Rngs(0))

    block = Block()
    with pytest.raises(ShapeError, match=r"MultiHeadAttention at Block\.attn .*in_features=8"):
        block.attn(jnp.ones((2, 3, 6)))
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        block.attn(jnp.ones((8,)))
    with pytest.raises(ConfigError, match="inputs_v was given without inputs_k"):
        block.attn(jnp.ones((2, 3, 8)), inputs_v=jnp.ones((2, 3, 8)))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 8), {}, "num_heads must be a positive int"),
        ((2, -8), {}, "in_features must be a positive int"),
        ((3, 8), {}, "must be divisible by num_heads=3"),
        ((2, 8), dict(qkv_features=6, num_kv_heads=4), "must be a multiple of num_kv_heads=4"),
        ((2, 8), dict(dropout_rate=1.5), r"dropout_rate must be in \[0, 1\]"),
        ((2, 8), dict(dropout_rate=-0.1), r"dropout_rate must be in \[0, 1\]"),
    ],
)
def test_bad_configuration(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        nnx.MultiHeadAttention(*args, **kwargs, rngs=nnx.Rngs(0))
