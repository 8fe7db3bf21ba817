"""Steps per second of the digits training loop: nnx beside flax.nnx and plain jax + optax.

The README's main job (``python -m nnx.examples.digits``) trains a small CNN on
scikit-learn's digits. This script times its training loop, one process, three ways, with
the same network (two 3x3 convolutions with 2x2 max-pooling, a 256->128 hidden layer,
dropout 0.2, a 128->10 output), the same batches (32 images, fixed order), adam, and the
same per-step bookkeeping (mean loss and accuracy accumulated on the device):

* ``floor``    plain ``jax.jit`` of a pure step over a parameter pytree and the optax state,
               written with ``jax.lax`` convolutions; the dropout key is folded from the step.
* ``nnx``      the main job's own ``train_step``: ``nnx.jit``, ``nnx.value_and_grad``,
               ``nnx.Optimizer`` and ``nnx.MultiMetric`` updated in place.
* ``flax.nnx`` the same module and step written with flax.nnx (skipped if flax is missing).

One timed sample is one pass over ``--steps`` batches (an "epoch") ending with
``jax.block_until_ready``; samples of the implementations are interleaved in rotating
order (``_timing.measure``), and the table gives medians and the median of the per-round
ratios to the floor. Target (issue 5): nnx within 1.05x of the floor.

Usage::

  .venv/bin/python benchmarks/train_digits.py            # ~1 minute
  .venv/bin/python benchmarks/train_digits.py --quick    # smoke run
  .venv/bin/python benchmarks/train_digits.py --clock cpu --repeats 15
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import measure

import nnx
from nnx.examples import digits

BATCH, LR, DROPOUT, TARGET = 32, 2e-3, 0.2, 1.05


def batches(steps: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """``steps`` batches of the training split, stacked: (steps, 32, 8, 8, 1) and labels."""
    images, labels, _, _ = digits.load_digits(seed)
    order = np.random.default_rng(seed).permutation(len(labels))
    idx = np.resize(order, steps * BATCH).reshape(steps, BATCH)
    return jnp.asarray(images[idx]), jnp.asarray(labels[idx])


# -- floor: plain jax + optax ---------------------------------------------------------------
def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + b


def _pool(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _floor_params(key: jax.Array) -> dict[str, Any]:
    k = jax.random.split(key, 4)
    he = jax.nn.initializers.lecun_normal()
    return {
        "conv1": {"w": he(k[0], (3, 3, 1, 32)), "b": jnp.zeros(32)},
        "conv2": {"w": he(k[1], (3, 3, 32, 64)), "b": jnp.zeros(64)},
        "hidden": {"w": he(k[2], (256, 128)), "b": jnp.zeros(128)},
        "out": {"w": he(k[3], (128, 10)), "b": jnp.zeros(10)},
    }


def _floor_forward(p: dict, x: jax.Array, key: jax.Array) -> jax.Array:
    x = _pool(jax.nn.relu(_conv(x, p["conv1"]["w"], p["conv1"]["b"])))
    x = _pool(jax.nn.relu(_conv(x, p["conv2"]["w"], p["conv2"]["b"])))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ p["hidden"]["w"] + p["hidden"]["b"])
    keep = jax.random.bernoulli(key, 1.0 - DROPOUT, x.shape)
    x = jnp.where(keep, x / (1.0 - DROPOUT), 0.0)
    return x @ p["out"]["w"] + p["out"]["b"]


def build_floor(images: jax.Array, labels: jax.Array) -> Callable[[], Any]:
    tx = optax.adam(LR)
    params = _floor_params(jax.random.key(0))
    key = jax.random.key(1)

    def loss_fn(p, x, y, k):
        logits = _floor_forward(p, x, k)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    @jax.jit
    def train_step(params, opt_state, metrics, step, x, y):
        k = jax.random.fold_in(key, step)
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, k)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = (jnp.argmax(logits, -1) == y).sum()
        total, loss_sum, n_correct, count = metrics
        metrics = (total + y.shape[0], loss_sum + loss, n_correct + correct, count + 1)
        return params, opt_state, metrics, step + 1

    zero = (jnp.array(0), jnp.array(0.0), jnp.array(0), jnp.array(0))
    st = [params, tx.init(params), zero, jnp.array(0, jnp.uint32)]

    xs = [images[i] for i in range(images.shape[0])]
    ys = [labels[i] for i in range(labels.shape[0])]

    def epoch():
        p, s, m, step = st
        for x, y in zip(xs, ys, strict=True):
            p, s, m, step = train_step(p, s, m, step, x, y)
        st[:] = [p, s, m, step]
        return jax.block_until_ready(m)

    return epoch


# -- nnx: the main job's own step -----------------------------------------------------------
def build_nnx(images: jax.Array, labels: jax.Array) -> Callable[[], Any]:
    model = digits.CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    xs = [images[i] for i in range(images.shape[0])]
    ys = [labels[i] for i in range(labels.shape[0])]

    def epoch():
        for x, y in zip(xs, ys, strict=True):
            digits.train_step(model, optimizer, metrics, x, y)
        return jax.block_until_ready(model.out.kernel.value)

    return epoch


# -- flax.nnx -------------------------------------------------------------------------------
def build_flax(images: jax.Array, labels: jax.Array) -> Callable[[], Any] | None:
    try:
        from flax import nnx as fnnx
    except ImportError:  # pragma: no cover - depends on the environment
        return None

    class CNN(fnnx.Module):
        def __init__(self, *, rngs):
            self.conv1 = fnnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
            self.conv2 = fnnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
            self.dropout = fnnx.Dropout(DROPOUT, rngs=rngs)
            self.hidden = fnnx.Linear(256, 128, rngs=rngs)
            self.out = fnnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):
            x = fnnx.max_pool(fnnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
            x = fnnx.max_pool(fnnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            x = self.dropout(fnnx.relu(self.hidden(x)))
            return self.out(x)

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    @fnnx.jit
    def train_step(model, optimizer, metrics, x, y):
        (loss, logits), grads = fnnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        optimizer.update(model, grads)
        metrics.update(loss=loss, logits=logits, labels=y)

    model = CNN(rngs=fnnx.Rngs(0))
    optimizer = fnnx.Optimizer(model, optax.adam(LR), wrt=fnnx.Param)
    metrics = fnnx.MultiMetric(accuracy=fnnx.metrics.Accuracy(), loss=fnnx.metrics.Average("loss"))
    xs = [images[i] for i in range(images.shape[0])]
    ys = [labels[i] for i in range(labels.shape[0])]

    def epoch():
        for x, y in zip(xs, ys, strict=True):
            train_step(model, optimizer, metrics, x, y)
        return jax.block_until_ready(model.out.kernel[...])

    return epoch


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=45, help="batches per timed sample")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved rounds")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 20 steps")
    parser.add_argument("--no-flax", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 20, 5

    images, labels = batches(args.steps)
    fns = {"floor": build_floor(images, labels), "nnx": build_nnx(images, labels)}
    names = {
        "floor": "floor: jax.jit + optax",
        "nnx": "nnx: nnx.jit + Optimizer",
        "flax": "flax.nnx: nnx.jit + Optimizer",
    }
    flax_epoch = None if args.no_flax else build_flax(images, labels)
    if flax_epoch is not None:
        fns["flax"] = flax_epoch
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; digits CNN, batch {BATCH}")
    print(
        f"{args.repeats} interleaved rounds of {args.steps} steps ({args.clock} clock); "
        "medians; ratio = median of per-round ratios to the floor"
    )
    timings = measure(fns, repeats=args.repeats, min_time=0.0, clock=args.clock)
    print(f"\n{'impl':34s} {'steps/s':>9s} {'ms/step':>8s} {'ratio':>7s}")
    result = {}
    for name in fns:
        per_step = timings.median(name) / args.steps
        ratio = timings.ratio(name, "floor")
        result[name] = ratio
        print(f"{names[name]:34s} {1 / per_step:9.0f} {per_step * 1e3:8.3f} {ratio:6.3f}x")
    verdict = "ok" if result["nnx"] <= TARGET else "MISSED"
    print(f"\ntarget: nnx <= {TARGET:.2f}x the floor: {result['nnx']:.3f}x {verdict}")
    return result


if __name__ == "__main__":
    main()
