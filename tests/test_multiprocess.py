"""Two JAX processes on loopback: data-parallel training, a multi-process checkpoint, a dead peer.

Each test starts worker processes (``tests/multiprocess_worker.py``, 4 CPU devices each, joined
with ``jax.distributed.initialize`` on 127.0.0.1 and gloo collectives) and reads what they
write into a temporary folder. The one-process reference runs here: this process already has 8
CPU devices (see conftest.py), as many as the two workers together.

Every worker runs in its own process group and is killed (SIGKILL to the group) when its test
ends, passed or not; every wait has a timeout, so a hung job fails the test instead of CI.
Temporary folders are deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest

import nnx
from tests import multiprocess_worker as worker

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(worker.__file__).resolve()
NUM_PROCESSES = 2
# Upper bounds that only stop a hung job (they are not timing assertions): starting a pair
# (imports, distributed set-up, compilation) and running one mode take a few seconds each.
RUN_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 90.0
# A killed peer makes the survivor fail once its heartbeats are missed (the worker sets
# heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S) or as soon as it loses the coordinator.
FAIL_FAST_S = 3 * worker.HEARTBEAT_TIMEOUT_S + 30
# Sums of the all-reduce run in another order across processes (gloo) than across the devices
# of one process: equal to float32 rounding.
RTOL, ATOL = 1e-5, 1e-6


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no {path.name})"
    text = path.read_text(errors="replace").splitlines()
    kept = [line for line in text if not line.startswith("[Gloo]")]
    return f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(kept[-lines:])


class Workers:
    """A job of worker processes; leaving the ``with`` block kills whatever still runs."""

    def __init__(self, mode: str, out: Path, ckpt: Path | None = None):
        self.out = out
        self.logs = [out / f"{mode}.log{i}" for i in range(NUM_PROCESSES)]
        port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.procs: list[subprocess.Popen] = []
        for i, log in enumerate(self.logs):
            cmd = [sys.executable, str(WORKER), mode, "--process-id", str(i)]
            cmd += ["--num-processes", str(NUM_PROCESSES), "--port", str(port), "--out", str(out)]
            if ckpt is not None:
                cmd += ["--ckpt", str(ckpt)]
            with open(log, "w") as f:
                self.procs.append(
                    subprocess.Popen(
                        cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group, killed as one
                    )
                )  # fmt: skip

    def logs_text(self) -> str:
        return "\n".join(tail(log) for log in self.logs)

    def kill(self, i: int) -> None:
        if self.procs[i].poll() is None:
            os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def wait_all(self, timeout: float) -> list[int]:
        """The exit codes; fails the test (logs attached) if the job outlives `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            pytest.fail(f"the workers did not finish within {timeout} s\n{self.logs_text()}")

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for i in range(len(self.procs)):
            self.kill(i)


def run_job(mode: str, out: Path, ckpt: Path | None = None) -> None:
    """Runs `mode` in a fresh pair of processes; fails the test unless both exit with 0."""
    with Workers(mode, out, ckpt) as job:
        codes = job.wait_all(RUN_TIMEOUT_S)
        assert codes == [0] * NUM_PROCESSES, f"{mode}: exit codes {codes}\n{job.logs_text()}"


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary folder, deleted after the test whatever its outcome."""
    path = Path(tempfile.mkdtemp(prefix="nnx-multiprocess-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def trained() -> Iterator[Path]:
    """One ``train`` job (train, then save into ``ckpt/``); its folder, deleted afterwards."""
    path = Path(tempfile.mkdtemp(prefix="nnx-multiprocess-"))
    try:
        run_job("train", path, path / "ckpt")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_data_parallel_training_equals_one_process(trained):
    results = [load(trained / f"p{i}_train.npz") for i in range(NUM_PROCESSES)]
    assert results[0].keys() == {"losses", "up.kernel", "up.bias", "down.kernel", "down.bias"}
    # The parameters are replicated: both processes hold the very same numbers.
    for name in results[0]:
        np.testing.assert_array_equal(results[1][name], results[0][name], err_msg=name)
    # The same training in this process, on its 8 devices.
    assert jax.process_count() == 1 and jax.device_count() == 8
    model, losses = worker.train(worker.data_mesh())
    reference = {"losses": np.array(losses), **worker.flat_values(model)}
    assert reference.keys() == results[0].keys()
    for name, value in reference.items():
        np.testing.assert_allclose(results[0][name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    # Training moved the parameters (a job that saved its initial model would not pass).
    initial = worker.flat_values(worker.MLP(nnx.Rngs(0)))
    assert not np.allclose(results[0]["up.kernel"], initial["up.kernel"], rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_multiprocess_checkpoint_restores_in_a_fresh_pair(trained):
    ckpt = trained / "ckpt"
    model_dir = ckpt / str(worker.SAVE_STEP) / "model"
    # Both processes wrote their own shards into the one folder.
    for i in range(NUM_PROCESSES):
        assert (model_dir / f"ocdbt.process_{i}").is_dir(), sorted(os.listdir(model_dir))
    trained_values = load(trained / "p0_train.npz")
    saved = [load(trained / f"p{i}_saved.npz") for i in range(NUM_PROCESSES)]
    for name, value in saved[0].items():
        np.testing.assert_array_equal(value, trained_values[name], err_msg=name)
        np.testing.assert_array_equal(saved[1][name], value, err_msg=name)
    # A fresh pair restores it onto the devices in reverse order: each process reads the shards
    # the other one saved (the worker also checks the restored arrays' shardings).
    run_job("restore", trained, ckpt)
    for i in range(NUM_PROCESSES):
        restored = load(trained / f"p{i}_restored.npz")
        assert restored.keys() == saved[0].keys()
        for name, value in saved[0].items():
            np.testing.assert_array_equal(restored[name], value, err_msg=f"p{i} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1], ids=["coordinator-dies", "peer-dies"])
def test_a_dead_peer_fails_the_survivor_fast(scratch, victim):
    with Workers("loop", scratch) as job:
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = [scratch / f"p{i}_ready" for i in range(NUM_PROCESSES)]
        while not all(r.exists() for r in ready):
            codes = [p.poll() for p in job.procs]
            assert codes == [None] * NUM_PROCESSES, f"exited early: {codes}\n{job.logs_text()}"
            if time.monotonic() > deadline:
                pytest.fail(f"not training after {READY_TIMEOUT_S} s\n{job.logs_text()}")
            time.sleep(0.2)
        job.kill(victim)
        survivor = job.procs[1 - victim]
        try:
            code = survivor.wait(timeout=FAIL_FAST_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the survivor still runs {FAIL_FAST_S} s later\n{job.logs_text()}")
        # It was still training (the loop lasts LOOP_LIMIT_S) and stops with an error.
        assert code != 0, job.logs_text()


def test_initialize_after_import_nnx():
    """`import nnx` must not start JAX's backend (it once created an array at import), or a
    user's jax.distributed.initialize() after it raises."""
    code = f"""
        import jax
        import nnx
        address = "127.0.0.1:{free_port()}"
        jax.distributed.initialize(
            coordinator_address=address, num_processes=1, process_id=0,
            coordinator_bind_address=address, initialization_timeout=30,
        )
        assert jax.process_count() == 1
        jax.distributed.shutdown()
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
