"""``nnx.EMA``: the averaging rule against numpy over several steps (eager and inside
``nnx.jit`` next to an optimizer), ``swap``/``copy_to``/``apply_to``, filters, checkpoints and
errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.running = nnx.BatchStat(jnp.zeros(2))

    def __call__(self, x):
        y = self.linear(x)
        self.running.value = 0.5 * self.running.value + 0.5 * y.mean(0)
        return y


X = jax.random.normal(jax.random.key(1), (4, 3))
Y = jax.random.normal(jax.random.key(2), (4, 2))


def loss_fn(model):
    return jnp.mean((model(X) - Y) ** 2)


def numpy_params(model):
    return jax.tree.map(np.array, nnx.state(model, nnx.Param).to_pure_dict())


def test_average_follows_the_rule_over_jitted_training_steps():
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    ema = nnx.EMA(model, decay=0.9)

    @nnx.jit
    def train_step(model, optimizer, ema):
        optimizer.update(model, nnx.grad(loss_fn)(model))
        ema.update(model)

    expected = numpy_params(model)
    for _ in range(4):
        train_step(model, optimizer, ema)
        current = numpy_params(model)
        expected = jax.tree.map(lambda e, c: 0.9 * e + 0.1 * c, expected, current)
        got = jax.tree.map(np.asarray, ema.params.to_pure_dict())
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert not np.allclose(got["linear"]["kernel"], current["linear"]["kernel"])


def test_eager_update_and_default_filter_is_param():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.5)
    assert [p for p, _ in ema.params.flat_state()] == [("linear", "bias"), ("linear", "kernel")]
    assert all(type(v) is nnx.Param for _, v in ema.params.flat_state())
    model.linear.bias.value = jnp.full((2,), 4.0)
    ema.update(model)
    np.testing.assert_allclose(ema.params["linear"]["bias"].value, [2.0, 2.0])
    ema.update(model)
    np.testing.assert_allclose(ema.params["linear"]["bias"].value, [3.0, 3.0])


def test_only_is_flaxs_name_for_wrt():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, 0.5, only=nnx.BatchStat)
    assert [p for p, _ in ema.params.flat_state()] == [("running",)]
    everything = nnx.EMA(model, 0.5, wrt=...)
    assert len(everything.params.flat_state()) == 3


def test_averages_are_copies_not_aliases():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.9)
    assert ema.params["linear"]["kernel"] is not model.linear.kernel
    before = np.array(ema.params["linear"]["kernel"].value)
    model.linear.kernel.value = model.linear.kernel.value + 1.0
    np.testing.assert_array_equal(ema.params["linear"]["kernel"].value, before)


def test_swap_puts_averages_in_and_restores_trained_weights():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.0)  # decay 0: the average is the last update's weights
    model.linear.kernel.value = jnp.ones((3, 2))
    ema.update(model)
    model.linear.kernel.value = jnp.full((3, 2), 5.0)
    trained = numpy_params(model)
    running_before = np.array(model.running.value)
    with ema.swap(model) as swapped:
        assert swapped is model
        np.testing.assert_array_equal(model.linear.kernel.value, np.ones((3, 2)))
        model(X)  # evaluation may change other state; that is kept
    np.testing.assert_array_equal(model.linear.kernel.value, trained["linear"]["kernel"])
    assert not np.allclose(model.running.value, running_before)
    with pytest.raises(RuntimeError, match="boom"), ema.swap(model):
        raise RuntimeError("boom")
    np.testing.assert_array_equal(model.linear.kernel.value, trained["linear"]["kernel"])


def test_swap_inside_jit_evaluates_with_averages():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.0)
    model.linear.kernel.value = jnp.zeros((3, 2))
    ema.update(model)
    model.linear.kernel.value = jnp.ones((3, 2))

    @nnx.jit
    def evaluate(model, ema):
        with ema.swap(model):
            ema_loss = loss_fn(model)
        return ema_loss, loss_fn(model)

    ema_loss, trained_loss = evaluate(model, ema)
    bias = model.linear.bias.value[None, :]
    np.testing.assert_allclose(ema_loss, jnp.mean((bias - Y) ** 2), rtol=1e-6)
    np.testing.assert_allclose(trained_loss, jnp.mean((X @ jnp.ones((3, 2)) + bias - Y) ** 2))
    np.testing.assert_array_equal(model.linear.kernel.value, np.ones((3, 2)))


def test_copy_to_writes_values_not_variables():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.0)
    model.linear.bias.value = jnp.ones(2)
    ema.update(model)
    other = Net(nnx.Rngs(7))
    kernel_var = other.linear.kernel
    ema.copy_to(other)
    assert other.linear.kernel is kernel_var
    np.testing.assert_array_equal(other.linear.bias.value, np.ones(2))
    other.linear.bias.value = jnp.zeros(2)
    np.testing.assert_array_equal(ema.params["linear"]["bias"].value, np.ones(2))


def test_apply_to_shares_the_average_variables():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.5)
    ema_model = ema.apply_to(model)
    assert ema_model.linear.kernel is ema.params["linear"]["kernel"]
    assert ema_model is not model and ema_model.running is not model.running
    model.linear.bias.value = jnp.full((2,), 2.0)
    ema.update(model)
    np.testing.assert_allclose(ema_model.linear.bias.value, [1.0, 1.0])


def test_checkpoint_round_trip():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.5)
    model.linear.bias.value = jnp.ones(2)
    ema.update(model)
    saved = nnx.state(ema)
    ema.update(model)
    nnx.update(ema, saved)
    np.testing.assert_allclose(ema.params["linear"]["bias"].value, [0.5, 0.5])
    graphdef, state = nnx.split(ema)
    restored = nnx.merge(graphdef, state)
    assert restored.decay == 0.5
    restored.update(model)
    np.testing.assert_allclose(restored.params["linear"]["bias"].value, [0.75, 0.75])


def test_errors_teach():
    model = Net(nnx.Rngs(0))
    ema = nnx.EMA(model, decay=0.9)
    with pytest.raises(nnx.NNXError, match=r"no .*Param.* at 2 averaged path.*\n.*linear\.bias"):
        ema.update(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(nnx.NNXError, match=r"decay=1\.5 is not in \[0, 1\]"):
        nnx.EMA(model, decay=1.5)
