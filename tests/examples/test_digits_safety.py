"""The README's main job treats a user's work with care: Ctrl-C keeps the last completed epoch
and says how to resume, a directory holding another run's checkpoints is refused unless
--resume or --overwrite says what to do, and a resumed run ends exactly where an
uninterrupted one does."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from nnx.examples import digits

STEPS_PER_EPOCH = 44  # 1437 training images // batch size 32


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


DEFAULTS = {"seed": 0, "batch_size": 32, "learning_rate": 0.002}


def _fake_run(ckpt_dir, steps=(1, 2), config=DEFAULTS) -> None:
    """Checkpoints as another run would leave them (a small array: only the steps count)."""
    meta = {"history": {}, "config": config, "epochs_requested": 9}
    with nnx.Checkpointer(ckpt_dir) as ckpt:
        for step in steps:
            ckpt.save(step, model={"w": jnp.full(3, float(step))}, metadata=meta)


def _raw(x) -> np.ndarray:
    """An array's values as numpy (a typed PRNG key's raw bits)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _digits_command(*args: str) -> list[str]:
    """`python -m nnx.examples.digits ARGS`, with Python's Ctrl-C handling in the child even
    where this process ignores SIGINT (started as a background job), which a child inherits."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return [sys.executable, "-m", "nnx.examples.digits", *args]
    code = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('nnx.examples.digits', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, *args]


# -- another run's checkpoints: refused before anything is trained or deleted ---------------


def test_existing_checkpoints_are_refused_with_the_options(tmp_path, capsys):
    out = tmp_path / "run"
    _fake_run(out / "checkpoints", config={"seed": 3, "batch_size": 16, "learning_rate": 0.01})
    with pytest.raises(SystemExit) as exc:
        digits.main(["--out", str(out), "--epochs", "4", "--no-progress"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"{out / 'checkpoints'} already holds checkpoints of another run" in err
    assert "epochs [1, 2], latest 2 of 9 requested" in err
    assert "Nothing was trained or changed." in err
    for option in ("--resume", "--overwrite", "--out DIR"):
        assert f"\n  {option} " in err
    # The suggested resume command carries the checkpoint's settings, so that it works.
    resume = next(line for line in err.splitlines() if "--resume " in line).split(": ", 1)[1]
    words = shlex.split(resume)
    assert words[1:] == [
        "-m", "nnx.examples.digits", "--out", str(out), "--epochs", "4", "--seed", "3",
        "--batch-size", "16", "--learning-rate", "0.01", "--no-progress", "--resume",
    ]  # fmt: skip
    assert nnx.Checkpointer(out / "checkpoints").all_steps() == [1, 2]
    assert not (out / "summary.json").exists()


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _fake_run(out / "checkpoints")
    with pytest.raises(SystemExit) as exc:
        digits.main(["--out", str(out), "--resume", "--seed", "1", "--batch-size", "8"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "it was trained with --seed 0, --batch-size 32, this run asks for --seed 1, " in err
    assert nnx.Checkpointer(out / "checkpoints").all_steps() == [1, 2]


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        digits.main(["--out", str(tmp_path), "--resume", "--overwrite"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow  # two training runs in subprocesses, about 8 s
def test_overwrite_replaces_only_the_old_checkpoints(tmp_path):
    out = tmp_path / "run"
    _fake_run(out / "checkpoints", steps=(1, 2, 5))
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "README").write_text("mine too")
    summary = digits.main(["--out", str(out), "--epochs", "1", "--no-progress", "--overwrite"])
    ckpt = nnx.Checkpointer(out / "checkpoints")
    assert ckpt.all_steps() == [0, 1]  # the initial state and epoch 1; steps 2 and 5 are gone
    assert ckpt.metadata()["config"] == DEFAULTS
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "README").read_text() == "mine too"
    assert summary["epochs_trained"] == summary["epochs_this_run"] == 1
    assert summary["resumed_from_epoch"] is None


# -- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.slow  # a second Python that imports jax and compiles the model: ~15-25 s
def test_ctrl_c_keeps_the_last_epoch_and_resume_continues_from_it(tmp_path):
    out = tmp_path / "run"
    cmd = _digits_command("--out", str(out), "--epochs", "50", "--no-progress")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:  # ends early (EOF) if the child dies
            lines.append(line)
            if line.startswith("epoch 1/50"):  # epoch 1 is saved; epoch 2 is being trained
                proc.send_signal(signal.SIGINT)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
        proc.kill()
    stdout = "".join(lines) + stdout
    assert lines and lines[-1].startswith("epoch 1/50"), stdout + stderr
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr + stdout
    said = [line for line in stderr.splitlines() if line.strip()][-2:]
    assert said[0].startswith("Interrupted: the model and optimizer after epoch "), stderr
    done = int(said[0].split("after epoch ")[1].split()[0])
    assert done >= 1
    assert f"saved in {out / 'checkpoints'} (the unfinished epoch {done + 1} is dropped)" in said[0]
    assert said[1].startswith("Resume with: ")
    words = shlex.split(said[1].removeprefix("Resume with: "))
    assert os.path.realpath(words[0]) == os.path.realpath(sys.executable)
    assert words[1:] == [
        "-m", "nnx.examples.digits", "--out", str(out), "--epochs", "50", "--no-progress",
        "--resume",
    ]  # fmt: skip

    summary = _summary(out)
    assert summary["interrupted"] is True
    assert summary["epochs_trained"] == summary["epochs_this_run"] == summary["epochs"] == done
    assert summary["epochs_requested"] == 50
    assert summary["resume_command"] == said[1].removeprefix("Resume with: ")

    # The checkpoint is whole (restore verifies every checksum) and holds the state after
    # epoch `done`: the optimizer's step count and the dropout stream's count say so.
    ckpt = nnx.Checkpointer(out / "checkpoints")
    assert ckpt.latest_step() == done
    model = digits.CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(2e-3))
    restored = ckpt.restore(model=model, optimizer=optimizer)
    ckpt.close()
    assert restored["step"] == done
    assert int(optimizer.step.value) == done * STEPS_PER_EPOCH
    assert int(model.dropout.rngs.count.value) == done * STEPS_PER_EPOCH
    history = restored["metadata"]["history"]
    assert len(history["test_accuracy"]) == done
    assert history["test_accuracy"][-1] == summary["test_accuracy"]

    # The printed command resumes (here one more epoch, in this process).
    resumed = digits.main([*words[3:], "--epochs", str(done + 1)])
    assert resumed["resumed_from_epoch"] == done
    assert resumed["epochs_trained"] == done + 1 and resumed["epochs_this_run"] == 1
    assert resumed["interrupted"] is False
    assert nnx.Checkpointer(out / "checkpoints").latest_step() == done + 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, object]:
    """A 2-epoch run from start to end: its summary and its output directory."""
    out = tmp_path_factory.mktemp("digits") / "whole"
    return digits.main(["--epochs", "2", "--no-progress", "--out", str(out)]), out


def _assert_same_run(out, reference) -> None:
    """`out` holds the same final metrics, history and arrays as `reference`, bit for bit."""
    for key in ("test_accuracy", "test_loss", "epochs_trained"):
        assert _summary(out)[key] == _summary(reference)[key], key
    states = []
    for where in (out, reference):
        model = digits.CNN(rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adam(2e-3))
        with nnx.Checkpointer(where / "checkpoints") as ckpt:
            restored = ckpt.restore(model=model, optimizer=optimizer)
        states.append((restored["step"], restored["metadata"], nnx.state((model, optimizer))))
    (step_a, meta_a, state_a), (step_b, meta_b, state_b) = states
    assert step_a == step_b and meta_a == meta_b
    # Parameters, Adam's moments and step count, and the dropout stream's key and count.
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(_raw(a), _raw(b))


@pytest.mark.slow  # an interrupted and a resumed run, about 7 s
def test_resume_gives_the_same_final_metrics_as_an_uninterrupted_run(tmp_path, uninterrupted):
    whole, whole_out = uninterrupted
    out = tmp_path / "part"
    first = digits.main(["--epochs", "1", "--no-progress", "--out", str(out)])
    assert first["epochs_trained"] == first["epochs_this_run"] == 1
    resumed = digits.main(["--epochs", "2", "--no-progress", "--out", str(out), "--resume"])
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["epochs_trained"] == 2 and resumed["epochs_this_run"] == 1
    assert resumed["epochs"] == 2 and resumed["interrupted"] is False
    # Exactly equal: the same batches (the shuffle is keyed by epoch), the same dropout masks
    # (the stream is in the checkpoint), the same optimizer state and the same compiled step.
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (
        whole["test_accuracy"],
        whole["test_loss"],
    )
    _assert_same_run(out, whole_out)


@pytest.mark.parametrize("done", [1, 0], ids=["in-epoch-2", "in-epoch-1"])
def test_ctrl_c_mid_epoch_keeps_the_last_epoch_and_resumes_exactly(
    done, tmp_path, monkeypatch, capsys, uninterrupted
):
    """The path of a real Ctrl-C (a KeyboardInterrupt between two steps of epoch done + 1),
    in this process; the slow test above sends a real SIGINT. Epoch 0 is the initial state,
    saved before training, so that even the first epoch can be resumed."""
    calls = []
    real_step = digits.train_step

    def step(*args):
        calls.append(1)
        if len(calls) == done * STEPS_PER_EPOCH + 5:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(digits, "train_step", step)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        digits.main(["--out", str(out), "--epochs", "2", "--no-progress"])
    assert exc.value.code == 130
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.strip()]
    assert said[0] == (
        f"Interrupted: the model and optimizer after epoch {done} of 2 are saved in "
        f"{out / 'checkpoints'} (the unfinished epoch {done + 1} is dropped)."
    )
    words = shlex.split(said[1].removeprefix("Resume with: "))
    assert os.path.realpath(words[0]) == os.path.realpath(sys.executable)
    assert words[1:] == [
        "-m", "nnx.examples.digits", "--out", str(out), "--epochs", "2", "--no-progress",
        "--resume",
    ]  # fmt: skip
    summary = _summary(out)
    assert summary["interrupted"] is True and summary["plot"] is None
    assert summary["epochs_trained"] == summary["epochs_this_run"] == done
    if done == 0:
        assert summary["test_accuracy"] is None
    assert nnx.Checkpointer(out / "checkpoints").all_steps() == list(range(done + 1))

    # The five steps in memory were dropped: resuming ends where the whole run did.
    monkeypatch.setattr(digits, "train_step", real_step)
    resumed = digits.main(words[3:])
    assert resumed["resumed_from_epoch"] == done
    assert resumed["epochs_this_run"] == 2 - done and resumed["epochs_trained"] == 2
    _assert_same_run(out, uninterrupted[1])
