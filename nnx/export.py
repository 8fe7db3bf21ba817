"""Exported models: a model method as StableHLO plus its weights, runnable without its class.

:func:`export` traces ``getattr(model, method)`` with :func:`jax.export.export` and returns an
:class:`Exported`: call it, or write it with :meth:`Exported.save` / :meth:`Exported.to_bytes`.
:func:`load_exported` reads one back and returns an :class:`Exported` that runs in a process
that never imports the model's Python class (only ``nnx``, ``jax`` and the file).

Weights are inputs, not constants. The exported program is ``f(weights, *args)``, where
``weights`` is the list of every array of ``nnx.state(model)`` (Params, BatchStats, RNG state,
raw arrays) in state order; the container stores them next to the program. So the program is
the same whatever the weights hold, the weights can be read or replaced without touching it
(:attr:`Exported.weights`), and no weight is duplicated inside StableHLO. The call is
``f(stored_weights, *args)``.

What is exported: one call of the method on a copy of the model (``nnx.merge`` inside the
trace). State changes the call makes (BatchNorm statistics in train mode, RNG counters) are
dropped, so export a model in eval mode (``model.eval()``). Typed PRNG keys travel as their
``jax.random.key_data`` and are wrapped back inside the program. Inputs are pytrees of arrays
(or ``jax.ShapeDtypeStruct``); outputs are pytrees of arrays in lists, tuples, dicts or None.

``batch_polymorphic=True`` gives every input array of rank >= 1 the same symbolic leading
dimension ``batch`` (:func:`jax.export.symbolic_shape`), so the artifact runs for any batch
size; ``vjp_order=1`` also serialises the backward pass, so :func:`jax.grad` works through the
loaded callable (w.r.t. inputs and weights).

The container (format version 1), all integers little-endian::

    magic     8 bytes   b"NNXEXPT\\x00"
    version   uint32    1
    reserved  uint32    0
    hlen      uint64    length of the JSON header
    blen      uint64    length of the body
    sha256    32 bytes  of header + body
    header    hlen bytes, JSON: format_version, jax/nnx versions, model class name, method,
              batch_polymorphic, vjp_order, program {offset, nbytes},
              weights [{name, dtype, shape, offset, nbytes}] (offsets into the body)
    body      blen bytes: the serialised jax.export program, then each weight's raw bytes

Nothing on the load path unpickles or evaluates anything. A wrong magic, an unknown version, a
truncated or altered file raise :class:`ExportError` saying which.

Example:
  >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  >>> exported = nnx.export(model, jnp.ones((4, 3)))
  >>> loaded = nnx.load_exported(exported.to_bytes())
  >>> loaded(jnp.ones((7, 3))).shape
  (7, 2)
  >>> bool(jnp.allclose(loaded(jnp.ones((7, 3))), model(jnp.ones((7, 3)))))
  True
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from . import graph
from .errors import NNXError

__all__ = ["Exported", "ExportError", "export", "load_exported"]

MAGIC = b"NNXEXPT\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQQ32s")  # magic, version, reserved, hlen, blen, sha256
_MAX_HEADER = 64 * 2**20


def _installed_version() -> str:
    try:
        return importlib.metadata.version("nnx-jax")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "unknown"


_nnx_version = _installed_version()


class ExportError(NNXError, ValueError):
    """A model could not be exported, or an exported file could not be loaded (wrong magic,
    unknown format version, truncated or altered bytes, a program jax cannot read)."""


def _leaf_name(path: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if len(parts) > 1 and parts[-1] == "value":
        parts.pop()
    return ".".join(parts)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _input_specs(args: tuple[Any, ...], batch_polymorphic: bool) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(args)
    for leaf in leaves:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise ExportError(
                f"nnx.export: example arguments must be arrays or jax.ShapeDtypeStruct, got "
                f"{type(leaf).__name__} ({leaf!r}).\nFix: pass an array, or bind non-array "
                f"arguments in the method (e.g. functools.partial or a wrapper Module)."
            )
    if not batch_polymorphic:
        return tuple(
            jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves])
        )
    batched = [x for x in leaves if len(x.shape) >= 1]
    sizes = sorted({x.shape[0] for x in batched})
    if len(sizes) > 1:
        raise ExportError(
            f"nnx.export(batch_polymorphic=True) gives every input array the same symbolic "
            f"leading (batch) dimension, but the example inputs have leading dimensions "
            f"{sizes}.\nFix: pass inputs that all share their batch size, or "
            f"batch_polymorphic=False."
        )
    (batch,) = jax_export.symbolic_shape("batch")
    specs = [
        jax.ShapeDtypeStruct((batch, *x.shape[1:]) if len(x.shape) >= 1 else x.shape, x.dtype)
        for x in leaves
    ]
    return tuple(jax.tree.unflatten(treedef, specs))


class Exported:
    """A model method exported with :func:`export` or read with :func:`load_exported`.

    Call it like the method (``exported(x)``); it runs the StableHLO program with the stored
    weights, under ``jax.jit``, without the model's class.

    Attributes:
      program: the :class:`jax.export.Exported` program, ``f(weights, *args)``.
      method: the name of the exported method.
      model_class: the qualified name of the model's class (for information only).
      batch_polymorphic: whether the leading input dimension is symbolic.
      vjp_order: how many orders of derivatives were serialised.
      weights: ``{name: array}``, the program's first argument, in order.
    """

    def __init__(
        self,
        program: jax_export.Exported,
        weights: dict[str, jax.Array],
        *,
        method: str,
        model_class: str,
        batch_polymorphic: bool,
        vjp_order: int,
    ) -> None:
        self.program = program
        self.weights = weights
        self.method = method
        self.model_class = model_class
        self.batch_polymorphic = batch_polymorphic
        self.vjp_order = vjp_order
        self._call: Callable[..., Any] = jax.jit(program.call)

    def __repr__(self) -> str:
        return (
            f"nnx.Exported({self.model_class}.{self.method}, inputs="
            f"{[str(a) for a in self.program.in_avals[len(self.weights) :]]}, "
            f"{len(self.weights)} weights)"
        )

    def __call__(self, *args: Any) -> Any:
        """Runs the program on ``args`` with the stored weights."""
        return self._call(list(self.weights.values()), *args)

    def apply(self, weights: Mapping[str, Any], *args: Any) -> Any:
        """Runs the program on ``args`` with `weights` instead of the stored ones.

        The pure form of the call, for fine-tuning an exported model (``jax.grad`` with
        respect to the weights, which needs ``vjp_order >= 1``) or for swapping weights
        without exporting again.

        Args:
          weights: ``{name: array}`` with the names, shapes and dtypes of :attr:`weights`.
          *args: the method's arguments.

        Raises:
          ExportError: names missing or unknown, or a shape or dtype that differs.

        Example:
          >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
          >>> exported = nnx.export(model, jnp.ones((4, 3)), vjp_order=1)
          >>> loss = lambda w, x: (exported.apply(w, x) ** 2).sum()
          >>> grads = jax.grad(loss)(exported.weights, jnp.ones((4, 3)))
          >>> sorted(grads), grads['kernel'].shape
          (['bias', 'kernel'], (3, 2))
        """
        missing = sorted(set(self.weights) - set(weights))
        unknown = sorted(set(weights) - set(self.weights))
        problems = [f"missing {name}" for name in missing] + [f"unknown {n}" for n in unknown]
        for name, w in weights.items():
            want = self.weights.get(name)
            if want is None:
                continue
            shape, dtype = getattr(w, "shape", None), getattr(w, "dtype", None)
            if shape is None or dtype is None:
                problems.append(f"{name}: a {type(w).__name__}, not an array")
            elif (tuple(shape), jnp.dtype(dtype)) != (tuple(want.shape), jnp.dtype(want.dtype)):
                problems.append(
                    f"{name}: {jnp.dtype(dtype).name}{list(shape)}, expected "
                    f"{jnp.dtype(want.dtype).name}{list(want.shape)}"
                )
        if problems:
            raise ExportError(
                f"Exported.apply({self.model_class}.{self.method}): the weights do not fit "
                f"the program: {'; '.join(problems)}.\nFix: start from exported.weights and "
                f"replace values with arrays of the same shape and dtype."
            )
        return self._call([weights[name] for name in self.weights], *args)

    def to_bytes(self) -> bytes:
        """The container (see :mod:`nnx.export`): header, program and weights, checksummed."""
        try:
            program = bytes(self.program.serialize(vjp_order=self.vjp_order))
        except ImportError as e:  # pragma: no cover - flatbuffers is a dependency
            raise ExportError(
                f"nnx.Exported.to_bytes: jax.export needs the `flatbuffers` package ({e}).\n"
                f"Fix: pip install flatbuffers"
            ) from e
        chunks = [program]
        offset = len(program)
        entries = []
        for name, value in self.weights.items():
            raw = np.asarray(value)
            data = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
            entries.append(
                {
                    "name": name,
                    "dtype": raw.dtype.name,
                    "shape": list(raw.shape),
                    "offset": offset,
                    "nbytes": len(data),
                }
            )
            chunks.append(data)
            offset += len(data)
        header = json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "jax_version": jax.__version__,
                "nnx_version": _nnx_version,
                "model_class": self.model_class,
                "method": self.method,
                "batch_polymorphic": self.batch_polymorphic,
                "vjp_order": self.vjp_order,
                "program": {"offset": 0, "nbytes": len(program)},
                "weights": entries,
            }
        ).encode()
        body = b"".join(chunks)
        digest = hashlib.sha256(header + body).digest()
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header), len(body), digest)
        return prefix + header + body

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes :meth:`to_bytes` to ``path`` (through a temporary file, then a rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self.to_bytes())
        os.replace(tmp, path)


def export(
    model: Any,
    *example_args: Any,
    method: str = "__call__",
    batch_polymorphic: bool = True,
    vjp_order: int = 0,
    platforms: Sequence[str] | None = None,
) -> Exported:
    """Exports ``getattr(model, method)`` as StableHLO plus the model's weights.

    Args:
      model: an nnx Module (or any graph node with the method). It is not changed.
      *example_args: the method's positional arguments, as arrays or ``jax.ShapeDtypeStruct``
        (only their shapes and dtypes are used).
      method: the name of the method to export.
      batch_polymorphic: give every input array of rank >= 1 a symbolic leading dimension.
      vjp_order: the number of derivative orders to serialise (1 allows ``jax.grad``).
      platforms: the platforms to lower for (e.g. ``("cpu", "cuda")``); default: the current
        backend.

    Returns:
      An :class:`Exported`; call it, or write it with ``save``/``to_bytes``.

    Raises:
      ExportError: the method is missing, an argument is not an array, the batch sizes of the
        inputs differ, or jax cannot export the method (the jax error is attached).

    Example:
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu)
      >>> exported = nnx.export(model, jnp.ones((2, 4)))
      >>> exported(jnp.ones((5, 4))).shape
      (5, 8)
    """
    where = f"nnx.export({type(model).__name__}, method={method!r})"
    if not callable(getattr(model, method, None)):
        raise ExportError(
            f"{where}: {type(model).__name__} has no method {method!r}.\nFix: pass the name of "
            f"one of its methods, e.g. method='__call__'."
        )
    if vjp_order < 0:
        raise ExportError(f"{where}: vjp_order must be >= 0, got {vjp_order}.")
    graphdef, state = graph.split(model)
    paths_leaves, state_tree = jax.tree_util.tree_flatten_with_path(state)
    names = [_leaf_name(p) for p, _ in paths_leaves]
    key_impls = {
        i: jax.random.key_impl(leaf) for i, (_, leaf) in enumerate(paths_leaves) if _is_key(leaf)
    }
    weights = {
        name: jax.random.key_data(leaf) if i in key_impls else jnp.asarray(leaf)
        for i, (name, (_, leaf)) in enumerate(zip(names, paths_leaves, strict=True))
    }
    if len(weights) != len(names):
        raise ExportError(f"{where}: two state leaves share the name of one of {names}.")

    def program(weight_list: list[jax.Array], *args: Any) -> Any:
        leaves = [
            jax.random.wrap_key_data(w, impl=key_impls[i]) if i in key_impls else w
            for i, w in enumerate(weight_list)
        ]
        copy = graph.merge(graphdef, jax.tree.unflatten(state_tree, leaves))
        return getattr(copy, method)(*args)

    specs = _input_specs(example_args, batch_polymorphic)
    weight_specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights.values()]
    try:
        exp = jax_export.export(jax.jit(program), platforms=platforms)(weight_specs, *specs)
    except Exception as e:
        hint = (
            "\nThe method may depend on the batch size (a reshape or a Python branch on it); "
            "try batch_polymorphic=False."
            if batch_polymorphic
            else ""
        )
        raise ExportError(f"{where}: jax.export failed: {e}{hint}") from e
    cls = type(model)
    return Exported(
        exp,
        weights,
        method=method,
        model_class=f"{cls.__module__}.{cls.__qualname__}",
        batch_polymorphic=batch_polymorphic,
        vjp_order=vjp_order,
    )


def _corrupt(source: str, what: str) -> ExportError:
    return ExportError(
        f"nnx.load_exported({source}): {what}.\nFix: re-export the model with nnx.export and "
        f"save it again; the file is damaged or is not an nnx export."
    )


def load_exported(path_or_bytes: str | os.PathLike[str] | bytes | bytearray) -> Exported:
    """Reads an :class:`Exported` written by :meth:`Exported.save` or :meth:`Exported.to_bytes`.

    The model's Python class is not needed: the result runs the stored StableHLO program.

    Args:
      path_or_bytes: a file path, or the bytes of :meth:`Exported.to_bytes`.

    Returns:
      A callable :class:`Exported`.

    Raises:
      ExportError: the data is not an nnx export (wrong magic), has a format version this
        nnx cannot read, is truncated, fails its checksum, or jax cannot read the program.

    Example:
      >>> data = nnx.export(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 2))).to_bytes()
      >>> nnx.load_exported(data)(jnp.ones((3, 2))).shape
      (3, 2)
      >>> nnx.load_exported(b'not an export')
      Traceback (most recent call last):
      ...
      nnx.export.ExportError: nnx.load_exported(<13 bytes>): ...
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
        source = f"<{len(data)} bytes>"
    else:
        source = repr(os.fspath(path_or_bytes))
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise _corrupt(source, f"it does not start with the nnx export magic {MAGIC!r}")
    _, version, _, hlen, blen, digest = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ExportError(
            f"nnx.load_exported({source}): export format version {version}, but this nnx "
            f"({_nnx_version}) reads version {FORMAT_VERSION}.\nFix: load it with the nnx "
            f"version that wrote it, or re-export the model with this one."
        )
    if hlen > _MAX_HEADER or _PREFIX.size + hlen + blen != len(data):
        raise _corrupt(
            source,
            f"it is {len(data)} bytes, but its prefix announces "
            f"{_PREFIX.size + hlen + blen} (truncated or altered)",
        )
    payload = data[_PREFIX.size :]
    if hashlib.sha256(payload).digest() != digest:
        raise _corrupt(source, "its SHA-256 checksum does not match its contents")
    try:
        header = json.loads(payload[:hlen])
        body = memoryview(payload)[hlen:]
        prog = header["program"]
        program = jax_export.deserialize(
            bytearray(body[prog["offset"] : prog["offset"] + prog["nbytes"]])
        )
        weights = {}
        for entry in header["weights"]:
            dtype = jnp.dtype(entry["dtype"]).newbyteorder("<")
            raw = body[entry["offset"] : entry["offset"] + entry["nbytes"]]
            array = np.frombuffer(raw, dtype=dtype).reshape(tuple(entry["shape"]))
            weights[entry["name"]] = jnp.asarray(array.astype(array.dtype.newbyteorder("=")))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _corrupt(source, f"its header or program cannot be read ({e})") from e
    expected = program.in_avals[: len(weights)]
    got = [(tuple(w.shape), w.dtype) for w in weights.values()]
    if [(tuple(a.shape), a.dtype) for a in expected] != got:
        raise _corrupt(source, "its weights do not fit the program's inputs")
    return Exported(
        program,
        weights,
        method=str(header.get("method")),
        model_class=str(header.get("model_class")),
        batch_polymorphic=bool(header.get("batch_polymorphic")),
        vjp_order=int(header.get("vjp_order", 0)),
    )
