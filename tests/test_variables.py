"""Variables: value access and assignment, metadata, subclasses, the array protocol, pytree
behaviour, and what a value change versus a metadata change does to the structure clock."""

from __future__ import annotations

import copy
import pickle
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import _version


@pytest.fixture(autouse=True)
def _no_warnings():
    """Every access form works without a (deprecation) warning: docs/coming-from-flax.md,
    "`.value` and `[...]`, without warnings"."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def arr(x):
    return np.asarray(x)


# -- value access and assignment ------------------------------------------------------------
def test_value_property_and_get_value_read_the_same_array():
    v = nnx.Param(jnp.arange(3.0))
    np.testing.assert_array_equal(v.value, [0.0, 1.0, 2.0])
    assert v.get_value() is v.value
    assert v.raw_value is v.value
    assert v[...] is not None
    np.testing.assert_array_equal(v[...], v.value)


def test_value_assignment_forms():
    v = nnx.Variable(jnp.zeros(3))
    v.value = jnp.ones(3)
    np.testing.assert_array_equal(v.value, [1, 1, 1])
    v.set_value(jnp.full(3, 2.0))
    np.testing.assert_array_equal(v.value, [2, 2, 2])
    v[...] = 5.0
    np.testing.assert_array_equal(v.value, [5, 5, 5])
    v[1] = -1.0
    np.testing.assert_array_equal(v.value, [5, -1, 5])
    v[0:2] = jnp.array([7.0, 8.0])
    np.testing.assert_array_equal(v.value, [7, 8, 5])
    assert float(v[1]) == 8.0
    np.testing.assert_array_equal(v[1:], [8, 5])


def test_indexed_assignment_does_not_mutate_the_previous_array():
    old = jnp.zeros(2)
    v = nnx.Param(old)
    v[0] = 1.0
    np.testing.assert_array_equal(old, [0, 0])
    np.testing.assert_array_equal(v.value, [1, 0])


def test_numpy_value_indexed_assignment_copies():
    old = np.zeros(2)
    v = nnx.Variable(old)
    v[1] = 3.0
    np.testing.assert_array_equal(old, [0, 0])
    np.testing.assert_array_equal(v.value, [0, 3])


def test_assigning_a_variable_unwraps_it():
    v = nnx.Param(jnp.zeros(2))
    w = nnx.Param(jnp.ones(2))
    v.value = w
    assert not isinstance(v.value, nnx.Variable)
    np.testing.assert_array_equal(v.value, [1, 1])
    v[...] = nnx.Param(jnp.full(2, 3.0))
    np.testing.assert_array_equal(v.value, [3, 3])


def test_variable_of_a_variable_copies_value_and_metadata():
    v = nnx.Param(jnp.ones(2), tag="a")
    w = nnx.Param(v, note="b")
    assert not isinstance(w.value, nnx.Variable)
    assert w.get_metadata() == {"tag": "a", "note": "b"}


def test_pytree_value():
    v = nnx.Variable({"a": jnp.ones(2), "b": (jnp.zeros(1),)})
    assert v["a"].shape == (2,)
    v["a"] = jnp.zeros(2)
    np.testing.assert_array_equal(v.value["a"], [0, 0])
    v[...] = {"a": 1}
    assert v.value == {"a": 1}


# -- metadata -----------------------------------------------------------------------------
def test_metadata_from_kwargs_reads_as_attributes():
    v = nnx.Param(jnp.ones((2, 3)), sharding_names=("in", "out"), tag="dense")
    assert v.sharding_names == ("in", "out")
    assert v.tag == "dense"
    assert v.get_metadata() == {"sharding_names": ("in", "out"), "tag": "dense"}
    assert v.get_metadata("tag") == "dense"
    assert v.get_metadata("missing", None) is None
    with pytest.raises(KeyError, match="no metadata 'missing'"):
        v.get_metadata("missing")


def test_missing_metadata_errors_are_nnx_key_errors_with_a_fix():
    v = nnx.Param(jnp.ones(2), tag="dense")
    with pytest.raises(
        nnx.errors.KeyNotFoundError,
        match=r"(?s)^Param has no metadata 'missing'; it has \['tag'\]\.\nFix: pass a default, "
        r"v\.get_metadata\('missing', None\)",
    ):
        v.get_metadata("missing")
    with pytest.raises(
        nnx.errors.KeyNotFoundError,
        match=r"(?s)^Param\.del_metadata\('missing'\): it has no such metadata.*Fix",
    ):
        v.del_metadata("missing")
    with pytest.raises(KeyError):  # flax code catches KeyError
        v.del_metadata("missing")
    assert v.get_metadata() == {"tag": "dense"}


def test_get_metadata_returns_a_copy():
    v = nnx.Param(1.0, tag="a")
    meta = v.get_metadata()
    meta["tag"] = "b"
    assert v.tag == "a"


def test_missing_attribute_error_names_the_attribute():
    v = nnx.Param(jnp.ones(2))
    with pytest.raises(
        nnx.errors.AttributeNotFoundError,
        match=r"(?s)Param has no attribute or metadata 'nope'.*Fix.*set_metadata\('nope', value\)",
    ):
        _ = v.nope
    assert not hasattr(v, "nope") and getattr(v, "nope", 3) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda v: v.set_metadata(tag="new", extra=1),
        lambda v: v.set_metadata({"tag": "new", "extra": 1}),
        lambda v: (v.set_metadata("tag", "new"), v.set_metadata("extra", 1)),
    ],
    ids=["kwargs", "mapping", "name-value"],
)
def test_set_metadata_call_forms(call):
    v = nnx.Param(jnp.ones(2), tag="old", keep=True)
    call(v)
    assert v.get_metadata() == {"tag": "new", "extra": 1, "keep": True}
    assert v.tag == "new"
    assert v.extra == 1


def test_set_metadata_rejects_other_positional_forms():
    v = nnx.Param(1.0)
    with pytest.raises(
        nnx.errors.ArgumentError, match=r"(?s)Param\.set_metadata takes.*Fix: v\.set_metadata"
    ):
        v.set_metadata(1, 2, 3)
    with pytest.raises(TypeError):
        v.set_metadata(1, 2, 3)


def test_attribute_assignment_sets_metadata_and_delattr_removes_it():
    v = nnx.Param(jnp.ones(2))
    v.note = "hi"
    assert v.get_metadata() == {"note": "hi"}
    del v.note
    assert v.get_metadata() == {}


def test_metadata_on_one_variable_does_not_leak_to_others():
    a, b = nnx.Param(1.0), nnx.Param(2.0)
    a.set_metadata(tag="x")
    assert b.get_metadata() == {}


def test_replace_makes_a_new_variable():
    v = nnx.Param(jnp.ones(2), tag="a")
    r = v.replace(jnp.zeros(2))
    assert type(r) is nnx.Param and r is not v
    np.testing.assert_array_equal(r.value, [0, 0])
    np.testing.assert_array_equal(v.value, [1, 1])
    assert r.tag == "a"
    m = v.replace(tag="b", other=3)
    assert m.get_metadata() == {"tag": "b", "other": 3}
    assert v.get_metadata() == {"tag": "a"}
    assert m.value is v.value


def test_copy_is_independent():
    v = nnx.BatchStat(jnp.ones(2), tag="a")
    for c in (v.copy(), copy.copy(v), copy.deepcopy(v)):
        assert type(c) is nnx.BatchStat and c is not v
        assert c.get_metadata() == {"tag": "a"}
        c.value = jnp.zeros(2)
        c.set_metadata(tag="b")
        np.testing.assert_array_equal(v.value, [1, 1])
        assert v.tag == "a"


def test_pickle_round_trip():
    v = nnx.Param(np.arange(3.0), tag="p")
    w = pickle.loads(pickle.dumps(v))
    assert type(w) is nnx.Param
    np.testing.assert_array_equal(w.value, v.value)
    assert w.get_metadata() == {"tag": "p"}


# -- subclasses ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls", [nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.Perturbation]
)
def test_builtin_subclasses(cls):
    v = cls(jnp.ones(2), tag="t")
    assert isinstance(v, nnx.Variable)
    assert v.type is cls
    assert type(v.replace(jnp.zeros(2))) is cls
    assert type(jax.tree.map(lambda x: x, v)) is cls
    assert nnx.variable_type_from_name(nnx.variable_name_from_type(cls)) is cls


def test_collection_names():
    assert nnx.variable_name_from_type(nnx.Param) == "params"
    assert nnx.variable_name_from_type(nnx.BatchStat) == "batch_stats"
    assert nnx.variable_type_from_name("intermediates") is nnx.Intermediate
    with pytest.raises(nnx.errors.ArgumentError, match=r"(?s)No Variable type is registered.*Fix"):
        nnx.variable_type_from_name("no_such_collection_xyz")
    with pytest.raises(ValueError, match=r"(?s)already registered for Param.*Fix"):
        nnx.variablelib.register_variable_name("params", nnx.BatchStat)
    assert nnx.variable_type_from_name("params") is nnx.Param

    class Unnamed(nnx.Variable):
        pass

    with pytest.raises(ValueError, match=r"(?s)No collection name is registered for Unnamed.*Fix"):
        nnx.variable_name_from_type(Unnamed)


class Counter(nnx.Variable):
    pass


def test_user_subclass_is_a_first_class_variable():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))
            self.c = Counter(jnp.array(0), note="steps")

    m = M()
    assert type(jax.tree.map(lambda x: x + 1, m.c)) is Counter
    counters = nnx.state(m, Counter)
    assert list(counters) == ["c"]
    assert type(counters["c"]) is Counter
    assert counters["c"].note == "steps"
    graphdef, params, rest = nnx.split(m, nnx.Param, Counter)
    assert list(params) == ["w"] and list(rest) == ["c"]
    m2 = nnx.merge(graphdef, params, rest)
    assert type(m2.c) is Counter and m2.c.note == "steps"


# -- array protocol -----------------------------------------------------------------------
def test_array_conversion():
    v = nnx.Param(jnp.arange(6.0).reshape(2, 3))
    a = jnp.asarray(v)
    assert isinstance(a, jax.Array)
    np.testing.assert_array_equal(a, v.value)
    n = np.asarray(v)
    assert isinstance(n, np.ndarray) and n.shape == (2, 3)
    assert np.asarray(v, dtype=np.int32).dtype == np.int32
    assert v.shape == (2, 3)
    assert v.dtype == jnp.float32
    assert v.ndim == 2 and v.size == 6
    assert len(v) == 2
    np.testing.assert_array_equal(v.T, arr(v.value).T)
    assert float(v.sum()) == 15.0
    np.testing.assert_array_equal(jnp.sum(v, axis=0), [3, 5, 7])
    np.testing.assert_array_equal(jax.numpy.tanh(v), jnp.tanh(v.value))


def test_matmul_both_sides():
    w = nnx.Param(jnp.arange(6.0).reshape(2, 3))
    x = jnp.ones((4, 2))
    y = x @ w
    assert isinstance(y, jax.Array) and y.shape == (4, 3)
    np.testing.assert_allclose(y, x @ w.value)
    z = w @ jnp.ones((3, 5))
    assert z.shape == (2, 5)
    np.testing.assert_allclose(z, w.value @ jnp.ones((3, 5)))
    np.testing.assert_allclose(np.ones((1, 2), np.float32) @ w, np.ones((1, 2)) @ arr(w.value))
    a, b = nnx.Param(jnp.eye(2)), nnx.Param(jnp.full((2, 2), 2.0))
    np.testing.assert_array_equal(a @ b, jnp.full((2, 2), 2.0))


@pytest.mark.parametrize(
    "op",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a * b,
        lambda a, b: a / b,
        lambda a, b: a // b,
        lambda a, b: a % b,
        lambda a, b: a**b,
    ],
    ids=["add", "sub", "mul", "div", "floordiv", "mod", "pow"],
)
def test_arithmetic_both_sides(op):
    raw = jnp.array([1.0, 2.0, 3.0])
    v = nnx.Param(raw)
    other = jnp.array([2.0, 2.0, 2.0])
    np.testing.assert_allclose(op(v, other), op(raw, other))
    np.testing.assert_allclose(op(other, v), op(other, raw))
    np.testing.assert_allclose(op(v, 2.0), op(raw, 2.0))
    np.testing.assert_allclose(op(2.0, v), op(2.0, raw))
    np.testing.assert_allclose(op(v, nnx.Param(other)), op(raw, other))
    assert isinstance(op(v, 2.0), jax.Array)


def test_bitwise_ops_both_sides():
    raw = jnp.array([1, 2, 3])
    v = nnx.Variable(raw)
    for op in (
        lambda a, b: a & b,
        lambda a, b: a | b,
        lambda a, b: a ^ b,
        lambda a, b: a << b,
        lambda a, b: a >> b,
    ):
        np.testing.assert_array_equal(op(v, 1), op(raw, 1))
        np.testing.assert_array_equal(op(5, v), op(5, raw))


def test_unary_ops():
    raw = jnp.array([-1.5, 2.0])
    v = nnx.Param(raw)
    np.testing.assert_array_equal(-v, -raw)
    np.testing.assert_array_equal(+v, raw)
    np.testing.assert_array_equal(abs(v), jnp.abs(raw))
    np.testing.assert_array_equal(~nnx.Variable(jnp.array([0, 1])), jnp.array([-1, -2]))
    s = nnx.Param(jnp.array(2.5))
    assert float(s) == 2.5
    assert int(s) == 2
    assert complex(s) == 2.5 + 0j
    assert [1, 2, 3][nnx.Variable(jnp.array(1))] == 2  # __index__
    assert bool(nnx.Variable(jnp.array(1)))


def test_ordering_comparisons():
    raw = jnp.array([1.0, 2.0, 3.0])
    v = nnx.Param(raw)
    np.testing.assert_array_equal(v < 2, [True, False, False])
    np.testing.assert_array_equal(v <= 2, [True, True, False])
    np.testing.assert_array_equal(v > 2, [False, False, True])
    np.testing.assert_array_equal(v >= 2, [False, True, True])
    np.testing.assert_array_equal(2 < v, [False, False, True])  # noqa: SIM300
    np.testing.assert_array_equal(v < nnx.Param(jnp.full(3, 2.0)), [True, False, False])


def test_equality_is_elementwise_like_flax():
    v = nnx.Param(jnp.array([1.0, 2.0]))
    np.testing.assert_array_equal(v == 1.0, [True, False])
    np.testing.assert_array_equal(v != 1.0, [False, True])
    np.testing.assert_array_equal(1.0 == v, [True, False])  # noqa: SIM300
    np.testing.assert_array_equal(v == nnx.Param(jnp.array([1.0, 3.0])), [True, False])
    np.testing.assert_array_equal(jnp.array([0.0, 2.0]) == v, [False, True])
    assert nnx.Intermediate((1, 2)) == (1, 2) and nnx.BatchStat(3) != 4
    assert (v == None) is False and (v != None) is True  # noqa: E711


def test_variables_hash_by_identity_so_they_still_key_dicts_and_sets():
    # unlike flax.nnx, whose Variables are unhashable
    v = nnx.Param(jnp.array([1.0, 2.0]))
    twin = nnx.Param(jnp.array([1.0, 2.0]))
    assert hash(v) == object.__hash__(v) and hash(v) != hash(twin)
    table = {v: "v", twin: "twin"}
    assert table[v] == "v" and table[twin] == "twin"
    assert v in {v} and twin not in {v}
    assert type(nnx.BatchStat(1)).__hash__ is object.__hash__


def test_graph_operations_keep_identity_semantics_with_equal_values():
    class M(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.zeros(3))
            self.b = nnx.Param(jnp.zeros(3))  # equal values, different Variables
            self.tied = self.a

    m = M()
    graphdef, state = nnx.split(m)
    assert sorted(state) == ["a", "b"]
    copy = nnx.merge(graphdef, state)
    assert copy.tied is copy.a and copy.b is not copy.a
    popped = nnx.pop(m, lambda path, v: path == ("b",))
    assert list(popped) == ["b"] and hasattr(m, "a") and not hasattr(m, "b")


@pytest.mark.parametrize(
    "op",
    ["+", "-", "*", "/", "//", "%", "**", "@", "&", "|", "^", "<<", ">>"],
)
def test_augmented_assignment_on_the_variable_itself_raises(op):
    v = nnx.Variable(jnp.ones((2, 2), jnp.int32), tag="t")
    alias = v
    with pytest.raises(
        nnx.errors.VariableInPlaceError, match=rf"(?s)Variable {re.escape(op)}= x.*Fix"
    ):
        exec(f"v {op}= 1")
    assert v is alias and type(v) is nnx.Variable and v.tag == "t"
    np.testing.assert_array_equal(v.value, jnp.ones((2, 2)))


def test_augmented_assignment_on_the_value_works():
    v = nnx.Param(jnp.ones(2))
    v[...] += 1
    v.value *= 3
    v[0] -= 1
    np.testing.assert_array_equal(v.value, [5, 6])
    assert type(v) is nnx.Param


def test_iteration_and_containment():
    v = nnx.Variable(jnp.array([1, 2, 3]))
    assert [int(x) for x in v] == [1, 2, 3]
    assert 2 in v
    assert 7 not in v


def test_callable_value():
    v = nnx.Variable(lambda x: x + 1)
    assert v(1) == 2


# -- pytree behaviour ---------------------------------------------------------------------
def test_tree_leaves_are_the_value_leaves():
    v = nnx.Param(jnp.ones(2), tag="a")
    leaves = jax.tree.leaves(v)
    assert len(leaves) == 1 and leaves[0] is v.value
    nested = nnx.Variable({"a": jnp.ones(1), "b": jnp.zeros(2)})
    assert len(jax.tree.leaves(nested)) == 2


def test_tree_map_keeps_type_and_metadata():
    v = nnx.BatchStat(jnp.ones(2), tag="a", axes=("x",))
    w = jax.tree.map(lambda x: x * 3, v)
    assert type(w) is nnx.BatchStat and w is not v
    assert w.get_metadata() == {"tag": "a", "axes": ("x",)}
    np.testing.assert_array_equal(w.value, [3, 3])
    np.testing.assert_array_equal(v.value, [1, 1])


def test_tree_key_paths():
    v = nnx.Param(jnp.ones(2))
    (path, _), *_ = jax.tree_util.tree_flatten_with_path(v)[0]
    assert jax.tree_util.keystr(path) == ".value"


def test_jit_over_a_state_of_variables():
    s = nnx.State({"w": nnx.Param(jnp.ones(2), tag="w"), "n": nnx.BatchStat(jnp.zeros(2))})

    @jax.jit
    def step(s):
        return jax.tree.map(lambda x: x + 1, s)

    out = step(s)
    assert type(out["w"]) is nnx.Param and type(out["n"]) is nnx.BatchStat
    assert out["w"].tag == "w"
    np.testing.assert_array_equal(out["w"].value, [2, 2])
    np.testing.assert_array_equal(out["n"].value, [1, 1])


def test_jit_with_variable_argument_and_grad():
    v = nnx.Param(jnp.array([1.0, 2.0]))
    g = jax.grad(lambda v: jnp.sum(v.value**2))(v)
    assert type(g) is nnx.Param
    np.testing.assert_allclose(g.value, [2.0, 4.0])
    out = jax.jit(lambda v: v * 2)(v)
    np.testing.assert_allclose(out, [2.0, 4.0])


def test_treedefs_differ_by_metadata():
    a = jax.tree.structure(nnx.Param(1.0, tag="a"))
    b = jax.tree.structure(nnx.Param(1.0, tag="b"))
    c = jax.tree.structure(nnx.Param(2.0, tag="a"))
    assert a != b
    assert a == c


def test_unhashable_metadata_still_works_as_aux_data():
    v = nnx.Param(jnp.ones(1), info=["a", "b"])
    w = jax.tree.map(lambda x: x, v)
    assert w.info == ["a", "b"]
    hash(jax.tree.structure(v))


def test_repr_shows_type_shape_and_metadata():
    text = repr(nnx.Param(jnp.ones((2, 3)), tag="dense"))
    assert text.startswith("Param(")
    assert "shape=(2, 3)" in text and "float32" in text and "tag='dense'" in text


# -- the structure clock ------------------------------------------------------------------
def test_value_assignment_does_not_move_the_structure_clock():
    v = nnx.Param(jnp.zeros(3))
    before = _version.now()
    v.value = jnp.ones(3)
    v[...] = jnp.full(3, 2.0)
    v[0] = 1.0
    v.set_value(jnp.zeros(3))
    _ = v.value, v.get_value()
    assert _version.now() == before


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.set_metadata(tag="x"),
        lambda v: v.set_metadata({"tag": "x"}),
        lambda v: v.set_metadata("tag", "x"),
        lambda v: setattr(v, "tag", "x"),
    ],
    ids=["kwargs", "mapping", "name-value", "setattr"],
)
def test_metadata_change_moves_the_clock_and_stamps_the_variable(change):
    v = nnx.Param(jnp.zeros(3))
    before = _version.now()
    change(v)
    assert _version.now() > before
    assert v._nnx_stamp == _version.now()


def test_empty_set_metadata_is_not_a_change():
    v = nnx.Param(1.0)
    before = _version.now()
    v.set_metadata()
    assert _version.now() == before


def test_metadata_change_is_seen_by_the_next_split():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

    m = M()
    _, s1 = nnx.split(m)
    m.w.set_metadata(tag="new")
    _, s2 = nnx.split(m)
    assert s2["w"].tag == "new"
    assert s1["w"].get_metadata() == {}
