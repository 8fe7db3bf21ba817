"""Checkpoint save and restore: ``nnx.Checkpointer`` beside raw orbax and safetensors.

The model: ``L`` ``nnx.Linear(2048, 2048)`` layers (16.8 MB of float32 each), ``L`` chosen
for ~100 MB (6 layers) and ~1 GB (60 layers). What is timed, in seconds per call:

save (until the checkpoint is on disk: asynchronous saves are waited for)

* ``orbax``           raw ``ocp.CheckpointManager`` (async, ``max_to_keep=1``) saving the
                      model's pure dict of arrays with ``Composite(model=StandardSave(...))``,
                      then ``wait_until_finished()``: the floor nnx stands on;
* ``nnx``             ``nnx.Checkpointer(max_to_keep=1).save(step, model=model)``, ``wait()``;
* ``safetensors``     ``safetensors.numpy.save_file`` of ``{name: np.asarray(array)}``;
* ``nnx-safetensors`` ``nnx.save_safetensors(path, model)`` (if nnx has it).

restore (until the arrays are on the device)

* ``orbax``           ``CheckpointManager.restore`` with ``StandardRestore`` of the tree of
                      ``ShapeDtypeStruct`` (shardings included), built beforehand;
* ``nnx``             ``ckpt.restore(model=model)``: in place into the existing model, every
                      array checked against the CRC-32 written at save (the default);
* ``nnx-noverify``    ``ckpt.restore(model=model, verify=False)``: the same without the
                      checksum pass (what the verification costs is the difference);
* ``nnx-abstract``    ``ckpt.restore(model=abstract)`` into a fresh ``nnx.eval_shape(build)``
                      model made beforehand (untimed, as orbax's abstract tree is; its cost
                      is printed under the table);
* ``safetensors``     ``safetensors.numpy.load_file`` and ``jnp.asarray`` of every tensor;
* ``nnx-safetensors`` ``nnx.load_safetensors(path, model)`` (if nnx has it).

One process; every implementation is timed once per round, in an order that rotates from
round to round (saves first, then restores), after one untimed warm-up call each; the numbers
are medians over rounds and the ratios medians of per-round ratios to ``orbax`` (paired, see
``_timing.Timings``). Before every timed save the model's arrays are replaced by fresh copies
(untimed), as in a training loop, so no implementation profits from a host copy cached by an
earlier one. Restores read what the same implementation saved last, so the files are in the
OS page cache for everyone: the numbers are serialisation cost, not disk speed. Arrays a
call replaces or returns are freed after the clock stops. After the warm-up, every restore
is checked to give back exactly the saved values.

Targets: nnx save within 1.10x of raw orbax (it also computes the checksums); nnx restore
within 1.30x of raw orbax with verification on (1.10x without it).

Usage::

  .venv/bin/python benchmarks/checkpoint.py             # 100 MB x 5 rounds, 1 GB x 3
  .venv/bin/python benchmarks/checkpoint.py --quick     # 100 MB only
  .venv/bin/python benchmarks/checkpoint.py --sizes-mb 100 1000 --repeats 7
  .venv/bin/python benchmarks/checkpoint.py --clock cpu  # process CPU time (busy machine)

Files go to a temporary directory under /tmp (``--dir`` to change), removed at the end.
safetensors is optional (``pip install safetensors``): without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Timings

import nnx

try:  # optional peer
    import safetensors
    import safetensors.numpy as st_numpy
except ImportError:  # pragma: no cover - depends on the environment
    safetensors = None

WIDTH = 2048
TARGET = 1.10
TARGET_VERIFIED = 1.30
LAYER_BYTES = 4 * (WIDTH * WIDTH + WIDTH)


class Big(nnx.Module):
    def __init__(self, layers: int, rngs: nnx.Rngs):
        self.layers = [nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(layers)]


def flat_arrays(tree: Any) -> dict[str, Any]:
    """`{'layers/0/kernel': array}` of a pure-dict tree or of a model's state."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree).to_pure_dict()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
        for path, leaf in leaves
    }


def block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


class Bench:
    """The model, the files, and every implementation's save and restore."""

    def __init__(self, layers: int, root: str):
        self.layers = layers
        self.root = root
        self.model = Big(layers, nnx.Rngs(0))
        self.step = 0
        self.abstract: Any = None
        self.eval_shape_s: list[float] = []
        self.tree = nnx.state(self.model).to_pure_dict()
        self.ckpt = nnx.Checkpointer(os.path.join(root, "nnx"), max_to_keep=1)
        self.mgr = ocp.CheckpointManager(
            os.path.join(root, "orbax"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True),
        )
        self.abstract_tree = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.tree
        )
        self.saves: dict[str, Callable[[], Any]] = {
            "orbax": self.save_orbax,
            "nnx": self.save_nnx,
        }
        self.restores: dict[str, Callable[[], dict[str, Any]]] = {
            "orbax": self.restore_orbax,
            "nnx": self.restore_nnx,
            "nnx-noverify": self.restore_nnx_noverify,
            "nnx-abstract": self.restore_nnx_abstract,
        }
        if safetensors is not None:
            self.saves["safetensors"] = self.save_st
            self.restores["safetensors"] = self.restore_st
        if hasattr(nnx, "save_safetensors") and hasattr(nnx, "load_safetensors"):
            self.saves["nnx-safetensors"] = self.save_nnx_st
            self.restores["nnx-safetensors"] = self.restore_nnx_st
        # Untimed work before a timed call.
        self.prepare: dict[str, Callable[[], None]] = {"nnx-abstract": self.make_abstract}

    def refresh(self) -> None:
        """Fresh arrays with the same values (untimed), as after a training step."""
        nnx.update(self.model, block(jax.tree.map(jnp.copy, nnx.state(self.model))))
        self.tree = nnx.state(self.model).to_pure_dict()
        self.step += 1

    # -- save ---------------------------------------------------------------------------
    def save_orbax(self) -> None:
        args = ocp.args.Composite(model=ocp.args.StandardSave(self.tree))
        self.mgr.save(self.step, args=args)
        self.mgr.wait_until_finished()

    def save_nnx(self) -> None:
        self.ckpt.save(self.step, model=self.model)
        self.ckpt.wait()

    def save_st(self) -> None:
        arrays = {k: np.asarray(v) for k, v in flat_arrays(self.tree).items()}
        st_numpy.save_file(arrays, os.path.join(self.root, "model.safetensors"))

    def save_nnx_st(self) -> None:
        nnx.save_safetensors(os.path.join(self.root, "nnx.safetensors"), self.model)

    # -- restore ------------------------------------------------------------------------
    def restore_orbax(self) -> dict[str, Any]:
        args = ocp.args.Composite(model=ocp.args.StandardRestore(self.abstract_tree))
        return flat_arrays(block(self.mgr.restore(self.mgr.latest_step(), args=args)["model"]))

    def restore_nnx(self) -> dict[str, Any]:
        self.ckpt.restore(model=self.model)
        return flat_arrays(block(self.model))

    def restore_nnx_noverify(self) -> dict[str, Any]:
        self.ckpt.restore(model=self.model, verify=False)
        return flat_arrays(block(self.model))

    def make_abstract(self) -> None:
        t0 = time.perf_counter()
        self.abstract = nnx.eval_shape(lambda: Big(self.layers, nnx.Rngs(1)))
        self.eval_shape_s.append(time.perf_counter() - t0)

    def restore_nnx_abstract(self) -> dict[str, Any]:
        abstract, self.abstract = self.abstract, None
        self.ckpt.restore(model=abstract)
        return flat_arrays(block(abstract))

    def restore_st(self) -> dict[str, Any]:
        loaded = st_numpy.load_file(os.path.join(self.root, "model.safetensors"))
        return block({k: jnp.asarray(v) for k, v in loaded.items()})

    def restore_nnx_st(self) -> dict[str, Any]:
        nnx.load_safetensors(os.path.join(self.root, "nnx.safetensors"), self.model)
        return flat_arrays(block(self.model))

    def close(self) -> None:
        self.ckpt.close()
        self.mgr.close()


def check(name: str, restored: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    if restored.keys() != expected.keys():
        raise SystemExit(f"{name}: restored names differ: {sorted(restored)[:4]}...")
    for key, value in restored.items():
        if not np.array_equal(np.asarray(value), expected[key]):
            raise SystemExit(f"{name}: {key} differs from what was saved")


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    # CPU time of the whole process, every thread (orbax and tensorstore work in threads):
    # steadier than wall time on a machine shared with other processes.
    "cpu": time.process_time,
}


def timed(fn: Callable[[], Any], clock: Callable[[], float], model: nnx.Module) -> float:
    # What the call replaces or returns is freed after the clock stops (not timed): an
    # in-place restore would otherwise pay for freeing the model's old arrays, a restore
    # that returns new ones would not.
    keep = jax.tree.leaves(nnx.state(model))
    gc.collect()
    t0 = clock()
    result = fn()
    elapsed = clock() - t0
    del keep, result
    return elapsed


def run(bench: Bench, repeats: int, clock: Callable[[], float]) -> tuple[Timings, Timings]:
    expected = {k: np.array(v) for k, v in flat_arrays(bench.tree).items()}
    for fn in bench.saves.values():  # warm-up (untimed), then check every restore
        bench.refresh()
        fn()
    for name, fn in bench.restores.items():
        bench.prepare.get(name, lambda: None)()
        check(name, fn(), expected)
    del expected
    saves, restores = Timings(), Timings()
    for out, fns in ((saves, bench.saves), (restores, bench.restores)):
        for name in fns:
            out.samples[name], out.number[name] = [], 1
    for r in range(repeats):
        for out, fns, fresh in ((saves, bench.saves, True), (restores, bench.restores, False)):
            names = list(fns)
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if fresh:
                    bench.refresh()
                else:
                    bench.prepare.get(name, lambda: None)()
                out.samples[name].append(timed(fns[name], clock, bench.model))
        print(f"  round {r + 1}/{repeats} done", flush=True)
    return saves, restores


def print_table(op: str, t: Timings, megabytes: float) -> None:
    print(f"{op:<8} {'impl':<16} {'median s':>9} {'MB/s':>8} {'/orbax':>7}")
    for name in t.samples:
        med = t.median(name)
        ratio = t.ratio(name, "orbax")
        print(f"{op:<8} {name:<16} {med:>9.3f} {megabytes / med:>8.0f} {ratio:>7.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", type=float, nargs="+", help="default 100 1000 (quick: 100)")
    p.add_argument("--repeats", type=int, nargs="+", help="rounds per size (5 3; one for all)")
    p.add_argument("--quick", action="store_true", help="100 MB only")
    p.add_argument("--dir", default="/tmp", help="where the temporary directory goes")
    p.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: perf_counter (default); cpu: CPU time of the process, all threads",
    )
    args = p.parse_args(argv)
    sizes = args.sizes_mb or ([100.0] if args.quick else [100.0, 1000.0])
    repeats = args.repeats or [5, 3]
    repeats = [repeats[min(i, len(repeats) - 1)] for i in range(len(sizes))]

    print(
        f"jax {jax.__version__}, orbax-checkpoint {ocp.__version__}, "
        f"safetensors {getattr(safetensors, '__version__', 'not installed')}, "
        f"nnx.save_safetensors {'yes' if hasattr(nnx, 'save_safetensors') else 'no'}, "
        f"backend {jax.default_backend()}, {os.cpu_count()} cpus"
    )
    root = tempfile.mkdtemp(prefix="nnx-ckpt-bench-", dir=args.dir)
    results = []
    try:
        for size, rounds in zip(sizes, repeats, strict=True):
            layers = max(1, round(size * 1e6 / LAYER_BYTES))
            megabytes = layers * LAYER_BYTES / 1e6
            print(
                f"\n{megabytes:.0f} MB float32: {layers} x Linear({WIDTH}, {WIDTH}); "
                f"{rounds} interleaved rounds after a warm-up, {args.clock} clock",
                flush=True,
            )
            bench = Bench(layers, os.path.join(root, f"{layers}"))
            try:
                saves, restores = run(bench, rounds, CLOCKS[args.clock])
                eval_shape_ms = statistics.median(bench.eval_shape_s) * 1e3
            finally:
                bench.close()
                del bench
                shutil.rmtree(os.path.join(root, f"{layers}"), ignore_errors=True)
                gc.collect()
            print_table("save", saves, megabytes)
            print_table("restore", restores, megabytes)
            print(f"(nnx.eval_shape of the model, untimed above: {eval_shape_ms:.1f} ms)")
            results.append((megabytes, saves, restores))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print("\ntargets (paired ratios to raw orbax)")
    for megabytes, saves, restores in results:
        for op, t, names, target in (
            ("save", saves, ["nnx"], TARGET),
            ("restore", restores, ["nnx", "nnx-abstract"], TARGET_VERIFIED),
            ("restore", restores, ["nnx-noverify"], TARGET),
        ):
            for name in names:
                ratio = t.ratio(name, "orbax")
                verdict = "ok" if ratio <= target else "MISSED"
                print(
                    f"  {megabytes:.0f} MB {op} {name}: {ratio:.2f}x (<= {target:.2f}x) {verdict}"
                )


if __name__ == "__main__":
    main()
