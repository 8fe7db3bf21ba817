"""safetensors files: the weights format PyTorch and Hugging Face tooling read and write.

:func:`save_safetensors` writes a model's arrays to one ``.safetensors`` file and
:func:`load_safetensors` reads them back into a model, in place. The format is written and
read here with numpy and json (no pickle, no eval): an 8-byte little-endian header length, a
JSON header ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}`` padded
with spaces to a multiple of 8 bytes, then the raw little-endian bytes of every tensor,
contiguous, largest element size first (so each tensor is aligned to its element size).

What is saved:

* Names are dotted state paths, integer keys as digits: ``blocks.0.attn.query.kernel``.
* By default: every Variable of ``nnx.state(node)`` (Params, BatchStats, caches, custom kinds)
  and raw array attributes -- everything except RNG state (:class:`nnx.RngState`: the keys
  and counters of ``nnx.Rngs``). RNG state is not weights: no other tool can use it, and a
  weights file must load into a model built with any seed. Pass filters to choose (a leaf is
  saved when it matches any of them, as in ``nnx.state``); ``...`` saves everything.
* Typed PRNG keys have no safetensors dtype: their ``jax.random.key_data`` is stored, and the
  key implementation is recorded in ``__metadata__["nnx.prng_keys"]`` (JSON).
* A Variable shared by several paths is stored once, under its first path, and loading it
  restores every reference.
* Values that are not arrays or numbers (e.g. ``None``) have no tensor form and are skipped.
* Supported dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL; anything else is
  rejected with an error naming the paths (cast it, or leave it out with a filter).

Loading checks the file first: a damaged, truncated or hostile one raises
:class:`~nnx.checkpointing.CheckpointCorruptError` naming it and what is wrong, in time linear
in its header and memory a small multiple of it (``nnx/_safetensors_header.py`` tells how).
Then it compares every name, shape and dtype with the model before writing anything; all
differences are reported in one :class:`~nnx.checkpointing.CheckpointMismatchError` and the
model is left untouched. Abstract models from ``nnx.eval_shape`` get real arrays (placed with
their sharding when they have one). ``strict=False`` loads the tensors both sides have and
``rename=`` maps the file's names to the model's (the rules of :mod:`nnx.weights`); the
returned :class:`~nnx.weights.LoadReport` says what was loaded, skipped and left untouched.
:func:`load_safetensors_dict` gives the raw ``{name: np.ndarray}`` for anything else.
Hugging Face ``transformers`` wants ``metadata={"format": "pt"}`` in files it loads.

Example:
  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), 'model.safetensors')
  >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> nnx.save_safetensors(path, model, metadata={'step': '100'})
  >>> fresh = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
  >>> nnx.load_safetensors(path, fresh).metadata
  {'step': '100'}
  >>> bool((fresh.kernel.value == model.kernel.value).all())
  True
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ._safetensors_header import CODES as _CODES
from ._safetensors_header import METADATA_KEY as _METADATA_KEY
from ._safetensors_header import PRNG_KEYS as _PRNG_KEYS
from ._safetensors_header import SUPPORTED as _SUPPORTED
from ._safetensors_header import File as _File
from .errors import CheckpointError, short_list
from .filters import Filter
from .graph import update as _update
from .state import from_flat_state
from .weights import (
    NO_COMMON_FIX,
    Leaf,
    LoadReport,
    Rename,
    match_leaves,
    mismatch_error,
    named_leaves,
    report_of,
    to_target,
)

__all__ = [
    "load_safetensors",
    "load_safetensors_dict",
    "safetensors_metadata",
    "save_safetensors",
]

_DTYPE_CODES: dict[np.dtype, str] = {dtype: code for code, dtype in _CODES.items()}


def save_safetensors(
    path: str | os.PathLike,
    node: Any,
    /,
    *filters: Filter,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes the arrays of `node` to a safetensors file at `path`, atomically.

    The file is written to a temporary file beside `path` and renamed over it at the end, so
    an interrupted save never leaves a partial file under the final name.

    Args:
      path: the file to write (its directory must exist); an existing file is replaced.
      node: a Module or any graph node (Optimizer, ``nnx.List``...), a State, or a (nested)
        dict of arrays.
      *filters: save only the leaves matching any of them (as in ``nnx.state``). Default: all
        but RNG state.
      metadata: strings stored in the header's ``__metadata__``.

    Raises:
      CheckpointError: an unsupported dtype, an abstract value, names that collide, or
        metadata that is not ``str -> str`` (nothing is written).

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), 'w.safetensors')
      >>> model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.relu)
      >>> nnx.save_safetensors(path, model)
      >>> sorted(nnx.load_safetensors_dict(path))
      ['layers.0.bias', 'layers.0.kernel']
    """
    path = os.fspath(path)
    user_meta = _check_metadata(metadata, path)
    leaves = named_leaves(node, filters, f"save_safetensors({path!r})")
    problems = []
    for leaf in leaves.values():
        if isinstance(leaf.value, jax.ShapeDtypeStruct):
            problems.append(f"{leaf.name}: abstract ({leaf.value}), it has no data")
        elif leaf.dtype not in _DTYPE_CODES:
            problems.append(f"{leaf.name}: dtype {leaf.dtype.name} has no safetensors code")
    if problems:
        raise CheckpointError(
            f"save_safetensors({path!r}) cannot store {len(problems)} leaves; nothing was "
            "written:\n"
            + short_list(problems, limit=len(problems))
            + f"\nsafetensors stores the dtypes {_SUPPORTED}. Fix: cast those values, load or "
            "initialise abstract models first, or leave the leaves out with a filter, e.g. "
            "nnx.save_safetensors(path, model, nnx.Param)."
        )
    # Largest element size first: every tensor then starts at a multiple of its element size.
    order = sorted(leaves.values(), key=lambda leaf: (-leaf.dtype.itemsize, leaf.name))
    header: dict[str, Any] = {}
    keys = {leaf.name: leaf.impl for leaf in order if leaf.impl is not None}
    if keys:
        user_meta[_PRNG_KEYS] = json.dumps(keys, sort_keys=True)
    if user_meta:
        header[_METADATA_KEY] = user_meta
    offset = 0
    for leaf in order:
        size = math.prod(leaf.shape) * leaf.dtype.itemsize
        header[leaf.name] = {
            "dtype": _DTYPE_CODES[leaf.dtype],
            "shape": list(leaf.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    _write_atomically(path, encoded, order)


def _check_metadata(metadata: Mapping[str, str] | None, path: str) -> dict[str, str]:
    if metadata is None:
        return {}
    bad = [
        f"{k!r}: {v!r}"
        for k, v in metadata.items()
        if not isinstance(k, str) or not isinstance(v, str) or k == _PRNG_KEYS
    ]
    if bad:
        raise CheckpointError(
            f"save_safetensors({path!r}): metadata must map str to str (and {_PRNG_KEYS!r} "
            "is nnx's own entry); these entries do not:\n"
            + short_list(bad)
            + "\nFix: convert the values, e.g. metadata={'step': str(step)}, or json.dumps "
            "structured data."
        )
    return dict(metadata)


def _host_bytes(leaf: Leaf) -> np.ndarray:
    """The tensor's bytes as stored (little-endian, C order), as a flat uint8 array."""
    value = leaf.value
    if leaf.impl is not None:
        value = jax.random.key_data(value)
    array = np.ascontiguousarray(np.asarray(value, dtype=leaf.dtype))
    if sys.byteorder == "big":
        array = array.byteswap()
    return array.reshape(-1).view(np.uint8)


def _write_atomically(path: str, header: bytes, order: list[Leaf]) -> None:
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open (not tempfile) so the file gets the umask's usual permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for leaf in order:
                f.write(_host_bytes(leaf).data)  # .data: the array's buffer (no copy)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# -- reading ------------------------------------------------------------------------------
def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if it has none); reads the header only.

    Raises:
      CheckpointCorruptError: the file is not a valid safetensors file.
      CheckpointError: the file is missing or cannot be read.
    """
    return dict(_File(os.fspath(path)).metadata)


def load_safetensors_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as ``{name: np.ndarray}`` (sorted by name).

    For files that do not match a model as is: rename, slice or convert the arrays, then
    write them into the model yourself, or save them again with :func:`save_safetensors`.

    Raises:
      CheckpointCorruptError: the file is not a valid safetensors file.
      CheckpointError: the file is missing or cannot be read.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), 'd.safetensors')
      >>> nnx.save_safetensors(path, {'a': {'b': np.arange(3, dtype=np.int8)}})
      >>> nnx.load_safetensors_dict(path)
      {'a.b': array([0, 1, 2], dtype=int8)}
    """
    file = _File(os.fspath(path))
    return file.read(sorted(file.entries))


def load_safetensors(
    path: str | os.PathLike,
    node: Any,
    /,
    *filters: Filter,
    strict: bool = True,
    rename: Rename | None = None,
) -> LoadReport:
    """Loads a safetensors file into `node`, in place, after checking that it fits.

    Tensors load by name (``blocks.0.attn.kernel``), with the rules of :mod:`nnx.weights`:
    ``rename`` maps the file's names to the model's, ``strict=False`` loads only the names
    both have, and shapes and dtypes must agree in any case.

    Args:
      path: the file to read.
      node: a Module or any graph node; abstract models (``nnx.eval_shape``) get real arrays.
        RNG state is not in weights files: give an abstract model's Rngs keys with
        ``nnx.reseed(model, dropout=0)``.
      *filters: load only the leaves matching any of them (as in ``nnx.state``). Default: all
        but RNG state, as :func:`save_safetensors` saves.
      strict: with False, names on one side only are ignored and the tensors both have are
        loaded (their shapes and dtypes must still agree).
      rename: file name -> model name: a dict of regular expressions to replacements (None
        drops the tensor) or a function of the name returning the new one or None.

    Returns:
      A :class:`~nnx.weights.LoadReport`: what was loaded, skipped and left untouched, and
      the file's ``__metadata__`` as ``report.metadata``.

    Raises:
      CheckpointCorruptError: the file is not a valid safetensors file (the model is left
        untouched).
      CheckpointError: the file is missing or cannot be read, or (strict=False) it has no
        name in common with the model.
      CheckpointMismatchError: missing or unexpected names (strict=True), names renamed onto
        one, or shape or dtype differences; all are listed, and the model is left untouched.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), 'w.safetensors')
      >>> nnx.save_safetensors(path, nnx.Linear(2, 3, rngs=nnx.Rngs(0)), metadata={'a': 'b'})
      >>> no_bias = nnx.Linear(2, 3, use_bias=False, rngs=nnx.Rngs(1))
      >>> report = nnx.load_safetensors(path, no_bias, strict=False)
      >>> report, dict(report.skipped), report.metadata
      (LoadReport(loaded=1, skipped=1, untouched=0), {'bias': 'not in the model'}, {'a': 'b'})
      >>> wrapped = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(2)))
      >>> nnx.load_safetensors(path, wrapped, rename={'^': 'layers.0.'})
      LoadReport(loaded=2, skipped=0, untouched=0)
      >>> abstract = nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(2)))
      >>> _ = nnx.load_safetensors(path, abstract)
      >>> type(abstract.kernel.value).__name__
      'ArrayImpl'
    """
    path = os.fspath(path)
    file = _File(path)
    saved_keys = file.prng_keys()
    where = f"load_safetensors({path!r})"
    targets = named_leaves(node, filters, where)
    default_hint = "" if filters else " (by default RNG state is not loaded; pass ...)"
    matched = match_leaves(
        {
            name: (entry.shape, entry.dtype, saved_keys.get(name))
            for name, entry in file.entries.items()
        },
        node,
        targets,
        rename=rename,
        strict=strict,
        where=where,
        source_kind="file",
    )
    if matched.problems:
        problems = [
            p + default_hint if p.endswith("not selected by the filters") else p
            for p in matched.problems
        ]
        raise mismatch_error(
            where,
            type(node).__name__,
            problems,
            [
                "build the model with the configuration the file was saved with;",
                "load the tensors both have: nnx.load_safetensors(path, model, strict=False), "
                "leaving out those whose shape or dtype differs with a filter, e.g. "
                "nnx.Not(nnx.PathContains('head')), or with rename={pattern: None};",
                "map names that differ: rename={r'^encoder\\.': 'backbone.'};",
                "read the raw arrays with nnx.load_safetensors_dict(path) and convert them.",
            ],
        )
    if not matched.pairs and targets and file.entries:
        raise CheckpointError(
            f"{where}: the file and {type(node).__name__} have no tensor name in common "
            f"(file: {sorted(file.entries)[:3]}..., model: {sorted(targets)[:3]}...), so "
            f"nothing would be loaded. Fix: {NO_COMMON_FIX}"
        )
    arrays = file.read(sorted(matched.pairs.values()))
    updates = [
        (targets[new].path, to_target(targets[new], arrays[old]))
        for new, old in matched.pairs.items()
    ]
    report = report_of(node, matched, file.metadata)
    _update(node, from_flat_state(updates))
    return report
