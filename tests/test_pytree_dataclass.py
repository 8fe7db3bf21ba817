"""nnx.dataclass, nnx.Data / nnx.Static, the field forms of nnx.data / nnx.static,
register_data_type, is_data, has_data, check_pytree, identity and Initializer: the same
programs as flax.nnx where flax is installed, the error messages, and a round-trip property."""

from __future__ import annotations

import dataclasses
import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnx


def _libs():
    flax_nnx = pytest.importorskip("flax.nnx")
    return [nnx, flax_nnx]


def _leaves(tree):
    return [np.asarray(x) if isinstance(x, jax.Array) else x for x in jax.tree.leaves(tree)]


def test_dataclass_fields_same_leaves_and_state_as_flax():
    results = []
    for lib in _libs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)

            @lib.dataclass
            class Foo(lib.Module):
                w: lib.Param
                n: int = lib.static(default=3)
                c: int = lib.data(default=0)
                s: tuple = lib.static(default=(1,))
                d: int = lib.data(default=5)
                k: int = lib.data(default_factory=lambda: 7, kw_only=True)

        f = Foo(lib.Param(jnp.ones(2)), n=4)
        state = jax.tree.map(np.asarray, lib.state(f).to_pure_dict())
        results.append((_leaves(f), state, f.n, f.s, [x.name for x in dataclasses.fields(Foo)],
                        Foo.__repr__ is dataclasses.dataclass.__repr__))
    jax.tree.map(np.testing.assert_array_equal, results[0], results[1])


def test_dataclass_with_arguments_and_jit_updates_data_fields():
    @nnx.dataclass(eq=False, kw_only=True)
    class Counter(nnx.Module):
        count: int = nnx.data(default=0)
        step: int = nnx.static(default=2)

    c = Counter(step=5)
    assert hash(c) and c != Counter(step=5)  # eq=False: identity semantics

    @nnx.jit
    def bump(c):
        c.count += c.step

    bump(c)
    bump(c)
    assert c.count == 10
    graphdef, state = nnx.split(c)
    assert nnx.merge(graphdef, state).step == 5 and state.to_pure_dict() == {"count": 10}


def test_string_annotations_are_read():
    # this file uses `from __future__ import annotations`: annotations are strings
    class Holder(nnx.Pytree):
        a: nnx.Data[int]
        b: nnx.Static[tuple]

        def __init__(self):
            self.a, self.b, self.c = 1, (2,), 3

    assert jax.tree.leaves(Holder()) == [1]

    class Child(Holder):  # inherited declarations
        pass

    assert jax.tree.leaves(Child()) == [1]


def test_explicit_marking_overrides_the_class_declaration():
    class Foo(nnx.Pytree):
        a: nnx.Static[int]

        def __init__(self):
            self.a = nnx.data(1)

    f = Foo()
    assert jax.tree.leaves(f) == [1]
    f.a = 2  # the explicit marking stays
    assert jax.tree.leaves(f) == [2]


def test_field_form_errors_like_flax():
    for lib in _libs():
        with pytest.raises(TypeError, match="either"):
            lib.data(1, default=2)
        with pytest.raises(ValueError, match="'static'"):
            lib.static(metadata={"static": True})

    with pytest.raises(nnx.errors.ArgumentError, match=r"(?s)Q.x is annotated nnx.Data\[...\] but "
                       r"its field is nnx.static\(...\).*Fix: keep one"):

        class Q(nnx.Pytree):
            x: nnx.Data[int] = nnx.static(default=1)

    with pytest.raises(nnx.errors.ArgumentError, match=r"metadata 'static' must be True or False"):

        class R(nnx.Pytree):
            x: int = dataclasses.field(default=1, metadata={"static": 1})


def test_register_data_type_same_as_flax():
    results = []
    for lib in _libs():

        @dataclasses.dataclass(frozen=True)
        class MyType:
            value: int

        assert lib.register_data_type(MyType) is MyType

        class Foo(lib.Pytree):
            def __init__(self):
                self.a = MyType(3)
                self.b = "hello"

        results.append((lib.is_data(MyType(1)), [x.value for x in jax.tree.leaves(Foo())]))
    assert results[0] == results[1] == (True, [3])


def test_registered_data_type_inside_a_container_is_refused():
    @nnx.register_data_type
    @dataclasses.dataclass(frozen=True)
    class Tag:
        v: int

    class Foo(nnx.Module):
        def __init__(self):
            self.tags = [Tag(1)]

    with pytest.raises(nnx.errors.ArgumentError, match=r"(?s)Foo.tags: a list holding a Tag.*"
                       r"Fix: give each Tag its own attribute"):
        Foo()
    with pytest.raises(nnx.errors.ArgumentError, match="takes a class"):
        nnx.register_data_type(3)


@pytest.mark.parametrize("make", [
    lambda lib: jnp.ones(2), lambda lib: np.ones(2), lambda lib: lib.Param(1.0),
    lambda lib: lib.Rngs(0), lambda lib: lib.Linear(1, 1, rngs=lib.Rngs(0)),
    lambda lib: "hello", lambda lib: 42, lambda lib: 1.5, lambda lib: None,
    lambda lib: (1, "a"),
])
def test_is_data_and_has_data_same_as_flax_on_leaves(make):
    results = []
    for lib in _libs():
        value = make(lib)
        results.append((lib.is_data(value), len(lib.has_data(value)),
                        len(lib.has_data([1, value, {"again": value}]))))
    assert results[0] == results[1]


def test_is_data_counts_containers_holding_data():
    # a deliberate difference: nnx makes such containers data (docs/coming-from-flax.md,
    # "Plain lists and dicts of modules just work")
    assert nnx.is_data([1, jnp.ones(1)]) and not nnx.is_data([1, 2])
    w = nnx.Param(jnp.ones(1))
    found = nnx.has_data({"a": [w, 1], "b": (w, jnp.zeros(1))})
    assert len(found) == 3 and found[0] is w and found[1] is w  # each occurrence, as flax


def test_check_pytree():
    with pytest.raises(TypeError, match="expects a Pytree"):
        nnx.check_pytree(3)

    class Good(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(1))
            self.shape = jax.ShapeDtypeStruct((2,), jnp.float32)
            self.name = "good"

    nnx.check_pytree(Good())

    g = Good()
    object.__setattr__(g, "name", nnx.Param(jnp.ones(1)))
    g._nnx_fields = {"name": False}
    with pytest.raises(ValueError, match=r"(?s)Good.name is static but holds data \(Param\).*Fix"):
        nnx.check_pytree(g)

    class Nested(nnx.Module):
        def __init__(self):
            self.opts = (nnx.data(1),)

    with pytest.raises(ValueError, match=r"Nested.opts holds nnx.data\(...\) inside a tuple"):
        nnx.check_pytree(Nested())


def test_identity_and_initializer():
    # jax's identity, wrapped like the other activations so modules holding it pickle
    x = jnp.arange(3.0)
    assert (nnx.identity(x) == jax.nn.identity(x)).all()
    assert pickle.loads(pickle.dumps(nnx.identity)) is nnx.identity
    init: nnx.Initializer = nnx.initializers.lecun_normal()
    assert init(jax.random.key(0), (2, 2)).shape == (2, 2)
    flax_nnx = pytest.importorskip("flax.nnx")
    assert (flax_nnx.identity(x) == nnx.identity(x)).all()
    assert set(nnx.Initializer.__args__) == set(flax_nnx.Initializer.__args__)


_VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=3))
_FIELD = st.one_of(
    st.tuples(st.just(False), _VALUES),
    st.tuples(st.just(True), st.one_of(_VALUES, st.tuples(st.integers(0, 3)))),
)


@settings(max_examples=30, deadline=None)
@given(fields=st.lists(_FIELD, min_size=1, max_size=5))
def test_property_dataclass_fields_round_trip(fields):
    ns: dict = {"__annotations__": {}}
    for i, (is_static, value) in enumerate(fields):
        ns["__annotations__"][f"f{i}"] = "object"
        ns[f"f{i}"] = (nnx.static if is_static else nnx.data)(default=value)
    cls = nnx.dataclass(type("Gen", (nnx.Pytree,), ns))
    obj = cls()
    data_names = sorted(f"f{i}" for i, (s, _) in enumerate(fields) if not s)
    graphdef, state = nnx.split(obj)
    assert sorted(state.to_pure_dict()) == data_names
    back = nnx.merge(graphdef, state)
    for i, (_, value) in enumerate(fields):
        assert getattr(back, f"f{i}") == value
    leaves, treedef = jax.tree.flatten(obj)
    again = jax.tree.unflatten(treedef, leaves)
    assert [getattr(again, f"f{i}") for i in range(len(fields))] == [v for _, v in fields]


def test_registered_data_types_do_not_break_dicts_with_mixed_keys():
    # A registered data type makes every later attribute assignment look into plain
    # containers for it; that look must not sort dict keys (an int and a str do not compare).
    @nnx.register_data_type
    class Marker:
        pass

    class M(nnx.Module):
        pass

    m = M()
    m.d = {"p": nnx.BatchStat(jnp.ones(())), 0: nnx.BatchStat(jnp.zeros(()))}
    assert {p for p, _ in nnx.state(m).flat_state()} == {("d", "p"), ("d", 0)}
    with pytest.raises(nnx.errors.ArgumentError, match=r"M\.e: a dict holding a Marker"):
        m.e = {"a": [Marker()], 1: 2}
    assert not hasattr(m, "e")
