"""Hostile safetensors files: what a damaged or malicious file may cost, and what it may not.

First, one test for each bug that fault injection found in the reader (a ``TypeError`` for
``"dtype": ["F32"]``, ``RecursionError`` for nesting 10,000 deep, numpy's ``ValueError`` for
shapes such as ``[0, 2**64]``, a quadratic repeated-name check, gigabytes of memory for 100 MB
of ``{},``): each now raises :class:`nnx.CheckpointCorruptError` with a message pinned here,
in linear time and under 10x the header's size in memory.

Then the fault injection itself (slow): thousands of mutated copies of files written by
``nnx.save_safetensors`` (byte flips, truncations, a wrong header length, JSON type swaps,
deleted, repeated and renamed keys, moved offsets, hostile ``__metadata__`` and
``nnx.prng_keys``, nesting 10,000 deep) go through ``safetensors_metadata``,
``load_safetensors_dict`` and ``load_safetensors``. The laws: nothing but
:class:`nnx.CheckpointError` ever escapes; a failed load leaves the model as it was; a load
that succeeds gives exactly what the file's bytes say, decoded here independently with
``json`` and ``np.frombuffer`` (a mutation of the data alone may load, but never as something
else). Deterministic: one fixed seed.
"""

from __future__ import annotations

import copy
import json
import pathlib
import random
import re
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx._safetensors_header import CODES, MAX_HEADER
from nnx.checkpointing import CheckpointCorruptError, CheckpointError
from tests.strategies import describe_pairs

SEED = 20240601
MUTANTS = 2400
DEEP = 10_000
_DEEP_MARK = "@@deep@@"  # a JSON value replaced by nesting DEEP levels deep when written

GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
DATA = np.arange(2, dtype="<f4").tobytes()


def _raw_file(path, header, data=b""):
    """Writes a hand-made safetensors file (header: dict or raw bytes)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pathlib.Path(path).write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def snapshot(model) -> list:
    """Every leaf of the model's state: path, type, metadata, bytes."""
    return describe_pairs(nnx.state(model).flat_state())


# -- the bugs fault injection found, one by one --------------------------------------------
_ENTRY_A = b'"dtype":"F32","shape":[2],"data_offsets":[0,8]'


def _entry(**fields):
    return {"a": {**GOOD["a"], **fields}}


@pytest.mark.parametrize(
    ("header", "data", "pattern"),
    [
        # Types json gives that the old checks hashed or compared (TypeError).
        (_entry(dtype=["F32"]), DATA, r"tensor 'a' has dtype \['F32'\]; nnx reads F64 F32"),
        (_entry(dtype=None), DATA, r"tensor 'a' has dtype None; nnx reads"),
        (_entry(shape=[True, 2]), DATA, r"'a' has the shape \[True, 2\]; a shape is a list of"),
        (_entry(shape=[2.0]), DATA, r"'a' has the shape \[2\.0\]; a shape is a list of at most"),
        (_entry(shape="2"), DATA, r"'a' has the shape '2'; a shape is a list"),
        (_entry(data_offsets=["0", 8]), DATA, r"'a' has the data_offsets \['0', 8\]; they are two"),
        (_entry(data_offsets=[0, 2**70]), DATA, r"'a' \(F32\[2\]\) needs 8 bytes but its data_"),
        ({"a": [1, 2]}, DATA, r"tensor 'a' is not \{dtype, shape, data_offsets\}: \[1, 2\]"),
        # Shapes numpy cannot make although they hold no bytes (numpy's ValueError).
        (
            _entry(shape=[0, 2**64], data_offsets=[0, 0]),
            b"",
            r"'a' has the shape \[0, 18446744073709551616\]: its dimensions \(zeros left out\) "
            r"times its element size exceed 9223372036854775807 bytes, numpy's limit",
        ),
        (
            _entry(shape=[0, 2**62, 2**62], data_offsets=[0, 0]),
            b"",
            r"'a' has the shape \[0, 4611686018427387904, 4611686018427387904\]: its dim",
        ),
        (
            _entry(shape=[0] * 65, data_offsets=[0, 0]),
            b"",
            r"'a' has the shape \[0, 0, 0, .*; a shape is a list of at most 64 non-negative",
        ),
        # Nesting 10,000 deep anywhere (RecursionError), and other shapes json would build.
        (b"[" * DEEP + b"]" * DEEP, b"", r"its header is a JSON list, not an object"),
        (
            b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}",
            b"",
            r"tensor 'a' is not a flat JSON object \{dtype, shape, data_offsets\} \(at byte 5 of "
            r"the header: b'\[\[\[.*nothing nested deeper",
        ),
        (
            b'{"a":{"dtype":"F32","shape":' + b"[" * DEEP + b"]" * DEEP + b"}}",
            b"",
            r"tensor 'a' is not a flat JSON object",
        ),
        (b'{"a":' * DEEP + b"{}" + b"}" * DEEP, b"", r"tensor 'a' is not a flat JSON object"),
        (
            b'{"__metadata__":{"k":' + b"[" * DEEP + b"]" * DEEP + b"}}",
            b"",
            r"its __metadata__ is not a mapping of strings to strings \(at byte 16 of the header",
        ),
        (b'{"a":[' + b"{}," * 1000 + b"{}]}", b"", r"tensor 'a' is not a flat JSON object"),
        (
            b'{"a":{' + _ENTRY_A + b',"shape":[' + b"0," * 200 + b"0]}}",
            DATA,
            r"'a' is not a flat JSON object .* lists of at most 128 of them",
        ),
        # Not JSON, or JSON that json reads but the format does not allow.
        (
            b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,8]}}',
            DATA,
            r"its header is not UTF-8 JSON: tensor 'a' at byte 5 \(.*4300 digits",
        ),
        (b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', DATA, r"'a' is not a flat"),
        (b'{"a":{' + _ENTRY_A + b',"dtype":"F32"}}', DATA, r"'a' repeats the keys \['dtype'\]"),
        (b'{"__metadata__":{"k":"1","k":"2"}}', b"", r"its __metadata__ repeats the key 'k'"),
        (b'{"a\\q":{}}', b"", r"not UTF-8 JSON: a tensor name at byte 1 \(Invalid \\escape"),
        (b'{"a\x01":{}}', b"", r"a tensor name at byte 1 \(Invalid control character"),
        (b'{"\xff":{}}', b"", r"a tensor name at byte 1 \('utf-8' codec can't decode"),
        (b"\xef\xbb\xbf{}", b"", r"not UTF-8 JSON: at byte 0 expected '\{' \(the header is a JSON"),
        (b"{} x", b"", r"at byte 3 expected only spaces after the header's closing '\}'"),
        (b'{"a":{' + _ENTRY_A + b"},}", DATA, r"at byte \d+ expected a quoted tensor name"),
        (b"3", b"", r"its header is a JSON number, not an object"),
    ],
    ids=[
        "dtype-list",
        "dtype-null",
        "shape-bool",
        "shape-float",
        "shape-str",
        "offsets-str",
        "offsets-huge",
        "entry-list",
        "shape-2**64",
        "shape-too-big",
        "shape-65-dims",
        "deep-header",
        "deep-entry",
        "deep-shape",
        "deep-objects",
        "deep-metadata",
        "objects-in-a-list",
        "shape-too-long",
        "int-5000-digits",
        "nan",
        "repeated-field",
        "repeated-metadata-key",
        "bad-escape",
        "control-character",
        "not-utf8-name",
        "bom",
        "trailing-bytes",
        "trailing-comma",
        "number",
    ],
)
def test_hostile_headers_raise_the_library_error_and_leave_the_model_untouched(
    tmp_path, header, data, pattern
):
    path = _raw_file(tmp_path / "hostile.safetensors", header, data)
    expected = rf"(?s)'{re.escape(str(path))}' is not a valid safetensors file: .*{pattern}.*Fix:"

    class A(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.ones(2))

    model = A()
    before = snapshot(model)
    with pytest.raises(CheckpointCorruptError, match=expected):
        nnx.load_safetensors(path, model)
    assert snapshot(model) == before
    with pytest.raises(CheckpointCorruptError, match=expected):
        nnx.load_safetensors_dict(path)
    with pytest.raises(CheckpointCorruptError, match=expected):
        nnx.safetensors_metadata(path)


def test_what_the_format_allows_at_its_edges_still_loads(tmp_path):
    path = _raw_file(
        tmp_path / "edges.safetensors",
        {
            "__metadata__": None,  # as good as no metadata
            "big": {"dtype": "U8", "shape": [0, 2**40], "data_offsets": [0, 0]},
            "deep": {"dtype": "U8", "shape": [1] * 64, "data_offsets": [0, 1]},
            "extra": {**GOOD["a"], "data_offsets": [1, 9], "other": ["ignored", 1]},
            "é\n😀": {"dtype": "BOOL", "shape": [], "data_offsets": [9, 10]},
        },
        b"\x07" + DATA + b"\x02",
    )
    tensors = nnx.load_safetensors_dict(path)
    assert nnx.safetensors_metadata(path) == {}
    assert tensors["big"].shape == (0, 2**40) and tensors["deep"].shape == (1,) * 64
    np.testing.assert_array_equal(tensors["extra"], [0.0, 1.0])
    assert tensors["é\n😀"].dtype == np.bool_ and bool(tensors["é\n😀"]) is True


def test_the_metadata_may_not_hold_more_entries_than_its_size_explains(tmp_path):
    # Each pair costs ~150 bytes of Python objects: they must average 24 bytes of the header.
    pairs = b",".join(b'"%d":""' % i for i in range(3000))
    path = _raw_file(tmp_path / "many.safetensors", b'{"__metadata__":{' + pairs + b"}}")
    limit = 64 + (path.stat().st_size - 8) // 24
    with pytest.raises(
        CheckpointCorruptError,
        match=rf"its __metadata__ has more than {limit} entries, too many for the header's size",
    ):
        nnx.safetensors_metadata(path)
    for pairs in (
        b",".join(b'"%d":""' % i for i in range(64)),  # a few: always allowed
        b",".join(b'"step%04d":"%010d"' % (i, 10 * i) for i in range(3000)),  # 24 bytes each
    ):
        path = _raw_file(tmp_path / "fine.safetensors", b'{"__metadata__":{' + pairs + b"}}")
        assert len(nnx.safetensors_metadata(path)) == pairs.count(b":")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"a":' * DEEP + '"x"' + "}" * DEEP, r"is not a JSON object of tensor names to key impl"),
        ("[" * DEEP + "]" * DEEP, r"is not a JSON object of tensor names to key implementations"),
        ("not json", r"is not a JSON object of tensor names to key implementations: 'not json'"),
        ('{"a": 1}', r"is not a JSON object of tensor names to key implementations"),
        ('{"a": "threefry2x32"} x', r"is not a JSON object of tensor names"),
        ('{"a": "rbg", "a": "rbg"}', r"\['nnx\.prng_keys'\] repeats the key 'a'"),
        ('{"a": "rbg", "b": "rbg"}', r"has more than 1 entries, more than the file has tensors"),
    ],
    ids=["deep-object", "deep-list", "not-json", "not-a-string", "trailing", "repeat", "too-many"],
)
def test_a_hostile_prng_keys_entry_is_a_corrupt_file(tmp_path, text, pattern):
    path = _raw_file(
        tmp_path / "keys.safetensors",
        {
            "__metadata__": {"nnx.prng_keys": text},
            "a": {"dtype": "U32", "shape": [2], "data_offsets": [0, 8]},
        },
        DATA,
    )

    class K(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(np.zeros(2, np.uint32))

    model = K()
    with pytest.raises(
        CheckpointCorruptError,
        match=rf"(?s)'.*keys\.safetensors' is not a valid "
        rf"safetensors file: its __metadata__.*{pattern}.*Fix:",
    ):
        nnx.load_safetensors(path, model)
    np.testing.assert_array_equal(model.a.value, [0, 0])
    # Only loading into a model reads nnx's own entry; the raw readers give it as it is.
    assert nnx.safetensors_metadata(path) == {"nnx.prng_keys": text}
    assert sorted(nnx.load_safetensors_dict(path)) == ["a"]


def test_a_repeated_name_among_forty_thousand_is_found(tmp_path):
    # 40,000 names and a repeat took an old quadratic check 28 s; the reader's cost is linear in
    # the header (nnx/_safetensors_header.py). No time bound here: this checks the finding.
    entry = b'{"dtype":"U8","shape":[0],"data_offsets":[0,0]}'
    names = b",".join(b'"t%d":%s' % (i, entry) for i in range(40_000))
    path = _raw_file(tmp_path / "many.safetensors", b"{" + names + b',"t7":' + entry + b"}")
    with pytest.raises(CheckpointCorruptError, match=r"its header repeats the names \['t7'\]"):
        nnx.safetensors_metadata(path)


def _peak_memory(path) -> tuple[int, str]:
    """Peak bytes Python allocated while reading the header, and the outcome."""
    tracemalloc.start()
    try:
        outcome = f"{len(nnx.safetensors_metadata(path))} metadata entries"
    except CheckpointCorruptError as err:
        outcome = str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, outcome


_MB = 5_000_000
_ASTRAL = "😀".encode()


@pytest.mark.parametrize(
    ("header", "outcome"),
    [
        (b'{"a":[' + b"{}," * (_MB // 3) + b"{}]}", "not a flat JSON object"),
        (b'{"a":{"shape":[' + b"[]," * (_MB // 3) + b"[]]}}", "not a flat JSON object"),
        (b'{"a":{"shape":[' + b'"ab",' * (_MB // 5) + b'""]}}', "not a flat JSON object"),
        (b"[" * (_MB // 2) + b"]" * (_MB // 2), "a JSON list"),
        (b'{"a":' + b"[" * (_MB // 2) + b"]" * (_MB // 2) + b"}", "not a flat JSON object"),
        (b"{" + b",".join(b'"%x":{}' % i for i in range(_MB // 9)) + b"}", "is not {dtype"),
        (b'{"__metadata__":{"k":"\\n' + _ASTRAL + b"a" * _MB + b'"}}', "1 metadata entries"),
        (
            b'{"\\n' + _ASTRAL + b"a" * _MB + b'":{"dtype":"U8","shape":[],"data_offsets":[0,0]}}',
            "needs 1 bytes",
        ),
    ],
    ids=[
        "objects",
        "lists",
        "strings",
        "deep",
        "deep-entry",
        "empty-entries",
        "wide-string",
        "wide-name",
    ],
)
def test_reading_a_hostile_header_takes_under_10x_its_size_in_memory(tmp_path, header, outcome):
    path = _raw_file(tmp_path / "big.safetensors", header)
    peak, got = _peak_memory(path)
    assert outcome in got
    assert peak <= 10 * len(header), f"{peak / len(header):.1f}x"


@pytest.mark.slow
@pytest.mark.parametrize("tail", [b"", b',"z":{}'], ids=["valid", "bad-last"])
def test_a_header_of_many_small_entries_takes_under_10x_its_size_in_memory(tmp_path, tail):
    entries = b",".join(
        b'"%x":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(40_000)
    )
    header = b"{" + entries + tail + b"}"
    peak, got = _peak_memory(_raw_file(tmp_path / "big.safetensors", header))
    assert ("'z' is not {dtype" in got) if tail else got == "0 metadata entries"
    assert peak <= 10 * len(header), f"{peak / len(header):.1f}x"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("count", "value", "outcome"),
    [
        (20_000, b"v" * 60, "20000 metadata entries"),
        (60_000, b"v", "entries, too many for the header's size"),
    ],
    ids=["under-the-limit", "over"],
)
def test_a_header_of_many_metadata_entries_takes_under_10x_its_size_in_memory(
    tmp_path, count, value, outcome
):
    pairs = b",".join(b'"%x":"%s"' % (i, value) for i in range(count))
    header = b'{"__metadata__":{' + pairs + b"}}"
    peak, got = _peak_memory(_raw_file(tmp_path / "big.safetensors", header))
    assert outcome in got
    assert peak <= 10 * len(header), f"{peak / len(header):.1f}x"


# -- fault injection -----------------------------------------------------------------------
class Holder(nnx.Module):
    def __init__(self, arrays: dict, key, count: int):
        for name, value in arrays.items():
            setattr(self, name, nnx.Param(value))
        self.count = nnx.Variable(count)  # a Python int: stored as I32, restored as int
        self.rngs = nnx.Rngs(key)  # a typed PRNG key: nnx.prng_keys in __metadata__


def _bases() -> list[tuple[dict, dict | None]]:
    rng = np.random.default_rng(0)
    return [
        (
            {
                "w": rng.standard_normal((3, 4)).astype(np.float32),
                "b": rng.standard_normal(4).astype(np.float32),  # same size as w's rows
                "half": rng.standard_normal(5).astype(jnp.bfloat16),
                "mask": rng.integers(0, 2, (2, 3)).astype(bool),
            },
            {"format": "pt", "step": "7"},
        ),
        (
            {
                "big": np.array([2**62, -5], np.int64),
                "u": np.array([[1, 2], [3, 4]], np.uint16),
                "i": np.arange(6, dtype=np.int8).reshape(2, 3),
                "empty": np.zeros((0, 3), np.float32),
                "scalar": np.float64(2.5),
            },
            None,
        ),
        (
            {"x": np.arange(8, dtype=np.uint8), "y": jnp.ones((2, 2), jnp.float16)},
            {"note": "é😀\n"},
        ),
    ]


_BASES = _bases()


def _model(base: int) -> Holder:
    arrays, _ = _BASES[base]
    return Holder(dict(arrays), jax.random.key(base), count=base + 1)


# -- writing mutants -----------------------------------------------------------------------
def _frame(header: bytes, data: bytes, length: int | None = None) -> bytes:
    header += b" " * (-len(header) % 8)
    n = len(header) if length is None else length
    return n.to_bytes(8, "little") + header + data


def _deep_text() -> bytes:
    return b"[" * DEEP + b"]" * DEEP


class _Text(str):
    """A member value written as it is (JSON that json.dumps cannot make: repeated keys)."""


def _object(members: list[tuple[str, object]]) -> str:
    return (
        "{"
        + ",".join(
            f"{json.dumps(k)}:{v if isinstance(v, _Text) else json.dumps(v)}" for k, v in members
        )
        + "}"
    )


def _encode(members: list[tuple[str, object]]) -> bytes:
    """A header from (name, value) members in order (repeats allowed); _DEEP_MARK strings
    become nesting DEEP levels deep."""
    return (
        _object(members)
        .encode("utf-8", "surrogatepass")
        .replace(json.dumps(_DEEP_MARK).encode(), _deep_text())
    )


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _odd_values(value, rnd: random.Random) -> list:
    """Values of the wrong type or range in place of `value`."""
    out = [
        [value],
        str(value),
        2**64,
        10**30,
        -1,
        -(2**63),
        1.5,
        True,
        False,
        None,
        {},
        [],
        {"x": value},
        _DEEP_MARK,
        [value] * 70,
        [0] * 65,
        [0, 2**64],
        [1] * 64,
        [2**31, 2**31, 2**31],
        "F32",
        "BOOL",
        "C64",
        "f32",
        "x" * 2000,
        [True, 2],
        [2.0, 4.0],
        ["3", "4"],
        [-3],
        [0, 2**70],
        [8, 0],
    ]
    if isinstance(value, int) and not isinstance(value, bool):
        out += [value + 1, value - 1, float(value), -value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        i = rnd.randrange(len(value))
        for delta in (1, -1, 4, -4, 2**32):
            changed = list(value)
            changed[i] += delta
            out.append(changed)
        out += [value[::-1], [*value, 1], value[:-1]]
    return out


_PRNG_TEXTS = [
    '{"a":' * DEEP + '"x"' + "}" * DEEP,
    "[" * DEEP + "]" * DEEP,
    "not json",
    "",
    '"threefry2x32"',
    "[]",
    "null",
    '{"rngs.default.key": 1}',
    '{"rngs.default.key": ["threefry2x32"]}',
    '{"rngs.default.key": "rbg"}',
    '{"rngs.default.key": "unsafe_rbg"}',
    '{"rngs.default.key": "nope"}',
    '{"rngs.default.key": "threefry2x32", "rngs.default.key": "rbg"}',
    '{"rngs.default.count": "threefry2x32"}',
    '{"w": "threefry2x32"}',
    '{"elsewhere": "threefry2x32"}',
    "{}",
    json.dumps({f"k{i}": "threefry2x32" for i in range(300)}),
    '{"rngs.default.key": "threefry2x32"} trailing',
    '{"rngs.default.key": "\\ud800"}',
]


def _mutate(raw: bytes, rnd: random.Random) -> tuple[str, bytes]:
    """One mutant of the valid file `raw`, and what was done to it."""
    n = int.from_bytes(raw[:8], "little")
    kind = rnd.choices(
        ["flip", "truncate", "length", "header", "members", "offsets", "metadata", "hostile"],
        weights=[5, 2, 2, 8, 3, 2, 4, 1],
    )[0]
    if kind == "flip":
        out = bytearray(raw)
        for _ in range(rnd.randint(1, 3)):
            # A third of the flips hit the length or the header, the rest the data.
            i = rnd.randrange(8 + n) if rnd.random() < 1 / 3 else rnd.randrange(8 + n, len(raw))
            out[i] ^= rnd.randrange(1, 256)
        return kind, bytes(out)
    if kind == "truncate":
        return kind, raw[: rnd.randrange(len(raw))]
    if kind == "length":
        length = rnd.choice(
            [0, 1, 2, n - 1, n + 1, n - 8, n + 8, len(raw) - 8, len(raw), MAX_HEADER + 1,
             2**63, 2**64 - 1, rnd.randrange(2**64)]
        )  # fmt: skip
        return f"length {length}", max(length, 0).to_bytes(8, "little") + raw[8:]
    header, data = _split(raw)
    names = [k for k in header if k != "__metadata__"]
    if kind == "header":  # one field of one entry gets a value of the wrong kind
        name = rnd.choice(names)
        empty = [k for k in names if 0 in header[k]["shape"]]
        if empty and rnd.random() < 0.2:  # shapes that hold no bytes but numpy cannot make
            name = rnd.choice(empty)
            header[name]["shape"] = rnd.choice([[0, 2**64], [0] * 65, [0, 2**62, 2**62], [0, -1]])
            return f"header {name}.shape", _frame(_encode(list(header.items())), data)
        field = rnd.choice(["dtype", "shape", "data_offsets", None])
        if field is None:
            header[name] = rnd.choice(_odd_values(header[name], rnd))
        else:
            header[name][field] = rnd.choice(_odd_values(header[name][field], rnd))
        return f"header {name}.{field}", _frame(_encode(list(header.items())), data)
    if kind == "members":  # keys deleted, repeated, renamed, added
        members = list(header.items())
        i = rnd.randrange(len(members))
        name, info = members[i]
        what = rnd.choice(["delete", "repeat", "rename", "drop-field", "extra-field", "dup-field"])
        if what == "delete":
            del members[i]
        elif what == "repeat":
            members.insert(rnd.randrange(len(members) + 1), (name, copy.deepcopy(info)))
        elif what == "rename":
            members[i] = (rnd.choice([*names, "__metadata__", "", name + "x"]), info)
        elif isinstance(info, dict) and info:
            fields = list(info.items())
            j = rnd.randrange(len(fields))
            if what == "drop-field":
                del fields[j]
            elif what == "extra-field":
                fields.append(("extra", rnd.choice(_odd_values(fields[j][1], rnd))))
            else:
                fields.insert(j, fields[j])
            members[i] = (name, _Text(_object(fields)))
        return f"members {what} {name}", _frame(_encode(members), data)
    if kind == "offsets":  # tensors moved: swapped, shifted, overlapping
        a, b = rnd.choice(names), rnd.choice(names)
        what = rnd.choice(["swap", "shift", "shift-all", "same-begin"])
        if what == "swap":
            oa, ob = header[a]["data_offsets"], header[b]["data_offsets"]
            header[a]["data_offsets"], header[b]["data_offsets"] = ob, oa
        elif what == "shift":
            d = rnd.choice([1, 2, 4, 8, -1, -4])
            header[a]["data_offsets"] = [o + d for o in header[a]["data_offsets"]]
        elif what == "shift-all":
            d = rnd.choice([1, 8, -8])
            for k in names:
                header[k]["data_offsets"] = [o + d for o in header[k]["data_offsets"]]
        else:
            begin, end = header[a]["data_offsets"]
            header[b]["data_offsets"] = [begin, begin + end - begin]
        return f"offsets {what} {a} {b}", _frame(_encode(list(header.items())), data)
    if kind == "metadata":
        meta = header.get("__metadata__", {})
        what = rnd.choice(["prng", "prng", "prng", "value", "whole", "add"])
        if what == "prng":
            meta["nnx.prng_keys"] = rnd.choice(_PRNG_TEXTS)
        elif what == "value" and meta:
            meta[rnd.choice(list(meta))] = rnd.choice(_odd_values("v", rnd))
        elif what == "whole":
            meta = rnd.choice(_odd_values(meta, rnd))
        else:
            meta[rnd.choice(["k", "nnx.prng_keys", "", "é"])] = rnd.choice(["v", 1, None])
        header["__metadata__"] = meta
        return f"metadata {what}", _frame(_encode(list(header.items())), data)
    hostile = rnd.choice(
        [
            b"[" * DEEP + b"]" * DEEP,
            b'{"a":' * DEEP + b"{}" + b"}" * DEEP,
            b'{"a":[' + b"{}," * 20_000 + b"{}]}",
            b"{" + b",".join(b'"%d":{}' % i for i in range(5_000)) + b"}",
            b'{"__metadata__":{' + b",".join(b'"%d":"v"' % i for i in range(5_000)) + b"}}",
            b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,8]}}',
            b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}',
            b'\xef\xbb\xbf{"a":{}}',
            b'{"a\\ud800":{}}',
            b'{"\xff":{}}',
        ]
    )
    return "hostile", _frame(hostile, data)


# -- the independent decoder and the model's values ----------------------------------------
def _decode(raw: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """What a valid file says: every tensor and the metadata, by json and np.frombuffer."""
    header, data = _split(raw)
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "BOOL":
            tensors[name] = np.frombuffer(data[begin:end], np.uint8).reshape(shape) != 0
        else:
            dtype = CODES[info["dtype"]].newbyteorder("<")
            tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(shape)
    return tensors, meta


def _host(value) -> np.ndarray:
    if hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    return np.asarray(value)


def _model_values(model) -> dict[str, np.ndarray]:
    return {
        ".".join(map(str, path)): _host(v.value if isinstance(v, nnx.Variable) else v)
        for path, v in nnx.state(model).flat_state()
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_values(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


# -- the run -------------------------------------------------------------------------------
def _check(path, raw: bytes, base: int, model, before: dict, tally: dict) -> bool:
    """Runs the three readers on one mutant; returns whether the model was changed."""
    outcomes = []
    try:
        meta = nnx.safetensors_metadata(path)
        assert meta == _decode(raw)[1], "metadata differs from the file's"
        outcomes.append("ok")
    except CheckpointError:
        outcomes.append("error")
    try:
        tensors = nnx.load_safetensors_dict(path)
        expected = _decode(raw)[0]
        assert tensors.keys() == expected.keys()
        for name in tensors:
            assert _same(tensors[name], expected[name]), f"{name}: not what the file holds"
        outcomes.append("ok")
    except CheckpointError:
        outcomes.append("error")
    changed = False
    try:
        nnx.load_safetensors(path, model, ...)
    except CheckpointError:
        assert _same_values(_model_values(model), before), "a failed load changed the model"
        outcomes.append("error")
    else:
        changed = True
        expected = _decode(raw)[0]
        got = _model_values(model)
        assert got.keys() == expected.keys()
        for name, value in got.items():
            if name == "count":  # a Python int: compare the number
                assert int(value) == int(expected[name].item()), name
            else:
                assert _same(value, expected[name]), f"{name}: not what the file holds"
        outcomes.append("ok")
    for which, outcome in zip(("metadata", "dict", "load"), outcomes, strict=True):
        tally[f"{which} {outcome}"] = tally.get(f"{which} {outcome}", 0) + 1
    return changed


@pytest.mark.slow
def test_mutated_files_raise_the_library_error_or_load_exactly_what_they_hold(tmp_path):
    rnd = random.Random(SEED)
    originals = []
    for i, (_, metadata) in enumerate(_BASES):
        path = tmp_path / f"base{i}.safetensors"
        nnx.save_safetensors(path, _model(i), ..., metadata=metadata)
        originals.append(path.read_bytes())
        assert "nnx.prng_keys" in nnx.safetensors_metadata(path)
    models = [_model(i) for i in range(len(_BASES))]
    snapshots = [_model_values(m) for m in models]
    path = tmp_path / "mutant.safetensors"
    failures: list[str] = []
    tally: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for step in range(MUTANTS):
        base = step % len(_BASES)
        what, raw = _mutate(originals[base], rnd)
        kinds[what.split()[0]] = kinds.get(what.split()[0], 0) + 1
        path.write_bytes(raw)
        try:
            if _check(path, raw, base, models[base], snapshots[base], tally):
                models[base] = _model(base)
        except Exception as err:  # any other exception is a failure to report
            failures.append(f"#{step} ({what}): {type(err).__name__}: {str(err)[:300]}")
            models[base] = _model(base)
    assert not failures, f"{len(failures)} of {MUTANTS} mutants:\n" + "\n".join(failures[:20])
    # The fuzz reached both sides of every reader, and every kind of mutation ran.
    for which in ("metadata", "dict", "load"):
        assert tally.get(f"{which} ok", 0) >= 50 and tally.get(f"{which} error", 0) >= 500
    assert len(kinds) >= 8 and min(kinds.values()) >= 50, kinds
