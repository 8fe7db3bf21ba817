"""Saves that survive the end of the script and Ctrl-C.

* :func:`at_exit` registers a hook that commits every pending save when the interpreter
  exits, *before* ``concurrent.futures`` shuts its executors down. A plain ``atexit`` hook
  runs after that shutdown, when orbax's background save can no longer schedule work: the
  save is lost, or the process hangs. Hooks registered with ``threading._register_atexit``
  run first, newest first, so ours is registered after ``concurrent.futures.thread`` has
  registered its own.
* :func:`deferred_interrupt` holds a Ctrl-C (SIGINT) back while a save is being handed to
  orbax or restored values are written into a model, and raises it right after: a save is
  started whole or not at all, and a model is restored whole or left as it was.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

_INSTALLED: list[Callable[[], None]] = []


def at_exit(hook: Callable[[], None]) -> None:
    """Runs `hook` at interpreter exit, while worker threads can still be started (once)."""
    if hook in _INSTALLED:
        return
    import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered first

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("this Python has no threading._register_atexit")
        register(hook)
    except RuntimeError:  # another Python, or already shutting down: the best we have
        atexit.register(hook)
    _INSTALLED.append(hook)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Delays SIGINT until the block has finished, then raises ``KeyboardInterrupt``.

    Only in the main thread and only while Python's default SIGINT handler is installed (a
    handler of the user's or of a framework is left alone).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def report(message: str) -> None:
    """One line to stderr (exit hooks must not raise or print tracebacks)."""
    with contextlib.suppress(Exception):
        print(f"nnx: {message}", file=sys.stderr, flush=True)
