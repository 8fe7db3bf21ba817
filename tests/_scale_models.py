"""Small models, data and a training step shared by the scale-out tests (issue 16).

`tests/test_scale_out.py` (8 CPU devices in one process) and `tests/test_multiprocess.py` (two
processes) train these and compare the sharded runs with one device. Nothing here builds a
mesh or imports jax's backend-setting flags: the caller has set up its devices first.

- :class:`MLP`: ``Linear -> gelu -> Linear``, annotated Megatron-style with
  ``nnx.with_partitioning`` on ``kernel_init``/``bias_init``: the first layer splits its output
  features (column-parallel), the second its input features (row-parallel). The names are
  mesh axes (``mlp='model'``) or logical names (``embed='embed', mlp='mlp'``, resolved by
  ``nnx.logical_axis_rules``); ``None`` everywhere leaves the model unannotated in effect.
- :func:`make_block`: the char-LM transformer block (``nnx.examples.charlm.Block``), small,
  annotated after construction with logical names by :func:`annotate_block` (the example
  builds it unannotated).
- :func:`batches`: deterministic float32 data; :func:`train`: a few steps of
  :data:`train_step` (``nnx.jit`` + ``nnx.Optimizer(optax.adam)``), returning the losses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nnx
from nnx.examples.charlm import Block

__all__ = [
    "BLOCK_NAMES",
    "MLP",
    "annotate_block",
    "batches",
    "block_loss",
    "make_block",
    "mlp_loss",
    "new_optimizer",
    "train",
    "train_step",
]

FEATURES, HIDDEN = 16, 32  # MLP: embed width and hidden width
DIM, HEADS, LENGTH = 16, 4, 8  # Block: residual width, heads (4 | model axis 4), sequence length
LEARNING_RATE = 1e-2

Names = tuple[str | None, ...]


class MLP(nnx.Module):
    """``down(gelu(up(x)))`` with ``up: embed -> mlp`` and ``down: mlp -> embed``.

    Args:
      rngs: ``params`` initialises the weights.
      embed: the annotation of the embed (input/output feature) axis: a mesh axis, a logical
        name, or None (not split).
      mlp: the same for the hidden axis; ``'model'`` is Megatron tensor parallelism.
      features: embed width.
      hidden: hidden width.
    """

    def __init__(
        self,
        rngs: nnx.Rngs,
        *,
        embed: str | None = None,
        mlp: str | None = None,
        features: int = FEATURES,
        hidden: int = HIDDEN,
    ):
        kernel, zeros = nnx.initializers.lecun_normal(), nnx.initializers.zeros
        self.up = nnx.Linear(  # column-parallel: its output features are split
            features,
            hidden,
            kernel_init=nnx.with_partitioning(kernel, (embed, mlp)),
            bias_init=nnx.with_partitioning(zeros, (mlp,)),
            rngs=rngs,
        )
        self.down = nnx.Linear(  # row-parallel: its input features are split
            hidden,
            features,
            kernel_init=nnx.with_partitioning(kernel, (mlp, embed)),
            bias_init=nnx.with_partitioning(zeros, (embed,)),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.gelu(self.up(x)))


# Logical names of every parameter of the char-LM block, by path (Megatron: the attention's
# query/key/value split their heads, its output projection takes the heads in; the MLP's up
# is column-parallel, its down row-parallel).
BLOCK_NAMES: dict[tuple[str, ...], Names] = {
    ("attn", "query", "kernel"): ("embed", "heads", None),
    ("attn", "key", "kernel"): ("embed", "heads", None),
    ("attn", "value", "kernel"): ("embed", "heads", None),
    ("attn", "out", "kernel"): ("heads", None, "embed"),
    ("attn_norm", "scale"): ("embed",),
    ("mlp_norm", "scale"): ("embed",),
    ("up", "kernel"): ("embed", "mlp"),
    ("up", "bias"): ("mlp",),
    ("down", "kernel"): ("mlp", "embed"),
    ("down", "bias"): ("embed",),
}


def annotate_block(block: Block) -> Block:
    """Gives every parameter of `block` its logical names (:data:`BLOCK_NAMES`), in place."""
    variables = {path: v for path, v in nnx.iter_graph(block) if isinstance(v, nnx.Param)}
    if set(variables) != set(BLOCK_NAMES):
        raise AssertionError(f"charlm.Block's parameters changed: {sorted(variables)}")
    for path, names in BLOCK_NAMES.items():
        variables[path].set_metadata(out_sharding=names)
    return block


def make_block(rngs: nnx.Rngs) -> Block:
    """The char-LM block, small (width 16, 4 heads), its parameters annotated."""
    return annotate_block(Block(DIM, HEADS, rngs=rngs))


def mlp_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def block_loss(model: Block, x: jax.Array, y: jax.Array) -> jax.Array:
    causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), jnp.bool_))[None, None]
    return jnp.mean((model(x, causal, False) - y) ** 2)


@nnx.jit(static_argnums=0)
def train_step(
    loss_fn: Callable[..., jax.Array],
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    x: jax.Array,
    y: jax.Array,
) -> jax.Array:
    """One Adam step on ``(x, y)``; returns the loss before the step."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def new_optimizer(model: nnx.Module) -> nnx.Optimizer:
    """Adam on the model's Params (its moments copy the Params' annotations)."""
    return nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)


def batches(
    kind: str, steps: int, batch: int = 16, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`steps` (x, y) pairs of float32 data for ``'mlp'`` or ``'block'``, the same every time."""
    shape = (batch, FEATURES) if kind == "mlp" else (batch, LENGTH, DIM)
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32))
        for _ in range(steps)
    ]


def train(
    loss_fn: Callable[..., jax.Array],
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    data: Iterable[tuple[np.ndarray, np.ndarray]],
    place: Callable[[np.ndarray], jax.Array] = jnp.asarray,
) -> list[float]:
    """Runs :data:`train_step` over `data` (each array put where `place` says); the losses."""
    return [float(train_step(loss_fn, model, optimizer, place(x), place(y))) for x, y in data]


def flat_values(tree: nnx.Module | nnx.State) -> dict[tuple, jax.Array]:
    """``{path: array}`` of a model, optimizer or State."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
    return {path: v.value for path, v in nnx.to_flat_state(state)}


def as_numpy(values: dict[tuple, jax.Array]) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v) for path, v in values.items()}
