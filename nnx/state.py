"""State: the nested mapping of a model's Variables, and its flat view.

A :class:`State` is keyed by attribute names and container indices (integers stay integers);
its leaves are Variables (carrying their metadata) or plain arrays. It is a JAX pytree whose
leaves are the arrays, so ``jax.tree.map`` works on it and it can be passed to ``jax.jit``.

Example:
  >>> s = nnx.State({'linear': {'kernel': nnx.Param(jnp.ones((2, 2)))}, 'count': nnx.BatchStat(0)})
  >>> s.linear.kernel.shape
  (2, 2)
  >>> params, rest = s.split(nnx.Param, ...)
  >>> list(params.flat_state().paths), list(rest.flat_state().paths)
  ([('linear', 'kernel')], [('count',)])
  >>> s.to_pure_dict()['count']
  0
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

import jax
from jax.tree_util import DictKey

from . import _treescope, _version
from ._keys import sort_key as _sort_key
from .errors import (
    ArgumentError,
    AttributeNotFoundError,
    FilterError,
    KeyNotFoundError,
    format_path,
    short_list,
)
from .filters import Filter, filters_to_predicates
from .variablelib import Variable

if TYPE_CHECKING:
    from ._graphdef import GraphDef

__all__ = [
    "FlatState",
    "GraphState",
    "State",
    "from_flat_state",
    "merge_state",
    "replace_by_pure_dict",
    "restore_int_paths",
    "split_state",
    "to_flat_state",
    "to_pure_dict",
]

Path = tuple[Hashable, ...]


class State(MutableMapping):
    """A nested mapping of Variables, usable as a JAX pytree.

    Args:
      mapping: a (nested) mapping, or an iterable of ``(key, value)`` pairs; inner mappings
        become States.
      _copy: copy `mapping` (the default); with ``False`` a plain dict is adopted as this
        State's storage (flax's fast path for code that just built the dict).
    """

    # _nnx_stamp: unset (reads 0) until a graph's flatten watches this State (a State held
    # under nnx.data, e.g. in optimizer state); then -1, and a fresh structure-clock stamp
    # after each change, so the flatten cache notices without comparing the State's items.
    __slots__ = ("_mapping", "_nnx_stamp")

    def __init__(
        self,
        mapping: Mapping | Iterable[tuple[Hashable, Any]] = (),
        /,
        *,
        _copy: bool = True,
    ):
        if not _copy and type(mapping) is dict:
            data = mapping
            for key, value in data.items():
                if isinstance(value, Mapping) and not isinstance(value, State):
                    data[key] = State(value, _copy=False)
            object.__setattr__(self, "_mapping", data)
            return
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        data = {}
        for key, value in items:
            if isinstance(value, Mapping) and not isinstance(value, State):
                value = State(value)
            data[key] = value
        object.__setattr__(self, "_mapping", data)

    @classmethod
    def _wrap(cls, data: dict) -> State:
        new = object.__new__(cls)
        object.__setattr__(new, "_mapping", data)
        return new

    # -- mapping protocol -------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> Any:
        try:
            return self._mapping[key]
        except KeyError:
            if isinstance(key, str) and key.lstrip("-").isdigit() and int(key) in self._mapping:
                return self._mapping[int(key)]
            raise

    def __setitem__(self, key: Hashable, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, State):
            value = State(value)
        self._mapping[key] = value
        if self._nnx_stamp:
            object.__setattr__(self, "_nnx_stamp", _version.bump())

    def __delitem__(self, key: Hashable) -> None:
        del self._mapping[key]
        if self._nnx_stamp:
            object.__setattr__(self, "_nnx_stamp", _version.bump())

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def __getattr__(self, name: str) -> Any:
        if name == "_nnx_stamp":  # the slot is unset: not watched by any flatten
            return 0
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeNotFoundError(
                f"State has no key {name!r}; keys: {sorted(self._mapping, key=_sort_key)}.\n"
                f"Fix: check the spelling; read keys that are not identifiers as state[key]."
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in State.__slots__:
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self._mapping == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    # -- display (see _repr.py and _treescope.py) -------------------------------------
    def _nnx_display(self) -> tuple[str, type, list[tuple[Hashable, Any]]]:
        return "dict", type(self), list(self._mapping.items())

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        return _treescope.render(self, path, subtree_renderer)

    def __repr__(self) -> str:
        return _treescope.text(self)

    def __or__(self, other: Mapping) -> State:
        return merge_state(self, other)

    # -- flat view --------------------------------------------------------------------
    def flat_state(self) -> FlatState:
        """All (path, leaf) pairs, depth first in key order."""
        return FlatState(flat_pairs(self))

    @classmethod
    def from_flat_path(cls, flat: Any) -> State:
        """Builds a State from (path, leaf) pairs, a FlatState or a {path: leaf} dict."""
        return from_flat_state(flat)

    # -- filtering --------------------------------------------------------------------
    def filter(self, first: Filter, /, *filters: Filter) -> State | tuple[State, ...]:
        """Keeps the leaves matching each filter (one State per filter; leftovers dropped)."""
        states = split_pairs(flat_pairs(self), (first, *filters), exhaustive=False)
        return states[0] if not filters else states

    def split(self, first: Filter, /, *filters: Filter) -> State | tuple[State, ...]:
        """Splits into one State per filter; each leaf goes to the first filter it matches.

        Raises:
          FilterError: some leaf matched no filter (the message lists their paths).
        """
        states = split_pairs(flat_pairs(self), (first, *filters), exhaustive=True)
        return states[0] if not filters else states

    @staticmethod
    def merge(state: Mapping, /, *states: Mapping) -> State:
        """Merges states; where paths collide the later state wins."""
        return merge_state(state, *states)

    def map(self, f: Callable[[Path, Any], Any]) -> State:
        """A new State with ``f(path, leaf)`` in place of each leaf."""
        return from_flat_state([(p, f(p, leaf)) for p, leaf in flat_pairs(self)])

    # -- pure dicts -------------------------------------------------------------------
    def to_pure_dict(self, extract_fn: Callable[[Any], Any] | None = None) -> dict:
        """Nested plain dicts of raw values (no Variables): what most tools expect."""
        return to_pure_dict(self, extract_fn)

    def replace_by_pure_dict(
        self, pure_dict: Mapping, replace_fn: Callable[[Any, Any], Any] | None = None
    ) -> None:
        """Sets leaf values from a pure dict, in place (string keys '0' match int keys 0)."""
        replace_by_pure_dict(self, pure_dict, replace_fn)


def _flatten_with_keys(state: State):
    keys = sorted(state._mapping, key=_sort_key)
    return [(DictKey(k), state._mapping[k]) for k in keys], tuple(keys)


def _flatten(state: State):
    keys = sorted(state._mapping, key=_sort_key)
    return [state._mapping[k] for k in keys], tuple(keys)


def _unflatten(keys: tuple, children: Any) -> State:
    return State._wrap(dict(zip(keys, children, strict=True)))


jax.tree_util.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, _flatten)


class FlatState(Sequence):
    """A flat, ordered view of a State: a sequence of ``(path, leaf)`` pairs.

    Args:
      items: the ``(path, leaf)`` pairs (or a ``{path: leaf}`` mapping).
      sort: sort the pairs by path (in nnx's key order: ints before strings); flax.nnx
        requires this argument, nnx keeps the given order by default.
    """

    __slots__ = ("_pairs",)

    def __init__(self, items: Iterable[tuple[Path, Any]] | Mapping = (), /, *, sort: bool = False):
        if isinstance(items, Mapping):
            items = items.items()
        pairs = [(tuple(p), v) for p, v in items]
        if sort:
            pairs.sort(key=lambda pv: tuple(map(_sort_key, pv[0])))
        self._pairs = pairs

    def __getitem__(self, i):
        return self._pairs[i]

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p, _ in self._pairs)

    @property
    def leaves(self) -> tuple[Any, ...]:
        return tuple(v for _, v in self._pairs)

    def to_nested_state(self) -> State:
        return from_flat_state(self._pairs)

    def filter(self, first: Filter, /, *filters: Filter) -> Any:
        preds = filters_to_predicates((first, *filters))
        outs = [FlatState([(p, v) for p, v in self._pairs if pr(p, v)]) for pr in preds]
        return outs[0] if not filters else tuple(outs)

    def __repr__(self) -> str:
        return f"FlatState({self._pairs!r})"


def flat_pairs(state: Mapping, prefix: Path = ()) -> list[tuple[Path, Any]]:
    """(path, leaf) pairs depth first, keys sorted at every level (the pytree order)."""
    out: list[tuple[Path, Any]] = []
    _collect(state, prefix, out)
    return out


def _collect(node: Mapping, path: Path, out: list) -> None:
    data = node._mapping if isinstance(node, State) else node
    for key in sorted(data, key=_sort_key):
        value = data[key]
        if isinstance(value, Mapping):
            _collect(value, (*path, key), out)
        else:
            out.append(((*path, key), value))


def to_flat_state(state: Mapping) -> FlatState:
    """The flat view of a (nested) state."""
    return FlatState(flat_pairs(state))


def from_flat_state(
    flat_state: Mapping | Iterable[tuple[Path, Any]], *, cls: type[State] = State
) -> State:
    """Builds a nested State from (path, leaf) pairs, a FlatState, or a {path: leaf} dict.

    Args:
      flat_state: the pairs.
      cls: the State class to build (a subclass of :class:`State`).

    Example:
      >>> nnx.from_flat_state([(('a', 0), 1), (('b',), 2)])['a'][0]
      1
    """
    if isinstance(flat_state, Mapping):
        flat_state = flat_state.items()
    root: dict = {}
    for path, leaf in flat_state:
        node = root
        for key in path[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            node = child
        node[path[-1]] = leaf
    return _wrap_nested(root, cls)


def _wrap_nested(data: dict, cls: type[State] = State) -> State:
    for key, value in data.items():
        if type(value) is dict:
            data[key] = _wrap_nested(value, cls)
    return cls._wrap(data)


def nest_plan(paths: Sequence[Path]) -> dict | None:
    """A reusable recipe that nests leaves given in the order of `paths` into a State exactly
    as :func:`from_flat_state` would: nested dicts ``{key: leaf position | sub-plan}`` (never
    mutated once built). None when the paths do not nest plainly (an empty path, or a path
    that is a prefix of another)."""
    root: dict = {}
    for i, path in enumerate(paths):
        if not path:
            return None
        node = root
        for key in path[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif type(child) is not dict:
                return None
            node = child
        if path[-1] in node:
            return None
        node[path[-1]] = i
    return root


def state_from_plan(plan: dict, leaves: Sequence[Any]) -> State:
    """The State that `plan` (from :func:`nest_plan`) describes, holding `leaves`."""
    data = {}
    for key, sub in plan.items():
        data[key] = leaves[sub] if type(sub) is int else state_from_plan(sub, leaves)
    return State._wrap(data)


def split_pairs(
    pairs: list[tuple[Path, Any]], filters: tuple[Filter, ...], *, exhaustive: bool
) -> tuple[State, ...]:
    predicates = filters_to_predicates(filters)
    buckets: list[list] = [[] for _ in predicates]
    leftover: list[Path] = []
    for path, leaf in pairs:
        for i, pred in enumerate(predicates):
            if pred(path, leaf):
                buckets[i].append((path, leaf))
                break
        else:
            leftover.append(path)
    if exhaustive and leftover:
        raise FilterError(
            f"The filters {filters!r} do not cover the whole state; {len(leftover)} "
            f"leaves matched none of them:\n"
            + short_list([format_path(p, "state") for p in leftover])
            + "\nFix: add a catch-all `...` as the last filter, or use .filter() to "
            "drop what the filters do not select."
        )
    return tuple(from_flat_state(b) for b in buckets)


def split_state(state: Mapping, first: Filter, /, *filters: Filter) -> Any:
    """Function form of :meth:`State.split`."""
    states = split_pairs(flat_pairs(state), (first, *filters), exhaustive=True)
    return states[0] if not filters else states


def merge_state(state: Mapping, /, *states: Mapping, cls: type[State] = State) -> State:
    """Merges nested states; the later state wins where paths collide.

    Args:
      state: the first state.
      *states: more states.
      cls: the State class of the result.
    """
    merged: dict = {}
    for s in (state, *states):
        for path, leaf in flat_pairs(s):
            merged[path] = leaf
    return from_flat_state(merged, cls=cls)


def _raw_value(x: Any) -> Any:
    return x._value if isinstance(x, Variable) else x


def to_pure_dict(state: Mapping, extract_fn: Callable[[Any], Any] | None = None) -> dict:
    """Nested plain dicts of raw values, Variables unwrapped.

    Args:
      state: a (nested) State or mapping.
      extract_fn: what each leaf becomes; by default a Variable's value (other leaves as
        they are).

    Example:
      >>> nnx.to_pure_dict(nnx.State({'a': {'b': nnx.Param(1)}}))
      {'a': {'b': 1}}
      >>> nnx.to_pure_dict(nnx.State({'a': nnx.Param(1)}), lambda v: type(v).__name__)
      {'a': 'Param'}
    """
    fn = _raw_value if extract_fn is None else extract_fn
    out: dict = {}
    data = state._mapping if isinstance(state, State) else state
    for key, value in data.items():
        if isinstance(value, Mapping):
            out[key] = to_pure_dict(value, extract_fn)
        else:
            out[key] = fn(value)
    return out


def _int_key(key: Hashable) -> Hashable:
    if isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            return key
    return key


def restore_int_paths(pure_dict: Mapping, reference: Mapping | None = None) -> dict:
    """Turns stringified integer keys ('0', as orbax returns them) back into ints, recursively.

    Args:
      pure_dict: nested plain dicts, as a checkpoint restores them.
      reference: optional (nnx): a State or dict with the wanted keys; then a string key is
        converted only where `reference` has the integer key and not the string one. Without
        it (flax's form), every key that ``int()`` accepts is converted.

    Example:
      >>> nnx.restore_int_paths({'0': {'kernel': 1}, 'head': 2})
      {0: {'kernel': 1}, 'head': 2}
    """
    if reference is None:
        return {
            _int_key(k): restore_int_paths(v) if isinstance(v, Mapping) else v
            for k, v in pure_dict.items()
        }
    pure = pure_dict
    ref = reference._mapping if isinstance(reference, State) else reference
    out: dict = {}
    for key, value in pure.items():
        if (
            key not in ref
            and isinstance(key, str)
            and key.lstrip("-").isdigit()
            and int(key) in ref
        ):
            key = int(key)
        sub = ref.get(key)
        if isinstance(value, Mapping) and isinstance(sub, Mapping):
            value = restore_int_paths(value, sub)
        out[key] = value
    return out


def replace_by_pure_dict(
    state: State, pure_dict: Mapping, replace_fn: Callable[[Any, Any], Any] | None = None
) -> None:
    """Writes the raw values of `pure_dict` into the Variables of `state`, in place.

    Every path of `pure_dict` must exist in `state`; nothing is written if one does not.

    Raises:
      KeyNotFoundError: a path of `pure_dict` is not in `state` (all such paths are listed).
        Also a KeyError, and a ValueError as flax.nnx raises.
    """
    pure = restore_int_paths(pure_dict, state)
    targets = dict(flat_pairs(state))
    updates = flat_pairs(pure)
    missing = [p for p, _ in updates if p not in targets]
    if missing:
        raise KeyNotFoundError(
            "replace_by_pure_dict got paths that are not in the state:\n"
            + short_list([format_path(p, "state") for p in missing])
            + "\nFix: build the pure dict from this state's structure "
            "(state.to_pure_dict()) so the keys match."
        )
    for path, value in updates:
        leaf = targets[path]
        if replace_fn is not None:
            new = replace_fn(leaf, value)
            _set_leaf(state, path, new)
        elif isinstance(leaf, Variable):
            leaf.value = value
        else:
            _set_leaf(state, path, value)


def _set_leaf(state: State, path: Path, value: Any) -> None:
    node: Any = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


# -- GraphState: a State that carries its GraphDef ---------------------------------------
class GraphState(MutableMapping):
    """A State bundled with the GraphDef it belongs to, as :func:`unpack` returns it.

    It reads like its State (keys, attributes, pytree leaves) and ``nnx.merge`` takes it
    without a separate GraphDef. The GraphDef is static pytree data.

    Example:
      >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> params = nnx.unpack(model)
      >>> params.kernel.shape
      (2, 3)
      >>> type(nnx.merge(params)).__name__
      'Linear'
    """

    __slots__ = ("_graphdef", "_state")

    def __init__(self, graphdef: GraphDef, state: State, /):
        if not isinstance(state, State):
            raise ArgumentError(
                f"GraphState holds a State, got a {type(state).__name__}.\nFix: build it "
                "with nnx.unpack(model), or GraphState(graphdef, nnx.State(mapping))."
            )
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in GraphState.__slots__:
            raise AttributeError(name)
        return getattr(self._state, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._state, name, value)

    def __getitem__(self, key: Hashable) -> Any:
        return self._state[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._state[key] = value

    def __delitem__(self, key: Hashable) -> None:
        del self._state[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return f"GraphState({self._graphdef!r}, {self._state!r})"


def _graph_state_flatten_with_keys(gs: GraphState) -> tuple[list, tuple]:
    children, keys = _flatten_with_keys(gs._state)
    return children, (gs._graphdef, keys)


def _graph_state_flatten(gs: GraphState) -> tuple[list, tuple]:
    children, keys = _flatten(gs._state)
    return children, (gs._graphdef, keys)


def _graph_state_unflatten(aux: tuple, children: Any) -> GraphState:
    return GraphState(aux[0], _unflatten(aux[1], children))


jax.tree_util.register_pytree_with_keys(
    GraphState, _graph_state_flatten_with_keys, _graph_state_unflatten, _graph_state_flatten
)
