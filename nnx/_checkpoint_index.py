"""The nnx index of a checkpoint step: every saved leaf's path, shape, dtype and CRC-32.

:class:`~nnx.Checkpointer` writes the index beside the arrays, as one more orbax item
(``nnx_index``, JSON) committed atomically with them, and checks it on restore:

* orbax's own metadata must describe the leaves the index lists (a damaged ``_METADATA`` or
  manifest is reported as damage, not as a target that does not fit);
* every restored array must have the checksum it was saved with (OCDBT data chunks carry
  none: flipped bits would otherwise restore as wrong values);
* the index checks itself (a CRC of its own canonical JSON) and the saved metadata dict.

Checksums are CRC-32 (``zlib``, which releases the GIL) over 16 MiB chunks, computed on a
few threads. An array that is not fully addressable (a multi-process array) has no checksum:
no single process holds all of its bytes.

This module knows nothing of orbax: it reads and writes plain data. Its reader functions
raise :class:`Damaged` with the file and the reason; the Checkpointer turns that into
:class:`~nnx.checkpointing.CheckpointCorruptError` with the step and the fix.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, cast

import jax
import numpy as np

NAME = "nnx_index"
FILE = "metadata"  # the file orbax's JSON handler writes inside the item's folder
FORMAT = "nnx-checkpoint-index"
VERSION = 1
CHUNK = 1 << 24
_PARALLEL_BYTES = 1 << 25
_MAX_JSON_BYTES = 1 << 28


class Damaged(Exception):
    """A file of a checkpoint step is damaged: `file` and `reason` say which and how."""

    def __init__(self, file: str, reason: str, paths: Iterable[str] = ()):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason
        self.paths = list(paths)


class Spec(NamedTuple):
    """What a leaf is, as stored: shape, numpy dtype name, and whether it is a Python scalar
    (orbax gives those back as Python ``int``/``float``/``bool``, not as arrays)."""

    shape: tuple[int, ...]
    dtype: str
    scalar: bool

    def describe(self) -> str:
        if self.scalar:
            return f"a Python {_PY_NAMES.get(self.dtype, self.dtype)}"
        return f"{self.dtype}{list(self.shape)}"


_PY_NAMES = {"int64": "int", "float64": "float", "bool": "bool"}
PY_SCALARS = (bool, int, float)


def spec_of(x: Any, *, saved_scalar: bool = False) -> Spec | None:
    """The :class:`Spec` of a leaf (a value, a ShapeDtypeStruct or orbax metadata).

    Typed PRNG keys are stored as their key data. `saved_scalar` marks orbax metadata of a
    Python scalar. Anything else without a shape and dtype (a string) has no spec.
    """
    if type(x) in PY_SCALARS:
        return Spec((), np.asarray(x).dtype.name, True)
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        return None
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
        shape, dtype = data.shape, data.dtype
    return Spec(tuple(int(d) for d in shape), np.dtype(dtype).name, saved_scalar)


def _bytes_of(x: Any) -> np.ndarray | None:
    """The leaf's bytes as a flat uint8 array (None: not all of it lives in this process)."""
    if type(x) in PY_SCALARS:
        a = np.asarray(x)
    elif isinstance(x, jax.Array):
        if not x.is_fully_addressable:
            return None
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        a = np.asarray(x)
    else:
        a = np.asarray(x)
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def checksums(leaves: list[Any]) -> list[list[int] | None]:
    """One list of chunk CRC-32s per leaf (None where the leaf is not all here)."""
    buffers = [_bytes_of(x) for x in leaves]
    out: list[list[int] | None] = []
    # (the leaf's list of CRCs, its bytes, the chunk's start)
    jobs: list[tuple[list[int], np.ndarray, int]] = []
    for b in buffers:
        if b is None:
            out.append(None)
            continue
        sums: list[int] = []
        out.append(sums)
        jobs.extend((sums, b, start) for start in range(0, max(len(b), 1), CHUNK))

    def crc(job: tuple[list[int], np.ndarray, int]) -> int:
        _, b, start = job
        # .data: the chunk as a memoryview, no copy (numpy types ndarray as a buffer only
        # from Python 3.12)
        return zlib.crc32(b[start : start + CHUNK].data)

    total = sum(len(b) for b in buffers if b is not None)
    if total >= _PARALLEL_BYTES and len(jobs) > 1:
        with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1, 8)) as pool:
            values = list(pool.map(crc, jobs))
    else:
        values = [crc(j) for j in jobs]
    for (sums, _, _), value in zip(jobs, values, strict=True):
        sums.append(value)
    return out


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _crc_text(text: str) -> int:
    return zlib.crc32(text.encode())


class Entry(NamedTuple):
    """One leaf of the index."""

    path: tuple[str, ...]
    spec: Spec
    crc: list[int] | None


def _saved_spec(x: Any) -> Spec:
    # Checkpointer.save has checked that every leaf has a spec (checkpointing._check_savable).
    return cast(Spec, spec_of(x))


def build(flat_items: Mapping[str, list[tuple[tuple[str, ...], Any]]], metadata: Any) -> dict:
    """The index (a JSON-ready dict) of the flattened items and the metadata dict."""
    items = {}
    for name, flat in flat_items.items():
        values = [leaf for _, leaf in flat]
        crcs = checksums(values)
        items[name] = [
            [list(path), list(spec.shape), spec.dtype, spec.scalar, crc]
            for (path, _), spec, crc in zip(flat, map(_saved_spec, values), crcs, strict=True)
        ]
    index = {
        "format": FORMAT,
        "version": VERSION,
        "chunk": CHUNK,
        "items": items,
        "metadata": None if metadata is None else _crc_text(canonical_json(metadata)),
    }
    index["self"] = _crc_text(canonical_json(index))
    return index


def read_json(path: str, what: str) -> Any:
    """A JSON file of a step, or :class:`Damaged` naming it (never a raw decode error)."""
    try:
        size = os.path.getsize(path)
        if size > _MAX_JSON_BYTES:
            raise Damaged(path, f"{what} is {size} bytes long, far more than it can be")
        with open(path, "rb") as f:
            raw = f.read()
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise Damaged(path, f"{what} is missing") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise Damaged(path, f"{what} is not valid JSON ({type(err).__name__})") from None
    except OSError as err:
        raise Damaged(path, f"{what} cannot be read ({err.strerror or err})") from None


class Index(NamedTuple):
    """A checked index: entries per item name and the metadata's CRC."""

    file: str
    items: dict[str, list[Entry]]
    metadata_crc: int | None

    def check_metadata(self, metadata: Any, file: str) -> None:
        got = None if metadata is None else _crc_text(canonical_json(metadata))
        if got != self.metadata_crc:
            raise Damaged(file, "the metadata dict does not match its checksum")

    def check_structure(self, name: str, saved: dict[tuple, Spec | None], file: str) -> None:
        """Orbax's metadata of item `name` must list the leaves the index lists."""
        expected = {e.path: e.spec for e in self.items[name]}
        if saved == expected:
            return
        differ = sorted(
            ".".join((name, *p))
            for p in set(saved) | set(expected)
            if saved.get(p) != expected.get(p)
        )
        raise Damaged(file, "orbax's metadata of the arrays differs from the nnx index", differ)

    def check_values(self, name: str, flat: list[tuple[tuple[str, ...], Any]], file: str) -> None:
        """Every restored leaf of item `name` must have the checksum it was saved with."""
        entries = {e.path: e for e in self.items[name]}
        wanted = [(p, v) for p, v in flat if p in entries and entries[p].crc is not None]
        got = checksums([v for _, v in wanted])
        bad = [
            ".".join((name, *p))
            for (p, _), crc in zip(wanted, got, strict=True)
            if crc is not None and crc != entries[p].crc
        ]
        if bad:
            raise Damaged(
                file, f"{len(bad)} array(s) differ from the checksums written at save", bad
            )


def _entry(raw: Any) -> Entry:
    path, shape, dtype, scalar, crc = raw
    if not (isinstance(path, list) and all(isinstance(k, str) for k in path)):
        raise ValueError("path")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ValueError("shape")
    if not isinstance(dtype, str) or type(scalar) is not bool:
        raise ValueError("dtype")
    if crc is not None and not (
        isinstance(crc, list) and all(type(c) is int and 0 <= c < 2**32 for c in crc)
    ):
        raise ValueError("crc")
    return Entry(tuple(path), Spec(tuple(shape), dtype, scalar), crc)


def read(step_dir: str) -> Index:
    """Reads and checks the index of a step folder (:class:`Damaged` if it is damaged)."""
    file = os.path.join(step_dir, NAME, FILE)
    data = read_json(file, "the nnx index")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise Damaged(file, "the nnx index has lost its format marker")
    claimed = data.pop("self", None)
    if claimed != _crc_text(canonical_json(data)):
        raise Damaged(file, "the nnx index does not match its own checksum")
    if data.get("version") != VERSION or data.get("chunk") != CHUNK:
        raise Damaged(
            file,
            f"the nnx index has version {data.get('version')!r}; this nnx reads {VERSION} "
            "(upgrade nnx to read it)",
        )
    try:
        items = {name: [_entry(e) for e in entries] for name, entries in data["items"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise Damaged(file, f"the nnx index has a malformed entry ({err})") from None
    return Index(file, items, data.get("metadata"))
