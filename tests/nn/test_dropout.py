"""Dropout: keep fraction and scaling, broadcast_dims, edge rates, its own RNG stream (also
through nnx.jit), deterministic modes, call-time keys, errors, parity with flax.nnx."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_keep_fraction_and_scaling(rate):
    drop = nnx.Dropout(rate, rngs=nnx.Rngs(dropout=0))
    x = jnp.full((200, 100), 3.0)
    y = drop(x)
    kept = y != 0
    # 20,000 Bernoulli draws: the standard error of the fraction is below 0.004.
    assert abs(float(kept.mean()) - (1 - rate)) < 0.02
    np.testing.assert_allclose(np.asarray(y[kept]), 3.0 / (1 - rate), rtol=1e-6)
    assert y.dtype == x.dtype


def test_broadcast_dims_share_the_mask():
    drop = nnx.Dropout(0.5, broadcast_dims=(0, -1), rngs=nnx.Rngs(dropout=1))
    y = drop(jnp.ones((4, 50, 3)))
    mask = y != 0
    assert bool(jnp.all(mask == mask[:1, :, :1]))  # constant along axes 0 and 2
    assert 0 < int(mask[0, :, 0].sum()) < 50
    with pytest.raises(ShapeError, match=r"Dropout .*broadcast_dims=\(0, -1\).*no axis 0"):
        drop(jnp.ones(()))


def test_edge_rates():
    x = jax.random.normal(jax.random.key(0), (5, 7))
    everything = nnx.Dropout(1.0, rngs=nnx.Rngs(0))
    y = everything(x)
    assert bool(jnp.all(y == 0)) and not bool(jnp.any(jnp.isnan(y)))
    g = jax.grad(lambda x: everything(x).sum())(x)
    assert bool(jnp.all(g == 0)) and not bool(jnp.any(jnp.isnan(g)))
    nothing = nnx.Dropout(0.0, rngs=nnx.Rngs(0))
    assert bool(jnp.all(nothing(x) == x))
    assert bool(jnp.all(nnx.Dropout(0.0)(x) == x))  # no keys needed


def test_stream_advances_and_masks_differ_across_calls():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3))
    assert int(drop.rngs.count.value) == 0
    x = jnp.ones((64,))
    a, b = drop(x), drop(x)
    assert int(drop.rngs.count.value) == 2
    assert not bool(jnp.all(a == b))
    # Same seed, same masks: the layer is reproducible.
    again = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3))
    assert bool(jnp.all(again(x) == a))


def test_own_stream_is_a_fork_of_the_collection():
    rngs = nnx.Rngs(params=0, dropout=1)
    nnx.Dropout(0.5, rngs=rngs)
    assert int(rngs.dropout.count.value) == 1  # the fork drew one key
    assert int(rngs.params.count.value) == 0
    other = nnx.Dropout(0.5, rng_collection="noise", rngs=nnx.Rngs(0))  # falls back on default
    assert other.rngs.tag == "default"
    stream = nnx.Rngs(dropout=5).dropout
    from_stream = nnx.Dropout(0.5, rngs=stream)
    assert from_stream.rngs is not stream and int(stream.count.value) == 1


def test_jit_writes_the_counter_back():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    step = nnx.jit(lambda m, x: m(x))
    x = jnp.ones((64,))
    a = step(drop, x)
    assert int(drop.rngs.count.value) == 1
    b = step(drop, x)
    assert int(drop.rngs.count.value) == 2
    assert not bool(jnp.all(a == b))
    # jit and eager draw the same keys from the same stream state.
    eager = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    assert bool(jnp.all(eager(x) == a)) and bool(jnp.all(eager(x) == b))


def test_deterministic_constructor_call_and_train_eval():
    x = jnp.ones((32,))
    drop = nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(0))
    assert bool(jnp.all(drop(x) == x))
    assert int(drop.rngs.count.value) == 0  # no key drawn
    assert not bool(jnp.all(drop(x, deterministic=False) == x))
    model = nnx.Sequential(nnx.Linear(32, 32, rngs=nnx.Rngs(0)), drop)
    model.train()
    assert drop.deterministic is False
    assert not bool(jnp.all(drop(x) == x))
    model.eval()
    assert drop.deterministic is True and bool(jnp.all(drop(x) == x))
    assert bool(jnp.all(drop(x, deterministic=True) == x))
    undecided = nnx.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"Dropout .*deterministic is None"):
        undecided(x)


def test_keys_given_at_call_time():
    x = jnp.ones((64,))
    drop = nnx.Dropout(0.5)  # no stream of its own
    with pytest.raises(ConfigError, match=r"(?s)Dropout .*without rngs.*rngs="):
        drop(x)
    key = jax.random.key(4)
    a = drop(x, rngs=key)
    assert bool(jnp.all(a == drop(x, rngs=key)))
    rngs = nnx.Rngs(dropout=4)
    b = drop(x, rngs=rngs)
    assert int(rngs.dropout.count.value) == 1
    c = drop(x, rngs=rngs.dropout)
    assert int(rngs.dropout.count.value) == 2 and not bool(jnp.all(b == c))
    # A call-time key overrides the layer's own stream, which is then left alone.
    own = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    assert bool(jnp.all(own(x, rngs=key) == a)) and int(own.rngs.count.value) == 0


def test_vmap_with_split_streams_gives_different_masks():
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((4, 64))
    rngs = nnx.Rngs(dropout=1).fork(split=4)
    y = nnx.vmap(lambda r, x: drop(x, rngs=r), in_axes=(0, 0))(rngs, x)
    assert len({tuple(np.asarray(row != 0)) for row in y}) == 4


@pytest.mark.parametrize("rate", [-0.1, 1.5, "half", None, True, float("nan")])
def test_bad_rate_fails_at_construction(rate):
    with pytest.raises(ConfigError, match=r"Dropout: rate .* in \[0, 1\]"):
        nnx.Dropout(rate, rngs=nnx.Rngs(0))


def test_bad_broadcast_dims_and_rngs():
    with pytest.raises(ConfigError, match=r"broadcast_dims must be"):
        nnx.Dropout(0.5, broadcast_dims=("a",))
    with pytest.raises(ConfigError, match=r"rngs must be"):
        nnx.Dropout(0.5, rngs=0)


def test_matches_flax_with_the_same_key():
    flax = pytest.importorskip("flax.nnx")
    x = jax.random.normal(jax.random.key(0), (8, 16, 4))
    key = jax.random.key(11)
    for kw in ({}, dict(broadcast_dims=(1,))):
        ours = nnx.Dropout(0.3, **kw)(x, rngs=key)
        theirs = flax.Dropout(0.3, **kw)(x, rngs=key)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_signature_matches_flax():
    flax = pytest.importorskip("flax.nnx")
    for method in ("__init__", "__call__"):
        ours = inspect.signature(getattr(nnx.Dropout, method)).parameters
        theirs = inspect.signature(getattr(flax.Dropout, method)).parameters
        assert list(ours) == list(theirs)
        assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()]
