"""Pytree and the tracked containers: plain lists/dicts become List/Dict, every mutation stamps
(moves the structure clock), nnx.data / nnx.static overrides, copies and pickles."""

from __future__ import annotations

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import _version, errors


class Leaf(nnx.Module):
    def __init__(self, v: float = 1.0):
        self.w = nnx.Param(jnp.full(2, v))


class Holder(nnx.Module):
    def __init__(self):
        self.items = [Leaf(1.0), Leaf(2.0)]
        self.table = {"a": Leaf(3.0), "b": nnx.Param(jnp.zeros(1))}
        self.name = "holder"


def paths(obj):
    return sorted(nnx.state(obj).flat_state().paths, key=repr)


# -- conversion -----------------------------------------------------------------------------
def test_plain_list_and_dict_become_tracked_containers():
    h = Holder()
    assert type(h.items) is nnx.List and isinstance(h.items, list)
    assert type(h.table) is nnx.Dict and isinstance(h.table, dict)
    assert h.items == [h.items[0], h.items[1]]
    assert repr(h.items).startswith("List(")
    assert repr(h.table).startswith("Dict(")
    assert paths(h) == sorted(
        [("items", 0, "w"), ("items", 1, "w"), ("table", "a", "w"), ("table", "b")], key=repr
    )


def test_nested_plain_containers_are_tracked_too():
    class M(nnx.Module):
        def __init__(self):
            self.nested = [[nnx.Param(jnp.ones(1))], {"x": [nnx.Param(jnp.ones(1))]}]

    m = M()
    assert type(m.nested[0]) is nnx.List
    assert type(m.nested[1]) is nnx.Dict
    assert type(m.nested[1]["x"]) is nnx.List
    m.nested[0].append(nnx.Param(jnp.zeros(1)))
    assert ("nested", 0, 1) in nnx.state(m).flat_state().paths


def test_values_added_later_are_tracked():
    h = Holder()
    h.items.append([nnx.Param(jnp.ones(1))])
    assert type(h.items[-1]) is nnx.List
    h.table["c"] = {"d": nnx.Param(jnp.ones(1))}
    assert type(h.table["c"]) is nnx.Dict
    h.items[0:1] = [[nnx.Param(jnp.ones(1))]]
    assert type(h.items[0]) is nnx.List


def test_tuples_of_state_are_data():
    class M(nnx.Module):
        def __init__(self):
            self.pair = (nnx.Param(jnp.ones(1)), nnx.BatchStat(jnp.zeros(1)))
            self.sizes = (1, 2)

    m = M()
    assert type(m.pair) is tuple
    assert paths(m) == [("pair", 0), ("pair", 1)]
    m2 = nnx.merge(*nnx.split(m))
    assert m2.sizes == (1, 2) and type(m2.pair[1]) is nnx.BatchStat


# -- every mutation stamps ------------------------------------------------------------------
def _list():
    return nnx.List([nnx.Param(jnp.ones(1)), nnx.Param(jnp.zeros(1)), 3, 1, 2])


LIST_MUTATIONS = {
    "append": lambda lst: lst.append(nnx.Param(jnp.ones(1))),
    "extend": lambda lst: lst.extend([nnx.Param(jnp.ones(1))]),
    "insert": lambda lst: lst.insert(0, nnx.Param(jnp.ones(1))),
    "pop": lambda lst: lst.pop(),
    "pop-index": lambda lst: lst.pop(0),
    "remove": lambda lst: lst.remove(3),
    "clear": lambda lst: lst.clear(),
    "sort": lambda lst: lst.sort(key=lambda x: 0 if isinstance(x, nnx.Variable) else x),
    "reverse": lambda lst: lst.reverse(),
    "setitem-index": lambda lst: lst.__setitem__(0, nnx.Param(jnp.ones(1))),
    "setitem-slice": lambda lst: lst.__setitem__(slice(0, 2), [nnx.Param(jnp.ones(1))]),
    "delitem-index": lambda lst: lst.__delitem__(0),
    "delitem-slice": lambda lst: lst.__delitem__(slice(0, 2)),
    "iadd": lambda lst: lst.__iadd__([nnx.Param(jnp.ones(1))]),
    "imul": lambda lst: lst.__imul__(2),
}


@pytest.mark.parametrize("name", list(LIST_MUTATIONS))
def test_every_list_mutation_stamps(name):
    lst = _list()
    before_items = list(lst)
    before = _version.now()
    old_stamp = lst._nnx_stamp
    LIST_MUTATIONS[name](lst)
    assert _version.now() > before
    assert lst._nnx_stamp != old_stamp
    # by identity: Variables compare their values elementwise
    assert list(map(id, lst)) != list(map(id, before_items)) or name == "sort"


def test_list_operator_forms_stamp_and_are_seen_by_split():
    class M(nnx.Module):
        def __init__(self):
            self.layers = [Leaf()]

    m = M()
    assert len(nnx.state(m).flat_state()) == 1
    before = _version.now()
    m.layers += [Leaf()]
    assert _version.now() > before
    assert type(m.layers) is nnx.List
    assert len(nnx.state(m).flat_state()) == 2
    before = _version.now()
    m.layers *= 2
    assert _version.now() > before
    # the same two Leaf objects twice: shared references, still 2 leaves
    assert len(m.layers) == 4
    assert len(nnx.state(m).flat_state()) == 2
    del m.layers[1:]
    assert len(nnx.state(m).flat_state()) == 1


def test_list_non_mutating_operations_do_not_stamp():
    lst = _list()
    before = _version.now()
    _ = lst[0], lst[1:], len(lst), list(lst), lst.index(3), lst.count(3), 3 in lst
    _ = lst + [1]  # noqa: RUF005
    assert _version.now() == before


def _dict():
    return nnx.Dict({"a": nnx.Param(jnp.ones(1)), "b": 2})


DICT_MUTATIONS = {
    "setitem": lambda d: d.__setitem__("c", nnx.Param(jnp.ones(1))),
    "setitem-replace": lambda d: d.__setitem__("a", nnx.Param(jnp.ones(1))),
    "update": lambda d: d.update({"c": 1}),
    "update-kwargs": lambda d: d.update(c=1),
    "pop": lambda d: d.pop("a"),
    "popitem": lambda d: d.popitem(),
    "clear": lambda d: d.clear(),
    "setdefault": lambda d: d.setdefault("c", nnx.Param(jnp.ones(1))),
    "ior": lambda d: d.__ior__({"c": 1}),
    "delitem": lambda d: d.__delitem__("a"),
    "setattr": lambda d: setattr(d, "c", 1),
    "delattr": lambda d: delattr(d, "a"),
}


@pytest.mark.parametrize("name", list(DICT_MUTATIONS))
def test_every_dict_mutation_stamps(name):
    d = _dict()
    before_items = dict(d)
    before = _version.now()
    old_stamp = d._nnx_stamp
    DICT_MUTATIONS[name](d)
    assert _version.now() > before
    assert d._nnx_stamp != old_stamp
    assert {k: id(v) for k, v in d.items()} != {k: id(v) for k, v in before_items.items()}


def test_dict_setdefault_existing_key_changes_nothing():
    d = _dict()
    before = _version.now()
    assert d.setdefault("b", 5) == 2
    assert _version.now() == before


def test_dict_ior_operator_on_an_attribute():
    h = Holder()
    before = _version.now()
    h.table |= {"c": nnx.Param(jnp.ones(1))}
    assert _version.now() > before
    assert type(h.table) is nnx.Dict
    assert ("table", "c") in nnx.state(h).flat_state().paths


def test_dict_attribute_access():
    h = Holder()
    assert h.table.a is h.table["a"]
    h.table.c = Leaf(5.0)
    assert h.table["c"] is h.table.c
    assert ("table", "c", "w") in nnx.state(h).flat_state().paths
    del h.table.c
    assert "c" not in h.table
    with pytest.raises(AttributeError, match="Dict has no key 'zzz'"):
        _ = h.table.zzz
    with pytest.raises(nnx.errors.AttributeNotFoundError, match=r"(?s)'zzz'.*Fix"):
        _ = h.table.zzz
    with pytest.raises(nnx.errors.AttributeNotFoundError, match="Cannot delete Dict attribute"):
        del h.table.zzz
    assert getattr(h.table, "zzz", None) is None


def test_dict_mutation_seen_by_next_split():
    h = Holder()
    g1 = nnx.graphdef(h)
    h.table.pop("b")
    g2, s2 = nnx.split(h)
    assert g1 != g2
    assert ("table", "b") not in s2.flat_state().paths


def test_attribute_set_and_delete_stamp_but_array_replacement_does_not():
    class M(nnx.Module):
        def __init__(self):
            self.raw = jnp.zeros(2)
            self.w = nnx.Param(jnp.ones(2))

    m = M()
    before = _version.now()
    m.raw = jnp.ones(2)  # array replacing an array: a value change
    assert _version.now() == before
    m.extra = 1
    assert _version.now() > before
    before = _version.now()
    del m.extra
    assert _version.now() > before
    before = _version.now()
    m.w = nnx.Param(jnp.ones(2))  # a new Variable object: structural
    assert _version.now() > before


# -- nnx.data / nnx.static ------------------------------------------------------------------
def test_data_marks_a_scalar_as_state():
    class Counter(nnx.Module):
        def __init__(self):
            self.steps = nnx.data(0)
            self.plain = 0

    c = Counter()
    assert c.steps == 0  # the marker is unwrapped
    state = nnx.state(c)
    assert state.to_pure_dict() == {"steps": 0}
    assert jax.tree.leaves(c) == [0]
    c.steps = 5  # the marking sticks to the attribute
    assert nnx.state(c).to_pure_dict() == {"steps": 5}
    graphdef, state = nnx.split(c)
    state["steps"] = 7
    c2 = nnx.merge(graphdef, state)
    assert c2.steps == 7 and c2.plain == 0


def test_static_keeps_a_list_out_of_the_state():
    class M(nnx.Module):
        def __init__(self):
            self.cfg = nnx.static([1, 2])
            self.w = nnx.Param(jnp.ones(2))

    m = M()
    assert type(m.cfg) is list  # not converted to a tracked List
    before = _version.now()
    m.cfg.append(3)  # a plain list: no stamp
    assert _version.now() == before
    assert len(jax.tree.leaves(m)) == 1  # only w: cfg is static
    assert m._nnx_is_data("cfg", m.cfg) is False
    # DESIGN: a GraphDef is hashable, so an unhashable static value is reported at split
    # (flax accepts it until the GraphDef is hashed by jit).
    with pytest.raises(errors.StaticAttributeError, match=r"'cfg'.*unhashable list"):
        nnx.split(m)


def test_static_tuple_is_part_of_the_graphdef():
    class M(nnx.Module):
        def __init__(self, sizes):
            self.sizes = nnx.static(sizes)
            self.w = nnx.Param(jnp.ones(1))

    a, b = M((1, 2)), M((1, 3))
    assert nnx.graphdef(a) != nnx.graphdef(b)
    assert nnx.graphdef(a) == nnx.graphdef(M((1, 2)))
    assert nnx.merge(*nnx.split(b)).sizes == (1, 3)


def test_static_array_is_not_in_the_state():
    class M(nnx.Module):
        def __init__(self):
            self.table = nnx.static(("lookup", 3))
            self.w = nnx.Param(jnp.ones(1))

    assert nnx.state(M()).flat_state().paths == (("w",),)


def test_is_data_defaults():
    assert nnx.pytreelib.is_data(jnp.ones(1))
    assert nnx.pytreelib.is_data(np.ones(1))
    assert nnx.pytreelib.is_data(nnx.Param(1.0))
    assert nnx.pytreelib.is_data([1, (jnp.ones(1),)])
    assert nnx.pytreelib.is_data({"a": Leaf()})
    assert not nnx.pytreelib.is_data(1)
    assert not nnx.pytreelib.is_data("x")
    assert not nnx.pytreelib.is_data([1, 2, "a"])
    # a State (a Mapping, not a dict) holding arrays, as in an optax state of States
    assert nnx.pytreelib.is_data((nnx.State({"mu": {"w": jnp.ones(1)}}),))
    assert not nnx.pytreelib.is_data(nnx.State({"n": 3}))


def test_pytree_base_registers_subclasses_with_jax():
    class P(nnx.Pytree):
        def __init__(self):
            self.a = jnp.ones(2)
            self.b = nnx.Param(jnp.zeros(3))
            self.c = "static"

    p = P()
    leaves = jax.tree.leaves(p)
    assert [x.shape for x in leaves] == [(2,), (3,)]
    q = jax.tree.map(lambda x: x + 1, p)
    assert type(q) is P and q.c == "static" and type(q.b) is nnx.Param
    np.testing.assert_array_equal(q.a, [2, 2])
    np.testing.assert_array_equal(p.a, [1, 1])
    keys = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]]
    assert keys == [".a", ".b.value"]


def test_list_and_dict_are_pytrees():
    lst = nnx.List([jnp.ones(1), {"x": jnp.zeros(2)}])
    out = jax.tree.map(lambda x: x + 1, lst)
    assert type(out) is nnx.List and type(out[1]) is nnx.Dict
    np.testing.assert_array_equal(out[1]["x"], [1, 1])
    d = nnx.Dict({"b": jnp.ones(1), "a": jnp.zeros(1)})
    keys = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(d)[0]]
    assert keys == ["['a']", "['b']"]


# -- copy and pickle ------------------------------------------------------------------------
def _check_copy(h: Holder, c: Holder) -> None:
    assert c is not h
    assert type(c.items) is nnx.List and type(c.table) is nnx.Dict
    assert c.items[0] is not h.items[0]
    assert c.items[0].w is not h.items[0].w
    np.testing.assert_array_equal(c.items[1].w.value, [2, 2])
    assert c.name == "holder"
    assert nnx.graphdef(c) == nnx.graphdef(h)
    c.items[0].w.value = jnp.zeros(2)
    np.testing.assert_array_equal(h.items[0].w.value, [1, 1])
    # the copy's own cache works and sees its own changes
    c.items.append(Leaf())
    assert len(nnx.state(c).flat_state()) == len(nnx.state(h).flat_state()) + 1


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_and_pickle_round_trip_without_the_flatten_cache(how):
    h = Holder()
    h.items.append(h.items[0])  # a shared reference
    h.me = h  # a cycle
    nnx.split(h)  # fills the flatten caches: the root's, a list's, a multi-root one
    nnx.split(h.items)
    nnx.graphdef((h, Leaf()))
    assert "_nnx_cache" in h.__dict__ and "_nnx_multi" in h.__dict__
    assert getattr(h.items, "_nnx_cache", None) is not None
    c = copy.deepcopy(h) if how == "deepcopy" else pickle.loads(pickle.dumps(h))
    assert "_nnx_cache" not in c.__dict__ and "_nnx_multi" not in c.__dict__
    assert getattr(c.items, "_nnx_cache", None) is None
    assert c.items[2] is c.items[0]
    assert c.me is c
    _check_copy(h, c)


def test_shallow_copy_of_containers():
    lst = nnx.List([Leaf()])
    c = copy.copy(lst)
    assert type(c) is nnx.List and c is not lst and c[0] is lst[0]
    d = nnx.Dict({"a": Leaf()})
    e = copy.copy(d)
    assert type(e) is nnx.Dict and e is not d and e["a"] is d["a"]


def test_pickle_of_containers_with_cycle():
    lst = nnx.List([1])
    lst.append(lst)
    c = pickle.loads(pickle.dumps(lst))
    assert type(c) is nnx.List and c[1] is c
