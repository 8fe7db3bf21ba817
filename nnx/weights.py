"""Loading weights by name: into a model from another model, a file or a checkpoint.

A model's leaves have dotted names, their state paths with integer keys as digits
(``blocks.0.attn.kernel``), the names safetensors files use. Loading by name matches the
names of a source (another model, a State, a dict of arrays, a safetensors file, a checkpoint
item) against the model's, after an optional renaming, and then writes the matched arrays
into the model in place. :func:`copy_weights` does it between models;
:func:`nnx.load_safetensors` and ``nnx.Checkpointer.restore(..., strict=False)`` use the same
matching, and all three return a :class:`LoadReport`.

The rules, the same for the three:

* ``rename`` maps source names to model names before matching: either a function
  (``name -> new name``, or None to drop the tensor) or a dict of regular expressions to
  replacements, tried in order; the first whose pattern is found in the name rewrites it with
  :func:`re.sub` (``\\1`` refers to a group), and a replacement of None drops the tensor.
  Names no pattern matches are kept. Two source names renamed onto one model name are an
  error.
* ``strict=True`` (the default): every selected model leaf must receive a value and every
  source tensor not dropped by ``rename`` must have a place in the model.
  ``strict=False``: only the names both sides have are loaded; the report says what was
  skipped and what was left untouched.
* Shapes, dtypes and PRNG key kinds of the matched names must agree, whatever ``strict``
  says: a mismatch is an error listing all of them, to be left out with a filter (model side)
  or a ``rename`` to None (source side).
* Nothing is written unless everything checks out: an error leaves the model as it was.
* What takes part: :func:`copy_weights` and :func:`nnx.load_safetensors` take filters and by
  default leave RNG state out (weights files do not hold it); a checkpoint restore by name
  takes every array of the target, RNG state included, and ``rename`` to None drops what the
  checkpoint should not overwrite.

Example:
  >>> backbone = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
  >>> class Classifier(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.features = nnx.Linear(4, 8, rngs=rngs)
  ...     self.head = nnx.Linear(8, 2, rngs=rngs)
  >>> clf = Classifier(nnx.Rngs(1))
  >>> report = nnx.copy_weights(backbone, clf, rename={'^': 'features.'}, strict=False)
  >>> report
  LoadReport(loaded=2, skipped=0, untouched=2)
  >>> sorted(report.loaded.items())
  [('features.bias', 'bias'), ('features.kernel', 'kernel')]
  >>> report.untouched
  ('head.bias', 'head.kernel')
  >>> bool((clf.features.kernel.value == backbone.kernel.value).all())
  True
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from .errors import CheckpointError, CheckpointMismatchError, short_list
from .filters import Any as _AnyOf
from .filters import Filter, Not, to_predicate
from .graph import state as _state
from .graph import update as _update
from .rngs import RngState
from .state import from_flat_state, to_flat_state
from .variablelib import Variable

__all__ = ["LoadReport", "Rename", "copy_weights"]

Path = tuple[Hashable, ...]
# A source name -> the model name it loads into, or None to drop it.
Rename = Mapping[str, "str | None"] | Callable[[str], "str | None"]
# What must agree between a source tensor and the model leaf it loads into:
# shape, dtype (of the stored form: PRNG keys as their key data) and the PRNG key kind.
Spec = tuple[tuple[int, ...], np.dtype, "str | None"]

METADATA_KEY = "__metadata__"
DEFAULT_FILTER = Not(RngState)  # weights are everything but RNG state

S = TypeVar("S")
T = TypeVar("T")


# -- a model's leaves by name ---------------------------------------------------------------
class Leaf:
    """One named leaf of a model's state: where it is, its value and its stored form."""

    __slots__ = ("dtype", "impl", "name", "path", "shape", "value")

    def __init__(self, name: str, path: Path, value: Any):
        self.name = name
        self.path = path
        self.value = value
        self.impl: str | None = None  # the PRNG key implementation, for typed keys
        dtype = value.dtype if hasattr(value, "dtype") else np.dtype(jnp.result_type(value))
        shape = tuple(getattr(value, "shape", ()))
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            abstract = jax.ShapeDtypeStruct(shape, dtype)
            self.impl = key_impl(abstract)
            data = jax.eval_shape(jax.random.key_data, abstract)
            shape, dtype = tuple(data.shape), data.dtype
        self.shape: tuple[int, ...] = shape
        self.dtype = np.dtype(dtype)

    @property
    def spec(self) -> Spec:
        return (self.shape, self.dtype, self.impl)


def key_impl(abstract_key: jax.ShapeDtypeStruct) -> str:
    """The name of a typed PRNG key's implementation (e.g. ``'threefry2x32'``)."""
    # key_impl needs a key array; tracing gives it one for abstract keys as well.
    found: list[str] = []
    jax.eval_shape(lambda k: found.append(str(jax.random.key_impl(k))), abstract_key)
    return found[0]


def is_tensor_like(value: Any) -> bool:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return True
    return isinstance(value, bool | int | float)


def leaf_name(path: Path) -> str:
    """The dotted name of a state path: ``('blocks', 0, 'kernel')`` -> ``'blocks.0.kernel'``."""
    parts = []
    for key in path:
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise CheckpointError(
                f"The state path {path!r} has the key {key!r} ({type(key).__name__}); "
                "weight names are made of attribute names and integer indices only. "
                "Fix: use str or int keys in dicts, or leave this leaf out with a filter."
            )
        parts.append(str(key))
    return ".".join(parts)


def named_leaves(node: Any, filters: tuple[Filter, ...], what: str) -> dict[str, Leaf]:
    """The leaves of `node` that `filters` select (default: all but RNG state), by name."""
    predicate = to_predicate(_AnyOf(*filters) if filters else DEFAULT_FILTER)
    out: dict[str, Leaf] = {}
    # nnx.state takes graph nodes, States and nested dicts alike; an empty dict has no state.
    state = {} if isinstance(node, Mapping) and not node else _state(node)
    for path, leaf in to_flat_state(state):
        if not predicate(path, leaf):
            continue
        value = leaf.value if isinstance(leaf, Variable) else leaf
        if not is_tensor_like(value):
            continue
        name = leaf_name(path)
        if name in out or name == METADATA_KEY:
            clash = (
                f"the state paths {out[name].path!r} and {path!r} both give the name {name!r}"
                if name in out
                else f"the state path {path!r} gives the name {name!r}, which safetensors reserves"
            )
            raise CheckpointError(
                f"{what}: {clash}. Fix: rename the dict key (string keys must not look like "
                "integers, contain dots, or be '__metadata__'), or leave it out with a filter."
            )
        out[name] = Leaf(name, path, value)
    return out


def unselected_names(node: Any, selected: Mapping[str, Leaf]) -> set[str]:
    """The names the model has but the filters leave out (for error messages)."""
    try:
        return set(named_leaves(node, (...,), "")) - set(selected)
    except CheckpointError:
        return set()


def describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    return f"{dtype.name}{list(shape)}"


def describe_spec(spec: Spec) -> str:
    shape, dtype, impl = spec
    if impl is not None:
        return f"PRNG keys of {impl} ({describe(shape, dtype)} key data)"
    return describe(shape, dtype)


def to_target(target: Leaf, array: Any) -> Any:
    """A loaded array (numpy or jax) in the kind of the model's leaf: a typed key, a jax
    array with the leaf's sharding, a numpy array or a Python number. Jax arrays are copied,
    so the model never shares a buffer with the source (donating one would delete the other).
    """
    value = target.value
    if isinstance(array, jax.Array):
        array = jnp.array(array, copy=True)
    if target.impl is not None:
        return jax.random.wrap_key_data(jnp.asarray(array), impl=target.impl)
    if isinstance(value, np.ndarray | np.generic):
        return np.array(array) if isinstance(value, np.ndarray) else np.asarray(array)[()]
    if isinstance(value, bool | int | float):
        return type(value)(np.asarray(array).item())
    sharding = getattr(value, "sharding", None)
    return jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)


# -- renaming and matching ------------------------------------------------------------------
def compile_rename(rename: Rename | None, where: str) -> Callable[[str], str | None]:
    """`rename` as one function from a source name to a model name (None: drop it)."""
    if rename is None:
        return lambda name: name
    if callable(rename) and not isinstance(rename, Mapping):
        function = rename

        def checked(name: str) -> str | None:
            new = function(name)
            if new is not None and not isinstance(new, str):
                raise CheckpointError(
                    f"{where}: rename({name!r}) returned {new!r} ({type(new).__name__}). "
                    "Fix: return the new name as a str, or None to drop the tensor."
                )
            return new

        return checked
    if not isinstance(rename, Mapping):
        raise CheckpointError(
            f"{where}: rename must be a dict of regular expressions to replacements or a "
            f"function of the name, got {type(rename).__name__}."
        )
    rules: list[tuple[re.Pattern[str], str | None]] = []
    for pattern, replacement in rename.items():
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as err:
            raise CheckpointError(
                f"{where}: the rename pattern {pattern!r} is not a regular expression ({err}). "
                "Fix: escape special characters, e.g. re.escape('layers.0.')."
            ) from None
        if replacement is not None and not isinstance(replacement, str):
            raise CheckpointError(
                f"{where}: the rename replacement for {pattern!r} is {replacement!r}; it must "
                "be a str, or None to drop the names the pattern matches."
            )
        rules.append((compiled, replacement))

    def by_rules(name: str) -> str | None:
        for compiled, replacement in rules:
            if compiled.search(name):
                if replacement is None:
                    return None
                try:
                    return compiled.sub(replacement, name, count=1)
                except (re.error, IndexError) as err:
                    raise CheckpointError(
                        f"{where}: the rename {compiled.pattern!r} -> {replacement!r} cannot "
                        f"rewrite {name!r} ({err}). Fix: refer only to groups the pattern has."
                    ) from None
        return name

    return by_rules


@dataclasses.dataclass(frozen=True)
class Matched:
    """Which source name loads into which model name, what was skipped, what disagrees."""

    pairs: dict[str, str]  # model name -> source name
    skipped: dict[str, str]  # source name -> why it is not loaded
    problems: list[str]


def match(
    source: Mapping[str, S],
    target: Mapping[str, T],
    *,
    rename: Rename | None,
    strict: bool,
    where: str,
    source_kind: str,
    describe_source: Callable[[S], str],
    describe_target: Callable[[T], str],
    unselected: Callable[[], set[str]] = set,
    target_kind: str = "model",
) -> Matched:
    """Matches source names against model names (see the module docstring for the rules).

    `source` and `target` map names to what must agree (compared with ``==``);
    `unselected` gives the model names the filters leave out, for messages.
    """
    to_model = compile_rename(rename, where)
    pairs: dict[str, str] = {}
    skipped: dict[str, str] = {}
    problems: list[str] = []
    left_out: set[str] | None = None
    for name in sorted(source):
        new = to_model(name)
        if new is None:
            skipped[name] = "dropped by rename"
            continue
        label = name if new == name else f"{name} (renamed {new})"
        if new in pairs:
            problems.append(f"{new}: two source names load into it, {pairs[new]} and {name}")
            continue
        if new not in target:
            if left_out is None:
                left_out = unselected()
            why = "not selected by the filters" if new in left_out else f"not in the {target_kind}"
            if strict:
                problems.append(
                    f"{label}: in the {source_kind} ({describe_source(source[name])}), {why}"
                )
            else:
                skipped[name] = why if new == name else f"{why} (renamed {new})"
            continue
        pairs[new] = name
    if strict:
        for new in sorted(set(target) - set(pairs)):
            problems.append(
                f"{new}: missing from the {source_kind} (the {target_kind} has "
                f"{describe_target(target[new])})"
            )
    for new, name in sorted(pairs.items()):
        if source[name] != target[new]:
            label = name if new == name else f"{new} (from {name})"
            problems.append(
                f"{label}: {source_kind} {describe_source(source[name])}, {target_kind} "
                f"{describe_target(target[new])}"
            )
    return Matched(pairs, skipped, problems)


def match_leaves(
    source: Mapping[str, Spec],
    node: Any,
    targets: Mapping[str, Leaf],
    *,
    rename: Rename | None,
    strict: bool,
    where: str,
    source_kind: str,
) -> Matched:
    """:func:`match` of named tensors (their :data:`Spec`) against a model's selected leaves,
    as ``copy_weights`` and ``load_safetensors`` do."""
    return match(
        source,
        {name: leaf.spec for name, leaf in targets.items()},
        rename=rename,
        strict=strict,
        where=where,
        source_kind=source_kind,
        describe_source=describe_spec,
        describe_target=describe_spec,
        unselected=lambda: unselected_names(node, targets),
    )


def mismatch_error(where: str, what: str, problems: list[str], fixes: list[str]) -> Exception:
    """The one error for a source that does not fit: every difference, and the fixes."""
    numbered = "".join(f"\n  {i}. {fix}" for i, fix in enumerate(fixes, 1))
    return CheckpointMismatchError(
        f"{where} does not fit {what}; nothing was loaded. {len(problems)} differences:\n"
        + short_list(problems, limit=len(problems))
        + "\nFix: one of"
        + numbered
    )


NO_COMMON_FIX = (
    "check the names on both sides (nnx.state, nnx.load_safetensors_dict); a prefix may "
    "differ: rename={'^old_prefix\\\\.': 'new_prefix.'}"
)


# -- the report -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What loading weights by name did.

    Attributes:
      loaded: model name -> the source name its value came from (equal unless renamed).
      skipped: source name -> why it was not loaded (``'dropped by rename'``, ``'not in the
        model'``, ``'not selected by the filters'``).
      untouched: model names (all its leaves, RNG state included) that kept their values.
      metadata: the source's metadata (a safetensors file's ``__metadata__``, a checkpoint's
        saved metadata dict), or empty.

    ``print(report)`` lists every name; ``repr`` gives the counts.
    """

    loaded: Mapping[str, str]
    skipped: Mapping[str, str]
    untouched: tuple[str, ...]
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"LoadReport(loaded={len(self.loaded)}, skipped={len(self.skipped)}, "
            f"untouched={len(self.untouched)})"
        )

    def __str__(self) -> str:
        renamed = sum(1 for new, old in self.loaded.items() if new != old)
        lines = [f"loaded {len(self.loaded)}" + (f" ({renamed} renamed)" if renamed else "")]
        lines += [
            f"  {new}" + ("" if new == old else f" <- {old}")
            for new, old in sorted(self.loaded.items())
        ]
        lines.append(f"skipped {len(self.skipped)}")
        lines += [f"  {old}: {why}" for old, why in sorted(self.skipped.items())]
        lines.append(f"untouched {len(self.untouched)}")
        lines += [f"  {new}" for new in self.untouched]
        return "\n".join(lines)


def report_of(node: Any, matched: Matched, metadata: Mapping[str, Any] | None = None) -> LoadReport:
    try:
        everything = set(named_leaves(node, (...,), ""))
    except CheckpointError:  # a leaf with a key no name can hold, left out by the filters
        everything = set(matched.pairs)
    return LoadReport(
        loaded=dict(sorted(matched.pairs.items())),
        skipped=dict(sorted(matched.skipped.items())),
        untouched=tuple(sorted(everything - set(matched.pairs))),
        metadata=dict(metadata or {}),
    )


# -- between models -------------------------------------------------------------------------
def copy_weights(
    source: Any,
    node: Any,
    /,
    *filters: Filter,
    rename: Rename | None = None,
    strict: bool = True,
) -> LoadReport:
    """Copies weights by name from `source` into `node`, in place.

    Args:
      source: another model (any graph node), a State, or a dict of arrays, nested or flat
        with dotted names (``{'layers.0.kernel': array}``, e.g. converted from a PyTorch
        ``state_dict``).
      node: the model to load into; abstract models (``nnx.eval_shape``) get real arrays.
      *filters: the leaves to take part, on both sides (as in ``nnx.state``). Default: all
        but RNG state.
      rename: source name -> model name, as a dict of regular expressions to replacements
        (None drops) or a function (see the module docstring).
      strict: with False, only the names both sides have are loaded.

    Returns:
      A :class:`LoadReport`: what was loaded (and from which name), skipped and untouched.

    Raises:
      CheckpointMismatchError: shape, dtype or key-kind differences, names renamed onto one,
        or (strict) names on one side only; all listed, and nothing is written.
      CheckpointError: a source leaf is abstract, or (strict=False) no name in common.

    The copied arrays are new buffers placed like the model's leaves (their sharding); the
    source is not changed.

    Example:
      >>> small = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.relu)
      >>> deep = nnx.Sequential(
      ...     nnx.Linear(2, 4, rngs=nnx.Rngs(1)), nnx.relu, nnx.Linear(4, 4, rngs=nnx.Rngs(1)))
      >>> nnx.copy_weights(small, deep, strict=False)
      LoadReport(loaded=2, skipped=0, untouched=2)
      >>> nnx.copy_weights(small, deep, rename={r'^layers\\.0\\.': 'layers.2.'})
      Traceback (most recent call last):
      ...
      nnx.errors.CheckpointMismatchError: copy_weights(Sequential -> Sequential) does not fit ...
    """
    where = f"copy_weights({type(source).__name__} -> {type(node).__name__})"
    sources = named_leaves(source, filters, where)
    targets = named_leaves(node, filters, where)
    matched = match_leaves(
        {n: leaf.spec for n, leaf in sources.items()},
        node,
        targets,
        rename=rename,
        strict=strict,
        where=where,
        source_kind="source",
    )
    if matched.problems:
        raise mismatch_error(
            where,
            type(node).__name__,
            matched.problems,
            [
                "copy the weights both have: copy_weights(source, model, strict=False);",
                "leave out what differs: a filter for the model's side, e.g. "
                "nnx.Not(nnx.PathContains('head')), or rename={pattern: None} for the "
                "source's;",
                "map names that differ: rename={r'^encoder\\.': 'backbone.'}.",
            ],
        )
    if not matched.pairs and targets and sources:
        raise CheckpointError(
            f"{where}: no name in common (source: {sorted(sources)[:3]}..., model: "
            f"{sorted(targets)[:3]}...), so nothing would be copied. Fix: {NO_COMMON_FIX}"
        )
    abstract = sorted(
        old
        for old in matched.pairs.values()
        if isinstance(sources[old].value, jax.ShapeDtypeStruct)
    )
    if abstract:
        raise CheckpointError(
            f"{where}: the source's {', '.join(abstract[:5])}{' ...' if len(abstract) > 5 else ''}"
            " are abstract (ShapeDtypeStruct): there is nothing to copy. Fix: load or "
            "initialise the source first, or leave them out."
        )
    report = report_of(node, matched)  # before writing: nothing after the write can fail
    updates = []
    for new, old in matched.pairs.items():
        value = sources[old].value
        if sources[old].impl is not None:
            value = jax.random.key_data(value)
        updates.append((targets[new].path, to_target(targets[new], value)))
    _update(node, from_flat_state(updates))
    return report
