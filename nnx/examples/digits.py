"""Train a small CNN on scikit-learn's bundled digits (8x8 images, 10 classes).

The README's main job::

    python -m nnx.examples.digits                     # ~10-20 s on 2 CPU cores
    python -m nnx.examples.digits --epochs 20 --resume  # continue from the last checkpoint
    python -m nnx.examples.digits --overwrite         # start again, replacing the checkpoints

It shows a progress bar with loss and accuracy, saves a checkpoint of model + optimizer
(orbax, via ``nnx.Checkpointer``) after every epoch, and writes a PNG of the loss/accuracy
curves and ``summary.json``. Needs the ``examples`` extra (scikit-learn, matplotlib, tqdm).

Safety, per epoch (the checkpoint granularity):

* Ctrl-C keeps the model and optimizer as they were after the last *completed* epoch (the
  checkpoint written then; the unfinished epoch is dropped), writes ``summary.json``, prints
  where the checkpoint is and the command that resumes it, and exits with status 130.
* A directory that already holds checkpoints is refused before anything is trained or
  deleted: pass ``--resume`` to continue them, ``--overwrite`` to replace them (only the
  step folders of ``OUT/checkpoints`` are deleted, by the Checkpointer), or another ``--out``.
* ``--resume`` reproduces an uninterrupted run exactly: the shuffle of each epoch is keyed by
  (seed, epoch), the dropout random stream is part of the saved model state, and the
  settings that shape training (seed, batch size, learning rate) must match the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
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


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optax transformation per learning rate: it is static in nnx.jit's cache key, so
    later runs in the same process (the tests) reuse the compiled train_step."""
    return optax.adam(learning_rate)


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


CHECKPOINT_SUBDIR = "checkpoints"
# The settings that shape the trajectory: a resumed run must use the checkpoint's values.
TRAJECTORY_FLAGS = {
    "seed": "--seed",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="train until this epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/digits", help="output directory")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --out"
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start from scratch, deleting the checkpoints already in --out",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def resume_command(args: argparse.Namespace) -> str:
    """The shell command that continues this run (same cwd, interpreter and settings)."""
    exe = sys.executable or "python"
    rel = os.path.relpath(exe) if os.path.isabs(exe) else exe
    if not rel.startswith(os.pardir):  # the interpreter lives below the current directory
        exe = rel if os.sep in rel else os.path.join(os.curdir, rel)
    words = [exe, "-m", "nnx.examples.digits", "--out", args.out]
    defaults = _parser().parse_args([])
    for name, flag in (("epochs", "--epochs"), *TRAJECTORY_FLAGS.items()):
        if getattr(args, name) != getattr(defaults, name):
            words += [flag, str(getattr(args, name))]
    if args.no_progress:
        words.append("--no-progress")
    words.append("--resume")
    return shlex.join(words)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in TRAJECTORY_FLAGS}


@contextlib.contextmanager
def _sigint(handler: Any) -> Iterator[list[int]]:
    """Runs the block with `handler` for SIGINT ('defer': record it, raise it after the
    block; or signal.SIG_IGN), if Python's default Ctrl-C handling is in place."""
    received: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield received
        return
    if handler == "defer":
        handler = lambda signum, frame: received.append(signum)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _refuse_existing(checkpointer: nnx.Checkpointer, args: argparse.Namespace) -> None:
    """Stops (exit status 1) when --out holds checkpoints and neither --resume nor
    --overwrite says what to do with them. Nothing is changed."""
    steps = checkpointer.all_steps()
    if not steps:
        return
    about = ""
    try:
        meta = checkpointer.metadata() or {}
    except nnx.CheckpointError:
        meta = {}
    saved = meta.get("config")
    saved = (
        {k: v for k, v in saved.items() if k in TRAJECTORY_FLAGS} if isinstance(saved, dict) else {}
    )
    if saved:
        about = "; " + ", ".join(f"{TRAJECTORY_FLAGS[k]} {v}" for k, v in saved.items())
    if "epochs_requested" in meta:
        about = f" of {meta['epochs_requested']} requested" + about
    more = f" (raise --epochs above {steps[-1]} to train on)" if steps[-1] >= args.epochs else ""
    # Resuming needs the checkpoint's settings: suggest them.
    resume = resume_command(argparse.Namespace(**{**vars(args), **saved}))
    print(
        f"{checkpointer.directory} already holds checkpoints of another run (epochs "
        f"{steps}, latest {steps[-1]}{about}). Nothing was trained or changed.\n"
        "Choose one:\n"
        f"  --resume     continue that run from epoch {steps[-1]}{more}: {resume}\n"
        "  --overwrite  delete those checkpoints and train from scratch\n"
        "  --out DIR    keep them and write this run to another directory",
        file=sys.stderr,
    )
    raise SystemExit(1)


def _check_resumable(checkpointer: nnx.Checkpointer, args: argparse.Namespace) -> None:
    """Stops (exit status 1) when the latest checkpoint cannot be resumed with `args`."""
    where = checkpointer.directory
    try:
        saved = (checkpointer.metadata() or {}).get("config")
    except nnx.CheckpointError as err:
        print(f"Cannot resume from {where}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if not isinstance(saved, dict):
        return  # a checkpoint of an earlier version of this script: nothing to compare
    wanted = _config(args)
    diff = [k for k in TRAJECTORY_FLAGS if k in saved and saved[k] != wanted[k]]
    if diff:
        print(
            f"Cannot resume from {where}: it was trained with "
            + ", ".join(f"{TRAJECTORY_FLAGS[k]} {saved[k]}" for k in diff)
            + ", this run asks for "
            + ", ".join(f"{TRAJECTORY_FLAGS[k]} {wanted[k]}" for k in diff)
            + ". Nothing was trained or changed.\nFix: resume with the checkpoint's values, "
            "or start a new run with --overwrite or another --out.",
            file=sys.stderr,
        )
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the job; returns the summary (also written to OUT/summary.json).

    Exits (SystemExit) with status 130 after Ctrl-C, 1 when --out holds checkpoints that
    neither --resume nor --overwrite is given for, or when they cannot be resumed.
    """
    args = _parser().parse_args(argv)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    checkpointer = nnx.Checkpointer(os.path.join(out_dir, CHECKPOINT_SUBDIR), max_to_keep=2)
    resume_from = checkpointer.latest_step() if args.resume else None
    try:
        if not (args.resume or args.overwrite):
            _refuse_existing(checkpointer, args)
        if resume_from is not None:
            _check_resumable(checkpointer, args)
    except SystemExit:
        checkpointer.close()
        raise

    x_train, y_train, x_test, y_test = load_digits(args.seed)
    model = CNN(rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, _adam(args.learning_rate))
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    history: dict[str, list[float]] = {
        k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    }
    first_epoch = 0
    resumed = False
    if args.resume and resume_from is None:
        print(f"no checkpoint in {checkpointer.directory}: starting from scratch")
    elif args.resume:
        try:
            restored = checkpointer.restore(resume_from, model=model, optimizer=optimizer)
        except nnx.CheckpointError as err:
            print(f"Cannot resume from {checkpointer.directory}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        first_epoch = restored["step"]
        history = restored["metadata"]["history"]
        resumed = True
        print(f"resumed from epoch {first_epoch}")

    def save(epoch: int, overwrite: bool = False) -> None:
        metadata = {
            "history": history,
            "config": _config(args),
            "epochs_requested": args.epochs,
        }
        checkpointer.save(
            epoch, model=model, optimizer=optimizer, metadata=metadata, overwrite=overwrite
        )

    steps = len(x_train) // args.batch_size
    if first_epoch < args.epochs:
        print(
            f"training epochs {first_epoch + 1}-{args.epochs} ({steps} steps of "
            f"{args.batch_size} images each); a checkpoint after every epoch in "
            f"{checkpointer.directory}",
            flush=True,
        )
    else:
        print(
            f"nothing to train: the checkpoint is at epoch {first_epoch}, --epochs is "
            f"{args.epochs}",
            flush=True,
        )
    bar = tqdm(
        total=max(args.epochs, first_epoch) * steps,
        initial=first_epoch * steps,
        disable=args.no_progress,
        unit="step",
    )
    summarize = functools.partial(
        _write_summary, out_dir, args, checkpointer, start, first_epoch if resumed else None
    )
    try:
        if not resumed:
            # Epoch 0 (the initial state), so that even Ctrl-C in the first epoch leaves a
            # checkpoint to resume. With --overwrite this save first deletes the old steps;
            # a Ctrl-C meanwhile waits until the save is handed over whole.
            with _sigint("defer"):
                save(0, overwrite=args.overwrite)
        for epoch in range(first_epoch, args.epochs):
            model.train()
            metrics.reset()
            # Keyed by (seed, epoch), not by where this run started: a resumed run sees
            # the same batches as an uninterrupted one.
            order = np.random.default_rng([args.seed, epoch]).permutation(len(x_train))
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
            save(epoch + 1)
            if args.no_progress:
                print(
                    f"epoch {epoch + 1}/{args.epochs}  train loss {train['loss']:.4f}  "
                    f"test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}",
                    flush=True,
                )
        bar.close()
        checkpointer.close()
        plot_path = os.path.join(out_dir, "curves.png")
        _save_plot(history, plot_path)
        summary = summarize(history, plot_path)
    except KeyboardInterrupt:
        # The model and optimizer in memory may be mid-epoch, even mid-step: keep only what
        # the checkpoints hold, i.e. the state after the last completed epoch.
        with _sigint(signal.SIG_IGN):  # a second Ctrl-C must not cut this short
            bar.close()
            checkpointer.close()  # commits the save in flight, if any
            done = checkpointer.latest_step() or 0
            summarize({k: v[:done] for k, v in history.items()}, None, interrupted=True)
            dropped = (
                "all requested epochs are done"
                if done >= args.epochs
                else f"the unfinished epoch {done + 1} is dropped"
            )
            print(
                f"\nInterrupted: the model and optimizer after epoch {done} of {args.epochs} are "
                f"saved in {checkpointer.directory} ({dropped}).\n"
                f"Resume with: {resume_command(args)}",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(130) from None
    print(
        f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}  "
        f"in {summary['seconds']} s\nplot: {plot_path}\ncheckpoints: {checkpointer.directory}"
    )
    return summary


def _write_summary(
    out_dir: str,
    args: argparse.Namespace,
    checkpointer: nnx.Checkpointer,
    start: float,
    resumed_from: int | None,
    history: dict[str, list[float]],
    plot_path: str | None,
    interrupted: bool = False,
) -> dict[str, Any]:
    """Writes OUT/summary.json for the state the checkpoint holds; returns it."""
    epochs_trained = len(history["test_accuracy"])
    summary = {
        "test_accuracy": history["test_accuracy"][-1] if epochs_trained else None,
        "test_loss": history["test_loss"][-1] if epochs_trained else None,
        "epochs": epochs_trained,  # the key earlier versions wrote; same as epochs_trained
        "epochs_trained": epochs_trained,  # in total, over every run into this --out
        "epochs_this_run": epochs_trained - (resumed_from or 0),
        "epochs_requested": args.epochs,
        "resumed_from_epoch": resumed_from,
        "interrupted": interrupted,
        "resume_command": resume_command(args) if interrupted else None,
        "seconds": round(time.perf_counter() - start, 1),
        "plot": plot_path,
        "checkpoints": checkpointer.directory,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # before training started: nothing was trained or saved
        print("\nInterrupted before training started; no checkpoint was written.", file=sys.stderr)
        raise SystemExit(130) from None
