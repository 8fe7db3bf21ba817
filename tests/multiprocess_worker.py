"""One JAX process of the two-process tests in ``tests/test_multiprocess.py``.

Run as a script, one per process::

    python tests/multiprocess_worker.py MODE --process-id I --num-processes 2 --port PORT \
        --out DIR [--ckpt DIR]

It joins the others with ``jax.distributed.initialize`` on 127.0.0.1 (CPU collectives over
gloo), with 4 CPU devices of its own, so two processes make one 8-device mesh. Modes:

- ``train``: trains :class:`MLP` data-parallel for :data:`STEPS` steps (global batches built
  with ``jax.make_array_from_process_local_data``), writes ``p{I}_train.npz`` (the final
  parameters and the losses), then saves the model with its parameters sharded over the mesh
  (their ``out_sharding`` annotations) with ``nnx.Checkpointer`` into ``--ckpt``, every
  process into the same folder, and writes ``p{I}_saved.npz`` (the values it saved).
- ``restore``: restores ``--ckpt`` into an abstract model whose leaves carry the annotated
  shardings, checks where they landed, writes ``p{I}_restored.npz`` (the gathered values).
- ``loop``: trains in a loop until :data:`LOOP_LIMIT_S` has passed, after writing
  ``p{I}_ready``; the test kills one peer and expects the survivor to fail fast.

Imported as a module (by the test, whose process already has 8 CPU devices) it sets nothing:
:func:`train` then gives the one-process reference of the same training.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEVICES_PER_PROCESS = 4
if __name__ == "__main__":
    # Before jax is imported: 4 CPU devices per process (any inherited device-count flag is
    # replaced), and enough CPU-client threads for the collectives not to deadlock (see
    # ECOSYSTEM.md: at least twice the device count).
    _flag = "--xla_force_host_platform_device_count"
    _flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_flag)]
    os.environ["XLA_FLAGS"] = " ".join([*_flags, f"{_flag}={DEVICES_PER_PROCESS}"])
    os.environ["PJRT_NPROC"] = str(2 * DEVICES_PER_PROCESS)
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import nnx  # noqa: E402  (importing nnx does not start JAX's backend: initialize may follow)

STEPS = 4
GLOBAL_BATCH = 16
FEATURES, HIDDEN, OUT = 8, 32, 4
LEARNING_RATE = 1e-2
SAVE_STEP = STEPS
LOOP_LIMIT_S = 120.0
# How long a process waits for its peers to start, and for a peer's missing heartbeats before
# the job is declared failed (seconds): short, so that a dead peer fails the test fast.
INIT_TIMEOUT_S = 60
HEARTBEAT_TIMEOUT_S = 10
SHUTDOWN_TIMEOUT_S = 30
# The layout the model is saved with (FSDP-like: each kernel split over the 8 devices).
UP_SHARDING = (None, "data")
DOWN_SHARDING = ("data", None)


def initialize(process_id: int, num_processes: int, port: int) -> None:
    """Joins the job: coordinator on 127.0.0.1:port, bound to loopback only."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = f"127.0.0.1:{port}"
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=address,
        initialization_timeout=INIT_TIMEOUT_S,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
    )
    expected = (num_processes * DEVICES_PER_PROCESS, DEVICES_PER_PROCESS)
    got = (jax.device_count(), jax.local_device_count())
    assert got == expected, f"(global, local) devices: expected {expected}, got {got}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mode", choices=["train", "restore", "loop"])
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True, help="folder for this process's results")
    parser.add_argument("--ckpt", help="absolute checkpoint folder, shared by the processes")
    return parser.parse_args(argv)




class MLP(nnx.Module):
    """Two Linear layers; the kernels are annotated with the layout the checkpoint uses."""

    def __init__(self, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.up = nnx.Linear(
            FEATURES, HIDDEN, kernel_init=nnx.with_partitioning(init, UP_SHARDING), rngs=rngs
        )
        self.down = nnx.Linear(
            HIDDEN, OUT, kernel_init=nnx.with_partitioning(init, DOWN_SHARDING), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x)))


def data_mesh() -> Mesh:
    """A 1-D mesh ``data`` over every device of every process (8 in these tests)."""
    return Mesh(np.array(jax.devices()), ("data",))


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The global batch of `step`: the same numbers in every process."""
    rng = np.random.default_rng(step)
    x = rng.normal(size=(GLOBAL_BATCH, FEATURES)).astype(np.float32)
    y = rng.normal(size=(GLOBAL_BATCH, OUT)).astype(np.float32)
    return x, y


def global_array(sharding: NamedSharding, data: np.ndarray) -> jax.Array:
    """The global array `data` laid out by `sharding`, from this process's rows only."""
    rows = [i[0] for i in sharding.addressable_devices_indices_map(data.shape).values()]
    start = min(r.start or 0 for r in rows)
    stop = max(data.shape[0] if r.stop is None else r.stop for r in rows)
    return jax.make_array_from_process_local_data(sharding, data[start:stop], data.shape)


def flat_values(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every Variable of `model` as a numpy array, keyed ``up.kernel``...: gathered from all
    processes when the array is split across them."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(model)):
        value = v.value if isinstance(v, nnx.Variable) else v
        if not value.is_fully_addressable and not value.is_fully_replicated:
            value = multihost_utils.process_allgather(value, tiled=True)
        out[".".join(map(str, path))] = np.asarray(value)
    return out


def train(mesh: Mesh, steps: int = STEPS) -> tuple[MLP, list[float]]:
    """Trains a fresh MLP data-parallel on `mesh`; returns it and the loss of each step.

    Parameters and optimizer state are replicated, the batch is split over ``data``. The same
    code runs in one process (8 local devices) and in several (4 each).
    """
    model = MLP(nnx.Rngs(0))  # the same numbers in every process (same seed)
    replicated = NamedSharding(mesh, P())
    for _, v in nnx.to_flat_state(nnx.state(model)):
        v.value = jax.device_put(np.asarray(v.value), replicated)
    with jax.set_mesh(mesh):  # optax's scalar `count` goes on the mesh, not on device 0
        optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)

    @nnx.jit
    def step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        def loss_fn(model: MLP) -> jax.Array:
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    data = NamedSharding(mesh, P("data"))
    losses = []
    for i in range(steps):
        x, y = batch(i % STEPS)
        loss = step(model, optimizer, global_array(data, x), global_array(data, y))
        losses.append(float(loss))  # replicated: every process holds the whole value
    return model, losses


def annotated_shardings(model: nnx.Module, mesh: Mesh) -> nnx.State:
    """The model's State of ``NamedSharding``, from its ``out_sharding`` annotations."""
    return nnx.get_named_sharding(nnx.state(model), mesh)


def save(model: MLP, mesh: Mesh, directory: str) -> None:
    """Reshards `model` to its annotated layout and saves it from every process."""
    nnx.update(model, jax.device_put(nnx.state(model), annotated_shardings(model, mesh)))
    kernel = model.up.kernel.value
    assert not kernel.is_fully_addressable, "the saved kernel should span both processes"
    with nnx.Checkpointer(directory) as ckpt:
        ckpt.save(SAVE_STEP, model=model)


def restore(mesh: Mesh, directory: str) -> MLP:
    """Restores the saved model onto `mesh`, never building it whole.

    Called with the devices in reverse order, each process reads the shards the other saved.
    """
    with jax.set_mesh(mesh):  # the abstract leaves carry the annotated shardings
        model = nnx.eval_shape(lambda: MLP(nnx.Rngs(1)))
    with nnx.Checkpointer(directory) as ckpt:
        ckpt.restore(SAVE_STEP, model=model)
    expected = annotated_shardings(model, mesh)
    for (path, v), (_, s) in zip(
        nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(expected), strict=True
    ):
        value = v.value
        sharding = s.value if isinstance(s, nnx.Variable) else s
        assert isinstance(value, jax.Array), (path, type(value))
        assert value.sharding.is_equivalent_to(sharding, value.ndim), (path, value.sharding)
    return model


def loop(mesh: Mesh, ready_file: str) -> None:
    """Trains until LOOP_LIMIT_S has passed; a dead peer should end this long before."""
    train(mesh, steps=1)
    with open(ready_file, "w") as f:
        f.write("ready\n")
    deadline = time.monotonic() + LOOP_LIMIT_S
    while time.monotonic() < deadline:
        train(mesh, steps=STEPS)


def main(args: argparse.Namespace) -> int:
    mesh = data_mesh()
    me = os.path.join(args.out, f"p{args.process_id}")
    if args.mode == "train":
        model, losses = train(mesh)
        np.savez(me + "_train.npz", losses=np.array(losses), **flat_values(model))
        save(model, mesh, args.ckpt)
        np.savez(me + "_saved.npz", **flat_values(model))
    elif args.mode == "restore":
        reversed_mesh = Mesh(np.array(jax.devices()[::-1]), ("data",))
        np.savez(me + "_restored.npz", **flat_values(restore(reversed_mesh, args.ckpt)))
    else:
        loop(mesh, me + "_ready")
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    ARGS = parse_args(sys.argv[1:])
    initialize(ARGS.process_id, ARGS.num_processes, ARGS.port)
    sys.exit(main(ARGS))
