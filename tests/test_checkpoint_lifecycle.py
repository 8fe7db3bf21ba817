"""Checkpointer as scripts use it: ending without close(), Ctrl-C, a second run into the same
directory, quiet logs, Python-scalar leaves, metadata right after an async save.

The exit and Ctrl-C cases run a real child Python process (this file as a script) and send
it real signals.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.checkpointing import CheckpointError, CheckpointMismatchError

HERE = os.path.abspath(__file__)


class Vec(nnx.Module):
    def __init__(self, n: int, fill: float = 1.0):
        self.w = nnx.Param(jnp.full((n,), fill, jnp.float32))
        self.count = nnx.BatchStat(jnp.array(0, jnp.int32))


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), *sys.path])
    env.pop("XLA_FLAGS", None)
    return env


# -- 1. a script that saves and ends, without close() -----------------------------------


def script_exit(directory: str, n: int) -> None:
    model = Vec(n, fill=3.0)
    ckpt = nnx.Checkpointer(directory)
    ckpt.save(7, model=model)
    # the script ends here: no close(), no wait()


def run_exit(tmp_path, n: int, relative: bool, timeout: float):
    directory = "ck" if relative else str(tmp_path / "ck")
    proc = subprocess.run(
        [sys.executable, HERE, "exit", directory, str(n)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "ck")) == ["7"]
    target = nnx.eval_shape(lambda: Vec(n))
    with nnx.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.restore(model=target)
    assert float(target.w.value.min()) == 3.0 == float(target.w.value.max())


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_script_that_ends_without_close_commits_its_save(tmp_path, relative):
    run_exit(tmp_path, 1000, relative, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("n", [100_000, 4_000_000, 40_000_000])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_exit_without_close_at_several_sizes(tmp_path, n, relative):
    run_exit(tmp_path, n, relative, timeout=300)


# -- 2. Ctrl-C during training and saving -----------------------------------------------


def script_train(directory: str, log: str) -> None:
    """Trains forever, saving every step; logs each step's expected value before saving."""
    model = Vec(200_000)
    ckpt = nnx.Checkpointer(directory, max_to_keep=3)
    start = (ckpt.latest_step() or 0) + 1
    if start > 1:
        ckpt.restore(model=model)
    step = jax.jit(lambda w: w * 1.0001 + 1.0)
    print("ready", flush=True)
    for i in range(start, 10**9):
        model.w.value = step(model.w.value)
        with open(log, "a") as f:
            f.write(f"{i} {float(model.w.value[0])!r}\n")
        ckpt.save(i, model=model)


def read_log(log: str) -> dict[int, float]:
    out = {}
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                out[int(parts[0])] = float(parts[1])
    return out


def interrupt_once(tmp_path, delay: float) -> tuple[str, int]:
    directory, log = str(tmp_path / "ck"), str(tmp_path / "log")
    proc = subprocess.Popen(
        [sys.executable, HERE, "train", directory, log],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err, proc.returncode


def check_after_interrupt(tmp_path, err: str) -> None:
    # One traceback, the script's own (its length depends on where the signal landed:
    # inside jax's compiler it is long), and nothing from orbax or its threads.
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0] == "Traceback (most recent call last):", err[-3000:]
    assert lines[-1] == "KeyboardInterrupt", err[-3000:]
    assert err.count("Traceback") == 1 and "Exception ignored" not in err, err[-3000:]
    assert "orbax" not in err and "absl" not in err, err[-3000:]
    logged = read_log(str(tmp_path / "log"))
    target = Vec(200_000, fill=0.0)
    with nnx.Checkpointer(tmp_path / "ck") as ckpt:  # opens silently (checked by the caller)
        steps = ckpt.all_steps()
        # the last logged step may have been interrupted before save() was called; every
        # step handed to save() is committed (the exit hook waits for it)
        assert (steps[-1] if steps else 0) >= max(logged, default=0) - 1, (steps, len(logged))
        for step in steps:
            ckpt.restore(step, model=target)
            assert float(target.w.value[0]) == logged[step]
    assert not [e for e in os.listdir(tmp_path / "ck") if "orbax-checkpoint-tmp" in e]


@pytest.mark.parametrize("delay", [0.5])
def test_ctrl_c_keeps_every_committed_step_and_prints_only_the_scripts_traceback(
    tmp_path, delay, capfd
):
    err, code = interrupt_once(tmp_path, delay)
    assert code != 0
    check_after_interrupt(tmp_path, err)
    assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_ctrl_c_at_random_moments(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(6):
        sub = tmp_path / f"t{trial}"
        sub.mkdir()
        err, code = interrupt_once(sub, float(rng.uniform(0.05, 2.0)))
        assert code != 0
        check_after_interrupt(sub, err)


def test_deferred_interrupt_raises_after_the_block():
    from nnx._checkpoint_exit import deferred_interrupt

    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("finished")
    assert done == ["finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- 3. a second run into the same directory ----------------------------------------------


def test_saving_at_or_below_the_latest_step_raises(tmp_path):
    model = Vec(3)
    with nnx.Checkpointer(tmp_path) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, model=model)
    model.w.value = model.w.value * 5
    with nnx.Checkpointer(tmp_path) as ckpt:  # "the second run"
        for step in (1, 3):
            with pytest.raises(CheckpointError, match=r"already holds steps \[1, 2, 3\]") as info:
                ckpt.save(step, model=model)
            text = str(info.value)
            assert "nothing was saved" in text and "overwrite=True" in text
            assert "continue at step 4" in text and "new directory" in text
        assert ckpt.all_steps() == [1, 2, 3]
        assert ckpt.save(2, model=model, overwrite=True) is True
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
        target = Vec(3, fill=0.0)
        ckpt.restore(model=target)
        np.testing.assert_array_equal(target.w.value, model.w.value)
        ckpt.restore(1, model=target)
        np.testing.assert_array_equal(target.w.value, np.ones(3))
        ckpt.save(3, model=model)  # above the latest: fine
    with nnx.Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1, 2, 3]


def test_reserved_item_names_are_refused(tmp_path):
    with nnx.Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError, match="nnx_index"):
        ckpt.save(1, nnx_index=Vec(2))


# -- 4. quiet logs --------------------------------------------------------------------------


def test_save_and_restore_log_nothing(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    model = Vec(4)
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=model, metadata={"a": 1})
        ckpt.restore(model=model)
        ckpt.metadata()
    with nnx.Checkpointer(tmp_path) as ckpt:  # a new manager knows no item handlers
        ckpt.restore(model=model)
        assert ckpt.metadata() == {"a": 1}
        ckpt.save(2, model=model, extra={"x": jnp.ones(2)})
        ckpt.restore(extra={"x": jnp.zeros(2)})
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    assert capfd.readouterr().err == ""


# -- 6. Python-scalar leaves ------------------------------------------------------------------


class Scalars(nnx.Module):
    def __init__(self, count, rate):
        self.count = nnx.Variable(count)
        self.rate = nnx.Variable(rate)


def test_python_scalar_leaves_round_trip_and_are_checked(tmp_path):
    with nnx.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, model=Scalars(3, 0.5))
        target = Scalars(0, 0.0)
        ckpt.restore(model=target)
        assert (target.count.value, target.rate.value) == (3, 0.5)
        ckpt.save(2, model=Scalars(jnp.array(3), 0.5))
        with pytest.raises(
            CheckpointMismatchError,
            match=r"model\.count: saved int32\[\], "
            r"expected a Python int",
        ) as info:
            ckpt.restore(2, model=target)
        assert "rate" not in str(info.value)
        with pytest.raises(
            CheckpointMismatchError,
            match=r"model\.rate: saved a Python float, "
            r"expected a Python int",
        ):
            ckpt.restore(1, model=Scalars(0, 1))
    assert (target.count.value, target.rate.value) == (3, 0.5)


def test_string_leaves_are_refused_at_save_with_the_path(tmp_path):
    model = Vec(2)
    model.name = nnx.Variable("hello")
    with nnx.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"model\.name: str"):
            ckpt.save(1, model=model)
        assert ckpt.all_steps() == []


def test_metadata_must_be_json(tmp_path):
    with nnx.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="not JSON-serialisable"):
            ckpt.save(1, model=Vec(2), metadata={"f": object()})
        ckpt.save(1, model=Vec(2), metadata={"t": (1, 2), "k": {"a": None}})
        assert ckpt.metadata() == {"t": [1, 2], "k": {"a": None}}
        assert ckpt.restore(model=Vec(2))["metadata"] == {"t": [1, 2], "k": {"a": None}}


# -- 7. metadata right after an async save ----------------------------------------------------


def test_metadata_right_after_an_async_save(tmp_path):
    big = Vec(2_000_000)
    with nnx.Checkpointer(tmp_path) as ckpt:
        assert ckpt.metadata() is None
        ckpt.save(5, model=big, metadata={"epoch": 5})
        assert ckpt.metadata() == {"epoch": 5}
        assert ckpt.metadata(5) == {"epoch": 5}
        ckpt.save(6, model=big)
        assert ckpt.metadata() is None
        with pytest.raises(CheckpointError, match="No step 9"):
            ckpt.metadata(9)
    assert not hasattr(nnx.Checkpointer, "restore_metadata")


# -- 8. the module's name -------------------------------------------------------------------


def test_nnx_checkpoint_is_remat_and_the_module_is_checkpointing():
    import importlib

    assert nnx.checkpoint is nnx.remat
    assert importlib.import_module("nnx.checkpointing").Checkpointer is nnx.Checkpointer
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("nnx.checkpoint")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "exit":
        script_exit(args[0], int(args[1]))
    elif mode == "train":
        script_train(args[0], args[1])
    else:
        raise SystemExit(f"unknown mode {mode}")


def test_an_object_without_arrays_is_refused_and_the_checkpointer_still_saves(tmp_path):
    class Empty(nnx.Module):
        pass

    with nnx.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"\['empty'\] hold no arrays"):
            ckpt.save(1, model=Vec(2), empty=Empty())
        assert ckpt.all_steps() == []
        ckpt.save(1, model=Vec(2))
        ckpt.wait()
        assert ckpt.all_steps() == [1]
