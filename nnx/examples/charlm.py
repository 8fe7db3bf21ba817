"""Train a small character-level transformer on Python's own standard-library sources.

The README's second job::

    python -m nnx.examples.charlm            # a few minutes on 2 CPU cores
    python -m nnx.examples.charlm --tiny     # a toy run that finishes in seconds

A decoder-only transformer (token + learned position embeddings; pre-RMSNorm blocks of causal
``nnx.MultiHeadAttention`` and an MLP; output through the tied embedding, ``Embed.attend``)
learns to continue Python code. It shows the *scan-over-layers* pattern: the blocks are
created once with ``nnx.vmap`` over a constructor (every parameter gets a leading layer axis)
and applied with ``nnx.scan``, so the forward pass compiles one block however deep the model
is. Sampling uses the attention layers' KV cache (``decode=True``), one character at a time;
the cache Variables are stacked along the layer axis too and the decoding step scans over
layers exactly like training does.

The data is a fixed list of modules from the standard library of the Python that runs the
script, so it exists everywhere and the run is deterministic for a given ``--seed``. It prints
the validation loss before and after training (compare with ``log(vocab size)``, the loss of a
uniform guess) and a sample. With ``--out DIR`` it also writes a loss-curve PNG and a
checkpoint (``nnx.Checkpointer``). The progress bar needs ``tqdm``, the plot ``matplotlib``
(the ``examples`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx

# Pure-Python modules present in every CPython >= 3.11, read in this order.
CORPUS_MODULES = (
    "argparse.py",
    "bisect.py",
    "calendar.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "tokenize.py",
)
UNKNOWN = "\ufffd"  # stands for characters too rare to get their own id
MIN_COUNT = 5  # a character needs this many occurrences in the training text
# What --tiny sets (flags given explicitly win): a toy run that finishes in seconds.
TINY = {
    "steps": 40,
    "batch_size": 8,
    "seq_len": 32,
    "layers": 2,
    "dim": 32,
    "heads": 2,
    "sample_len": 40,
    "eval_windows": 32,
}


# -- data ------------------------------------------------------------------------------------
class CharVocab:
    """Maps characters to ids and back; rare or unseen characters map to :data:`UNKNOWN`.

    Args:
      text: the text whose characters (those occurring at least `min_count` times) make up the
        vocabulary, in sorted order, followed by :data:`UNKNOWN`.
      min_count: occurrences a character needs to get its own id.
    """

    def __init__(self, text: str, min_count: int = MIN_COUNT):
        counts = Counter(text)
        self.chars = "".join(sorted(c for c, n in counts.items() if n >= min_count)) + UNKNOWN
        self.unknown_id = len(self.chars) - 1
        self._ids = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`, an int32 array of shape ``(len(text),)``."""
        return np.array([self._ids.get(c, self.unknown_id) for c in text], dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of `ids`."""
        return "".join(self.chars[int(i)] for i in ids)


def load_corpus(val_fraction: float = 0.1) -> tuple[str, str]:
    """The train and validation text: the last `val_fraction` of each corpus module is held
    out, so both parts mix every module's style.

    Raises:
      FileNotFoundError: none of :data:`CORPUS_MODULES` exists (a Python without its sources).
    """
    stdlib = os.path.dirname(os.__file__)
    train, val = [], []
    for name in CORPUS_MODULES:
        path = os.path.join(stdlib, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        cut = int(len(text) * (1.0 - val_fraction))
        train.append(text[:cut])
        val.append(text[cut:])
    if not train:
        raise FileNotFoundError(
            f"charlm: none of the standard-library sources {CORPUS_MODULES} exists in {stdlib}."
            "\nFix: install the Python sources (e.g. the python3-dev/-lib package)."
        )
    return "\n\n".join(train), "\n\n".join(val)


def windows(data: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, ...]:
    """Inputs ``data[s : s + seq_len]`` and targets (shifted by one) for each start `s`."""
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


def eval_windows(data: np.ndarray, seq_len: int, count: int) -> tuple[np.ndarray, ...]:
    """`count` fixed windows spread evenly over `data` (the same ones at every evaluation)."""
    starts = np.linspace(0, len(data) - seq_len - 1, count).astype(np.int64)
    return windows(data, starts, seq_len)


# -- model -----------------------------------------------------------------------------------
class Block(nnx.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
      dim: width of the residual stream.
      heads: number of attention heads (must divide `dim`).
      rngs: ``params`` initialises the weights.
    """

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.RMSNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, use_bias=False, decode=False, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.down = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None, decode: bool) -> jax.Array:
        """Applies the block to ``x`` ``(batch, length, dim)``; with `decode`, ``length`` is 1
        and the attention reads and extends its KV cache."""
        x = x + self.attn(self.attn_norm(x), mask=mask, decode=decode)
        return x + self.down(nnx.gelu(self.up(self.mlp_norm(x))))


class CharTransformer(nnx.Module):
    """A decoder-only transformer over character ids, its blocks stacked along a layer axis.

    Args:
      vocab_size: number of character ids.
      max_len: longest sequence (the number of learned positions, and the KV cache's size).
      layers: number of blocks.
      dim: width of the residual stream.
      heads: attention heads per block.
      rngs: ``params`` initialises the weights.
    """

    def __init__(
        self, vocab_size: int, max_len: int, layers: int, dim: int, heads: int, *, rngs: nnx.Rngs
    ):
        init = nnx.initializers.normal(0.02)
        self.max_len = max_len
        self.dim = dim
        self.embed = nnx.Embed(vocab_size, dim, embedding_init=init, rngs=rngs)
        self.pos = nnx.Embed(max_len, dim, embedding_init=init, rngs=rngs)
        # Scan over layers, part 1: vmap the constructor over `layers` split keys, so every
        # Variable of `self.blocks` gets a leading axis of size `layers`.
        with nnx.split_rngs(rngs, splits=layers):
            self.blocks = nnx.vmap(lambda r: Block(dim, heads, rngs=r), in_axes=0, out_axes=0)(rngs)
        self.norm = nnx.RMSNorm(dim, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, decode: bool = False) -> jax.Array:
        """Next-character logits ``(batch, length, vocab_size)`` for ``tokens``
        ``(batch, length)``.

        With ``decode=True`` the tokens are one position, ``(batch, 1)``, following those
        already in the KV cache (see :meth:`init_cache`); their position is the cache's fill.
        """
        length = tokens.shape[-1]
        if decode:
            positions = self.blocks.attn.cache_index.value[0] + jnp.arange(length)
            mask = None  # the cache masks the positions not written yet
        else:
            positions = jnp.arange(length)
            mask = nnx.make_causal_mask(tokens)  # (batch, 1, length, length)
        x = self.embed(tokens) + self.pos(positions)[None]

        # Scan over layers, part 2: one step per block slice; the activations are the carry.
        def apply_block(x: jax.Array, block: Block, mask: jax.Array | None) -> jax.Array:
            return block(x, mask, decode)

        x = nnx.scan(apply_block, in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)(
            x, self.blocks, mask
        )
        return self.embed.attend(self.norm(x))  # tied output embedding

    def init_cache(self, batch_size: int) -> None:
        """Creates an empty KV cache for decoding `batch_size` sequences of up to `max_len`.

        Every block's attention gets its own cache, so the cache Variables are stacked along
        the layer axis like the parameters.
        """

        # A structural change under vmap: each layer slice gets its cache Variables, and they
        # come out stacked along the layer axis (the argument's in_axes), as in flax.nnx.
        nnx.vmap(lambda attn: attn.init_cache((batch_size, self.max_len, self.dim)))(
            self.blocks.attn
        )

    def reset_cache(self) -> None:
        """Starts a new sequence in the existing cache (old entries are masked, then
        overwritten)."""
        index = self.blocks.attn.cache_index
        index.value = jnp.zeros_like(index.value)


# -- training --------------------------------------------------------------------------------
def loss_fn(model: CharTransformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-character cross-entropy (nats)."""
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@nnx.jit
def train_step(
    model: CharTransformer, optimizer: nnx.Optimizer, inputs: jax.Array, targets: jax.Array
) -> jax.Array:
    """One AdamW step on a batch; returns the batch loss."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, inputs, targets)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_step(model: CharTransformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The loss of a batch, without training."""
    return loss_fn(model, inputs, targets)


def evaluate(model: CharTransformer, split: tuple[np.ndarray, ...], batch_size: int) -> float:
    """Mean loss over the fixed windows of `split` (whole batches only)."""
    inputs, targets = split
    losses = [
        eval_step(
            model, jnp.asarray(inputs[i : i + batch_size]), jnp.asarray(targets[i : i + batch_size])
        )
        for i in range(0, len(inputs) - batch_size + 1, batch_size)
    ]
    return float(np.mean([float(x) for x in losses]))


# -- sampling --------------------------------------------------------------------------------
@nnx.jit
def decode_step(
    model: CharTransformer,
    token: jax.Array,
    key: jax.Array,
    step: jax.Array,
    temperature: jax.Array,
) -> jax.Array:
    """Feeds ``token`` ``(batch, 1)`` through the KV cache and samples the next one, using the
    random key ``fold_in(key, step)``."""
    logits = model(token, decode=True)[:, -1]
    return jax.random.categorical(jax.random.fold_in(key, step), logits / temperature)[:, None]


def generate(
    model: CharTransformer,
    prompt: np.ndarray,
    length: int,
    *,
    key: jax.Array,
    temperature: float = 0.8,
) -> np.ndarray:
    """Samples `length` ids continuing `prompt`, one at a time with the KV cache.

    When the cache (``model.max_len`` positions) is full, it is refilled with the last half
    of the text, so samples may be longer than the training context.

    Args:
      model: the trained model (its KV cache is (re)created here).
      prompt: the ids to continue (at least one).
      length: number of ids to sample.
      key: random key of the sampling.
      temperature: divides the logits; lower is more conservative.

    Returns:
      The sampled ids, an int32 array of shape ``(length,)``.

    Raises:
      ValueError: the prompt is empty.
    """
    if len(prompt) == 0:
        raise ValueError("generate needs a prompt of at least one id, e.g. that of '\\n'.")
    model.init_cache(batch_size=1)
    temp = jnp.asarray(temperature, jnp.float32)
    keep = max(1, model.max_len // 2)
    text = [int(i) for i in prompt[-model.max_len :]]
    steps = 0

    def feed(ids: list[int]) -> jax.Array:
        """Feeds `ids` into the cache; returns the token sampled after the last one."""
        nonlocal steps
        for i in ids:
            token = jnp.full((1, 1), i, jnp.int32)
            nxt = decode_step(model, token, key, jnp.asarray(steps), temp)
            steps += 1
        return nxt

    filled = len(text)
    nxt = feed(text)
    out: list[int] = []
    for n in range(length):
        token = int(nxt[0, 0])
        out.append(token)
        text.append(token)
        if n == length - 1:
            break
        if filled == model.max_len:  # full: start again from the last `keep` ids
            model.reset_cache()
            filled = keep
            nxt = feed(text[-keep:])
        else:
            filled += 1
            nxt = feed([token])
    return np.array(out, dtype=np.int32)


# -- the job ---------------------------------------------------------------------------------
def _save_plot(history: dict[str, list], uniform_loss: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["train_loss"], alpha=0.4, label="train (batch)")
    ax.plot(history["val_step"], history["val_loss"], "o-", label="validation")
    ax.axhline(uniform_loss, color="gray", linestyle="--", label="uniform guess")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title("nnx character transformer on Python stdlib sources")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line flags (`argv`, default ``sys.argv[1:]``), with ``--tiny`` applied."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="training context length")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-len", type=int, default=400)
    parser.add_argument("--prompt", default="def ")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--eval-windows", type=int, default=256, help="windows per evaluation")
    parser.add_argument("--out", default=None, help="directory for a loss plot and checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: runs in seconds")
    args = parser.parse_args(argv)
    if args.tiny:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for name, value in TINY.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains, evaluates and samples (see the module docstring); returns the figures."""
    args = parse_args(argv)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    train_text, val_text = load_corpus()
    vocab = CharVocab(train_text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    train_eval = eval_windows(train_ids, args.seq_len, args.eval_windows)
    val_eval = eval_windows(val_ids, args.seq_len, args.eval_windows)
    uniform = math.log(len(vocab))
    print(
        f"data: {len(train_ids):,} train / {len(val_ids):,} validation characters, "
        f"vocab {len(vocab)} (uniform guess: loss {uniform:.3f})"
    )

    model = CharTransformer(
        len(vocab), args.seq_len, args.layers, args.dim, args.heads, rngs=nnx.Rngs(args.seed)
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, args.steps // 10), max(1, args.steps), args.lr / 10
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    print(
        f"model: {args.layers} blocks x dim {args.dim}, {args.heads} heads, context "
        f"{args.seq_len}: {n_params:,} parameters"
    )

    initial_train = evaluate(model, train_eval, args.batch_size)
    initial_val = evaluate(model, val_eval, args.batch_size)
    print(f"step 0: train loss {initial_train:.3f}  val loss {initial_val:.3f}")
    history: dict[str, list] = {
        "step": [],
        "train_loss": [],
        "val_step": [0],
        "val_loss": [initial_val],
    }

    rng = np.random.default_rng(args.seed)
    eval_every = max(1, args.steps // 5)
    bar = tqdm(total=args.steps, disable=args.no_progress, unit="step")
    pending: list[jax.Array] = []
    postfix: dict[str, str] = {}
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(train_ids) - args.seq_len - 1, args.batch_size)
        inputs, targets = windows(train_ids, starts, args.seq_len)
        pending.append(train_step(model, optimizer, jnp.asarray(inputs), jnp.asarray(targets)))
        validate = step % eval_every == 0 and step != args.steps
        if step % 10 == 0 or validate or step == args.steps:
            losses = [float(x) for x in pending]  # waits for the queued steps
            history["step"].extend(range(step - len(losses) + 1, step + 1))
            history["train_loss"].extend(losses)
            pending = []
            postfix["loss"] = f"{np.mean(losses):.3f}"
            if validate:
                history["val_step"].append(step)
                history["val_loss"].append(evaluate(model, val_eval, args.batch_size))
                postfix["val"] = f"{history['val_loss'][-1]:.3f}"
            bar.set_postfix(postfix)
        bar.update(1)
    bar.close()
    train_seconds = time.perf_counter() - start

    final_train = evaluate(model, train_eval, args.batch_size)
    final_val = evaluate(model, val_eval, args.batch_size)
    history["val_step"].append(args.steps)
    history["val_loss"].append(final_val)
    print(f"step {args.steps}: train loss {final_train:.3f}  val loss {final_val:.3f}")

    summary: dict[str, Any] = {}
    if args.out:
        out_dir = os.path.abspath(args.out)
        os.makedirs(out_dir, exist_ok=True)
        plot = os.path.join(out_dir, "loss.png")
        _save_plot(history, uniform, plot)
        with nnx.Checkpointer(os.path.join(out_dir, "checkpoints")) as ckpt:
            ckpt.save(
                args.steps,
                model=model,
                metadata={"vocab": vocab.chars, "args": vars(args)},
                force=True,
            )
        summary.update(plot=plot, checkpoints=ckpt.directory)

    prompt = args.prompt or "\n"
    sample_ids = generate(
        model,
        vocab.encode(prompt),
        args.sample_len,
        key=jax.random.key(args.seed),
        temperature=args.temperature,
    )
    sample = vocab.decode(sample_ids)
    seconds = time.perf_counter() - start
    print(f"--- sample (temperature {args.temperature}) ---\n{prompt}{sample}\n---")
    print(
        f"val loss {initial_val:.3f} -> {final_val:.3f} (uniform {uniform:.3f}) in {seconds:.1f} s"
    )
    summary.update(
        initial_train_loss=initial_train,
        final_train_loss=final_train,
        initial_val_loss=initial_val,
        final_val_loss=final_val,
        uniform_loss=uniform,
        vocab=vocab.chars,
        prompt=prompt,
        sample=sample,
        parameters=n_params,
        steps=args.steps,
        train_seconds=round(train_seconds, 1),
        seconds=round(seconds, 1),
    )
    if args.out:
        with open(os.path.join(os.path.abspath(args.out), "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
