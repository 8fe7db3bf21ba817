"""Per-call overhead of nnx against the floor (plain ``jax.jit`` + optax) and the peers.

One process, interleaved repeats, medians; warm-up excluded; ``jax.block_until_ready`` once
per timed loop. The same MLP (width 64, batch 32, ``depth`` Linear layers with relu between
them, identical initial values) is built in every framework, and before timing the script
checks that all implementations give the floor's output after two train steps:

* ``floor``       plain ``jax.jit`` over a list of ``{kernel, bias}`` dicts, optax adam.
* ``nnx``         ``@nnx.jit def step(model, opt, x, y)``: grads from ``nnx.grad``, the optax
                  state held in an ``nnx.Pytree`` (``nnx.data``) and updated in place, the new
                  params written with ``nnx.update``: what a user writes without an Optimizer.
* ``nnx-opt``     the same step with ``nnx.Optimizer`` (skipped if nnx has none).
* ``nnx-cached``  ``nnx.cached_partial(nnx.jit(step), model, optimizer)``, and
  ``nnx-jit-partial`` ``nnx.jit_partial(step, model, optimizer)``: the flax spellings,
                  which with nnx's structure cache should be no faster than plain ``nnx.jit``.
* ``flax``        flax.nnx's default ``nnx.jit`` with ``nnx.Optimizer``.
* ``flax-cached`` flax.nnx ``nnx.cached_partial(step, model, optimizer)`` (if available).
* ``flax-split``  flax.nnx split/merge outside: ``nnx.split`` once, ``jax.jit`` over a pure
                  function of the state (the graphdef closed over).
* ``eqx``         ``eqx.filter_jit`` step (``filter_grad``, optax on the array leaves).
* ``eqx-part``    ``eqx.partition`` once, ``jax.jit`` over the arrays.

Three measurements:

1. train step (forward + backward + adam update), µs per step, at each depth;
2. jitted forward only, same models;
3. first call (trace + compile + run) of the train step at ``--first-call-depth``, one fresh
   process per sample (samples interleaved across implementations).

Every implementation runs the same number of steps per timed loop (sized from the floor to
last ``--loop-ms``). Ratios are medians of per-round ratios to the floor timed in the same
round (pairing cancels most machine noise; ``_timing.Timings``). The garbage collector stays
on (unlike ``_timing.measure``): collections triggered by per-call allocations are part of
the overhead a training loop pays. Targets (from the issue): nnx train step <= 1.10x the floor
at every depth, forward <= 1.15x, first call <= 1.10x.

Peers are optional: flax / equinox implementations are skipped if the import fails.

Usage::

  .venv/bin/python benchmarks/overhead.py                 # full run (several minutes)
  .venv/bin/python benchmarks/overhead.py --quick         # smoke run (~1 minute)
  .venv/bin/python benchmarks/overhead.py --depths 2 128 --repeats 31 --impls floor nnx flax
  .venv/bin/python benchmarks/overhead.py --first-call-samples 0   # skip the first-call part
  .venv/bin/python benchmarks/overhead.py --clock cpu     # process CPU time (loaded machine)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Timings  # shared with graph_ops.py: medians, paired ratios

WIDTH = 64
BATCH = 32
LR = 1e-3
TARGETS = {"train": 1.10, "forward": 1.15, "first": 1.10}


# -- shared data ---------------------------------------------------------------------------
def make_weights(depth: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """lecun-normal kernels (in, out) and small biases, identical for every framework."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(depth):
        w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)
        b = 0.01 * rng.standard_normal(WIDTH, dtype=np.float32)
        out.append((w, b))
    return out


def make_batch(seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, WIDTH), dtype=np.float32)
    y = rng.standard_normal((BATCH, WIDTH), dtype=np.float32)
    return jnp.asarray(x), jnp.asarray(y)


@dataclass
class Impl:
    """One implementation at one depth.

    train(n) / forward(n) run n steps and return arrays to block on; output() is the
    forward output on the current parameters (for the agreement check).
    """

    train: Callable[[int], Any]
    forward: Callable[[int], Any]
    output: Callable[[], jax.Array]


# -- implementations -----------------------------------------------------------------------
def build_floor(weights, x, y) -> Impl:
    tx = optax.adam(LR)
    params = [{"kernel": jnp.asarray(w), "bias": jnp.asarray(b)} for w, b in weights]

    def apply(params, x):
        for p in params[:-1]:
            x = jax.nn.relu(x @ p["kernel"] + p["bias"])
        return x @ params[-1]["kernel"] + params[-1]["bias"]

    def loss_fn(params, x, y):
        return jnp.mean((apply(params, x) - y) ** 2)

    @jax.jit
    def train_step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    forward = jax.jit(apply)
    st = [params, tx.init(params)]

    def train(n):
        p, s = st
        for _ in range(n):
            p, s = train_step(p, s, x, y)
        st[0], st[1] = p, s
        return p[0]["kernel"]

    def fwd(n):
        p = st[0]
        for _ in range(n):
            out = forward(p, x)
        return out

    return Impl(train, fwd, lambda: forward(st[0], x))


def _nnx_model(weights):
    import nnx

    class MLP(nnx.Module):
        def __init__(self, depth, rngs):
            self.layers = [nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(depth)]

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(len(weights), nnx.Rngs(0))
    for layer, (w, b) in zip(model.layers, weights, strict=True):
        layer.kernel.value = jnp.asarray(w)
        layer.bias.value = jnp.asarray(b)
    return nnx, model


def _nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _module_impl(jit, train_step, model, opt, x, y, first) -> Impl:
    """An Impl for the module libraries: ``train_step(model, opt, x, y)`` updates in place."""
    train_step = jit(train_step)
    forward = jit(lambda model, x: model(x))

    def train(n):
        for _ in range(n):
            train_step(model, opt, x, y)
        return first()

    def fwd(n):
        for _ in range(n):
            out = forward(model, x)
        return out

    return Impl(train, fwd, lambda: forward(model, x))


def build_nnx(weights, x, y) -> Impl:
    nnx, model = _nnx_model(weights)

    class OptState(nnx.Pytree):  # what a user writes without nnx.Optimizer
        def __init__(self, model, tx):
            self.tx = tx
            self.state = nnx.data(tx.init(nnx.state(model, nnx.Param)))

    def train_step(model, opt, x, y):
        grads = nnx.grad(_nnx_loss)(model, x, y)
        params = nnx.state(model, nnx.Param)
        updates, opt.state = opt.tx.update(grads, opt.state, params)
        nnx.update(model, optax.apply_updates(params, updates))

    first = model.layers[0].kernel
    opt = OptState(model, optax.adam(LR))
    return _module_impl(nnx.jit, train_step, model, opt, x, y, lambda: first.value)


def _nnx_opt_step(nnx):
    def train_step(model, optimizer, x, y):
        grads = nnx.grad(_nnx_loss)(model, x, y)
        optimizer.update(model, grads)

    return train_step


def build_nnx_opt(weights, x, y) -> Impl:
    nnx, model = _nnx_model(weights)
    first = model.layers[0].kernel
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
    step = _nnx_opt_step(nnx)
    return _module_impl(nnx.jit, step, model, optimizer, x, y, lambda: first.value)


def _nnx_bound_impl(weights, x, y, bind: str) -> Impl:
    """The graph arguments bound up front, as code written against flax does it:
    ``nnx.cached_partial(nnx.jit(step), ...)`` or ``nnx.jit_partial(step, ...)``."""
    nnx, model = _nnx_model(weights)
    optimizer = nnx.Optimizer(model, optax.adam(LR), wrt=nnx.Param)
    if bind == "cached":
        train_step = nnx.cached_partial(nnx.jit(_nnx_opt_step(nnx)), model, optimizer)
        forward = nnx.cached_partial(nnx.jit(lambda model, x: model(x)), model)
    else:
        train_step = nnx.jit_partial(_nnx_opt_step(nnx), model, optimizer)
        forward = nnx.jit_partial(lambda model, x: model(x), model)
    first = model.layers[0].kernel

    def train(n):
        for _ in range(n):
            train_step(x, y)
        return first.value

    def fwd(n):
        for _ in range(n):
            out = forward(x)
        return out

    return Impl(train, fwd, lambda: forward(x))


def build_nnx_cached(weights, x, y) -> Impl:
    return _nnx_bound_impl(weights, x, y, "cached")


def build_nnx_jit_partial(weights, x, y) -> Impl:
    return _nnx_bound_impl(weights, x, y, "jit_partial")


def _flax_model(weights):
    from flax import nnx as fnnx

    class MLP(fnnx.Module):
        def __init__(self, depth, rngs):
            self.layers = fnnx.List([fnnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(depth)])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = fnnx.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(len(weights), fnnx.Rngs(0))
    for layer, (w, b) in zip(model.layers, weights, strict=True):
        layer.kernel[...] = jnp.asarray(w)  # flax 0.12 deprecates `.value`
        layer.bias[...] = jnp.asarray(b)
    optimizer = fnnx.Optimizer(model, optax.adam(LR), wrt=fnnx.Param)
    return fnnx, model, optimizer


def _flax_steps(fnnx):
    def loss_fn(model, x, y):
        return jnp.mean((model(x) - y) ** 2)

    def train_step(model, optimizer, x, y):
        grads = fnnx.grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)

    def forward(model, x):
        return model(x)

    return train_step, forward


def build_flax(weights, x, y) -> Impl:
    fnnx, model, optimizer = _flax_model(weights)
    train_step, _ = _flax_steps(fnnx)
    first = model.layers[0].kernel
    return _module_impl(fnnx.jit, train_step, model, optimizer, x, y, lambda: first[...])


def build_flax_cached(weights, x, y) -> Impl:
    fnnx, model, optimizer = _flax_model(weights)
    train_step, forward = _flax_steps(fnnx)
    cached_train = fnnx.cached_partial(fnnx.jit(train_step), model, optimizer)
    cached_forward = fnnx.cached_partial(fnnx.jit(forward), model)
    first = model.layers[0].kernel

    def train(n):
        for _ in range(n):
            cached_train(x, y)
        return first[...]

    def fwd(n):
        for _ in range(n):
            out = cached_forward(x)
        return out

    return Impl(train, fwd, lambda: cached_forward(x))


def build_flax_split(weights, x, y) -> Impl:
    fnnx, model, optimizer = _flax_model(weights)
    train_fn, forward_fn = _flax_steps(fnnx)
    graphdef, state = fnnx.split((model, optimizer))
    model_def, _ = fnnx.split(model)

    @jax.jit
    def train_step(state, x, y):
        model, optimizer = fnnx.merge(graphdef, state)
        train_fn(model, optimizer, x, y)
        return fnnx.state((model, optimizer))

    @jax.jit
    def forward(model_state, x):
        return forward_fn(fnnx.merge(model_def, model_state), x)

    st = [state]

    def train(n):
        s = st[0]
        for _ in range(n):
            s = train_step(s, x, y)
        st[0] = s
        return s

    def fwd(n):
        model_state = st[0][0]
        for _ in range(n):
            out = forward(model_state, x)
        return out

    return Impl(train, fwd, lambda: forward(st[0][0], x))


def _eqx_model(weights):
    import equinox as eqx

    class MLP(eqx.Module):
        layers: list

        def __init__(self, depth, key):
            keys = jax.random.split(key, depth)
            self.layers = [eqx.nn.Linear(WIDTH, WIDTH, key=k) for k in keys]

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(jax.vmap(layer)(x))
            return jax.vmap(self.layers[-1])(x)

    model = MLP(len(weights), jax.random.key(0))
    model = eqx.tree_at(
        lambda m: [leaf for layer in m.layers for leaf in (layer.weight, layer.bias)],
        model,
        [jnp.asarray(a) for w, b in weights for a in (w.T, b)],
    )
    return eqx, model


def _eqx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def build_eqx(weights, x, y) -> Impl:
    eqx, model = _eqx_model(weights)
    tx = optax.adam(LR)

    @eqx.filter_jit
    def train_step(model, opt_state, x, y):
        grads = eqx.filter_grad(_eqx_loss)(model, x, y)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    @eqx.filter_jit
    def forward(model, x):
        return model(x)

    st = [model, tx.init(eqx.filter(model, eqx.is_array))]

    def train(n):
        m, s = st
        for _ in range(n):
            m, s = train_step(m, s, x, y)
        st[0], st[1] = m, s
        return m.layers[0].weight

    def fwd(n):
        m = st[0]
        for _ in range(n):
            out = forward(m, x)
        return out

    return Impl(train, fwd, lambda: forward(st[0], x))


def build_eqx_part(weights, x, y) -> Impl:
    eqx, model = _eqx_model(weights)
    tx = optax.adam(LR)
    params, static = eqx.partition(model, eqx.is_array)

    def loss_fn(params, x, y):
        return _eqx_loss(eqx.combine(params, static), x, y)

    @jax.jit
    def train_step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def forward(params, x):
        return eqx.combine(params, static)(x)

    st = [params, tx.init(params)]

    def train(n):
        p, s = st
        for _ in range(n):
            p, s = train_step(p, s, x, y)
        st[0], st[1] = p, s
        return p.layers[0].weight

    def fwd(n):
        p = st[0]
        for _ in range(n):
            out = forward(p, x)
        return out

    return Impl(train, fwd, lambda: forward(st[0], x))


# name: (label, builder, module that must import)
IMPLS: dict[str, tuple[str, Callable[..., Impl], str]] = {
    "floor": ("floor: jax.jit + optax", build_floor, "jax"),
    "nnx": ("nnx: nnx.jit, optax state in nnx.data", build_nnx, "nnx"),
    "nnx-opt": ("nnx: nnx.jit + Optimizer", build_nnx_opt, "nnx"),
    "nnx-cached": ("nnx: cached_partial + Optimizer", build_nnx_cached, "nnx"),
    "nnx-jit-partial": ("nnx: jit_partial + Optimizer", build_nnx_jit_partial, "nnx"),
    "flax": ("flax.nnx: nnx.jit + Optimizer", build_flax, "flax.nnx"),
    "flax-cached": ("flax.nnx: cached_partial", build_flax_cached, "flax.nnx"),
    "flax-split": ("flax.nnx: split + jax.jit", build_flax_split, "flax.nnx"),
    "eqx": ("equinox: filter_jit", build_eqx, "equinox"),
    "eqx-part": ("equinox: partition + jax.jit", build_eqx_part, "equinox"),
}


def available(names: list[str]) -> tuple[list[str], list[str]]:
    ok, skipped = [], []
    for name in names:
        module = IMPLS[name][2]
        try:
            imported = __import__(module, fromlist=["_"])
        except Exception as e:  # a peer that is not installed (or broken) is skipped
            skipped.append(f"{name} ({type(e).__name__}: {e})")
            continue
        if name == "flax-cached" and not hasattr(imported, "cached_partial"):
            skipped.append(f"{name} (flax.nnx has no cached_partial)")
            continue
        if name.startswith("nnx-") and not hasattr(imported, "Optimizer"):
            skipped.append(f"{name} (nnx has no Optimizer yet)")
            continue
        ok.append(name)
    return ok, skipped


# -- timing --------------------------------------------------------------------------------
# _timing.measure times zero-argument calls and cannot block once at the end of a loop
# (needed: CPU dispatch is asynchronous), so the loop is here; the results go into its
# Timings. The garbage collector stays on: its cost is part of a user's per-step overhead.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def _time_loop(fn: Callable[[int], Any], n: int) -> float:
    """Seconds per step for n steps, blocking once at the end."""
    gc.collect()
    t0 = _clock()
    jax.block_until_ready(fn(n))
    return (_clock() - t0) / n


def _steps_per_loop(fn: Callable[[int], Any], target_s: float) -> int:
    per = min(_time_loop(fn, 3) for _ in range(3))
    return int(min(2000, max(5, target_s / max(per, 1e-7))))


def measure(impls: dict[str, Impl], what: str, repeats: int, target_s: float) -> Timings:
    """Interleaved repeats (order rotated per round); per-round seconds per step."""
    names = list(impls)
    fns = {name: getattr(impls[name], what) for name in names}
    for fn in fns.values():  # warm-up: compile, fill caches
        jax.block_until_ready(fn(3))
    n = _steps_per_loop(fns["floor"], target_s)  # same loop size for every implementation
    out = Timings({name: [] for name in names}, dict.fromkeys(names, n))
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out.samples[name].append(_time_loop(fns[name], n))
    return out


def summarize(t: Timings) -> dict[str, tuple[float, float]]:
    """name -> (median µs per step, median of the per-round ratios to the floor)."""
    return {name: (t.median(name) * 1e6, t.ratio(name, "floor")) for name in t.samples}


def check_agreement(impls: dict[str, Impl]) -> float:
    """Max |difference| to the floor of the forward output after 2 train steps."""
    for impl in impls.values():
        jax.block_until_ready(impl.train(2))
    ref = np.asarray(impls["floor"].output())
    return max(float(np.max(np.abs(np.asarray(i.output()) - ref))) for i in impls.values())


# -- first call (fresh process per sample) -------------------------------------------------
def first_call_child(name: str, depth: int) -> None:
    weights = make_weights(depth)
    x, y = make_batch()
    impl = IMPLS[name][1](weights, x, y)
    t0 = time.perf_counter()
    jax.block_until_ready(impl.train(1))
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def measure_first_call(names: list[str], depth: int, samples: int) -> dict[str, list[float]]:
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
    out: dict[str, list[float]] = {name: [] for name in names}
    for s in range(samples):
        k = s % len(names)
        for name in names[k:] + names[:k]:
            cmd = [sys.executable, os.path.abspath(__file__), "--_first-call", name]
            cmd += ["--first-call-depth", str(depth)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"first-call child {name} failed:\n{res.stderr[-3000:]}")
            out[name].append(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])
    return out


# -- report --------------------------------------------------------------------------------
def _label_width(names: list[str]) -> int:
    return max(len(IMPLS[n][0]) for n in names) + 2


def print_table(title: str, names: list[str], depths: list[int], res: dict, target: float):
    w = _label_width(names)
    print(f"\n{title}")
    print("impl".ljust(w) + "".join(f"{'L=' + str(d):>20}" for d in depths))
    for name in names:
        cells = ""
        for d in depths:
            us, ratio = res[d][name]
            cells += f"{us:>11.1f} µs {ratio:>5.2f}x"
        print(IMPLS[name][0].ljust(w) + cells)
    for name in ("nnx", "nnx-opt"):
        if name in names:
            worst = max(res[d][name][1] for d in depths)
            verdict = "PASS" if worst <= target else "FAIL"
            print(
                f"target: {name} <= {target:.2f}x the floor at every depth; "
                f"worst {worst:.2f}x: {verdict}"
            )


def print_first_call(names: list[str], depth: int, res: dict[str, list[float]]):
    w = _label_width(names)
    floor = statistics.median(res["floor"])
    n = len(res["floor"])
    print(f"\nfirst call of the train step (trace + compile + run), L={depth}, seconds,")
    print(f"median of {n} fresh processes (min .. max)")
    for name in names:
        med = statistics.median(res[name])
        lo, hi = min(res[name]), max(res[name])
        print(
            IMPLS[name][0].ljust(w) + f"{med:>8.3f} s {med / floor:>5.2f}x   ({lo:.3f} .. {hi:.3f})"
        )
    for name in ("nnx", "nnx-opt"):
        if name in names:
            ratio = statistics.median(res[name]) / floor
            verdict = "PASS" if ratio <= TARGETS["first"] else "FAIL"
            print(f"target: {name} <= {TARGETS['first']:.2f}x the floor; {ratio:.2f}x: {verdict}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", help="default 2 8 32 128 (quick: 2 32)")
    p.add_argument("--repeats", type=int, help="interleaved repeats per table (21; quick: 5)")
    p.add_argument("--quick", action="store_true", help="smaller defaults for a smoke run")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    p.add_argument("--loop-ms", type=float, help="duration of one timed loop (40; quick: 20)")
    p.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall: perf_counter (default); cpu: process CPU time of all threads, less "
        "sensitive to other processes on a loaded machine",
    )
    p.add_argument("--first-call-depth", type=int, default=32)
    p.add_argument("--first-call-samples", type=int, help="fresh processes (5; quick: 2)")
    p.add_argument("--_first-call", dest="first_call_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.first_call_child:
        first_call_child(args.first_call_child, args.first_call_depth)
        return
    defaults = {
        "depths": [2, 32] if args.quick else [2, 8, 32, 128],
        "repeats": 5 if args.quick else 21,
        "loop_ms": 20.0 if args.quick else 40.0,
        "first_call_samples": 2 if args.quick else 5,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    global _clock
    _clock = CLOCKS[args.clock]
    names, skipped = available(["floor", *(n for n in args.impls if n != "floor")])
    print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}")
    for mod in ("flax", "equinox"):
        with contextlib.suppress(Exception):
            print(f"{mod} {__import__(mod).__version__}")
    if skipped:
        print("skipped: " + "; ".join(skipped))
    print(
        f"MLP width {WIDTH}, batch {BATCH}, adam; {args.repeats} interleaved repeats of "
        f"~{args.loop_ms:.0f} ms loops ({args.clock} clock); medians; "
        "ratio = median of per-repeat ratios to the floor"
    )
    x, y = make_batch()
    train_res, fwd_res = {}, {}
    for depth in args.depths:
        weights = make_weights(depth)
        impls = {name: IMPLS[name][1](weights, x, y) for name in names}
        diff = check_agreement(impls)
        print(f"L={depth}: implementations agree with the floor to {diff:.1e}", flush=True)
        if diff > 1e-3:
            raise SystemExit(f"implementations disagree at L={depth}: max |diff| {diff}")
        target_s = args.loop_ms / 1e3
        train_res[depth] = summarize(measure(impls, "train", args.repeats, target_s))
        fwd_res[depth] = summarize(measure(impls, "forward", args.repeats, target_s))
        del impls
    print_table(
        "train step (forward + backward + adam), µs per step, ratio to the floor",
        names,
        args.depths,
        train_res,
        TARGETS["train"],
    )
    print_table(
        "forward only (jitted), µs per call, ratio to the floor",
        names,
        args.depths,
        fwd_res,
        TARGETS["forward"],
    )
    if args.first_call_samples > 0:
        res = measure_first_call(names, args.first_call_depth, args.first_call_samples)
        print_first_call(names, args.first_call_depth, res)


if __name__ == "__main__":
    main()
