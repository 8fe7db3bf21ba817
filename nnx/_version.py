"""The structure clock.

Every structural change anywhere (an attribute that holds a node or a static value is set or
deleted, a tracked container is mutated, a Variable's metadata changes) takes a fresh stamp
from this clock and writes it on the changed object. The graph's flatten cache remembers the
clock value and each object's stamp; when the clock has not moved since, nothing changed.
Value assignments (``v.value = x``) never touch the clock.
"""

from __future__ import annotations

__all__ = ["WATCHED", "bump", "now"]

_clock = [0]

# The stamp a flatten gives a State it walks as structure while the State has none yet: any
# nonzero stamp makes the State's own writes bump it (a State nobody watches skips that).
WATCHED = -1


def bump() -> int:
    """Advances the clock and returns the new stamp."""
    _clock[0] += 1
    return _clock[0]


def now() -> int:
    """The current clock value."""
    return _clock[0]
