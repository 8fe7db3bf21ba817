"""Conversions between nnx Variables and linen variables (collections of plain or boxed values).

A linen variable lives in a collection (``'params'``, ``'batch_stats'``...) and is either a plain
array or an ``AxisMetadata`` box (``nn.Partitioned``, ``nn.LogicallyPartitioned``) carrying
sharding names. An nnx Variable carries both facts itself: its type stands for the collection
(``nnx.variablelib.variable_type_from_name``) and its metadata for the box (``out_sharding``,
``mesh``, ``sharding_rules``; ``linen_meta_type`` remembers the box class for the way back).
Metadata linen has no box for travels in :class:`NNXMeta`.

Example:
  >>> import flax.linen as nn
  >>> boxed = nn.Partitioned(jnp.ones((2, 4)), names=(None, 'model'))
  >>> v = nnx.bridge.variables.to_nnx_var('params', boxed)
  >>> type(v).__name__, v.out_sharding
  ('Param', (None, 'model'))
  >>> type(nnx.bridge.variables.to_linen_var(v)).__name__
  'Partitioned'
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import jax
from flax.core import meta
from jax.sharding import PartitionSpec

from .. import variablelib
from .._sharding_meta import partition_spec_of
from ..errors import ArgumentError, format_path
from ..variablelib import Variable

__all__ = [
    "NNXMeta",
    "get_col_name",
    "is_vanilla_variable",
    "linen_vars_to_nnx_attrs",
    "nnx_attrs_to_linen_vars",
    "sort_variable_types",
    "to_linen_var",
    "to_nnx_var",
    "with_partitioning",
]

A = TypeVar("A")
Path = tuple[Any, ...]


def sort_variable_types(types: Iterable[type]) -> list[type]:
    """The Variable types, most derived first (so a subclass is matched before its base).

    Example:
      >>> [t.__name__ for t in nnx.bridge.variables.sort_variable_types(
      ...     [nnx.Variable, nnx.Param])]
      ['Param', 'Variable']
    """
    types = list(types)

    def depth(t: type) -> int:
        return sum(1 for base in t.__mro__ if issubclass(base, Variable))

    return sorted(types, key=lambda t: -depth(t))


class NNXMeta(meta.AxisMetadata, Generic[A]):
    """A linen box for an nnx Variable whose metadata linen has no box for.

    It remembers the Variable's type and metadata, so the Variable comes back unchanged when
    the value returns to nnx; linen code sees the value through ``unbox()``.

    Args:
      var_type: the nnx Variable type.
      value: the value (a pytree child of the box).
      metadata: the Variable's metadata (static: hashed into jit's cache key).

    Example:
      >>> v = nnx.Param(jnp.ones(3), note='kept')
      >>> box = nnx.bridge.variables.to_linen_var(v)
      >>> type(box).__name__, box.unbox().shape
      ('NNXMeta', (3,))
      >>> box.to_nnx_variable().note
      'kept'
    """

    var_type: type[Variable]
    value: A
    metadata: dict[str, Any]

    def __init__(self, var_type: type[Variable], value: Any, metadata: Mapping[str, Any]):
        object.__setattr__(self, "var_type", var_type)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "metadata", dict(metadata))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"NNXMeta is immutable; use replace_boxed to change {name!r}.")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NNXMeta)
            and other.var_type is self.var_type
            and other.metadata == self.metadata
            and other.value is self.value
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable: __eq__ compares the value

    def __repr__(self) -> str:
        return f"NNXMeta({self.var_type.__name__}, {self.value!r}, {self.metadata!r})"

    def unbox(self) -> A:
        return self.value

    def replace_boxed(self, val: Any) -> NNXMeta:
        return NNXMeta(self.var_type, val, self.metadata)

    def replace(self, **updates: Any) -> NNXMeta:
        """A copy with some of ``var_type``, ``value``, ``metadata`` replaced."""
        fields = {"var_type": self.var_type, "value": self.value, "metadata": self.metadata}
        return NNXMeta(**{**fields, **updates})

    def add_axis(self, index: int, params: dict[Any, Any]) -> NNXMeta:
        """Inserts the ``partition_name`` of linen's ``metadata_params`` into the sharding
        annotation (``nn.vmap``/``nn.scan`` stacking)."""
        from .._sharding_meta import stacked_metadata

        return NNXMeta(self.var_type, self.value, stacked_metadata(self.metadata, index, params))

    def remove_axis(self, index: int, params: dict[Any, Any]) -> NNXMeta:
        """The inverse of :meth:`add_axis`."""
        from .._sharding_meta import unstacked_metadata

        new = unstacked_metadata(self.metadata, index, params)
        return NNXMeta(self.var_type, self.value, new)

    def get_partition_spec(self) -> PartitionSpec:
        """The ``PartitionSpec`` of the annotation (``P()`` when there is none)."""
        spec = partition_spec_of(self.metadata)
        return PartitionSpec() if spec is None else spec

    def to_nnx_variable(self) -> Variable:
        """The nnx Variable this box stands for."""
        return self.var_type(self.value, **self.metadata)


def _flatten_nnxmeta(box: NNXMeta):
    aux = (box.var_type, tuple(sorted(box.metadata.items(), key=lambda kv: kv[0])))
    return (box.value,), aux


def _unflatten_nnxmeta(aux: Any, children: Any) -> NNXMeta:
    return NNXMeta(aux[0], children[0], dict(aux[1]))


jax.tree_util.register_pytree_with_keys(
    NNXMeta,
    lambda box: (((jax.tree_util.GetAttrKey("value"), box.value),), _flatten_nnxmeta(box)[1]),
    _unflatten_nnxmeta,
    _flatten_nnxmeta,
)


def is_vanilla_variable(vs: Variable) -> bool:
    """True when a Variable carries no metadata linen would lose (empty hooks do not count).

    Example:
      >>> nnx.bridge.variables.is_vanilla_variable(nnx.Param(jnp.ones(2)))
      True
      >>> nnx.bridge.variables.is_vanilla_variable(nnx.Param(jnp.ones(2), out_sharding=('a',)))
      False
    """
    for key, value in vs.get_metadata().items():
        if key.endswith("_hooks") and value == ():
            continue
        return False
    return True


def to_linen_var(vs: Variable) -> Any:
    """The linen form of a Variable: its plain value, the linen box it came from
    (``linen_meta_type``), or an :class:`NNXMeta` box keeping its metadata."""
    metadata = vs.get_metadata()
    value = vs.get_value()
    linen_type = metadata.pop("linen_meta_type", None)
    if linen_type is not None:
        if hasattr(linen_type, "from_nnx_metadata"):
            if linen_type.__name__ == "LogicallyPartitioned":
                metadata.setdefault("sharding_rules", None)
            return linen_type.from_nnx_metadata({"value": value, **metadata})
        return linen_type(value, **metadata)
    if not metadata or is_vanilla_variable(vs):
        return value
    return NNXMeta(type(vs), value, metadata)


def get_col_name(keypath: Iterable[Any]) -> str:
    """The collection name at the head of a linen variables key path."""
    head = next(iter(keypath))
    return str(getattr(head, "key", head))


def to_nnx_var(col: str, x: Any) -> Variable:
    """The nnx Variable for the linen value `x` of collection `col` (boxes become metadata)."""
    vtype = variablelib.variable_type_from_name(col, allow_register=True)
    if isinstance(x, NNXMeta):
        if not issubclass(x.var_type, vtype) and not issubclass(vtype, x.var_type):
            raise ArgumentError(
                f"A linen variable in collection {col!r} is boxed as an nnx "
                f"{x.var_type.__name__}, but that collection holds {vtype.__name__} Variables."
                "\nFix: keep each Variable type in the collection registered for it "
                "(nnx.variablelib.register_variable_name)."
            )
        return x.to_nnx_variable()
    if isinstance(x, meta.AxisMetadata):
        # copy first: some linen boxes edit their own fields in to_nnx_metadata.
        box = copy.copy(x)
        fields = box.to_nnx_metadata() if hasattr(box, "to_nnx_metadata") else dict(vars(box))
        fields = dict(fields)
        value = fields.pop("value")
        fields = {k: v for k, v in fields.items() if v is not None}
        return vtype(value, **fields, linen_meta_type=type(x))
    return vtype(x)


def _flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _unflatten(flat: Mapping[Path, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def linen_vars_to_nnx_attrs(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Linen ``{collection: nested values}`` as one nested dict of nnx Variables.

    Raises:
      ArgumentError: two collections hold a variable at the same path.

    Example:
      >>> attrs = nnx.bridge.variables.linen_vars_to_nnx_attrs({
      ...     'params': {'bn': {'scale': jnp.ones(2)}},
      ...     'batch_stats': {'bn': {'mean': jnp.zeros(2)}}})
      >>> {k: type(v).__name__ for k, v in attrs['bn'].items()}
      {'scale': 'Param', 'mean': 'BatchStat'}
    """
    flat: dict[Path, Variable] = {}
    where: dict[Path, str] = {}
    for col, tree in variables.items():
        leaves = _flatten(tree) if isinstance(tree, Mapping) else {(): tree}
        for path, x in leaves.items():
            if path in flat:
                raise ArgumentError(
                    f"The linen variable {format_path(path)} is in both collections "
                    f"{where[path]!r} and {col!r}; an nnx module has one Variable per path.\n"
                    "Fix: rename one of the two variables in the linen module."
                )
            flat[path] = to_nnx_var(col, x)
            where[path] = col
    return _unflatten(flat)


def nnx_attrs_to_linen_vars(nnx_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`linen_vars_to_nnx_attrs`: nested Variables grouped by collection.

    Raises:
      ArgumentError: a leaf is not a Variable (its collection cannot be told).
    """
    flat: dict[Path, Any] = {}
    for path, v in _flatten(nnx_attrs).items():
        if not isinstance(v, Variable):
            raise ArgumentError(
                f"{format_path(path)} holds a {type(v).__name__}, not an nnx Variable, so its "
                "linen collection cannot be told.\nFix: wrap it in a Variable type "
                "(nnx.Param, nnx.BatchStat, ...)."
            )
        col = variablelib.variable_name_from_type(type(v), allow_register=True)
        flat[(col, *path)] = to_linen_var(v)
    return _unflatten(flat)


def with_partitioning(
    fn: Callable[..., Any],
    names: Any,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[..., Any]:
    """linen's ``with_partitioning`` signature for nnx layers: the Variable is annotated with
    ``out_sharding=names`` and becomes an ``nn.Partitioned`` box on the linen side.

    Example:
      >>> init = nnx.bridge.with_partitioning(nnx.initializers.ones, (None, 'model'))
      >>> layer = nnx.Linear(2, 4, kernel_init=init, rngs=nnx.Rngs(0))
      >>> layer.kernel.out_sharding
      (None, 'model')
      >>> type(nnx.bridge.variables.to_linen_var(layer.kernel)).__name__
      'Partitioned'
    """
    return variablelib.with_metadata(
        fn, out_sharding=names, mesh=mesh, linen_meta_type=meta.Partitioned
    )
