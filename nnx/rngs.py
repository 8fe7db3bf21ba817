"""Random number streams: :class:`Rngs`, :class:`RngStream`, and the helpers that split,
fork and reseed them.

Each stream holds a key and a counter as Variables (:class:`RngKey`, :class:`RngCount`), so
RNG state travels through ``nnx.split``/``merge``, transforms and checkpoints like any other
state. Calling a stream folds the counter into the key and increments the counter.

Example:
  >>> rngs = nnx.Rngs(0, dropout=1)
  >>> k1, k2 = rngs.params(), rngs.params()   # no 'params' stream: falls back to default
  >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
  True
  >>> int(rngs.default.count.value), int(rngs.dropout.count.value)
  (2, 0)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from .errors import ArgumentError, RngStreamError
from .filters import Filter, to_predicate
from .graph import iter_graph
from .pytreelib import Pytree
from .variablelib import Variable

__all__ = [
    "RngCount",
    "RngKey",
    "RngState",
    "RngStream",
    "Rngs",
    "SplitBackups",
    "fork_rngs",
    "reseed",
    "restore_rngs",
    "split_rngs",
]


class RngState(Variable):
    """Base type of the Variables that hold RNG state."""

    __slots__ = ()


class RngKey(RngState):
    """A stream's key: a typed JAX PRNG key (possibly a batch of them)."""

    __slots__ = ()


class RngCount(RngState):
    """A stream's counter: how many keys it has handed out."""

    __slots__ = ()


def _as_key(given: Any, tag: str | None = None) -> jax.Array:
    if isinstance(given, int):
        return jax.random.key(given)
    seed = None
    if not isinstance(given, str | bytes):
        with contextlib.suppress(TypeError):  # not array-like
            seed = jnp.asarray(given)
    if seed is not None:
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            return seed
        if seed.dtype == jnp.uint32 and seed.shape[-1:] == (2,):
            return jax.random.wrap_key_data(seed)
        if jnp.issubdtype(seed.dtype, jnp.integer):
            if seed.ndim == 0:
                return jax.random.key(seed)
            return jax.vmap(jax.random.key)(seed.reshape(-1)).reshape(seed.shape)
    stream = f" for stream {tag!r}" if tag else ""
    kind = f"dtype {seed.dtype}" if seed is not None else "not an array"
    raise ArgumentError(
        f"An RNG seed must be an int, an integer array, or a JAX PRNG key; got {given!r}"
        f"{stream} ({kind}).\nFix: e.g. nnx.Rngs(0), nnx.Rngs(params=jax.random.key(0))."
    )


def _fold_in(key: jax.Array, count: jax.Array) -> jax.Array:
    fn: Callable = jax.random.fold_in
    for _ in range(key.ndim):
        fn = jax.vmap(fn)
    return fn(key, count)


class RngStream(Pytree):
    """One named stream of random keys.

    Args:
      key: an int seed, a typed PRNG key, or raw ``uint32[..., 2]`` key data.
      tag: the stream's name (``'params'``, ``'dropout'``).
    """

    def __init__(self, key: Any, *, tag: str):
        key = _as_key(key, tag)
        self.key = RngKey(key, tag=tag)
        self.count = RngCount(jnp.zeros(key.shape, jnp.uint32), tag=tag)
        self.tag = tag

    def __call__(self) -> jax.Array:
        """The next key of the stream."""
        key = _fold_in(self.key.value, self.count.value)
        self.count.value = self.count.value + 1
        return key

    def fork(self, *, split: int | tuple[int, ...] | None = None) -> RngStream:
        """An independent stream seeded from this one (a batch of streams with `split`)."""
        key = self()
        if split is not None:
            key = jax.random.split(key, split)
        return RngStream(key, tag=self.tag)


class Rngs(Pytree):
    """A set of named random streams.

    ``Rngs(0)`` makes a ``default`` stream; ``Rngs(params=0, dropout=1)`` makes named ones.
    ``rngs.params()`` draws from the ``params`` stream, or from ``default`` if there is none;
    ``rngs()`` draws from ``default``.

    Raises:
      RngStreamError: a stream was requested that neither exists nor has a default to use.
    """

    def __init__(self, default: Any = None, /, **rngs: Any):
        if default is not None:
            rngs = {"default": default, **rngs}
        for name, value in rngs.items():
            if isinstance(value, RngStream):
                stream = RngStream(value.key.value, tag=name)
                stream.count.value = value.count.value
            else:
                stream = RngStream(value, tag=name)
            setattr(self, name, stream)

    def _streams(self) -> dict[str, RngStream]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, RngStream)}

    def __getattr__(self, name: str) -> RngStream:
        # Only reached when `name` is not an attribute, i.e. not an existing stream.
        if name.startswith("_"):
            raise AttributeError(name)
        d = self.__dict__
        if "default" in d:
            return d["default"]
        raise RngStreamError(
            f"Rngs has no stream {name!r} and no 'default' stream to fall back on; "
            f"available streams: {sorted(self._streams())}.\n"
            f"Fix: pass it when building the Rngs, e.g. nnx.Rngs({name}=0, ...), or give a "
            "default seed, nnx.Rngs(0, ...)."
        )

    def __getitem__(self, name: str) -> RngStream:
        return getattr(self, name)

    def __call__(self) -> jax.Array:
        return self.default()

    def __contains__(self, name: object) -> bool:
        return name in self._streams()

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams())

    def __len__(self) -> int:
        return len(self._streams())

    def items(self):
        return self._streams().items()

    def fork(self, *, split: Any = None) -> Rngs:
        """New, independent Rngs with the same stream names.

        Args:
          split: None (one key per stream), an int or shape (a batch of keys for every stream,
            e.g. for ``nnx.vmap``), or a mapping ``{filter: split}`` choosing per stream
            (filters match stream names; unmatched streams are forked without a split).
        """
        new = object.__new__(Rngs)
        for name, stream in self._streams().items():
            s = split
            if isinstance(split, dict):
                s = None
                for filt, value in split.items():
                    if to_predicate(filt)((name,), stream.key):
                        s = value
                        break
            setattr(new, name, stream.fork(split=s))
        return new

    def split(self, k: int | tuple[int, ...]) -> Rngs:
        """Same as ``fork(split=k)``: every stream becomes a batch of `k` streams."""
        return self.fork(split=k)


def reseed(node: Any, /, **stream_keys: Any) -> None:
    """Resets the named streams everywhere in `node` to new seeds (counters back to zero).

    As in flax, each stream gets the key a fresh ``nnx.Rngs(name=seed)`` would hand out first,
    which is the key a layer forks from the Rngs it is built with: a reseeded model repeats
    what a model freshly built with those seeds does. Batched streams (from a split) get a
    batch of fresh keys of the same shape.

    Example:
      >>> def make():
      ...   return nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=42))
      >>> x = jnp.ones((2, 8))
      >>> drop = make()
      >>> y1 = drop(x)
      >>> nnx.reseed(drop, dropout=42)
      >>> bool((drop(x) == y1).all()), bool((make()(x) == y1).all())
      (True, True)
    """
    for _, value in iter_graph(node):
        if isinstance(value, RngStream) and value.tag in stream_keys:
            key = _as_key(stream_keys[value.tag])
            key = _fold_in(key, jnp.zeros(key.shape, jnp.uint32))  # Rngs(seed)'s first key
            shape = value.key.value.shape
            if shape and key.shape != shape:
                key = jax.random.split(key, shape)
            value.key.value = key
            value.count.value = jnp.zeros(key.shape, jnp.uint32)


class SplitBackups(list):
    """What :func:`split_rngs` changed; a context manager that puts it back on exit."""

    def __enter__(self) -> SplitBackups:
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rngs(self)


def split_rngs(
    node: Any = None,
    /,
    *,
    splits: int | tuple[int, ...],
    only: Filter = ...,
    squeeze: bool = False,
) -> Any:
    """Splits the streams in `node` into batches of keys, in place (for ``vmap``/``scan``).

    Used as a function it returns :class:`SplitBackups` (restore with :func:`restore_rngs` or
    a ``with`` block). Called without `node` it returns a decorator that splits the streams
    found in the decorated function's arguments for the duration of the call.

    Args:
      node: any object graph containing Rngs / RngStreams.
      splits: the number (or shape) of keys per stream.
      only: a filter on stream names/paths; only matching streams are split.
      squeeze: with ``splits=1``, keep scalar keys.

    Example:
      >>> rngs = nnx.Rngs(params=0)
      >>> with nnx.split_rngs(rngs, splits=4):
      ...   rngs.params.key.value.shape
      (4,)
      >>> rngs.params.key.value.shape
      ()
    """
    if node is None:

        def decorator(f: Callable) -> Callable:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with split_rngs((args, kwargs), splits=splits, only=only, squeeze=squeeze):
                    return f(*args, **kwargs)

            return wrapper

        return decorator
    predicate = to_predicate(only)
    backups = SplitBackups()
    for path, value in iter_graph(node):
        if isinstance(value, RngStream) and predicate((*path, value.tag), value.key):
            backups.append((value, value.key.value, value.count.value))
            key = value()
            keys = jax.random.split(key, splits)
            if squeeze and keys.shape[:1] == (1,):
                keys = keys[0]
            value.key.value = keys
            value.count.value = jnp.zeros(keys.shape, jnp.uint32)
    return backups


def fork_rngs(
    node: Any = None,
    /,
    *,
    split: int | tuple[int, ...] | None = None,
    only: Filter = ...,
) -> Any:
    """Gives every stream in `node` a fresh, independent key, in place (a batch of keys with
    `split`), e.g. so that a transformed call does not reuse the caller's key sequence.

    Like :func:`split_rngs`: a function returning :class:`SplitBackups` (restored by a
    ``with`` block or :func:`restore_rngs`), or a decorator when `node` is omitted.

    Example:
      >>> rngs = nnx.Rngs(0)
      >>> with nnx.fork_rngs(rngs, split=2):
      ...   rngs.default.key.value.shape
      (2,)
    """
    if node is None:

        def decorator(f: Callable) -> Callable:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with fork_rngs((args, kwargs), split=split, only=only):
                    return f(*args, **kwargs)

            return wrapper

        return decorator
    predicate = to_predicate(only)
    backups = SplitBackups()
    for path, value in iter_graph(node):
        if isinstance(value, RngStream) and predicate((*path, value.tag), value.key):
            backups.append((value, value.key.value, value.count.value))
            forked = value.fork(split=split)
            value.key.value = forked.key.value
            value.count.value = forked.count.value
    return backups


def restore_rngs(backups: SplitBackups) -> None:
    """Undoes :func:`split_rngs`: each stream gets its key back, its counter moved past the
    key it spent on the split."""
    for stream, key, count in backups:
        stream.key.value = key
        stream.count.value = count + 1
    backups.clear()
