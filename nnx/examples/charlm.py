"""Train a small character-level transformer on Python's own standard-library sources.

The README's second job::

    python -m nnx.examples.charlm            # a few minutes on 2 CPU cores
    python -m nnx.examples.charlm --tiny     # a toy run that finishes in seconds

    # the same model on a mesh of 8 devices (here: 8 CPU devices of one process)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m nnx.examples.charlm --mesh data=4,model=2

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

**On a mesh** (``--mesh data=4,model=2``, ``--mesh data=8``): the same training on several
devices, with JAX's own GSPMD sharding (nnx adds no communication of its own). The parameters
are annotated with ``nnx.with_partitioning`` in *logical* axis names (``'embed'``, ``'heads'``,
``'mlp'``, ...), which :func:`axis_rules` maps onto the mesh axes, Megatron-style: the attention's
query/key/value kernels are split by head over ``'model'`` (column split) and its output kernel
by head too (row split); the MLP's up kernel is split by hidden unit (column) and its down kernel
likewise (row), so each block needs one all-reduce after attention and one after the MLP. The
embeddings, the norms and the biases of the residual stream are replicated. Each batch is split
over ``'data'``, and the activations entering each block are kept split that way
(:func:`split_by_batch`); the optimizer's moments are created sharded like their parameters.
The losses equal the single-device run's to float precision.

The mesh takes the first devices JAX sees. On a CPU host, ask for fake CPU devices before Python
starts (``XLA_FLAGS=--xla_force_host_platform_device_count=8``); on a GPU or TPU host the same
flags use the accelerators (``--mesh data=2,model=4`` on 8 GPUs). This script runs in one
process; to span several hosts, a job would call ``jax.distributed.initialize()`` first and feed
each process's part of the batch with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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
# The axes --mesh may name: the batch is split over 'data', attention heads and MLP units
# over 'model'.
MESH_AXES = ("data", "model")


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
def partitioned(init: nnx.Initializer, *names: str) -> nnx.Initializer:
    """`init`, its Variables annotated with the logical axis `names` (one per array axis)."""
    return nnx.with_partitioning(init, names)


def axis_rules(mesh_axes: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """How the logical axis names of the annotations map onto the axes of a mesh.

    Tensor parallelism, Megatron-style: attention heads and MLP hidden units are split over
    ``'model'`` (if the mesh has that axis); every other axis is replicated. The batch goes
    over ``'data'`` (if the mesh has it).
    """
    model = "model" if "model" in mesh_axes else None
    data = "data" if "data" in mesh_axes else None
    return (
        ("batch", data),
        ("heads", model),
        ("mlp", model),
        ("head_dim", None),
        ("embed", None),
        ("vocab", None),
        ("position", None),
        ("layers", None),
    )


def split_by_batch(x: jax.Array) -> jax.Array:
    """`x` ``(batch, ...)`` constrained to be split by rows as the logical axis ``'batch'`` says
    (see :func:`axis_rules`); unchanged when no mesh is set.

    Left alone, the compiler may lay the activations out to suit the weights (e.g. split along
    the features like FSDP-sharded weights, summing partial results over the whole batch); the
    constraint keeps each device on its own rows, so that weights are gathered instead.
    """
    if jax.sharding.get_abstract_mesh().empty:
        return x
    names = ("batch",) + (None,) * (x.ndim - 1)
    spec = nnx.get_partition_spec(nnx.Variable(x, out_sharding=names, eager_sharding=False))
    return jax.lax.with_sharding_constraint(x, spec.value)


class Block(nnx.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
      dim: width of the residual stream.
      heads: number of attention heads (must divide `dim`).
      rngs: ``params`` initialises the weights.
    """

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        # Sharding annotations in logical axis names (see axis_rules); the initializers are
        # the layers' defaults, so the values do not depend on the annotations.
        kernel, zeros, ones = (
            nnx.initializers.lecun_normal(),
            nnx.initializers.zeros,
            nnx.initializers.ones,
        )
        self.attn_norm = nnx.RMSNorm(dim, scale_init=partitioned(ones, "embed"), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads,
            dim,
            use_bias=False,
            decode=False,
            # query/key/value (dim, heads, head_dim): a column split by head;
            # out (heads, head_dim, dim): a row split by head.
            kernel_init=partitioned(kernel, "embed", "heads", "head_dim"),
            out_kernel_init=partitioned(kernel, "heads", "head_dim", "embed"),
            rngs=rngs,
        )
        self.mlp_norm = nnx.RMSNorm(dim, scale_init=partitioned(ones, "embed"), rngs=rngs)
        self.up = nnx.Linear(  # column split
            dim,
            4 * dim,
            kernel_init=partitioned(kernel, "embed", "mlp"),
            bias_init=partitioned(zeros, "mlp"),
            rngs=rngs,
        )
        self.down = nnx.Linear(  # row split
            4 * dim,
            dim,
            kernel_init=partitioned(kernel, "mlp", "embed"),
            bias_init=partitioned(zeros, "embed"),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None, decode: bool) -> jax.Array:
        """Applies the block to ``x`` ``(batch, length, dim)``; with `decode`, ``length`` is 1
        and the attention reads and extends its KV cache."""
        if not decode:  # (decoding: a batch of one, not split)
            x = split_by_batch(x)
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
        self.embed = nnx.Embed(
            vocab_size, dim, embedding_init=partitioned(init, "vocab", "embed"), rngs=rngs
        )
        self.pos = nnx.Embed(
            max_len, dim, embedding_init=partitioned(init, "position", "embed"), rngs=rngs
        )
        # Scan over layers, part 1: vmap the constructor over `layers` split keys, so every
        # Variable of `self.blocks` gets a leading axis of size `layers` (named 'layers' in
        # the sharding annotations).
        with nnx.split_rngs(rngs, splits=layers):
            self.blocks = nnx.vmap(
                lambda r: Block(dim, heads, rngs=r),
                in_axes=0,
                out_axes=0,
                transform_metadata={nnx.PARTITION_NAME: "layers"},
            )(rngs)
        self.norm = nnx.RMSNorm(
            dim, scale_init=partitioned(nnx.initializers.ones, "embed"), rngs=rngs
        )

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

        x = nnx.scan(
            apply_block,
            in_axes=(nnx.Carry, 0, None),
            out_axes=nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
        )(x, self.blocks, mask)
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


# -- mesh ------------------------------------------------------------------------------------
def parse_mesh(text: str) -> dict[str, int]:
    """The axes of ``--mesh``: ``'data=4,model=2'`` -> ``{'data': 4, 'model': 2}``.

    Raises:
      argparse.ArgumentTypeError: not ``axis=size`` pairs of :data:`MESH_AXES` and positive
        sizes.
    """
    shape: dict[str, int] = {}
    for part in text.split(","):
        name, _, size = part.strip().partition("=")
        if name not in MESH_AXES or name in shape or not size.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a mesh: expected comma-separated axis=size pairs over the axes "
                f"{MESH_AXES} (the batch is split over 'data', attention heads and MLP units "
                "over 'model'), each named once, e.g. 'data=4,model=2' or 'data=8'."
            )
        shape[name] = int(size)
        if shape[name] < 1:
            raise argparse.ArgumentTypeError(f"mesh axis {name!r} has size 0 in {text!r}.")
    return shape


def mesh_problem(args: argparse.Namespace) -> str | None:
    """Why ``args.mesh`` cannot run here (too few devices, sizes that do not divide), or None."""
    shape: Mapping[str, int] = args.mesh
    spec = ",".join(f"{k}={v}" for k, v in shape.items())
    need = math.prod(shape.values())
    have = jax.device_count()
    if need > have:
        return (
            f"--mesh {spec} needs {need} devices, but JAX sees {have} "
            f"({jax.default_backend()}).\nFix: on a CPU host, make JAX present {need} CPU "
            "devices by setting, before Python starts:\n"
            f"  XLA_FLAGS=--xla_force_host_platform_device_count={need} python -m "
            f"nnx.examples.charlm --mesh {spec}\n"
            "On a GPU or TPU host, give sizes whose product is at most the number of "
            "accelerators (jax.device_count())."
        )
    data, model = shape.get("data", 1), shape.get("model", 1)
    if args.batch_size % data:
        return (
            f"--mesh {spec} splits each batch over data={data} devices, which does not divide "
            f"--batch-size {args.batch_size}.\nFix: a batch size that is a multiple of {data}."
        )
    if args.heads % model:  # then model also divides dim and the MLP's 4 * dim units
        return (
            f"--mesh {spec} splits the attention heads over model={model} devices, which does "
            f"not divide --heads {args.heads}.\nFix: a number of heads that is a multiple of "
            f"{model}, or a smaller 'model' axis."
        )
    return None


def make_mesh(shape: Mapping[str, int]) -> Mesh:
    """A mesh of the first ``prod(shape)`` devices, axis names and sizes from `shape`."""
    devices = jax.devices()[: math.prod(shape.values())]
    return jax.make_mesh(
        tuple(shape.values()),
        tuple(shape),
        axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
        devices=devices,
    )


@contextlib.contextmanager
def on_mesh(mesh: Mesh | None) -> Iterator[None]:
    """Within the block, new annotated Variables are placed on `mesh` with :func:`axis_rules`
    (the model, the optimizer's moments); with no mesh, nothing changes."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nnx.logical_axis_rules(axis_rules(mesh.axis_names)):
        yield


def put_batch(array: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """`array` ``(batch, ...)`` on the device; on a mesh, split by rows over ``'data'``."""
    if mesh is None:
        return jnp.asarray(array)
    batch = dict(axis_rules(mesh.axis_names))["batch"]
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec(batch)))


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


def evaluate(
    model: CharTransformer,
    split: tuple[np.ndarray, ...],
    batch_size: int,
    mesh: Mesh | None = None,
) -> float:
    """Mean loss over the fixed windows of `split` (whole batches only), each batch split over
    `mesh` if one is given."""
    inputs, targets = split
    losses = [
        eval_step(
            model,
            put_batch(inputs[i : i + batch_size], mesh),
            put_batch(targets[i : i + batch_size], mesh),
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
    parser.add_argument(
        "--mesh",
        type=parse_mesh,
        default=None,
        help="train on a device mesh, e.g. data=4,model=2 or data=8 (batch over 'data', "
        "heads and MLP over 'model')",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for name, value in TINY.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
    if args.mesh:
        # Collectives across many CPU devices can deadlock when the CPU client has fewer
        # threads than devices: give it two per device, unless set (read when JAX starts).
        os.environ.setdefault("PJRT_NPROC", str(2 * math.prod(args.mesh.values())))
        problem = mesh_problem(args)
        if problem:
            parser.error(problem)
    return args


def build(args: argparse.Namespace, vocab_size: int) -> tuple[CharTransformer, nnx.Optimizer]:
    """The model and its AdamW optimizer for the flags `args` (on the mesh of :func:`on_mesh`
    if the caller is inside one)."""
    model = CharTransformer(
        vocab_size, args.seq_len, args.layers, args.dim, args.heads, rngs=nnx.Rngs(args.seed)
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, args.steps // 10), max(1, args.steps), args.lr / 10
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains, evaluates and samples (see the module docstring); returns the figures."""
    args = parse_args(argv)
    mesh = make_mesh(args.mesh) if args.mesh else None
    with on_mesh(mesh):
        return run(args, mesh)


def run(args: argparse.Namespace, mesh: Mesh | None) -> dict[str, Any]:
    """The job of :func:`main` for the parsed flags `args`, on `mesh` if not None (the caller
    is inside ``on_mesh(mesh)``)."""
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

    model, optimizer = build(args, len(vocab))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    n_params = sum(int(np.prod(p.shape)) for p in params)
    print(
        f"model: {args.layers} blocks x dim {args.dim}, {args.heads} heads, context "
        f"{args.seq_len}: {n_params:,} parameters"
    )
    if mesh is not None:
        per_device = sum(int(np.prod(p.addressable_shards[0].data.shape)) for p in params)
        axes = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
        layout = [
            "batch split over 'data'" if "data" in mesh.shape else "batch replicated",
            "heads and MLP split over 'model'" if "model" in mesh.shape else "weights replicated",
        ]
        print(
            f"mesh: {axes} over {mesh.size} {jax.default_backend()} devices ("
            f"{', '.join(layout)}): {per_device:,} parameters per device"
        )

    initial_train = evaluate(model, train_eval, args.batch_size, mesh)
    initial_val = evaluate(model, val_eval, args.batch_size, mesh)
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
        pending.append(
            train_step(model, optimizer, put_batch(inputs, mesh), put_batch(targets, mesh))
        )
        validate = step % eval_every == 0 and step != args.steps
        if step % 10 == 0 or validate or step == args.steps:
            losses = [float(x) for x in pending]  # waits for the queued steps
            history["step"].extend(range(step - len(losses) + 1, step + 1))
            history["train_loss"].extend(losses)
            pending = []
            postfix["loss"] = f"{np.mean(losses):.3f}"
            if validate:
                history["val_step"].append(step)
                history["val_loss"].append(evaluate(model, val_eval, args.batch_size, mesh))
                postfix["val"] = f"{history['val_loss'][-1]:.3f}"
            bar.set_postfix(postfix)
        bar.update(1)
    bar.close()
    train_seconds = time.perf_counter() - start

    final_train = evaluate(model, train_eval, args.batch_size, mesh)
    final_val = evaluate(model, val_eval, args.batch_size, mesh)
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
    if mesh is not None:
        summary["mesh"] = dict(mesh.shape)
    if args.out:
        with open(os.path.join(os.path.abspath(args.out), "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
