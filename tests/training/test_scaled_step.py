"""``nnx.training.scaled_step``: a whole train step that, on a non-finite loss or gradient,
puts back every Variable it wrote (parameters, optimizer state, BatchNorm statistics, RNG
counters, metrics on the model), under ``nnx.jit`` and eagerly; on a finite batch it is the
plain ``value_and_grad`` + ``optimizer.update`` step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx

scaled_step = nnx.training.scaled_step
X = jax.random.normal(jax.random.key(1), (8, 4))
Y = jax.random.normal(jax.random.key(2), (8, 2))


class Net(nnx.Module):
    """BatchNorm (running statistics), Dropout (RNG counter) and a call counter the forward
    pass writes."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)
        self.calls = nnx.Variable(jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        return self.l2(self.drop(jax.nn.relu(self.norm(self.l1(x)))))


def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def bits(*objs):
    """Every leaf of the objects' graphs as (path, dtype, bytes): bit-for-bit comparable,
    NaN included (RNG keys through their key data)."""
    out = []
    for path, leaf in nnx.graph.flatten(list(objs))[1]:
        value = leaf.value if isinstance(leaf, nnx.Variable) else leaf
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        value = np.asarray(value)
        out.append((path, value.dtype, value.tobytes()))
    return out


def values(*objs):
    return [
        np.asarray(v.value if isinstance(v, nnx.Variable) else v)
        for p, v in nnx.graph.flatten(list(objs))[1]
        if not isinstance(v, nnx.RngKey)
    ]


def make(adam=True):
    model = Net(nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2) if adam else optax.sgd(0.1))
    return model, optimizer


def step_fn(jit):
    def step(model, optimizer, loss_scale, x, y):
        return scaled_step(optimizer, model, loss_fn, x, y, loss_scale=loss_scale)

    return nnx.jit(step) if jit else step


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_non_finite_batch_leaves_model_and_optimizer_bit_for_bit(jit, bad):
    model, optimizer = make()
    loss_scale = nnx.DynamicLossScale(2.0**10, growth_interval=2)
    step = step_fn(jit)
    assert bool(step(model, optimizer, loss_scale, X, Y).applied)  # non-trivial adam state
    before = bits(model, optimizer)

    loss, applied, aux = step(model, optimizer, loss_scale, X.at[3, 1].set(bad), Y)
    assert not bool(applied) and not np.isfinite(float(loss)) and aux is None
    assert bits(model, optimizer) == before
    assert np.isfinite(np.asarray(model.norm.mean.value)).all()
    assert float(loss_scale.scale.value) == 2.0**9 and int(loss_scale.good_steps.value) == 0

    # training goes on as if the bad step never happened
    assert bool(step(model, optimizer, loss_scale, X, Y).applied)
    assert int(optimizer.step.value) == 2 and int(model.calls.value) == 2


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_finite_batch_is_the_manual_step(jit):
    model, optimizer = make()
    reference, ref_optimizer = make()

    def manual(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss

    def step(model, optimizer, x, y):
        return scaled_step(optimizer, model, loss_fn, x, y)

    if jit:
        manual, step = nnx.jit(manual), nnx.jit(step)
    for _ in range(2):
        loss, applied, _ = step(model, optimizer, X, Y)
        assert bool(applied)
        np.testing.assert_allclose(loss, manual(reference, ref_optimizer, X, Y), rtol=1e-6)
    if not jit:
        assert bits(model, optimizer) == bits(reference, ref_optimizer)
    # compiled separately, the two programs may fuse differently: equal up to rounding
    for got, want in zip(values(model, optimizer), values(reference, ref_optimizer), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_loss_scale_gives_the_unscaled_loss_and_step():
    model, optimizer = make(adam=False)
    reference, ref_optimizer = make(adam=False)
    loss_scale = nnx.DynamicLossScale(2.0**12, growth_interval=1)
    loss, applied, _ = scaled_step(optimizer, model, loss_fn, X, Y, loss_scale=loss_scale)
    ref_loss, grads = nnx.value_and_grad(loss_fn)(reference, X, Y)
    ref_optimizer.update(reference, grads)
    assert bool(applied) and float(loss) == float(ref_loss)
    for (p, _, got), (q, _, want) in zip(bits(model), bits(reference), strict=True):
        assert p == q and got == want  # a power-of-two scale round-trips exactly
    assert float(loss_scale.scale.value) == 2.0**13


def test_aux_kwargs_and_graph_arguments_are_rolled_back_too():
    model, optimizer = make(adam=False)
    counter = nnx.Variable(jnp.array(0.0))  # a graph object passed next to the batch

    def aux_loss(model, x, y, *, counter, weight):
        counter.value += 1.0
        pred = model(x)
        return weight * jnp.mean((pred - y) ** 2), {"pred": pred}

    res = scaled_step(optimizer, model, aux_loss, X, Y, has_aux=True, counter=counter, weight=2.0)
    assert isinstance(res, nnx.training.StepResult) and bool(res.applied)
    assert res.aux["pred"].shape == (8, 2) and float(counter.value) == 1.0
    before = bits(model, optimizer, counter)
    res = scaled_step(
        optimizer, model, aux_loss, X, Y * jnp.inf, has_aux=True, counter=counter, weight=2.0
    )
    assert not bool(res.applied)
    assert bits(model, optimizer, counter) == before


def test_trains_only_what_the_optimizer_trains():
    model = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.LoRAParam)
    lora = (("lora", "lora_a"), ("lora", "lora_b"))
    before = bits(model)
    res = scaled_step(optimizer, model, lambda m, x: jnp.sum(m(x) ** 2), X[:, :3])
    assert bool(res.applied)
    changed = {p[1:] for (p, _, a), (_, _, b) in zip(before, bits(model), strict=True) if a != b}
    assert changed and changed <= set(lora)


def test_sown_intermediates_are_kept():
    class Sow(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

        def __call__(self, x):
            self.sow(nnx.Intermediate, "h", x * self.w)
            return jnp.sum(x * self.w)

    model = Sow()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1))
    _, applied, _ = scaled_step(optimizer, model, lambda m, x: m(x), jnp.array([jnp.nan, 1.0]))
    assert not bool(applied) and model.w.value.tolist() == [1.0, 1.0]
    assert len(model.h.value) == 1  # created by the step: left for nnx.pop
