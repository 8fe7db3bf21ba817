"""The issue's promise, end to end: a flax.nnx 0.12 training program runs unchanged on nnx.

The program below is written for ``from flax import nnx`` (Linear, BatchNorm, Dropout, Rngs,
``nnx.Optimizer(..., wrt=nnx.Param)``, ``nnx.value_and_grad`` with ``has_aux``, a
``MultiMetric`` updated by keyword, ``train()``/``eval()``, ``nnx.jit``). It is executed twice,
once with flax's ``nnx`` and once with ours bound to the name ``nnx``, and every number must
agree: nnx draws the same initial weights and dropout masks from the same seeds, so the losses,
metrics, parameters, batch statistics and eval logits match to float32 rounding.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import nnx

PROGRAM = '''
import jax
import jax.numpy as jnp
import optax


class MLP(nnx.Module):
    def __init__(self, din, dhidden, dout, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, dhidden, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(dhidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.linear2 = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.dropout(self.bn(self.linear1(x))))
        return self.linear2(x)


model = MLP(8, 16, 3, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
metrics = nnx.MultiMetric(
    loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy()
)


def loss_fn(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, logits


@nnx.jit
def train_step(model, optimizer, metrics, x, y):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_step(model, x):
    return model(x)


key = jax.random.key(1)
x = jax.random.normal(key, (64, 8))
y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0).astype(jnp.int32)
losses = []
model.train()
for step in range(5):
    losses.append(float(train_step(model, optimizer, metrics, x, y)))
computed = metrics.compute()
model.eval()
logits = eval_step(model, x)
graphdef, state = nnx.split(model)
result = dict(
    losses=losses,
    metrics={k: float(v) for k, v in computed.items()},
    logits=logits,
    params=nnx.to_pure_dict(nnx.state(model, nnx.Param)),
    batch_stats=nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    step=int(optimizer.step[...]),
)
'''


def _run(lib, program: str) -> dict:
    namespace = {"nnx": lib}
    exec(program, namespace)  # the test's own program text, not user input
    return namespace["result"]


def _assert_same(ours: dict, theirs: dict) -> None:
    np.testing.assert_allclose(ours["losses"], theirs["losses"], rtol=1e-5)
    assert ours["metrics"].keys() == theirs["metrics"].keys()
    for name in ours["metrics"]:
        np.testing.assert_allclose(ours["metrics"][name], theirs["metrics"][name], rtol=1e-5)
    np.testing.assert_allclose(ours["logits"], theirs["logits"], atol=1e-5)
    for key in ("params", "batch_stats"):
        assert jax.tree.structure(ours[key]) == jax.tree.structure(theirs[key])
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), ours[key], theirs[key]
        )
    assert ours["step"] == theirs["step"] == 5


@pytest.mark.parametrize(
    "decorator",
    [
        "@nnx.jit",
        pytest.param("@nnx.jit(graph=False)", marks=pytest.mark.slow),  # about 10 s each
        pytest.param("@nnx.compat.jit", marks=pytest.mark.slow),
    ],
    ids=["graph-mode", "tree-mode", "compat"],
)
def test_a_flax_training_program_gives_the_same_numbers(decorator):
    flax_nnx = pytest.importorskip("flax.nnx")
    program = PROGRAM.replace("@nnx.jit\ndef train_step", f"{decorator}\ndef train_step")
    assert decorator in program
    _assert_same(_run(nnx, program), _run(flax_nnx, program))
