"""Embed: lookup and tied projection against jnp and flax.nnx, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError


def _close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def test_lookup_and_attend_match_jnp():
    embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
    table = embed.embedding.value
    assert table.shape == (10, 4)
    ids = jnp.array([[1, 2, 9], [0, 0, 3]])
    _close(embed(ids), table[ids])
    query = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4)), jnp.float32)
    _close(embed.attend(query), jnp.einsum("btf,vf->btv", query, table), 1e-5)


def test_scalar_and_unsigned_ids():
    embed = nnx.Embed(5, 3, rngs=nnx.Rngs(0))
    _close(embed(jnp.uint8(4)), embed.embedding.value[4])
    _close(embed(np.array([1, 2], np.int64)), embed.embedding.value[jnp.array([1, 2])])


def test_out_of_range_ids_give_nan_rows():
    embed = nnx.Embed(5, 3, rngs=nnx.Rngs(0))
    out = embed(jnp.array([0, 5, -7]))
    assert bool(jnp.all(jnp.isfinite(out[0]))) and bool(jnp.all(jnp.isnan(out[1:])))


@pytest.mark.parametrize("ids", [jnp.array([1.0, 2.0]), jnp.array([True, False])])
def test_non_integer_ids_are_rejected_with_a_clear_message(ids):
    class Model(nnx.Module):
        def __init__(self):
            self.tok = nnx.Embed(5, 3, rngs=nnx.Rngs(0))

    model = Model()
    with pytest.raises(ShapeError, match=r"Embed at Model\.tok looks up rows by integer id.*dtype"):
        model.tok(ids)


def test_attend_checks_the_feature_size():
    embed = nnx.Embed(5, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match=r"features=3\) attends with queries .* \(2, 4\)"):
        embed.attend(jnp.ones((2, 4)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 3), "num_embeddings must be a positive int"),
        ((5, -1), "features must be a positive int"),
        ((None, 3), "must both be given"),
    ],
)
def test_bad_configuration(args, match):
    with pytest.raises(ConfigError, match=match):
        nnx.Embed(*args, rngs=nnx.Rngs(0))


def test_dtypes():
    embed = nnx.Embed(5, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert embed.embedding.value.dtype == jnp.bfloat16
    assert embed(jnp.array([1])).dtype == jnp.bfloat16  # default: the table's dtype
    half = nnx.Embed(5, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert half(jnp.array([1])).dtype == jnp.bfloat16
    assert half.attend(jnp.ones((2, 3))).dtype == jnp.bfloat16


def test_custom_init_and_metadata():
    embed = nnx.Embed(
        4,
        2,
        embedding_init=nnx.initializers.ones,
        embedding_metadata={"sharding_names": ("vocab", "embed")},
        rngs=nnx.Rngs(0),
    )
    _close(embed.embedding.value, jnp.ones((4, 2)))
    assert embed.embedding.get_metadata()["sharding_names"] == ("vocab", "embed")


def test_tied_embedding_gets_gradients_from_both_uses():
    embed = nnx.Embed(6, 3, rngs=nnx.Rngs(0))
    ids = jnp.array([[1, 2, 3]])

    def loss(m):
        logits = m.attend(m(ids))
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0])

    grads = nnx.jit(nnx.grad(loss))(embed)
    table = embed.embedding.value

    def reference(table):
        logits = table[ids] @ table.T
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0])

    _close(grads["embedding"].value, jax.grad(reference)(table), 1e-5)


def test_matches_flax_outputs_and_gradients():
    flax_nnx = pytest.importorskip("flax.nnx")
    ours = nnx.Embed(7, 4, rngs=nnx.Rngs(0))
    theirs = flax_nnx.Embed(7, 4, rngs=flax_nnx.Rngs(1))
    theirs.embedding[...] = ours.embedding.value
    ids = jnp.array([[0, 6, 2], [3, 3, 1]])
    query = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4)), jnp.float32)
    _close(ours(ids), theirs(ids))
    _close(ours.attend(query), theirs.attend(query), 1e-5)

    def loss(m):
        return jnp.sum(jnp.sin(m(ids))) + jnp.sum(jnp.cos(m.attend(query)))

    ours_g = nnx.grad(loss)(ours)["embedding"].value
    theirs_g = flax_nnx.grad(loss)(theirs)["embedding"][...]
    _close(ours_g, theirs_g, 1e-5)
