"""Variable metadata: a dict that hashes, so it can be pytree aux data."""

from __future__ import annotations

__all__ = ["EMPTY_META", "Meta"]


class Meta(dict):
    """Variable metadata: a dict that is hashable so it can be pytree aux data.

    Never mutated in place once attached to a Variable (set_metadata copies), so its hash is
    stable. Unhashable entries (lists, dicts) hash by their repr.
    """

    __slots__ = ("_hash",)
    _hash: int

    def __hash__(self) -> int:  # type: ignore[override]
        try:
            return self._hash
        except AttributeError:
            pass
        try:
            h = hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))
        except TypeError:
            h = hash(repr(sorted(self.items(), key=lambda kv: kv[0])))
        self._hash = h
        return h


EMPTY_META = Meta()
