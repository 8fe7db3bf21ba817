"""Gradient accumulation: k micro-batch gradients (or k MultiSteps updates) equal one step on
the combined batch, to float tolerance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx

accumulate_gradients = nnx.training.accumulate_gradients

X = jax.random.normal(jax.random.key(1), (12, 3))
Y = jax.random.normal(jax.random.key(2), (12, 2))


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(3, 5, rngs=rngs)
        self.l2 = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def pure(state):
    return jax.tree.map(np.asarray, nnx.State(state).to_pure_dict())


@pytest.mark.parametrize("sizes", [(4, 4, 4), (1, 5, 6), (12,)], ids=["equal", "uneven", "one"])
def test_micro_batches_equal_the_big_batch(sizes):
    model = MLP(nnx.Rngs(0))
    cuts = np.cumsum(sizes)[:-1]
    batches = list(zip(jnp.split(X, cuts), jnp.split(Y, cuts), strict=True))

    @nnx.jit
    def both(model, batches):
        return accumulate_gradients(loss_fn, model, batches), nnx.value_and_grad(loss_fn)(
            model, X, Y
        )

    (loss, grads), (big_loss, big_grads) = both(model, batches)
    np.testing.assert_allclose(loss, big_loss, rtol=1e-5)
    assert_close(pure(grads), pure(big_grads))


def test_unweighted_mean_differs_on_uneven_batches():
    """Guards the weighting: equal weights would not give the big-batch gradient."""
    model = MLP(nnx.Rngs(0))
    batches = [(X[:1], Y[:1]), (X[1:], Y[1:])]
    equal = nnx.jit(lambda m: accumulate_gradients(loss_fn, m, batches, weights=[1, 1])[1])
    grads = equal(model)
    big_grads = nnx.jit(nnx.grad(loss_fn))(model, X, Y)
    assert not np.allclose(pure(grads)["l1"]["kernel"], pure(big_grads)["l1"]["kernel"])


def test_accumulated_step_under_jit_equals_big_batch_step():
    model, big_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2))
    big_optimizer = nnx.Optimizer(big_model, optax.adam(1e-2))

    @nnx.jit
    def accumulated_step(model, optimizer, xs, ys):
        loss, grads = accumulate_gradients(loss_fn, model, list(zip(xs, ys, strict=True)))
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def big_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    for _ in range(3):
        loss = accumulated_step(model, optimizer, jnp.split(X, 3), jnp.split(Y, 3))
        big_loss = big_step(big_model, big_optimizer, X, Y)
        np.testing.assert_allclose(loss, big_loss, rtol=1e-5)
        assert_close(pure(nnx.state(model, nnx.Param)), pure(nnx.state(big_model, nnx.Param)))


def test_has_aux_and_wrt():
    model = MLP(nnx.Rngs(0))

    def loss_with_aux(model, x, y):
        return loss_fn(model, x, y), x.shape[0]

    wrt = nnx.All(nnx.Param, nnx.PathContains("l2"))
    (_, auxes), grads = accumulate_gradients(
        loss_with_aux, model, [(X[:6], Y[:6]), (X[6:], Y[6:])], has_aux=True, wrt=wrt
    )
    assert auxes == [6, 6]
    assert set(grads) == {"l2"}
    big = nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, X, Y)
    assert_close(pure(grads), pure(big))


def test_multisteps_route_equals_one_big_batch_step():
    k = 3
    model, big_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.MultiSteps(optax.adam(1e-2), every_k_schedule=k))
    big_optimizer = nnx.Optimizer(big_model, optax.adam(1e-2))

    @nnx.jit
    def step(model, optimizer, x, y):
        optimizer.update(model, nnx.grad(loss_fn)(model, x, y))

    for _ in range(2):  # two accumulation cycles
        for x, y in zip(jnp.split(X, k), jnp.split(Y, k), strict=True):
            step(model, optimizer, x, y)
        step(big_model, big_optimizer, X, Y)
        assert_close(pure(nnx.state(model, nnx.Param)), pure(nnx.state(big_model, nnx.Param)))


def test_errors_teach():
    model = MLP(nnx.Rngs(0))
    with pytest.raises(nnx.NNXError, match="no micro-batches"):
        accumulate_gradients(loss_fn, model, [])
    with pytest.raises(nnx.NNXError, match="2 weights for 1 micro-batches"):
        accumulate_gradients(loss_fn, model, [(X, Y)], weights=[1, 2])
    with pytest.raises(nnx.NNXError, match="micro-batch 0 holds no array with a batch axis"):
        accumulate_gradients(lambda m, s: jnp.sum(m(X)) * s, model, [jnp.array(2.0)])
