"""Crash consistency of nnx.Checkpointer: SIGKILL a training process while it saves.

A child process (this file run as a script) trains a small model with ``nnx.Optimizer`` and
saves every step with an asynchronous ``nnx.Checkpointer``. Before each save it appends the
step and a digest of every saved array to a log (fsync'ed), so the log holds what each step
was meant to contain. The parent kills the child at a seeded random moment, then checks that

* a new Checkpointer on the directory removes the temporary folder of an interrupted save
  at once (not later, in a background thread);
* the latest committed step restores, with values bit-for-bit equal to what was logged;
* no committed step is ever lost, and the next child resumes from it: training is
  deterministic, so a step redone after a crash must log the very digest it logged before
  (which also checks that the restore was exact).

Kills land both mid-save (a ``*.orbax-checkpoint-tmp`` folder is left behind) and between
saves (the child idles between steps in some runs); the slow test asserts that both happened.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx.checkpointing import _remove_stale_tmp

TMP = ".orbax-checkpoint-tmp"
MAX_TO_KEEP = 3


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(8, 32, rngs=rngs)
        self.down = nnx.Linear(32, 8, rngs=rngs)
        self.calls = nnx.BatchStat(jnp.array(0, jnp.int32))

    def __call__(self, x):
        self.calls.value += 1
        return self.down(jnp.tanh(self.up(x)))


TX = optax.adam(1e-2)  # one instance: it is static in the graph, a new one would recompile


def build():
    model = Net(nnx.Rngs(0))
    return model, nnx.Optimizer(model, TX)


def digest(model: Net, opt: nnx.Optimizer) -> str:
    """sha256 of every array of the model and the optimizer: paths, dtypes, bytes."""
    h = hashlib.sha256()
    pure = {"model": nnx.state(model).to_pure_dict(), "optimizer": nnx.state(opt).to_pure_dict()}
    flat = jax.tree_util.tree_flatten_with_path(pure)[0]
    for path, leaf in sorted(flat, key=lambda item: jax.tree_util.keystr(item[0])):
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@nnx.jit
def train_step(model, opt, step):
    x = jax.random.normal(jax.random.fold_in(jax.random.key(1), step), (16, 8))
    grads = nnx.grad(lambda m: jnp.mean((m(x) - jnp.sin(x)) ** 2))(model)
    opt.update(model, grads)


def child(directory: str, log: str, steps: int, pause: float) -> None:
    """Resumes from the latest step, then trains and saves `steps` steps (killed before)."""
    model, opt = build()
    ckpt = nnx.Checkpointer(directory, max_to_keep=MAX_TO_KEEP)
    start = 0
    if ckpt.latest_step() is not None:
        start = ckpt.restore(model=model, optimizer=opt)["step"]
    # Compile before "ready", on a copy (restored arrays are committed to their device,
    # fresh ones are not: jax compiles once for each).
    copy_model, copy_opt = nnx.clone((model, opt))
    train_step(copy_model, copy_opt, 0)
    print("ready", start, flush=True)
    with open(log, "a") as f:
        for step in range(start + 1, start + steps + 1):
            train_step(model, opt, step)
            f.write(f"{step} {digest(model, opt)}\n")
            f.flush()
            os.fsync(f.fileno())
            ckpt.save(step, model=model, optimizer=opt)
            time.sleep(pause)
    ckpt.close()


def read_log(log: pathlib.Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            step, value = line.split()
            out.setdefault(int(step), set()).add(value)
    return out


def tmp_folders(directory: pathlib.Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if TMP in p.name)


def run_trials(tmp_path: pathlib.Path, trials: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    directory, log = tmp_path / "ckpt", tmp_path / "saved.log"
    stats = {"mid_save": 0, "between": 0, "no_step_yet": 0}
    latest_seen = 0
    for trial in range(trials):
        # Half the runs save back to back (a kill almost always lands mid-save), half idle
        # 0.3 s after each step (a save takes ~0.1 s: most kills land between saves); the
        # kill comes up to 1.5 s after the child is ready.
        pause = rng.choice([0.0, 0.3])
        delay = rng.uniform(0.0, 1.5)
        errors = tmp_path / f"child{trial}.err"
        with open(errors, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, __file__, str(directory), str(log), "400", str(pause)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        try:
            ready = proc.stdout.readline()
            assert ready.startswith("ready"), (
                f"the child failed to start: {ready!r}\n{errors.read_text()[-3000:]}"
            )
            assert int(ready.split()[1]) == latest_seen, "the child resumed from another step"
            time.sleep(delay)
            assert proc.poll() is None, "the child finished before it was killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()

        left = tmp_folders(directory)
        stats["mid_save" if left else "between"] += 1
        ckpt = nnx.Checkpointer(directory, max_to_keep=MAX_TO_KEEP)
        try:
            assert tmp_folders(directory) == [], f"trial {trial}: stale {left} not removed"
            step = ckpt.latest_step()
            print(
                f"trial {trial}: pause {pause}, kill after {delay:.2f} s, left {left}, "
                f"committed {ckpt.all_steps()}"
            )
            if step is None:
                stats["no_step_yet"] += 1
                continue
            assert step >= latest_seen, f"trial {trial}: committed step {latest_seen} lost"
            model, opt = build()
            assert ckpt.restore(model=model, optimizer=opt)["step"] == step
            logged = read_log(log)
            assert logged[step] == {digest(model, opt)}, f"trial {trial}: step {step} differs"
            latest_seen = step
        finally:
            ckpt.close()
    # A step redone after a crash was trained from a restored state: same digest as before.
    logged = read_log(log)
    differ = sorted(s for s, d in logged.items() if len(d) > 1)
    assert not differ, f"non-reproducible steps after resume: {differ}"
    stats["steps_redone"] = len(log.read_text().splitlines()) - len(logged)
    stats["latest_step"] = latest_seen
    print(f"crash trials: {trials}, {stats}")
    return stats


@pytest.mark.slow  # about 15 s: two SIGKILL trials (the default run keeps the Ctrl-C tests)
def test_kill_during_saves_fast(tmp_path):
    stats = run_trials(tmp_path, trials=2, seed=0)
    assert stats["mid_save"] + stats["between"] == 2


@pytest.mark.slow
def test_kill_during_saves_many_trials(tmp_path):
    stats = run_trials(tmp_path, trials=20, seed=1234)
    assert stats["mid_save"] >= 1, stats  # some kills interrupted a save...
    assert stats["between"] >= 1, stats  # ...and some did not
    assert stats["latest_step"] > 0, stats


# -- the temporary-folder cleanup on its own ------------------------------------------------


def test_new_checkpointer_removes_stale_tmp_folders_at_once(tmp_path):
    model, _ = build()
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model)
    stale = tmp_path / f"2{TMP}"
    (stale / f"model{TMP}").mkdir(parents=True)
    (stale / f"model{TMP}" / "data").write_bytes(b"partial")
    (tmp_path / "notes").mkdir()
    (tmp_path / f"notes{TMP}.txt").write_text("a file, not orbax's")
    with nnx.Checkpointer(tmp_path) as ckpt:
        assert not stale.exists()
        assert (tmp_path / "notes").is_dir() and (tmp_path / f"notes{TMP}.txt").is_file()
        assert ckpt.all_steps() == [1]
        target, _ = build()
        assert ckpt.restore(model=target)["step"] == 1


def test_only_the_primary_process_removes_tmp_folders(tmp_path, monkeypatch):
    stale = tmp_path / f"3{TMP}"
    stale.mkdir()
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert _remove_stale_tmp(str(tmp_path)) == []
    assert stale.is_dir()
    monkeypatch.undo()
    assert _remove_stale_tmp(str(tmp_path)) == [stale.name]
    assert not stale.exists()


def test_a_second_checkpointer_does_not_break_a_save_in_flight(tmp_path):
    model, _ = build()
    with nnx.Checkpointer(tmp_path) as first:
        for step in range(1, 4):
            first.save(step, model=model)
            with nnx.Checkpointer(tmp_path) as second:
                assert second.latest_step() == step
        first.wait()
        assert first.all_steps() == [1, 2, 3]


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
