"""Graph operations — ``split``, ``merge``, ``state``, ``update`` — nnx beside flax.nnx.

The model: ``N`` blocks plus a head, all hand-written (the same classes for both libraries):

* ``Linear``     kernel (16, 16) and bias (16,) ``Param``s, static ``in_features``/``out_features``;
* ``BatchNorm``  scale/bias ``Param`` and mean/var ``BatchStat`` (16,), static momentum/epsilon;
* ``Block``      a Linear then a BatchNorm (6 leaves);
* ``Model``      ``blocks`` (a list of N Blocks: ``nnx.List``) and a ``head`` Linear,

so a model has ``6 N + 2`` leaves (602 at N = 100).

What is timed (µs per call; pure Python work, no device computation):

* ``split``   ``nnx.split(model)``                 -> (GraphDef, State)
* ``state``   ``nnx.state(model)``                 -> State
* ``update``  ``nnx.update(model, state)``         (a state taken from the model beforehand)
* ``merge``   ``nnx.merge(graphdef, state)``       -> a new model
* ``split2``  ``nnx.split((model, other))``        -> two roots at once, as transforms pass
  them (``other`` a second model of the same size)

each for ``nnx`` (its structure cache warm, the steady state of a training loop),
``nnx-nocache`` (every cache dropped before every call: the root's cached flatten, so each
call runs the full ``nnx._flatten.flatten_full`` walk, the cost of the first call after a
structural change; for ``split2`` the several-roots cache; for ``merge``, which never
flattens, the GraphDef's compiled plans: the build plan and the nest plan) and ``flax``
(flax.nnx in its default graph mode). All implementations of one (N, op) are timed in the
same interleaved rounds (the order rotates per round); the numbers are medians over rounds,
the ratios medians of per-round ratios; warm-up calls are excluded (see ``_timing.py``).

Target (from the issue): nnx >= 10x faster than flax.nnx at N = 100 for every op.

Usage::

  .venv/bin/python benchmarks/graph_ops.py                      # full run (about a minute)
  .venv/bin/python benchmarks/graph_ops.py --quick              # smoke run (a few seconds)
  .venv/bin/python benchmarks/graph_ops.py --sizes 100 1024 --repeats 31

flax is optional: without it only the nnx columns are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import measure

import nnx

try:  # the peer is optional
    import flax
    from flax import nnx as fnnx
except ImportError:  # pragma: no cover - depends on the environment
    flax = None
    fnnx = None

FEATURES = 16
SIZES = (2, 8, 32, 100, 256, 1024)
QUICK_SIZES = (2, 32, 100)
OPS = ("split", "state", "update", "merge", "split2")
TARGET_N, TARGET_RATIO = 100, 10.0


# -- the same small modules, written once per library -------------------------------------
def _arrays(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Initial values for N blocks + head, identical for both libraries."""
    rng = np.random.default_rng(seed)
    f = FEATURES

    def linear() -> dict[str, np.ndarray]:
        return {
            "kernel": rng.standard_normal((f, f), dtype=np.float32) / np.sqrt(f),
            "bias": np.zeros(f, np.float32),
        }

    return [linear() for _ in range(n + 1)]


def make_model(lib: Any, n: int) -> Any:
    """Builds the benchmark model with `lib` (``nnx`` or ``flax.nnx``)."""
    import jax.numpy as jnp

    class Linear(lib.Module):
        def __init__(self, kernel: np.ndarray, bias: np.ndarray):
            self.kernel = lib.Param(jnp.asarray(kernel))
            self.bias = lib.Param(jnp.asarray(bias))
            self.in_features, self.out_features = kernel.shape

        def __call__(self, x):
            return x @ self.kernel + self.bias

    class BatchNorm(lib.Module):
        def __init__(self, features: int):
            self.scale = lib.Param(jnp.ones(features))
            self.bias = lib.Param(jnp.zeros(features))
            self.mean = lib.BatchStat(jnp.zeros(features))
            self.var = lib.BatchStat(jnp.ones(features))
            self.momentum = 0.99
            self.epsilon = 1e-5

        def __call__(self, x):
            y = (x - self.mean) / jnp.sqrt(self.var + self.epsilon)
            return y * self.scale + self.bias

    class Block(lib.Module):
        def __init__(self, weights: dict[str, np.ndarray]):
            self.linear = Linear(weights["kernel"], weights["bias"])
            self.norm = BatchNorm(FEATURES)

        def __call__(self, x):
            return jax.nn.relu(self.norm(self.linear(x)))

    class Model(lib.Module):
        def __init__(self, n: int):
            weights = _arrays(n)
            self.blocks = lib.List([Block(w) for w in weights[:n]])
            self.head = Linear(weights[n]["kernel"], weights[n]["bias"])

        def __call__(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    return Model(n)


# -- the operations -----------------------------------------------------------------------
def nnx_ops(n: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]], int]:
    """(cached ops, uncached ops, number of leaves) for nnx."""
    model = make_model(nnx, n)
    graphdef, state = nnx.split(model)
    leaves = len(state.flat_state())
    d = model.__dict__

    other = make_model(nnx, n)
    pair = (model, other)

    def drop_cache() -> None:
        d.pop("_nnx_cache", None)

    def drop_multi() -> None:
        d.pop("_nnx_multi", None)

    def drop_plans() -> None:
        graphdef._plans = None  # compiled again by the next merge

    cached = {
        "split": lambda: nnx.split(model),
        "state": lambda: nnx.state(model),
        "update": lambda: nnx.update(model, state),
        "merge": lambda: nnx.merge(graphdef, state),
        "split2": lambda: nnx.split(pair),
    }
    uncached = {
        "split": lambda: (drop_cache(), nnx.split(model)),
        "state": lambda: (drop_cache(), nnx.state(model)),
        "update": lambda: (drop_cache(), nnx.update(model, state)),
        "merge": lambda: (drop_plans(), nnx.merge(graphdef, state)),
        "split2": lambda: (drop_multi(), nnx.split(pair)),
    }
    return cached, uncached, leaves


def flax_ops(n: int) -> tuple[dict[str, Callable[[], Any]], int]:
    model = make_model(fnnx, n)
    other = make_model(fnnx, n)
    graphdef, state = fnnx.split(model)
    leaves = len(jax.tree_util.tree_leaves(state))
    ops = {
        "split": lambda: fnnx.split(model),
        "state": lambda: fnnx.state(model),
        "update": lambda: fnnx.update(model, state),
        "merge": lambda: fnnx.merge(graphdef, state),
        "split2": lambda: fnnx.split((model, other)),
    }
    return ops, leaves


# -- driver -------------------------------------------------------------------------------
def run(
    sizes: list[int], repeats: int, min_time: float, use_flax: bool, clock: str = "wall"
) -> list[dict]:
    rows = []
    for n in sizes:
        cached, uncached, leaves = nnx_ops(n)
        peer, peer_leaves = flax_ops(n) if use_flax else ({}, None)
        if peer_leaves is not None and peer_leaves != leaves:
            raise RuntimeError(f"N={n}: nnx has {leaves} leaves, flax {peer_leaves}")
        for op in OPS:
            fns = {"nnx": cached[op]}
            if op in uncached:
                fns["nocache"] = uncached[op]
            if op in peer:
                fns["flax"] = peer[op]
            t = measure(fns, repeats=repeats, min_time=min_time, clock=clock)
            row = {"N": n, "leaves": leaves, "op": op, "nnx": t.median("nnx")}
            row["nocache"] = t.median("nocache") if "nocache" in fns else None
            row["nocache_x"] = t.ratio("nocache", "nnx") if "nocache" in fns else None
            row["flax"] = t.median("flax") if "flax" in fns else None
            row["flax_x"] = t.ratio("flax", "nnx") if "flax" in fns else None
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


_HEADER = (
    f"{'N':>5} {'leaves':>6} {'op':<7} {'nnx µs':>10} {'nocache µs':>11} {'flax µs':>10} "
    f"{'flax/nnx':>9} {'nocache/nnx':>11} {'nnx µs/leaf':>12}"
)


def _fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, spec)


def _format_row(r: dict) -> str:
    return (
        f"{r['N']:>5} {r['leaves']:>6} {r['op']:<7} {_fmt(r['nnx'], '10.1f', 1e6)} "
        f"{_fmt(r['nocache'], '11.1f', 1e6):>11} {_fmt(r['flax'], '10.1f', 1e6):>10} "
        f"{_fmt(r['flax_x'], '8.1f'):>8}x {_fmt(r['nocache_x'], '10.1f'):>10}x "
        f"{r['nnx'] * 1e6 / r['leaves']:>12.3f}"
    )


def summarize(rows: list[dict]) -> None:
    """Prints the target check at N = 100 and the linearity of nnx (µs per leaf)."""
    at_target = [r for r in rows if r["N"] == TARGET_N and r["flax_x"] is not None]
    if at_target:
        print(f"\ntarget: nnx >= {TARGET_RATIO:.0f}x faster than flax.nnx at N = {TARGET_N}")
        for r in at_target:
            verdict = "ok" if r["flax_x"] >= TARGET_RATIO else "MISSED"
            print(f"  {r['op']:<7} {r['flax_x']:6.1f}x  {verdict}")
    large = sorted({r["N"] for r in rows if r["N"] >= 32})
    if len(large) >= 2:
        lo, hi = large[0], large[-1]
        print(f"\nlinearity: nnx µs/leaf at N = {hi} divided by N = {lo} (1.0 = linear)")
        for op in OPS:
            a = [r for r in rows if r["op"] == op and r["N"] == lo]
            b = [r for r in rows if r["op"] == op and r["N"] == hi]
            if a and b:
                per_leaf = [x["nnx"] / x["leaves"] for x in (a[0], b[0])]
                print(f"  {op:<7} {per_leaf[1] / per_leaf[0]:5.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", help=f"block counts (default {SIZES})")
    p.add_argument("--repeats", type=int, help="interleaved rounds (default 15, quick 5)")
    p.add_argument("--min-time", type=float, help="seconds per timed loop (default 0.02)")
    p.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, fewer rounds")
    p.add_argument("--no-flax", action="store_true", help="skip flax.nnx even if installed")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter (default); cpu: thread CPU time, steadier on a busy machine",
    )
    args = p.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    repeats = args.repeats or (5 if args.quick else 15)
    min_time = args.min_time or (0.005 if args.quick else 0.02)
    use_flax = fnnx is not None and not args.no_flax

    versions = f"nnx (this repo), jax {jax.__version__}"
    if use_flax:
        versions += f", flax {flax.__version__} (graph mode)"
    elif fnnx is None:
        versions += "; flax not installed: nnx only"
    print(f"graph ops: {versions}; python {platform.python_version()} on {platform.machine()}")
    print(
        f"sizes {sizes}, {repeats} interleaved rounds, >= {min_time * 1e3:g} ms per timed loop, "
        f"{args.clock} clock"
    )
    print(
        "µs per call, medians; ratios are medians of per-round ratios; "
        "nocache = the full flatten on every call\n"
    )
    print(_HEADER)
    rows = run(sizes, repeats, min_time, use_flax, args.clock)
    summarize(rows)
    if rows:
        print(f"\nnnx µs/leaf median over all rows: {statistics.median(_per_leaf(rows)):.3f}")


def _per_leaf(rows: list[dict]) -> list[float]:
    return [r["nnx"] * 1e6 / r["leaves"] for r in rows]


if __name__ == "__main__":
    main()
