"""Shared timing helper for the benchmarks: interleaved repeats, medians, warm-up excluded.

:func:`measure` times several implementations of the same operation *in the same rounds*: each
round runs every implementation once (a timed loop of ``number`` calls), in an order that
rotates from round to round, so slow drifts of the machine (frequency scaling, other processes,
the allocator) hit every implementation alike. The result keeps the per-round samples, so
callers can report medians and *paired* ratios (the median over rounds of ``a[r] / b[r]``),
which cancel most of the noise that two independent medians would keep.

Example:
  >>> t = measure({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))}, repeats=3)
  >>> sorted(t.samples), len(t.samples["a"])
  (['a', 'b'], 3)
  >>> ratio = t.ratio("b", "a")  # median of the per-round ratios b/a
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["CLOCKS", "Timings", "calibrate", "measure"]


@dataclass
class Timings:
    """Per-round samples (seconds per call) of each implementation, and the loop sizes."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    number: dict[str, int] = field(default_factory=dict)

    def median(self, name: str) -> float:
        """Median seconds per call."""
        return statistics.median(self.samples[name])

    def ratio(self, num: str, den: str) -> float:
        """Median over rounds of ``num / den`` (paired: both timed in the same round)."""
        pairs = zip(self.samples[num], self.samples[den], strict=True)
        return statistics.median(a / b for a, b in pairs)


CLOCKS: dict[str, Callable[[], float]] = {
    # Wall time: what a user waits for. The default.
    "wall": time.perf_counter,
    # CPU time of the calling thread: leaves out the time the OS gave other processes, so it
    # is the steadier choice on a busy machine for single-threaded Python work (such as graph
    # operations); it does not see time spent in other threads (device work, compilation).
    "cpu": time.thread_time,
}


def _loop(fn: Callable[[], object], number: int, clock: Callable[[], float]) -> float:
    t0 = clock()
    for _ in range(number):
        fn()
    return clock() - t0


def calibrate(
    fn: Callable[[], object],
    min_time: float,
    max_number: int = 100_000,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """The number of calls whose loop takes at least `min_time` seconds (one call at least).

    Also serves as the warm-up: `fn` runs several times before anything is timed.
    """
    for _ in range(3):
        fn()
    number = 1
    while True:
        elapsed = _loop(fn, number, clock)
        if elapsed >= min_time or number >= max_number:
            return number
        # Aim a little above min_time; never grow by more than 10x at once.
        grow = min_time * 1.2 / max(elapsed, 1e-9)
        number = min(max_number, max(number + 1, int(number * min(grow, 10.0))))


def measure(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 15,
    min_time: float = 0.02,
    clock: str = "wall",
) -> Timings:
    """Times every function in `fns` in `repeats` interleaved rounds.

    Args:
      fns: name -> zero-argument callable (one call = one operation).
      repeats: rounds; each round times every function once, order rotated per round.
      min_time: seconds each timed loop should last at least (sets calls per loop).
      clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.thread_time``), see
        :data:`CLOCKS`.

    Returns:
      The per-round seconds per call of each function. Warm-up calls are never included.
      The garbage collector is off inside timed loops (collected between them), as timeit does.
    """
    timer = CLOCKS[clock]
    names = list(fns)
    out = Timings()
    for name in names:
        out.number[name] = calibrate(fns[name], min_time, clock=timer)
        out.samples[name] = []
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                gc.collect()
                gc.disable()
                try:
                    elapsed = _loop(fns[name], out.number[name], timer)
                finally:
                    if gc_was_enabled:
                        gc.enable()
                out.samples[name].append(elapsed / out.number[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return out
