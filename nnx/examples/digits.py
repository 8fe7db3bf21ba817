"""Train a small CNN on scikit-learn's bundled digits (8x8 images, 10 classes).

The README's main job::

    python -m nnx.examples.digits            # ~20-40 s on 2 CPU cores
    python -m nnx.examples.digits --resume   # continue from the last checkpoint

It shows a progress bar with loss and accuracy, saves a checkpoint of model + optimizer
(orbax, via ``nnx.Checkpointer``) after every epoch, and writes a PNG of the loss/accuracy
curves. Needs the ``examples`` extra (scikit-learn, matplotlib, tqdm).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx


class CNN(nnx.Module):
    """Two 3x3 convolutions with max-pooling, then a two-layer classifier head."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs) if hasattr(nnx, "Dropout") else None
        self.hidden = nnx.Linear(64 * 2 * 2, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))  # 8x8 -> 4x4
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))  # 4x4 -> 2x2
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.hidden(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.out(x)


def load_digits(seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """Digits scaled to [0, 1] with a channel axis, split by a fixed-seed permutation."""
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    labels = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def loss_fn(model: CNN, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, images, labels):
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, images, labels)
    optimizer.update(model, grads)
    metrics.update(loss=loss, logits=logits, labels=labels)


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, images, labels):
    loss, logits = loss_fn(model, images, labels)
    metrics.update(loss=loss, logits=logits, labels=labels)


def _save_plot(history: dict[str, list[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["train_loss"], label="train")
    ax1.plot(epochs, history["test_loss"], label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.set_title("Loss")
    ax1.legend()
    ax2.plot(epochs, history["train_accuracy"], label="train")
    ax2.plot(epochs, history["test_accuracy"], label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_title("Accuracy")
    ax2.legend()
    fig.suptitle("nnx CNN on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/digits", help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits(args.seed)

    model = CNN(rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.learning_rate))
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    history: dict[str, list[float]] = {
        k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    }
    first_epoch = 0
    checkpointer = nnx.Checkpointer(os.path.join(out_dir, "checkpoints"), max_to_keep=2)
    if args.resume and checkpointer.latest_step() is not None:
        restored = checkpointer.restore(model=model, optimizer=optimizer)
        first_epoch = restored["step"]
        history = restored["metadata"]["history"]
        print(f"resumed from epoch {first_epoch}")

    rng = np.random.default_rng(args.seed + first_epoch)
    steps = len(x_train) // args.batch_size
    bar = tqdm(total=(args.epochs - first_epoch) * steps, disable=args.no_progress, unit="step")
    for epoch in range(first_epoch, args.epochs):
        model.train()
        metrics.reset()
        order = rng.permutation(len(x_train))
        for i in range(steps):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            train_step(
                model, optimizer, metrics, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
            )
            bar.update(1)
            if i % 10 == 0 or i == steps - 1:
                m = metrics.compute()
                bar.set_postfix(
                    epoch=epoch + 1,
                    loss=f"{float(m['loss']):.3f}",
                    acc=f"{float(m['accuracy']):.3f}",
                )
        train = {k: float(v) for k, v in metrics.compute().items()}
        model.eval()
        metrics.reset()
        eval_step(model, metrics, jnp.asarray(x_test), jnp.asarray(y_test))
        test = {k: float(v) for k, v in metrics.compute().items()}
        for split, values in (("train", train), ("test", test)):
            for k, v in values.items():
                history[f"{split}_{k}"].append(v)
        bar.set_postfix(
            epoch=epoch + 1, loss=f"{train['loss']:.3f}", test_acc=f"{test['accuracy']:.3f}"
        )
        checkpointer.save(
            epoch + 1, model=model, optimizer=optimizer, metadata={"history": history}
        )
    bar.close()
    checkpointer.close()

    plot_path = os.path.join(out_dir, "curves.png")
    _save_plot(history, plot_path)
    summary = {
        "test_accuracy": history["test_accuracy"][-1],
        "test_loss": history["test_loss"][-1],
        "epochs": args.epochs,
        "seconds": round(time.perf_counter() - start, 1),
        "plot": plot_path,
        "checkpoints": checkpointer.directory,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}  "
        f"in {summary['seconds']} s\nplot: {plot_path}\ncheckpoints: {checkpointer.directory}"
    )
    return summary


if __name__ == "__main__":
    main()
