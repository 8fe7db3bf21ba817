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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp

from ._graph_mode import check_tree_mode
from ._graph_mode import graph_updates as graph_updates_
from .errors import ArgumentError, RngStreamError, format_path
from .filters import Filter, to_predicate
from .graph import iter_graph
from .graph_tools import recursive_map
from .pytreelib import Pytree
from .variablelib import Variable

__all__ = [
    "RngCount",
    "RngKey",
    "RngState",
    "RngStream",
    "Rngs",
    "SplitBackups",
    "backup_keys",
    "fork_rngs",
    "reseed",
    "restore_rngs",
    "split_rngs",
    "with_rngs",
]

F = TypeVar("F", bound=Callable[..., Any])


def _sampler(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``stream.normal(shape)``: ``fn`` (a ``jax.random`` sampler) with the stream's next key."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> jax.Array:
        return fn(self(), *args, **kwargs)

    return method


def _keyless(make: Callable[..., Callable[..., jax.Array]]) -> Callable[..., Any]:
    """``stream.lecun_normal()(shape)``: an initializer drawing its key from the stream."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Callable[..., jax.Array]:
        init = make(*args, **kwargs)

        def keyless(*init_args: Any, **init_kwargs: Any) -> jax.Array:
            return init(self(), *init_args, **init_kwargs)

        return keyless

    method.__name__ = method.__qualname__ = make.__name__
    method.__doc__ = (
        f"``jax.nn.initializers.{make.__name__}(*args, **kwargs)`` as an initializer without "
        "a key argument: each call draws its key from this stream."
    )
    return method


# The jax.random samplers and jax.nn.initializers flax.nnx 0.12 puts on RngStream and Rngs.
_SAMPLERS = (
    "bits", "uniform", "randint", "permutation", "choice", "normal", "multivariate_normal",
    "truncated_normal", "bernoulli", "beta", "cauchy", "dirichlet", "exponential", "gamma",
    "loggamma", "poisson", "gumbel", "categorical", "laplace", "logistic", "pareto", "t",
    "chisquare", "f", "rademacher", "maxwell", "double_sided_maxwell", "weibull_min",
    "orthogonal", "generalized_normal", "ball", "rayleigh", "wald", "geometric",
    "triangular", "lognormal", "binomial", "multinomial",
)
_INITIALIZERS = (
    "delta_orthogonal", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
    "kaiming_normal", "kaiming_uniform", "lecun_normal", "lecun_uniform",
    "variance_scaling", "xavier_normal", "xavier_uniform",
)


def _add_samplers(cls: type) -> type:
    for name in _SAMPLERS:
        setattr(cls, name, _sampler(getattr(jax.random, name)))
    for name in _INITIALIZERS:
        setattr(cls, name, _keyless(getattr(jax.nn.initializers, name)))
    return cls


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


@_add_samplers
class RngStream(Pytree):
    """One named stream of random keys.

    Besides ``stream()`` (the next key), a stream draws samples directly with the
    ``jax.random`` functions as methods (``stream.normal(shape)``, ``stream.uniform(shape)``,
    ``stream.bernoulli(p, shape)``...), and makes keyless initializers
    (``stream.lecun_normal()(shape)``), each call spending one key.

    Args:
      key: an int seed, a typed PRNG key, or raw ``uint32[..., 2]`` key data.
      tag: the stream's name (``'params'``, ``'dropout'``).

    Example:
      >>> stream = nnx.Rngs(params=0).params
      >>> stream.normal((2, 3)).shape, int(stream.count.value)
      ((2, 3), 1)
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
        return type(self)(key, tag=self.tag)

    def split(self, k: int | tuple[int, ...]) -> RngStream:
        """A batch of `k` (a count or a shape) independent streams seeded from this one."""
        return type(self)(jax.random.split(self(), k), tag=self.tag)

    def broadcast(self, k: int | tuple[int, ...]) -> RngStream:
        """A batch of shape `k` of streams that all hold the same new key (every member
        draws the same numbers)."""
        key = self()
        shape = (k,) if isinstance(k, int) else tuple(k)
        return type(self)(jnp.broadcast_to(key, shape + key.shape), tag=self.tag)


@_add_samplers
class Rngs(Pytree):
    """A set of named random streams.

    ``Rngs(0)`` makes a ``default`` stream; ``Rngs(params=0, dropout=1)`` makes named ones
    (``Rngs({'params': 0})`` too). ``rngs.params()`` draws from the ``params`` stream, or from
    ``default`` if there is none; ``rngs()`` draws from ``default``. The ``jax.random``
    samplers are methods drawing from ``default`` (``rngs.normal((2,))``), as on a stream.

    Raises:
      RngStreamError: a stream was requested that neither exists nor has a default to use.

    Example:
      >>> rngs = nnx.Rngs(0)
      >>> rngs.uniform((3,)).shape, rngs.params.bernoulli(0.5, (2,)).dtype
      ((3,), dtype('bool'))
    """

    def __init__(self, default: Any = None, **rngs: Any):
        if isinstance(default, Mapping):
            rngs = {**default, **rngs}
        elif default is not None:
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

    def fork(self, /, *, split: Any = None) -> Rngs:
        """New, independent Rngs with the same stream names.

        Args:
          split: None (one key per stream), an int or shape (a batch of keys for every stream,
            e.g. for ``nnx.vmap``), or a mapping ``{filter: split}`` choosing per stream
            (filters match stream names; unmatched streams are forked without a split).
        """
        new = object.__new__(Rngs)
        rules = _rules(split) if isinstance(split, Mapping) else None
        for name, stream in self._streams().items():
            s = split
            if rules is not None:
                s = next((v for _, pred, v in rules if pred((name,), stream)), None)
            setattr(new, name, stream.fork(split=s))
        return new

    def _map_streams(self, k: Any, how: Callable[[RngStream, Any], RngStream]) -> Rngs:
        rules = _rules(k if isinstance(k, Mapping) else {...: k})
        new = object.__new__(Rngs)
        for name, stream in self._streams().items():
            n = next((v for _, pred, v in rules if pred((name,), stream)), None)
            setattr(new, name, stream if n is None else how(stream, n))
        return new

    def split(self, k: Mapping[Filter, Any] | int | tuple[int, ...]) -> Rngs:
        """New Rngs whose streams are batches of `k` independent streams (``nnx.vmap``).

        `k` may be a mapping ``{filter: k}`` choosing per stream; a stream no filter matches,
        or mapped to None, is kept as it is.
        """
        return self._map_streams(k, RngStream.split)

    def broadcast(self, k: Mapping[Filter, Any] | int | tuple[int, ...] | None) -> Rngs:
        """New Rngs whose streams are batches of shape `k` repeating one new key, so every
        member of the batch draws the same numbers; a mapping chooses per stream, as in
        :meth:`split`."""
        return self._map_streams(k, RngStream.broadcast)


def _rules(spec: Mapping[Filter, Any]) -> list[tuple[Filter, Callable, Any]]:
    return [(f, to_predicate(f), v) for f, v in spec.items()]


def _map_copy(f: Callable[[tuple, Any], Any], node: Any, graph: bool | None) -> Any:
    """``recursive_map`` (which maps a copy: own Modules and containers, shared Variables)."""
    return recursive_map(f, node, graph=graph)


def with_rngs(
    node: Any = None,
    /,
    *,
    split: Mapping[Filter, int | tuple[int, ...]] | int | tuple[int, ...] | None = None,
    fork: Filter | Sequence[Filter] | None = None,
    broadcast: Mapping[Filter, int | tuple[int, ...]] | int | tuple[int, ...] | None = None,
    only: Filter = True,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """A copy of `node` whose RNG streams are split, broadcast or forked, rule by rule.

    The copy has its own Modules, Rngs and streams (the other Variables are shared with
    `node`); each new stream is seeded from the original one, whose counter moves on by one.
    A stream matching no rule is kept as it is. Without `node`, returns a decorator that
    applies the rules to the decorated function's arguments for each call.

    Unlike flax, this works in every graph mode (flax refuses ``graph=True`` together with
    ``graph_updates=True``, its defaults).

    Args:
      node: any object graph or pytree holding Rngs / RngStreams.
      split: a shape for every stream, or ``{filter: shape}`` (first match wins): the stream
        becomes a batch of independent streams of that shape.
      fork: a filter (or several) choosing streams that get a fresh, independent key.
      broadcast: like `split`, but the batch repeats one new key.
      only: a filter on the streams considered at all.
      graph: False refuses shared references and cycles (flax's tree mode).
      graph_updates: accepted for flax compatibility; the result is a copy either way.

    Raises:
      ArgumentError: a stream matches rules of two kinds through specific filters (a
        ``...``/``True`` catch-all never counts as a conflict; split wins over broadcast over
        fork).

    Example:
      >>> rngs = nnx.Rngs(params=0, dropout=1)
      >>> new = nnx.with_rngs(rngs, split={'params': 4}, fork=nnx.Not('params'))
      >>> new.params.key.shape, new.dropout.key.shape, rngs.params.key.shape
      ((4,), (), ())
    """
    if node is None:

        def decorator(f: F) -> F:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                args, kwargs = with_rngs(
                    (args, kwargs), split=split, fork=fork, broadcast=broadcast, only=only,
                    graph=graph, graph_updates=graph_updates,
                )  # fmt: skip
                return f(*args, **kwargs)

            return cast(F, wrapper)

        return decorator
    splits = _rules({} if split is None else split if isinstance(split, Mapping) else {...: split})
    if broadcast is not None and not isinstance(broadcast, Mapping):
        broadcast = {...: broadcast}
    casts = _rules(broadcast or {})
    if fork is None:
        fork = []
    elif isinstance(fork, str) or not isinstance(fork, Sequence):
        fork = [fork]
    forks = [(f, to_predicate(f), None) for f in fork]
    keep = to_predicate(only)

    def update(path: tuple, value: Any) -> Any:
        if not isinstance(value, RngStream) or not keep(path, value):
            return value
        found: dict[str, tuple[Filter, Any]] = {}  # kind -> (filter, shape) of the match
        for kind, rules in (("split", splits), ("broadcast", casts), ("fork", forks)):
            match = next(((f, v) for f, pred, v in rules if pred(path, value)), None)
            if match is not None:
                found[kind] = match
        specific = [kind for kind, (f, _) in found.items() if f is not ... and f is not True]
        if len(specific) > 1:
            rules_text = "\n".join(f"  {kind}: {found[kind][0]!r}" for kind in specific)
            raise ArgumentError(
                f"nnx.with_rngs: the stream {value.tag!r} at {format_path(path, 'node')} "
                f"matches rules of several kinds:\n{rules_text}\nFix: make the filters "
                f"disjoint, e.g. fork=nnx.Not({value.tag!r})."
            )
        if "split" in found:
            return value.split(found["split"][1])
        if "broadcast" in found:
            return value.broadcast(found["broadcast"][1])
        if "fork" in found:
            return value.fork()
        return value

    return _map_copy(update, node, graph)


def _scalars_only(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if shape:
        raise ArgumentError(
            f"nnx.reseed(policy='scalars_only'): the stream at {format_path(path, 'node')} "
            f"holds a batch of keys of shape {shape}, and one new key cannot reseed it.\n"
            "Fix: policy='match_shape' (a batch of independent keys, split from the new one), "
            "or a callable (path, key, shape) -> keys."
        )
    return key


def _match_shape(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.split(key, shape) if shape else key


_POLICIES: dict[str, Callable[[tuple, jax.Array, tuple[int, ...]], jax.Array]] = {
    "scalars_only": _scalars_only,
    "match_shape": _match_shape,
}


def reseed(
    node: Any,
    /,
    *,
    graph: bool | None = None,
    policy: str | Callable[[tuple, jax.Array, tuple[int, ...]], jax.Array] = "match_shape",
    **stream_keys: Any,
) -> None:
    """Resets the named streams everywhere in `node` to new seeds (counters back to zero).

    As in flax, each stream gets the key a fresh ``nnx.Rngs(name=seed)`` would hand out first,
    which is the key a layer forks from the Rngs it is built with: a reseeded model repeats
    what a model freshly built with those seeds does. Every stream of that name gets that
    same key (flax hands the streams successive keys of one fresh Rngs instead).

    Args:
      node: any object graph holding Rngs / RngStreams.
      graph: False refuses shared references and cycles (flax's tree mode).
      policy: how a batched stream (from a split) is reseeded: ``'match_shape'`` (the
        default here; flax's is ``'scalars_only'``) gives it a batch of keys split from the
        new one, ``'scalars_only'`` refuses it, and a callable
        ``(path, key, shape) -> keys`` decides.
      **stream_keys: the new seed (int or key) of each stream name.

    Raises:
      ArgumentError: an unknown policy, or a batched stream under ``'scalars_only'``.

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
    if isinstance(policy, str) and policy in _POLICIES:
        fn = _POLICIES[policy]
    elif callable(policy):
        fn = policy
    else:
        raise ArgumentError(
            f"nnx.reseed: policy={policy!r} is not 'scalars_only', 'match_shape' or a "
            "callable.\nFix: policy='match_shape', or policy=lambda path, key, shape: ..."
        )
    check_tree_mode(graph, node, "reseed")
    for path, value in iter_graph(node):
        if isinstance(value, RngStream) and value.tag in stream_keys:
            key = _as_key(stream_keys[value.tag], value.tag)
            key = _fold_in(key, jnp.zeros(key.shape, jnp.uint32))  # Rngs(seed)'s first key
            key = fn(path, key, value.key.value.shape)
            value.key.value = key
            value.count.value = jnp.zeros(key.shape, jnp.uint32)


class SplitBackups(list):
    """What :func:`split_rngs` / :func:`fork_rngs` changed, as ``(stream, key, count)``
    entries; a context manager that puts it back on exit."""

    @property
    def backups(self) -> list:
        """The entries (flax's attribute name)."""
        return list(self)

    def __enter__(self) -> SplitBackups:
        return self

    def __exit__(self, *exc: Any) -> None:
        restore_rngs(self)


def _stream_pred(only: Filter) -> Callable[[tuple, RngStream], bool]:
    """flax's stream test: `only` must accept both the key and the count Variables."""
    predicate = to_predicate(only)

    def test(path: tuple, stream: RngStream) -> bool:
        return predicate((*path, "key"), stream.key) and predicate((*path, "count"), stream.count)

    return test


def _split_keys(stream: RngStream, splits: Any, squeeze: bool) -> jax.Array:
    keys = jax.random.split(stream(), splits)
    return keys[0] if squeeze else keys


def split_rngs(
    node: Any = None,
    /,
    *,
    splits: int | tuple[int, ...],
    only: Filter = ...,
    squeeze: bool = False,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Splits the streams in `node` into batches of keys, in place (for ``vmap``/``scan``).

    Used as a function it returns :class:`SplitBackups` (restore with :func:`restore_rngs` or
    a ``with`` block). Called without `node` it returns a decorator that splits the streams
    found in the decorated function's arguments for the duration of the call.

    Args:
      node: any object graph containing Rngs / RngStreams.
      splits: the number (or shape) of keys per stream.
      only: a filter on stream paths; only matching streams are split.
      squeeze: with ``splits=1``, keep scalar keys.
      graph: False refuses shared references and cycles (flax's tree mode).
      graph_updates: False (as in flax) leaves `node` alone and returns a copy whose streams
        are split (the copy shares the other Variables).

    Raises:
      ArgumentError: ``squeeze=True`` with ``splits`` other than 1.

    Example:
      >>> rngs = nnx.Rngs(params=0)
      >>> with nnx.split_rngs(rngs, splits=4):
      ...   rngs.params.key.value.shape
      (4,)
      >>> rngs.params.key.value.shape
      ()
    """
    if node is None:

        def decorator(f: F) -> F:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                kw = dict(splits=splits, only=only, squeeze=squeeze, graph=graph)
                if not graph_updates_(graph_updates):
                    args, kwargs = split_rngs((args, kwargs), **kw, graph_updates=False)
                    return f(*args, **kwargs)
                with split_rngs((args, kwargs), **kw):
                    return f(*args, **kwargs)

            return cast(F, wrapper)

        return decorator
    if squeeze and splits != 1:
        raise ArgumentError(
            f"nnx.split_rngs: squeeze=True drops the new axis, so it needs splits=1; got "
            f"splits={splits!r}.\nFix: splits=1, or squeeze=False."
        )
    test = _stream_pred(only)
    if not graph_updates_(graph_updates):

        def split_one(path: tuple, value: Any) -> Any:
            if isinstance(value, RngStream) and test(path, value):
                keys = _split_keys(value, splits, squeeze)
                value.key = RngKey(keys, tag=value.tag)
                value.count = RngCount(jnp.zeros(keys.shape, jnp.uint32), tag=value.tag)
            return value

        return _map_copy(split_one, node, graph)
    check_tree_mode(graph, node, "split_rngs")
    backups = SplitBackups()
    for path, value in iter_graph(node):
        if isinstance(value, RngStream) and test(path, value):
            keys = _split_keys(value, splits, squeeze)
            backups.append((value, value.key.value, value.count.value))
            value.key.value = keys
            value.count.value = jnp.zeros(keys.shape, jnp.uint32)
    return backups


def fork_rngs(
    node: Any = None,
    /,
    *,
    split: Mapping[Filter, int | tuple[int, ...] | None] | int | tuple[int, ...] | None = None,
    graph: bool | None = None,
    graph_updates: bool | None = None,
) -> Any:
    """Gives every stream in `node` a fresh, independent key, in place (a batch of keys with
    `split`), e.g. so that a transformed call does not reuse the caller's key sequence.

    Like :func:`split_rngs`: a function returning :class:`SplitBackups` (restored by a
    ``with`` block or :func:`restore_rngs`), or a decorator when `node` is omitted.

    Args:
      node: any object graph containing Rngs / RngStreams.
      split: None (one new key per stream), a shape for every stream, or
        ``{filter: shape or None}``: only the streams some filter matches are forked.
      graph: False refuses shared references and cycles (flax's tree mode).
      graph_updates: False (as in flax) leaves `node` alone and returns a forked copy.

    Example:
      >>> rngs = nnx.Rngs(0)
      >>> with nnx.fork_rngs(rngs, split=2):
      ...   rngs.default.key.value.shape
      (2,)
    """
    if node is None:

        def decorator(f: F) -> F:
            @functools.wraps(f)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not graph_updates_(graph_updates):
                    args, kwargs = fork_rngs(
                        (args, kwargs), split=split, graph=graph, graph_updates=False
                    )
                    return f(*args, **kwargs)
                with fork_rngs((args, kwargs), split=split, graph=graph):
                    return f(*args, **kwargs)

            return cast(F, wrapper)

        return decorator
    spec = split if isinstance(split, Mapping) else {...: split}
    rules = [(_stream_pred(f), v) for f, v in spec.items()]

    def rule(path: tuple, value: Any) -> Any:
        if isinstance(value, RngStream):
            for test, n in rules:
                if test(path, value):
                    return (n,)
        return None

    if not graph_updates_(graph_updates):

        def fork_one(path: tuple, value: Any) -> Any:
            found = rule(path, value)
            return value if found is None else value.fork(split=found[0])

        return _map_copy(fork_one, node, graph)
    check_tree_mode(graph, node, "fork_rngs")
    backups = SplitBackups()
    for path, value in iter_graph(node):
        found = rule(path, value)
        if found is not None:
            forked = value.fork(split=found[0])
            backups.append((value, value.key.value, value.count.value))
            value.key.value = forked.key.value
            value.count.value = forked.count.value
    return backups


def backup_keys(node: Any, /, *, graph: bool | None = None) -> list[tuple[RngStream, jax.Array]]:
    """``(stream, key)`` for every stream in `node`: :func:`restore_rngs` puts the keys back
    (counters are left as they are).

    Example:
      >>> rngs = nnx.Rngs(0)
      >>> saved = nnx.rnglib.backup_keys(rngs)
      >>> rngs.default.key.value = jax.random.key(1)
      >>> nnx.restore_rngs(saved)
      >>> bool(rngs.default.key.value == jax.random.key(0))
      True
    """
    check_tree_mode(graph, node, "backup_keys")
    return [(v, v.key.value) for _, v in iter_graph(node) if isinstance(v, RngStream)]


def restore_rngs(backups: Iterable[tuple], /) -> None:
    """Undoes :func:`split_rngs` / :func:`fork_rngs` (or restores :func:`backup_keys`): each
    stream gets its key back, its counter moved past the key it spent on the split."""
    for backup in backups:
        stream = backup[0]
        stream.key.value = backup[1]
        if len(backup) == 3:
            stream.count.value = backup[2]
    if isinstance(backups, list):
        backups.clear()
