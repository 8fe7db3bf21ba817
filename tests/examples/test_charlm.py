"""The character-level transformer example: it learns, its KV-cache decoding matches the full
causal forward pass, and its scan over stacked layers matches applying the layers one by one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.examples import charlm

# The --tiny sizes, so that the models here reuse the tiny run's compiled initializers.
VOCAB = 13
MAX_LEN, LAYERS, DIM, HEADS = (charlm.TINY[k] for k in ("seq_len", "layers", "dim", "heads"))


@pytest.fixture(scope="module")
def fresh_model() -> charlm.CharTransformer:
    """A small model as initialised (built once: construction compiles every initializer)."""
    return charlm.CharTransformer(VOCAB, MAX_LEN, LAYERS, DIM, HEADS, rngs=nnx.Rngs(0))


def _perturb(params: nnx.State, seed: int) -> nnx.State:
    """`params` plus normal noise (drawn with numpy: compiling jax.random for every shape
    would take seconds)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + 0.3 * rng.standard_normal(a.shape, np.float32), params)


@pytest.fixture(scope="module")
def random_model(fresh_model: charlm.CharTransformer) -> charlm.CharTransformer:
    """`fresh_model` with parameters moved far from their (tiny) initial values, so that every
    layer, position and head visibly changes the logits."""
    model = nnx.clone(fresh_model)
    nnx.update(model, _perturb(nnx.state(model, nnx.Param), seed=1))
    return model


@pytest.fixture
def model(random_model: charlm.CharTransformer) -> charlm.CharTransformer:
    """A copy of `random_model` that the test may change (e.g. give a KV cache)."""
    return nnx.clone(random_model)


def tokens(batch: int, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, MAX_LEN), 0, VOCAB, jnp.int32)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@nnx.jit
def forward(model: charlm.CharTransformer, x: jax.Array) -> jax.Array:
    return model(x)


@nnx.jit
def decode(model: charlm.CharTransformer, x: jax.Array) -> jax.Array:
    return model(x, decode=True)


@nnx.jit(static_argnames="skip_first")
def unscanned_forward(
    model: charlm.CharTransformer, x: jax.Array, skip_first: bool = False
) -> jax.Array:
    """The model's forward pass with a Python loop over the layer slices instead of nnx.scan."""
    graphdef, state = nnx.split(model.blocks)
    layers = [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(LAYERS)]
    h = model.embed(x) + model.pos(jnp.arange(MAX_LEN))[None]
    mask = nnx.make_causal_mask(x)
    for layer in layers[int(skip_first) :]:
        h = layer(h, mask, False)
    return model.embed.attend(model.norm(h))


@pytest.mark.slow  # about 13 s of training
def test_tiny_run_learns_and_samples(tmp_path):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    argv = ["--tiny", "--no-progress", "--sample-len", "50", "--prompt", "import "]
    summary = charlm.main([*argv, "--out", str(tmp_path)])
    assert summary["final_train_loss"] < summary["initial_train_loss"] - 0.5
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    assert summary["initial_val_loss"] == pytest.approx(summary["uniform_loss"], abs=0.2)
    assert len(summary["sample"]) == 50
    assert set(summary["sample"]) <= set(summary["vocab"])
    assert summary["prompt"] == "import "
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert (tmp_path / "checkpoints" / str(charlm.TINY["steps"])).is_dir()


def test_vocab_round_trip_and_unknown_characters():
    vocab = charlm.CharVocab("aab\nbb" * 5)
    assert vocab.chars == "\nab" + charlm.UNKNOWN
    ids = vocab.encode("ba\nz")
    assert ids.tolist() == [2, 1, 0, vocab.unknown_id]
    assert vocab.decode(ids) == "ba\n" + charlm.UNKNOWN


def test_stacked_layers_are_distinct_slices(fresh_model):
    kernel = fresh_model.blocks.attn.query.kernel.value
    assert kernel.shape == (LAYERS, DIM, HEADS, DIM // HEADS)
    for i in range(1, LAYERS):  # split_rngs gave each layer its own key
        assert not np.allclose(kernel[0], kernel[i])


def test_scan_over_layers_matches_python_loop_over_slices(model):
    x = tokens(2)
    logits = forward(model, x)
    assert logits.shape == (2, MAX_LEN, VOCAB)
    close(logits, unscanned_forward(model, x))
    # Leaving out a layer changes the result, so the comparison above covers every slice.
    assert not np.allclose(unscanned_forward(model, x, skip_first=True), logits, atol=1e-2)


def test_forward_is_causal(model):
    x = tokens(2)
    changed = x.at[:, 5].set((x[:, 5] + 1) % VOCAB)
    a, b = forward(model, x), forward(model, changed)
    close(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_kv_cache_decoding_matches_full_forward(model):
    x = tokens(2)
    full = forward(model, x)
    model.init_cache(batch_size=2)
    cached_key = model.blocks.attn.cached_key.value
    assert cached_key.shape == (LAYERS, 2, MAX_LEN, HEADS, DIM // HEADS)  # stacked per layer
    for _ in range(2):  # the second pass checks that reset_cache starts a fresh sequence
        steps = [decode(model, x[:, i : i + 1]) for i in range(MAX_LEN)]
        np.testing.assert_array_equal(model.blocks.attn.cache_index.value, [MAX_LEN] * LAYERS)
        close(jnp.concatenate(steps, axis=1), full)
        model.reset_cache()


def test_generate_matches_greedy_decoding_with_the_full_forward_pass(model):
    prompt = [1, 2, 3]
    n = MAX_LEN - len(prompt)
    out = charlm.generate(model, np.array(prompt), n, key=jax.random.key(0), temperature=1e-6)
    text = list(prompt)
    for _ in range(n):  # argmax of the full causal forward pass on the (padded) text so far
        padded = jnp.asarray([text + [0] * (MAX_LEN - len(text))] * 2, jnp.int32)
        text.append(int(jnp.argmax(forward(model, padded)[0, len(text) - 1])))
    assert out.tolist() == text[len(prompt) :]


def test_generate_beyond_the_context_refills_the_cache(model):
    out = charlm.generate(model, np.array([1]), 3 * MAX_LEN, key=jax.random.key(0))
    assert out.shape == (3 * MAX_LEN,)
    assert out.min() >= 0 and out.max() < VOCAB
