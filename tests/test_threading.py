"""The threading contract of the Module docs: concurrent read-only calls on one shared model
are safe (the first, tracing call included); mutation of one model is not synchronised, and
a lock, or one model per thread, makes it exact."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np

import nnx

THREADS, CALLS = 8, 500


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.drop = nnx.Dropout(0.5, deterministic=True, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)
        self.count = nnx.Variable(jnp.array(0))

    def __call__(self, x):
        return self.l2(self.drop(self.norm(self.l1(x))))


def forward(model, x):
    return model(x)


def run_threads(target, n=THREADS):
    """Runs ``target(i)`` in `n` threads started together; returns the exceptions raised."""
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait()
            target(i)
        except Exception as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def values(model):
    return [
        np.asarray(v.value)
        for _, v in nnx.state(model).flat_state()
        if not isinstance(v, nnx.RngKey)
    ]


def test_concurrent_read_only_jit_calls_on_one_model():
    model = Net(nnx.Rngs(0))
    xs = [jax.random.normal(jax.random.key(i), (3, 4)) for i in range(THREADS)]
    reference = nnx.jit(forward)
    expected = [np.asarray(reference(model, x)) for x in xs]
    before = values(model)
    shared = nnx.jit(forward)  # traced for the first time by the threads, concurrently
    mismatches = []

    def reader(i):
        for _ in range(CALLS):
            if not np.array_equal(np.asarray(shared(model, xs[i])), expected[i]):
                mismatches.append(i)

    errors = run_threads(reader)
    assert not errors and not mismatches
    for a, b in zip(before, values(model), strict=True):
        np.testing.assert_array_equal(a, b)


@nnx.jit
def increment(model):
    model.count.value += 1


def test_a_lock_makes_concurrent_mutation_exact():
    model = Net(nnx.Rngs(0))
    lock = threading.Lock()

    def writer(i):
        for _ in range(CALLS):
            with lock:
                increment(model)

    assert not run_threads(writer)
    assert int(model.count.value) == THREADS * CALLS


def test_one_model_per_thread_needs_no_lock():
    models = [nnx.clone(Net(nnx.Rngs(0))) for _ in range(THREADS)]

    def writer(i):
        for _ in range(CALLS):
            increment(models[i])

    assert not run_threads(writer)
    assert [int(m.count.value) for m in models] == [CALLS] * THREADS
