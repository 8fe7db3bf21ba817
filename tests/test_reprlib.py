"""nnx.reprlib: flax's __nnx_repr__ text protocol. The same class written against flax's reprlib
and against ours prints the same text (flax is the oracle where installed), and misuse says
what is wrong."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnx

ours = nnx.reprlib


def _classes(lib: Any) -> dict[str, type]:
    """The same user classes, written against one reprlib module."""

    class Box(lib.Representable):
        def __init__(self, **fields: Any) -> None:
            self.fields = fields

        def __nnx_repr__(self):
            yield lib.Object(type=type(self))
            for key, value in self.fields.items():
                yield lib.Attr(key, value)

    class Framed(lib.Representable):
        def __init__(self, same_line: bool, comment: str, fields: dict) -> None:
            self.same_line, self.comment, self.fields = same_line, comment, fields

        def __nnx_repr__(self):
            yield lib.Object(
                type="Framed",
                start="<",
                end=">",
                kv_sep=": ",
                comment=self.comment,
                same_line=self.same_line,
                empty_repr="EMPTY",
            )
            for key, value in self.fields.items():
                yield lib.Attr(key, value, start="[", end="]")
            yield lib.Attr("raw", "as is", use_raw_value=True)

    class Bag(lib.MappingReprMixin, dict):
        pass

    class Row(lib.SequenceReprMixin, list):
        pass

    return {"Box": Box, "Framed": Framed, "Bag": Bag, "Row": Row}


def _build(lib: Any, recipe: Any) -> Any:
    """A nested value from a plain recipe, with one library's classes."""
    kind, payload = recipe
    if kind == "leaf":
        return payload
    cls = _classes(lib)
    if kind == "box":
        return cls["Box"](**{k: _build(lib, v) for k, v in payload})
    if kind == "framed":
        same_line, comment, fields = payload
        return cls["Framed"](same_line, comment, {k: _build(lib, v) for k, v in fields})
    if kind == "bag":
        return cls["Bag"]({k: _build(lib, v) for k, v in payload})
    if kind == "row":
        row = cls["Row"]()  # flax's mixin is a dataclass: its __init__ takes no items
        row.extend(_build(lib, v) for v in payload)
        return row
    if kind == "pmap":
        return lib.PrettyMapping({k: _build(lib, v) for k, v in payload})
    return lib.PrettySequence([_build(lib, v) for v in payload])


names = st.sampled_from(["a", "b", "kernel", "x1"])
leaves = st.tuples(
    st.just("leaf"),
    st.one_of(
        st.integers(-5, 5),
        st.text("xy\n", max_size=3),
        st.none(),
        st.booleans(),
        st.floats(allow_nan=False, width=32),
        st.sampled_from([int, nnx.Linear, (1,), (1, "a"), {"k": [1, None]}, {2}, b"by"]),
    ),
)
recipes = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.tuples(
            st.just("box"), st.lists(st.tuples(names, inner), max_size=3, unique_by=lambda t: t[0])
        ),
        st.tuples(
            st.just("framed"),
            st.tuples(
                st.booleans(),
                st.sampled_from(["", " # note"]),
                st.lists(st.tuples(names, inner), max_size=2, unique_by=lambda t: t[0]),
            ),
        ),
        st.tuples(
            st.just("bag"), st.lists(st.tuples(names, inner), max_size=3, unique_by=lambda t: t[0])
        ),
        st.tuples(st.just("row"), st.lists(inner, max_size=3)),
        st.tuples(
            st.just("pmap"), st.lists(st.tuples(names, inner), max_size=3, unique_by=lambda t: t[0])
        ),
        st.tuples(st.just("pseq"), st.lists(inner, max_size=3)),
    ),
    max_leaves=8,
)


def test_layout_of_nested_objects():
    cls = _classes(ours)
    value = cls["Box"](
        a=1,
        b="x",
        c=cls["Box"](d=2.0, e=[1, 2]),
        f=ours.PrettyMapping({"u": 1, "v": cls["Box"]()}),
        g=ours.PrettySequence([1, cls["Box"](z=3)]),
    )
    assert repr(value) == (
        "Box(\n"
        "  a=1,\n"
        "  b='x',\n"
        "  c=Box(\n"
        "    d=2.0,\n"
        "    e=[1, 2]\n"
        "  ),\n"
        "  f=PrettyMapping({\n"
        "    'u': 1,\n"
        "    'v': Box()\n"
        "  }),\n"
        "  g=PrettySequence([\n"
        "    1,\n"
        "    Box(\n"
        "      z=3\n"
        "    )\n"
        "  ])\n"
        ")"
    )
    assert str(value) == repr(value)
    assert repr(cls["Framed"](True, " # c", {"m": 5})) == "Framed<[m: 5], raw: as is>"
    assert repr(cls["Framed"](False, " # c", {})) == "Framed< # c\n  raw: as is\n>"


def test_empty_repr_and_mixins():
    class Nothing(ours.Representable):
        def __nnx_repr__(self):
            yield ours.Object(type="Nothing", empty_repr="EMPTY")

    assert repr(Nothing()) == "Nothing(EMPTY)"
    cls = _classes(ours)
    assert repr(cls["Bag"]({"k": 1})) == "Bag({\n  'k': 1\n})"
    row = cls["Row"]()
    row.extend([1, "a"])
    assert repr(row) == "Row([\n  1,\n  'a'\n])"
    assert repr(cls["Row"]()) == "Row([])"


def test_misuse_is_explained():
    class NoRepr(ours.Representable):
        pass

    with pytest.raises(NotImplementedError, match=r"NoRepr derives from .*Fix: define it"):
        repr(NoRepr())

    class AttrFirst(ours.Representable):
        def __nnx_repr__(self):
            yield ours.Attr("a", 1)

    with pytest.raises(TypeError, match=r"AttrFirst.__nnx_repr__ must yield an .*Object first"):
        repr(AttrFirst())

    class Stray(ours.Representable):
        def __nnx_repr__(self):
            yield ours.Object(type="S")
            yield 3

    with pytest.raises(TypeError, match=r"yielded int after the Object"):
        repr(Stray())
    with pytest.raises(TypeError, match=r"needs an nnx.reprlib.Representable, got int"):
        ours.get_repr(3)


@settings(max_examples=150, deadline=None)
@given(recipes)
def test_same_text_as_flax(recipe):
    flax_reprlib = pytest.importorskip("flax.nnx.reprlib")
    theirs = _build(flax_reprlib, recipe)
    mine = _build(ours, recipe)
    assert repr(mine) == repr(theirs)


def test_flax_names_are_all_here():
    flax_reprlib = pytest.importorskip("flax.nnx.reprlib")
    wanted = [
        "Attr", "MappingReprMixin", "Object", "PrettyMapping", "PrettySequence",
        "Representable", "SequenceReprMixin", "get_repr",
    ]  # fmt: skip
    for name in wanted:
        assert hasattr(flax_reprlib, name) and hasattr(ours, name), name
    assert importlib.import_module("nnx.reprlib") is ours
