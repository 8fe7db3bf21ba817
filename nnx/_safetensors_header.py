"""Reading a safetensors file's header: untrusted bytes, parsed in linear time and small memory.

A header is ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``, so its
JSON is never more than three levels deep, its lists are short and its tensor entries small.
Handing the whole of it to ``json.loads`` would let a hostile file choose the cost: nesting
10,000 deep raises ``RecursionError``, and 100 MB of ``[{},{},...`` builds gigabytes of
objects. So the header is read one top-level member at a time, each matched first by a regular
expression written with possessive quantifiers (no backtracking, no recursion: linear time,
constant memory) that accepts only the shapes the format allows:

* a tensor entry: a JSON object of at most 8 members whose values are strings (of at most
  1024 bytes), numbers, or lists of at most 128 of them;
* ``__metadata__``: a flat object of strings, at most 64 pairs plus one per 24 header bytes.

Only then does ``json`` decode that member -- small and flat -- into a compact :class:`Entry`,
checked at once, so a bad member fails before the next is read, and memory stays under 10x
the header's size whatever its bytes. Every problem raises
:class:`~nnx.checkpointing.CheckpointCorruptError` naming the file, the tensor and the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NoReturn

import jax.numpy as jnp
import numpy as np

from .checkpointing import CheckpointCorruptError, CheckpointError

# safetensors dtype code -> numpy dtype (bfloat16 is ml_dtypes', which jax uses).
CODES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
SUPPORTED = " ".join(CODES)

METADATA_KEY = "__metadata__"
PRNG_KEYS = "nnx.prng_keys"  # __metadata__ entry: JSON {tensor name: key implementation}
# The reference implementation refuses headers above 100 MB; so do we (a corrupt length
# field must not make us allocate gigabytes).
MAX_HEADER = 100_000_000
_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_MAX_BYTES = 2**63 - 1  # numpy's limit on an array's size in bytes (npy_intp)


def _numpy_max_ndim() -> int:
    try:
        np.empty((0,) * 64)
    except ValueError:  # numpy < 2
        return 32
    return 64


MAX_NDIM = _numpy_max_ndim()
_MAX_MEMBERS = 8  # per tensor entry: its three fields and a few unknown ones, ignored
_MAX_ITEMS = 2 * MAX_NDIM  # per list: a shape too long still gets a precise message
_MAX_STR = 1024  # bytes (an escape counts one) per string in a tensor entry


def metadata_limit(header_size: int) -> int:
    """How many ``__metadata__`` pairs a header of this size may hold: each costs about 150
    bytes of Python objects however short it is, so they must average 24 header bytes."""
    return 64 + header_size // 24


# -- the grammar ---------------------------------------------------------------------------
# Possessive quantifiers (*+, ?+, {m,n}+) never give back what they matched, so the `re`
# engine keeps no backtracking state: linear time and constant memory on any input.
_WS = rb"[ \t\n\r]*+"
_STR = rb'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+"'
_NUM = rb"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_SHORT_STR = rb'"(?:[^"\\]|\\[\s\S]){0,%d}+"' % _MAX_STR  # in an entry: its keys, the dtype
_SCALAR = rb"(?:" + _SHORT_STR + rb"|" + _NUM + rb"|true|false|null)"


def _sequence(opening: bytes, item: bytes, closing: bytes, more: bytes) -> bytes:
    """`item`s separated by commas between `opening` and `closing`; `more` quantifies the
    items after the first."""
    return opening + _WS + rb"(?:" + item + rb"(?:," + _WS + item + rb")" + more + rb")?+" + closing


_LIST = _sequence(rb"\[", _SCALAR + _WS, rb"\]", b"{0,%d}+" % (_MAX_ITEMS - 1))
_VALUE = rb"(?:" + _SCALAR + rb"|" + _LIST + rb")"
_MEMBER = _SHORT_STR + _WS + rb":" + _WS + _VALUE + _WS
_PAIR = _STR + _WS + rb":" + _WS + _STR + _WS
_ENTRY_RE = re.compile(_sequence(rb"\{", _MEMBER, rb"\}", b"{0,%d}+" % (_MAX_MEMBERS - 1)))
_STRINGS = _sequence(rb"\{", _PAIR, rb"\}", b"*+")
_STRINGS_RE = re.compile(_STRINGS)
_JSON_STRINGS_RE = re.compile(_WS + rb"(" + _STRINGS + rb")" + _WS)  # a whole JSON text
_VALUE_RE = re.compile(_VALUE)
_PAIR_RE = re.compile(_WS + rb"(" + _STR + rb")" + _WS + rb":" + _WS + rb"(" + _STR + rb")")
_KEY_RE = re.compile(_WS + rb"(" + _STR + rb")" + _WS + rb":" + _WS)
_OPEN_RE = re.compile(_WS + rb"\{" + _WS)
_SEP_RE = re.compile(_WS + rb"([,}])")
_WS_RE = re.compile(_WS)
_CONTROL_RE = re.compile(rb"[\x00-\x1f]")  # not allowed raw in JSON strings
# A piece of a string literal: up to _PIECE whole characters or escapes (a surrogate pair of
# escapes kept together), to unescape a long literal piece by piece.
_PIECE = 65536
_PIECE_RE = re.compile(
    rb"(?:[^\\\x80-\xff]|[\xc0-\xff][\x80-\xbf]{0,3}+"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\[^u])"
    rb"{1,%d}+" % _PIECE
)
if TYPE_CHECKING:  # typeshed leaves json.decoder.scanstring out; it is _json's where it exists
    from _json import scanstring as _scanstring
else:
    _scanstring = json.decoder.scanstring
_FIRST = {b"[": "list", b'"': "string", b"t": "boolean", b"f": "boolean", b"n": "null"}


def _skip_spaces(raw: bytes, pos: int) -> int:
    """The position after the JSON whitespace at `pos` (_WS_RE matches the empty string)."""
    found = _WS_RE.match(raw, pos)
    return pos if found is None else found.end()


class _RepeatedKeys(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        raise _RepeatedKeys(sorted(k for k, c in counts.items() if c > 1))
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def show(x: Any, limit: int = 80) -> str:
    """``repr(x)``, cut to `limit` characters (file contents can be huge)."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the file ------------------------------------------------------------------------------
class Entry:
    """One tensor of the file: its dtype, shape and byte span in the data section."""

    __slots__ = ("begin", "dtype", "end", "name", "shape")

    def __init__(self, name: str, dtype: np.dtype, shape: tuple[int, ...], begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


class File:
    """A safetensors file whose header was read and checked: entries by name, metadata, and
    where the data starts.

    Raises:
      CheckpointCorruptError: the file is not a valid safetensors file (the message says what
        is wrong and where).
      CheckpointError: the file cannot be read.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    self._bad(f"it is {size} bytes long, shorter than the 8-byte header length")
                n = int.from_bytes(head, "little")
                if n > MAX_HEADER:
                    self._bad(f"its header claims {n} bytes, over the {MAX_HEADER}-byte limit")
                if 8 + n > size:
                    self._bad(f"its header claims {n} bytes but the file has {size - 8} after it")
                raw = f.read(n)
        except OSError as err:
            raise CheckpointError(f"Cannot read safetensors file {path!r}: {err}") from err
        if len(raw) != n:
            self._bad(f"its header is cut short ({len(raw)} of {n} bytes; changed while read?)")
        self.data_start = 8 + n
        self.entries: dict[str, Entry] = {}
        self.metadata: dict[str, str] = {}
        self._parse(raw)
        self._check_layout(size - self.data_start)

    def _bad(self, why: str) -> NoReturn:
        raise CheckpointCorruptError(
            f"{self.path!r} is not a valid safetensors file: {why}. Fix: check the path, or "
            "write the file again (it may be truncated or not a safetensors file)."
        )

    def _syntax(self, raw: bytes, pos: int, expected: str) -> NoReturn:
        found = show(raw[pos : pos + 32]) if pos < len(raw) else "its end"
        self._bad(f"its header is not UTF-8 JSON: at byte {pos} expected {expected}, found {found}")

    # -- the header, one member at a time ---------------------------------------------------
    def _parse(self, raw: bytes) -> None:
        opening = _OPEN_RE.match(raw)
        if opening is None:
            start = _skip_spaces(raw, 0)
            kind = _FIRST.get(raw[start : start + 1])
            if kind is None and re.match(rb"-?[0-9]", raw[start : start + 2]):
                kind = "number"
            if kind is not None:
                self._bad(f"its header is a JSON {kind}, not an object")
            self._syntax(raw, start, "'{' (the header is a JSON object)")
        pos = opening.end()
        seen_metadata = False
        if raw[pos : pos + 1] == b"}":
            pos += 1
        else:
            while True:
                key = _KEY_RE.match(raw, pos)
                if key is None:
                    self._syntax(raw, pos, "a quoted tensor name followed by ':'")
                name = self._string(raw, *key.span(1), "a tensor name")
                pos = key.end()
                if name in self.entries or (name == METADATA_KEY and seen_metadata):
                    self._bad(f"its header repeats the names {[name]}")
                if name == METADATA_KEY:
                    seen_metadata = True
                    pos = self._read_metadata(raw, pos)
                else:
                    pos = self._read_entry(name, raw, pos)
                sep = _SEP_RE.match(raw, pos)
                if sep is None:
                    self._syntax(raw, pos, f"',' or '}}' after the entry {show(name)}")
                pos = sep.end()
                if sep.group(1) == b"}":
                    break
        end = _skip_spaces(raw, pos)
        if end != len(raw):
            self._syntax(raw, end, "only spaces after the header's closing '}'")

    def _string(self, raw: bytes, begin: int, end: int, what: str) -> str:
        """A JSON string literal the grammar matched, decoded without copying it whole: a
        long one with escapes is unescaped in pieces (a copy of it all as a str would take up
        to 4 bytes a character, next to the result)."""
        try:
            if raw.find(b"\\", begin, end) < 0 and _CONTROL_RE.search(raw, begin, end) is None:
                return str(memoryview(raw)[begin + 1 : end - 1], "utf-8")  # nothing to unescape
            if end - begin > _PIECE:
                parts, pos = [], begin + 1
                while (piece := _PIECE_RE.match(raw, pos, end - 1)) is not None:
                    parts.append(_scanstring('"' + str(piece[0], "utf-8") + '"', 1)[0])
                    pos = piece.end()
                if pos == end - 1:
                    return "".join(parts)
                del parts  # not valid: decode it whole for json's message
            return _scanstring(str(memoryview(raw)[begin:end], "utf-8"), 1)[0]
        except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
            self._bad(f"its header is not UTF-8 JSON: {what} at byte {begin} ({err})")

    def _read_entry(self, name: str, raw: bytes, pos: int) -> int:
        match = _ENTRY_RE.match(raw, pos)
        if match is None:
            value = _VALUE_RE.match(raw, pos)
            if value is not None:  # a string, number or list: decode it for the message
                info = self._json(raw, pos, value.end(), name)
                self._bad(
                    f"tensor {show(name)} is not {{dtype, shape, data_offsets}}: {show(info)}"
                )
            self._bad(
                f"tensor {show(name)} is not a flat JSON object {{dtype, shape, data_offsets}} "
                f"(at byte {pos} of the header: {show(raw[pos : pos + 32])}); an entry has at "
                f"most {_MAX_MEMBERS} members whose values are strings of at most {_MAX_STR} "
                f"bytes, numbers or lists of at most {_MAX_ITEMS} of them, nothing nested deeper"
            )
        self.entries[name] = self._entry(name, self._json(raw, pos, match.end(), name))
        return match.end()

    def _json(self, raw: bytes, begin: int, end: int, name: str) -> Any:
        """A flat JSON value the grammar matched, decoded."""
        try:
            return _DECODER.decode(str(memoryview(raw)[begin:end], "utf-8"))
        except _RepeatedKeys as err:
            self._bad(f"tensor {show(name)} repeats the keys {err.args[0]}")
        except ValueError as err:  # UnicodeDecodeError, JSONDecodeError, huge int literals
            self._bad(f"its header is not UTF-8 JSON: tensor {show(name)} at byte {begin} ({err})")

    def _entry(self, name: str, info: Any) -> Entry:
        if not isinstance(info, dict) or not info.keys() >= _FIELDS:
            self._bad(f"tensor {show(name)} is not {{dtype, shape, data_offsets}}: {show(info)}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in CODES:
            self._bad(f"tensor {show(name)} has dtype {show(code)}; nnx reads {SUPPORTED}")
        dtype = CODES[code]
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            self._bad(
                f"tensor {show(name)} has the shape {show(shape)}; a shape is a list of at most "
                f"{MAX_NDIM} non-negative integers"
            )
        bound = dtype.itemsize
        for d in shape:
            bound *= max(d, 1)
            if bound > _MAX_BYTES:
                self._bad(
                    f"tensor {show(name)} has the shape {show(shape)}: its dimensions (zeros "
                    f"left out) times its element size exceed {_MAX_BYTES} bytes, numpy's limit"
                )
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            self._bad(
                f"tensor {show(name)} has the data_offsets {show(offsets)}; they are two "
                "integers [begin, end] with 0 <= begin <= end"
            )
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            self._bad(
                f"tensor {show(name)} ({code}{shape}) needs {nbytes} bytes but its data_offsets "
                f"{offsets} span {end - begin}"
            )
        return Entry(name, dtype, tuple(shape), begin, end)

    def _read_metadata(self, raw: bytes, pos: int) -> int:
        if raw.startswith(b"null", pos):  # as good as no metadata
            return pos + 4
        match = _STRINGS_RE.match(raw, pos)
        if match is None:
            self._bad(
                f"its __metadata__ is not a mapping of strings to strings (at byte {pos} of the "
                f"header: {show(raw[pos : pos + 32])})"
            )
        limit = metadata_limit(len(raw))
        self.metadata = self._pairs(
            raw, pos, match.end(), limit, "its __metadata__", "too many for the header's size"
        )
        return match.end()

    def _pairs(
        self, raw: bytes, begin: int, end: int, limit: int, what: str, too_many: str
    ) -> dict[str, str]:
        """The pairs of a flat object of strings the grammar matched, at most `limit` of them."""
        out: dict[str, str] = {}
        for pair in islice(_PAIR_RE.finditer(raw, begin, end), limit + 1):
            key = self._string(raw, *pair.span(1), f"a key of {what}")
            if key in out:
                self._bad(f"{what} repeats the key {show(key)}")
            if len(out) == limit:
                self._bad(f"{what} has more than {limit} entries, {too_many}")
            out[key] = self._string(raw, *pair.span(2), f"a value of {what}")
        return out

    def _check_layout(self, data_size: int) -> None:
        """The tensors tile the data section: contiguous, in order, no gap, no overlap."""
        order = sorted(self.entries.values(), key=attrgetter("end"))
        order.sort(key=attrgetter("begin"))  # stable: by (begin, end)
        position = 0
        for entry in order:
            if entry.begin != position:
                self._bad(
                    f"tensor {show(entry.name)} starts at byte {entry.begin} of the data, "
                    f"expected {position} (tensors must be contiguous, without gaps or overlaps)"
                )
            position = entry.end
        if position != data_size:
            self._bad(
                f"the tensors end at byte {position} of the data but {data_size} bytes follow "
                "the header"
                + (" (offsets out of range: truncated file?)" if position > data_size else "")
            )

    # -- what loading needs -----------------------------------------------------------------
    def prng_keys(self) -> dict[str, str]:
        """``__metadata__["nnx.prng_keys"]``: which tensors hold typed PRNG keys, of which
        implementation (empty when the file has none)."""
        text = self.metadata.get(PRNG_KEYS)
        if text is None:
            return {}
        raw = text.encode("utf-8", "surrogatepass")
        what = f"its __metadata__[{PRNG_KEYS!r}]"
        match = _JSON_STRINGS_RE.fullmatch(raw)
        if match is None:
            self._bad(
                f"{what} is not a JSON object of tensor names to key implementations: {show(text)}"
            )
        limit = len(self.entries)
        return self._pairs(raw, *match.span(1), limit, what, "more than the file has tensors")

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        """The named tensors as numpy arrays (fresh, writable, native byte order)."""
        out: dict[str, np.ndarray] = {}
        try:
            with open(self.path, "rb") as f:
                for name in names:
                    entry = self.entries[name]
                    buffer = np.empty(entry.end - entry.begin, np.uint8)
                    f.seek(self.data_start + entry.begin)
                    if f.readinto(buffer.data) != buffer.size:
                        self._bad(
                            f"tensor {show(name)} is cut short (the file changed while reading?)"
                        )
                    if entry.dtype == np.bool_:  # any non-zero byte is True
                        array = (buffer != 0).reshape(entry.shape)  # an array even when 0-d
                    else:
                        array = buffer.view(entry.dtype).reshape(entry.shape)
                        if sys.byteorder == "big":
                            array = array.byteswap()
                    out[name] = array
        except OSError as err:
            raise CheckpointError(f"Cannot read safetensors file {self.path!r}: {err}") from err
        return out
