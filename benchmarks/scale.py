"""Train-step time of the char-LM transformer per sharding layout on 8 CPU devices.

The model is the ``nnx.examples.charlm`` transformer (its Megatron-style annotations in logical
axis names), at benchmark sizes (2 blocks, dim 128, 8 heads, context 64, batch 32); one step
is the example's own ``train_step`` (``nnx.jit``: forward, backward, AdamW). Layouts, each on
its own mesh of the process's 8 fake CPU devices:

* ``single``  one device, nothing sharded (the reference).
* ``dp``      data parallel, mesh data=8: the batch split, weights and moments replicated.
* ``fsdp``    mesh data=8: the batch split, and every weight (and its AdamW moments) split over
              ``data`` along its ``embed`` axis; gathered by the compiler when used.
* ``tp``      tensor parallel on a 2x4 mesh: attention heads and MLP units split over
              model=4 (column/row), the batch not split: the two rows of the mesh both compute
              the whole batch (twice the work of one device in all, on this machine's cores).
* ``tp8``     tensor parallel over all 8 devices (mesh model=8): one head per device.
* ``dp+tp``   mesh data=4 x model=2 (the example's ``--mesh data=4,model=2``): both.

Beside each nnx step, the floor on the same layout: the same model and optimizer split once
(``nnx.split``) and a pure step function under plain ``jax.jit``, the state passed as arrays.
Before timing, the script checks that every implementation's first-step loss equals the
single-device one (to 1e-5).

Timing: ``_timing.measure`` (warm-up excluded, interleaved rounds in rotating order, medians);
one call is one step ending in ``jax.block_until_ready``. Columns: median ms per step, the
paired ratio nnx/floor on the layout, and the paired ratio of the layout's nnx step to the
single-device nnx step. Absolute times of fake CPU devices (all sharing this machine's cores)
say little about real hardware; the point is that no sharded step is pathologically slower
than the single-device one, and that nnx adds nothing over plain ``jax.jit`` on any layout.

The device count and the CPU client's thread pool are set here, before jax is imported
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, ``PJRT_NPROC=16``: fewer threads than
devices can deadlock collectives on a small machine).

Usage::

  .venv/bin/python benchmarks/scale.py            # ~3 minutes (much of it compilation)
  .venv/bin/python benchmarks/scale.py --quick    # smoke run
  .venv/bin/python benchmarks/scale.py --layouts single dp+tp --repeats 11
"""

from __future__ import annotations

import os

DEVICES = 8
_COUNT_FLAG = "--xla_force_host_platform_device_count"
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_COUNT_FLAG)]
os.environ["XLA_FLAGS"] = " ".join([*_flags, f"{_COUNT_FLAG}={DEVICES}"])
os.environ.setdefault("PJRT_NPROC", str(2 * DEVICES))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import measure  # noqa: E402

import nnx  # noqa: E402
from nnx.examples import charlm  # noqa: E402

VOCAB = 98  # the example's corpus vocabulary
SIZES = ["--layers", "2", "--dim", "128", "--heads", "8", "--seq-len", "64", "--batch-size", "32"]
AGREE = 1e-5


@dataclass(frozen=True)
class Layout:
    """A mesh shape and the logical-axis rules that place the model and the batch on it."""

    name: str
    shape: dict[str, int]  # empty: one device
    rules: tuple[tuple[str, str | None], ...]
    what: str


def _rules(batch: str | None, embed: str | None, model: str | None) -> tuple:
    replicated = ("head_dim", "vocab", "position", "layers")
    return (
        ("batch", batch),
        ("embed", embed),
        ("heads", model),
        ("mlp", model),
        *((name, None) for name in replicated),
    )


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("single", {}, (), "one device"),
        Layout("dp", {"data": 8}, _rules("data", None, None), "batch / data=8"),
        Layout("fsdp", {"data": 8}, _rules("data", "data", None), "batch, weights / data=8"),
        Layout(
            "tp",
            {"data": 2, "model": 4},
            _rules(None, None, "model"),
            "weights / model=4 (batch whole, x2)",
        ),
        Layout("tp8", {"model": 8}, _rules(None, None, "model"), "weights / model=8"),
        Layout(
            "dp+tp",
            {"data": 4, "model": 2},
            _rules("data", None, "model"),
            "batch / data=4, weights / model=2",
        ),
    )
}


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    args = charlm.parse_args(SIZES)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (args.batch_size, args.seq_len + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def put(array: np.ndarray, layout: Layout, mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return jax.device_put(array, jax.devices()[0])
    spec = jax.sharding.PartitionSpec(dict(layout.rules)["batch"])
    return jax.device_put(array, jax.sharding.NamedSharding(mesh, spec))


def build(layout: Layout) -> tuple[Callable[[], jax.Array], Callable[[], jax.Array], int]:
    """The nnx step and the floor's step on `layout` (each returns the batch loss), and the
    parameters one device holds."""
    args = charlm.parse_args(SIZES)
    mesh = None
    if layout.shape:
        mesh = jax.make_mesh(
            tuple(layout.shape.values()),
            tuple(layout.shape),
            axis_types=(jax.sharding.AxisType.Auto,) * len(layout.shape),
            devices=jax.devices()[: int(np.prod(list(layout.shape.values())))],
        )
    inputs, targets = batch()

    @contextlib.contextmanager
    def on_layout() -> Iterator[None]:
        """The mesh and rules the model is created and traced under (the activations'
        constraint reads them at trace time, and jit's cache is per mesh)."""
        if mesh is None:
            with jax.default_device(jax.devices()[0]):
                yield
        else:
            with jax.set_mesh(mesh), nnx.logical_axis_rules(layout.rules):
                yield

    def make() -> tuple[charlm.CharTransformer, nnx.Optimizer]:
        with on_layout():
            return charlm.build(args, VOCAB)

    # nnx: the example's own step.
    model, optimizer = make()
    x, y = put(inputs, layout, mesh), put(targets, layout, mesh)

    def nnx_step() -> jax.Array:
        with on_layout():
            return jax.block_until_ready(charlm.train_step(model, optimizer, x, y))

    # The floor: split once, a pure function of the arrays under plain jax.jit.
    graphdef, state = nnx.split(make())

    @jax.jit
    def pure_step(state: nnx.State, x: jax.Array, y: jax.Array) -> tuple[nnx.State, jax.Array]:
        m, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(charlm.loss_fn)(m, x, y)
        opt.update(m, grads)
        return nnx.state((m, opt)), loss

    held = [state]

    def floor_step() -> jax.Array:
        with on_layout():
            held[0], loss = pure_step(held[0], x, y)
        return jax.block_until_ready(loss)

    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    per_device = sum(int(np.prod(p.addressable_shards[0].data.shape)) for p in params)
    return nnx_step, floor_step, per_device


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per timed loop")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--quick", action="store_true", help="3 rounds of short loops")
    parser.add_argument("--no-floor", action="store_true", help="time the nnx steps only")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.min_time = 3, 0.02
    names = ["single", *(n for n in args.layouts if n != "single")]
    if jax.device_count() < DEVICES:
        raise SystemExit(
            f"scale.py: JAX sees {jax.device_count()} devices, not {DEVICES}: it was started "
            "before this script could set XLA_FLAGS.\nFix: run the script directly "
            "(python benchmarks/scale.py), not after another import of jax."
        )

    fns: dict[str, Callable[[], jax.Array]] = {}
    per_device: dict[str, int] = {}
    first: dict[str, float] = {}
    for name in names:
        nnx_step, floor_step, per_device[name] = build(LAYOUTS[name])
        fns[f"{name}/nnx"] = nnx_step
        if not args.no_floor:
            fns[f"{name}/floor"] = floor_step
    for key, fn in fns.items():  # the first step of every implementation: one loss
        first[key] = float(fn())
    reference = first["single/nnx"]
    for key, loss in first.items():
        if abs(loss - reference) > AGREE * max(1.0, abs(reference)):
            raise SystemExit(f"scale.py: {key} first-step loss {loss} != single device {reference}")

    model_args = charlm.parse_args(SIZES)
    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices on "
        f"{os.cpu_count()} cores (PJRT_NPROC={os.environ.get('PJRT_NPROC')}); charlm transformer "
        f"{model_args.layers} blocks x dim {model_args.dim}, {model_args.heads} heads, context "
        f"{model_args.seq_len}, batch {model_args.batch_size}; AdamW train step"
    )
    print(
        f"first-step losses agree with one device to {AGREE:g}; {args.repeats} interleaved "
        f"rounds ({args.clock} clock); medians; ratios = medians of per-round ratios"
    )
    timings = measure(fns, repeats=args.repeats, min_time=args.min_time, clock=args.clock)

    header = f"{'layout':8s} {'mesh':36s} {'params/dev':>10s} {'nnx ms':>8s}"
    if not args.no_floor:
        header += f" {'floor ms':>9s} {'nnx/floor':>9s}"
    print(f"\n{header} {'vs single':>9s}")
    result: dict[str, dict[str, float]] = {}
    for name in names:
        row = {"nnx_ms": timings.median(f"{name}/nnx") * 1e3}
        line = f"{name:8s} {LAYOUTS[name].what:36s} {per_device[name]:10,d} {row['nnx_ms']:8.2f}"
        if not args.no_floor:
            row["floor_ms"] = timings.median(f"{name}/floor") * 1e3
            row["nnx_over_floor"] = timings.ratio(f"{name}/nnx", f"{name}/floor")
            line += f" {row['floor_ms']:9.2f} {row['nnx_over_floor']:8.3f}x"
        row["vs_single"] = timings.ratio(f"{name}/nnx", "single/nnx")
        print(f"{line} {row['vs_single']:8.3f}x")
        result[name] = row
    return result


if __name__ == "__main__":
    main()
