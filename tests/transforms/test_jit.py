"""``nnx.jit``: graph arguments in and out, write-back of every kind of state change,
sharing, static and donated arguments, shardings, introspection, and the trace cache (no
retrace while structure and avals are unchanged, exactly one after a structural change)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import nnx


# -- small models -----------------------------------------------------------------------------
class BatchNormish(nnx.Module):
    """A BatchNorm-like layer: a Param scale and a BatchStat running mean."""

    def __init__(self, n: int, momentum: float = 0.9):
        self.scale = nnx.Param(jnp.ones((n,)))
        self.mean = nnx.BatchStat(jnp.zeros((n,)))
        self.momentum = momentum

    def __call__(self, x):
        batch_mean = x.mean(axis=0)
        self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * batch_mean
        return (x - self.mean.value[None, :]) * self.scale.value[None, :]


class Dropoutish(nnx.Module):
    """A Dropout-like layer holding its own RNG stream."""

    def __init__(self, rate: float, rngs: nnx.Rngs):
        self.rate = rate
        self.rngs = rngs.dropout.fork()

    def __call__(self, x):
        keep = jax.random.bernoulli(self.rngs(), 1 - self.rate, x.shape)
        return jnp.where(keep, x / (1 - self.rate), 0.0)


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, din: int = 3, dout: int = 4):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))
        self.bn = BatchNormish(dout)
        self.drop = Dropoutish(0.5, rngs)
        self.steps = nnx.Variable(jnp.array(0))

    def __call__(self, x):
        self.steps.value += 1
        return self.drop(self.bn(x @ self.w.value))


def pure(m) -> dict:
    """The state of `m` as a plain nested dict of numpy arrays (a comparable snapshot)."""
    return jax.tree.map(to_numpy, nnx.state(m).to_pure_dict())


def to_numpy(x):
    if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def assert_tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_tree_close(a, b, **kw):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def key_data(k):
    return np.asarray(jax.random.key_data(k))


X = jnp.arange(6.0).reshape(2, 3)


# -- write-back of state changes ---------------------------------------------------------------
def test_jit_matches_eager_and_writes_back_params_stats_and_rng_counters():
    m_jit = Model(nnx.Rngs(params=0, dropout=1))
    m_eager = nnx.clone(m_jit)
    before = pure(m_jit)

    @nnx.jit
    def step(m, x):
        return m(x)

    for _ in range(3):
        y_jit = step(m_jit, X)
        y_eager = m_eager(X)
        np.testing.assert_allclose(y_jit, y_eager, rtol=1e-6)
    after = pure(m_jit)
    assert_tree_close(after, pure(m_eager), rtol=1e-6)
    assert int(m_jit.steps.value) == 3
    assert int(m_jit.drop.rngs.count.value) == 3
    assert not np.allclose(after["bn"]["mean"], before["bn"]["mean"])
    # Unchanged Params stay as they were.
    np.testing.assert_array_equal(after["w"], before["w"])


def test_jit_writes_back_param_updates():
    m = Model(nnx.Rngs(0))
    w0 = np.asarray(m.w.value)

    @nnx.jit
    def sgd(m, lr):
        m.w.value = m.w.value - lr * jnp.ones_like(m.w.value)

    sgd(m, 0.5)
    np.testing.assert_allclose(m.w.value, w0 - 0.5)
    assert isinstance(m.w.value, jax.Array)


def test_jit_variables_rngs_and_modules_inside_pytrees():
    a, b = BatchNormish(2), BatchNormish(2)
    v = nnx.Param(jnp.array(1.0))
    rngs = nnx.Rngs(0)
    key_before = key_data(nnx.clone(rngs).default())

    @nnx.jit
    def f(tree, d):
        (m1, m2), [var] = tree
        m1.mean.value = m1.mean.value + 1.0
        m2.mean.value = m2.mean.value + 2.0
        var.value = var.value * 3.0
        key = d["r"]()
        return tree, d, key

    tree_out, d_out, key = f(((a, b), [v]), {"r": rngs})
    np.testing.assert_array_equal(a.mean.value, [1.0, 1.0])
    np.testing.assert_array_equal(b.mean.value, [2.0, 2.0])
    assert float(v.value) == 3.0
    assert int(rngs.default.count.value) == 1
    np.testing.assert_array_equal(key_data(key), key_before)
    # The returned pytrees hold the very same objects.
    assert tree_out[0][0] is a and tree_out[0][1] is b and tree_out[1][0] is v
    assert d_out["r"] is rngs


def test_jit_variable_argument_alone():
    v = nnx.BatchStat(jnp.zeros((3,)))

    @nnx.jit
    def inc(v, k):
        v.value = v.value + k
        return v

    out = inc(v, 2.0)
    assert out is v
    np.testing.assert_array_equal(v.value, [2.0, 2.0, 2.0])


def test_jit_rngs_argument_alone_advances_counter():
    rngs = nnx.Rngs(0, dropout=1)
    ref = nnx.Rngs(0, dropout=1)

    @nnx.jit
    def draw(rngs):
        return rngs.dropout(), rngs()

    for _ in range(3):
        k1, k2 = draw(rngs)
        np.testing.assert_array_equal(key_data(k1), key_data(ref.dropout()))
        np.testing.assert_array_equal(key_data(k2), key_data(ref()))
    assert int(rngs.dropout.count.value) == 3
    assert int(rngs.default.count.value) == 3


def test_jit_kwargs_graph_arguments_are_written_back():
    m = BatchNormish(2)

    @nnx.jit
    def f(x, *, model):
        return model(x)

    f(jnp.ones((4, 2)), model=m)
    np.testing.assert_allclose(m.mean.value, [0.1, 0.1], rtol=1e-6)


# -- sharing -------------------------------------------------------------------------------------
def test_jit_same_module_twice_is_one_object_inside():
    m = BatchNormish(2)
    seen = {}

    @nnx.jit
    def f(a, b):
        seen["same"] = a is b
        a.mean.value = a.mean.value + 1.0
        b.mean.value = b.mean.value + 1.0

    f(m, m)
    assert seen["same"] is True
    np.testing.assert_array_equal(m.mean.value, [2.0, 2.0])


def test_jit_variable_shared_by_two_modules_updated_once():
    shared = nnx.BatchStat(jnp.array(0.0))
    a, b = BatchNormish(2), BatchNormish(2)
    a.shared = shared
    b.shared = shared
    seen = {}

    @nnx.jit
    def f(a, b):
        seen["same"] = a.shared is b.shared
        a.shared.value = a.shared.value + 1.0

    f(a, b)
    assert seen["same"] is True
    assert float(shared.value) == 1.0
    assert a.shared is shared and b.shared is shared


def test_jit_sharing_inside_one_module_kept():
    class Tied(nnx.Module):
        def __init__(self):
            self.enc = BatchNormish(2)
            self.dec = self.enc

    t = Tied()

    @nnx.jit
    def f(t):
        assert t.enc is t.dec
        t.dec.mean.value = t.dec.mean.value + 5.0

    f(t)
    assert t.enc is t.dec
    np.testing.assert_array_equal(t.enc.mean.value, [5.0, 5.0])


# -- structure changes ---------------------------------------------------------------------------
def test_jit_structural_change_visible_outside():
    m = BatchNormish(2)
    old_mean = m.mean

    @nnx.jit
    def grow(m):
        m.extra = nnx.Param(jnp.full((3,), 7.0))
        m.child = BatchNormish(4)
        m.child.mean.value = m.child.mean.value + 1.0
        m.mean.value = m.mean.value + 2.0

    grow(m)
    assert isinstance(m.extra, nnx.Param)
    np.testing.assert_array_equal(m.extra.value, [7.0, 7.0, 7.0])
    assert isinstance(m.child, BatchNormish)
    np.testing.assert_array_equal(m.child.mean.value, np.ones((4,)))
    assert isinstance(m.child.mean.value, jax.Array)
    # Existing Variables are updated in place, not replaced.
    assert m.mean is old_mean
    np.testing.assert_array_equal(old_mean.value, [2.0, 2.0])
    assert set(nnx.state(m).to_pure_dict()) == {"scale", "mean", "extra", "child"}


def test_jit_attribute_deleted_inside_is_deleted_outside():
    m = Model(nnx.Rngs(0))

    @nnx.jit
    def drop(m):
        del m.drop

    drop(m)
    assert not hasattr(m, "drop")
    assert "drop" not in nnx.state(m).to_pure_dict()


def test_jit_returning_input_module_returns_same_object():
    m = Model(nnx.Rngs(0))

    @nnx.jit
    def f(m, x):
        y = m(x)
        return m, y

    out, y = f(m, X)
    assert out is m
    assert y.shape == (2, 4)

    @nnx.jit
    def g(m):
        return m

    assert g(m) is m


def test_jit_module_created_inside_and_returned():
    @nnx.jit
    def make(seed_key):
        return Model(nnx.Rngs(params=seed_key, dropout=1))

    m = make(jax.random.key(0))
    ref = Model(nnx.Rngs(params=0, dropout=1))
    assert isinstance(m, Model)
    assert_tree_close(pure(m), pure(ref), rtol=1e-6)
    for leaf in jax.tree.leaves(nnx.state(m)):
        assert isinstance(leaf, jax.Array)
        assert not isinstance(leaf, jax.core.Tracer)
    # The new module is fully usable afterwards.
    assert m(X).shape == (2, 4)


# -- static and donated arguments -------------------------------------------------------------
def test_jit_static_argnums_and_argnames():
    traces = []

    @nnx.jit(static_argnums=1, static_argnames="mode")
    def f(m, k, *, mode="add"):
        traces.append((k, mode))
        if mode == "add":  # Python control flow on static values
            m.mean.value = m.mean.value + k
        else:
            m.mean.value = m.mean.value * k
        return jnp.asarray(k)

    m = BatchNormish(2)
    f(m, 2, mode="add")
    f(m, 2, mode="add")
    f(m, 3, mode="add")
    f(m, 3, mode="mul")
    np.testing.assert_array_equal(m.mean.value, [21.0, 21.0])
    assert traces == [(2, "add"), (3, "add"), (3, "mul")]


def test_jit_static_argnum_module_is_closed_over_not_traced():
    @nnx.jit(static_argnums=0)
    def f(cfg, x):
        return x * cfg.factor

    class Cfg:
        factor = 3

    cfg = Cfg()
    assert float(f(cfg, jnp.array(2.0))) == 6.0


def test_jit_donate_argnums_frees_old_buffers():
    m = Model(nnx.Rngs(0))
    old_w = m.w.value
    old_mean = m.bn.mean.value
    # A jax copy: np.asarray would hold a view of the buffer, which blocks its donation.
    w_copy = old_w + 0.0

    @nnx.jit(donate_argnums=0)
    def step(m, x):
        m.bn(x @ m.w.value)
        m.w.value = m.w.value * 2.0

    step(m, X)
    assert old_w.is_deleted()
    assert old_mean.is_deleted()
    assert not m.w.value.is_deleted()
    assert not m.bn.mean.value.is_deleted()
    np.testing.assert_allclose(m.w.value, 2 * w_copy)
    # The module is usable again (its arrays are valid) and can be donated again.
    step(m, X)
    np.testing.assert_allclose(m.w.value, 4 * w_copy)


def test_jit_donate_argnames_frees_old_buffers_even_if_unchanged():
    m = BatchNormish(3)
    old_scale = m.scale.value

    @nnx.jit(donate_argnames="model")
    def f(x, model):
        return x * model.scale.value

    y = f(jnp.ones((3,)), model=m)
    np.testing.assert_array_equal(y, np.ones((3,)))
    assert old_scale.is_deleted()
    assert not m.scale.value.is_deleted()
    np.testing.assert_array_equal(m.scale.value, np.ones((3,)))


def test_jit_not_donated_keeps_old_buffers():
    m = BatchNormish(3)
    old = m.mean.value

    @nnx.jit
    def f(m):
        m.mean.value = m.mean.value + 1

    f(m)
    assert not old.is_deleted()
    np.testing.assert_array_equal(old, np.zeros((3,)))


# -- shardings --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mesh():
    devices = np.array(jax.devices()[:8]).reshape(4, 2)
    return Mesh(devices, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


class Sharded(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(32.0).reshape(4, 8))
        self.mean = nnx.BatchStat(jnp.zeros((8,)))


def test_jit_in_shardings_state_sharding(mesh):
    m = Sharded()
    param_sharding = NamedSharding(mesh, P(None, "model"))
    data_sharding = NamedSharding(mesh, P("data", None))
    state_sharding = nnx.StateSharding({nnx.Param: param_sharding, ...: None})

    @nnx.jit(in_shardings=(state_sharding, data_sharding))
    def f(m, x):
        y = x @ m.w.value
        m.mean.value = m.mean.value + y.mean(axis=0)
        m.w.value = m.w.value * 1.0  # changed, so it comes back
        return y

    x = jnp.ones((8, 4))
    compiled = f.lower(m, x).compile()
    in_shardings = jax.tree.leaves(
        compiled.input_shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)
    )
    specs = [s.spec for s in in_shardings if isinstance(s, NamedSharding)]
    assert P(None, "model") in specs
    assert P("data", None) in specs or P("data") in specs

    y = f(m, x)
    np.testing.assert_allclose(y, np.ones((8, 4)) @ np.arange(32.0).reshape(4, 8))
    assert m.w.value.sharding.is_equivalent_to(param_sharding, 2)
    np.testing.assert_allclose(m.mean.value, np.arange(32.0).reshape(4, 8).sum(axis=0))


def test_jit_in_shardings_state_sharding_must_cover_all_leaves(mesh):
    m = Sharded()
    bad = nnx.StateSharding({nnx.Param: NamedSharding(mesh, P())})
    f = nnx.jit(lambda m: m.w.value.sum(), in_shardings=(bad,))
    with pytest.raises(nnx.errors.TransformError, match=r"arg\.mean"):
        f(m)


def test_jit_out_shardings_plain_output(mesh):
    out_sharding = NamedSharding(mesh, P("data"))

    @nnx.jit(out_shardings=out_sharding)
    def f(m):
        return jnp.tile(m.mean.value, (8, 1))[:, 0]

    y = f(Sharded())
    assert y.sharding.is_equivalent_to(out_sharding, 1)


def test_jit_out_shardings_apply_to_a_module_created_inside(mesh):
    param_sharding = NamedSharding(mesh, P(None, "model"))
    replicated = NamedSharding(mesh, P())

    @nnx.jit(out_shardings=nnx.StateSharding({nnx.Param: param_sharding, ...: replicated}))
    def make():
        return Sharded()

    m = make()
    assert m.w.value.sharding.is_equivalent_to(param_sharding, 2)
    assert m.mean.value.sharding.is_equivalent_to(replicated, 1)
    np.testing.assert_array_equal(m.w.value, np.arange(32.0).reshape(4, 8))


def test_jit_out_shardings_single_sharding_for_a_created_module(mesh):
    replicated = NamedSharding(mesh, P())

    @nnx.jit(out_shardings=replicated)
    def make():
        return Sharded()

    m = make()
    assert m.w.value.sharding.is_equivalent_to(replicated, 2)
    assert m.mean.value.sharding.is_equivalent_to(replicated, 1)


def test_jit_out_shardings_tuple_with_module_and_array(mesh):
    param_sharding = NamedSharding(mesh, P(None, "model"))
    data_sharding = NamedSharding(mesh, P("data"))
    shardings = (nnx.StateSharding({nnx.Param: param_sharding, ...: None}), data_sharding)

    @nnx.jit(out_shardings=shardings)
    def make(x):
        return Sharded(), x * 2.0

    m, y = make(jnp.ones((8,)))
    assert m.w.value.sharding.is_equivalent_to(param_sharding, 2)
    assert y.sharding.is_equivalent_to(data_sharding, 1)
    np.testing.assert_array_equal(y, np.full((8,), 2.0))


def test_jit_out_shardings_state_sharding_for_plain_output_is_an_error(mesh):
    bad = nnx.StateSharding({...: NamedSharding(mesh, P())})
    with pytest.raises(nnx.errors.TransformError, match="StateSharding"):
        nnx.jit(lambda x: x * 2, out_shardings=bad)(jnp.ones((8,)))


# -- introspection ------------------------------------------------------------------------------
def test_jit_lower_trace_eval_shape_do_not_touch_state():
    m = Model(nnx.Rngs(0))
    before = pure(m)
    f = nnx.jit(lambda m, x: m(x))

    lowered = f.lower(m, X)
    assert "stablehlo" in lowered.as_text() or "func" in lowered.as_text()
    compiled = lowered.compile()
    assert compiled is not None

    traced = f.trace(m, X)
    assert traced.jaxpr is not None
    assert len(traced.jaxpr.jaxpr.invars) >= len(jax.tree.leaves(nnx.state(m)))

    shape = f.eval_shape(m, X)
    assert isinstance(shape, jax.ShapeDtypeStruct)
    assert shape.shape == (2, 4) and shape.dtype == jnp.float32

    assert_tree_equal(pure(m), before)
    # None of the introspection calls left tracers behind.
    for leaf in jax.tree.leaves(nnx.state(m)):
        assert not isinstance(leaf, jax.core.Tracer)


def test_jit_eval_shape_of_created_module_is_abstract():
    f = nnx.jit(lambda: Sharded())
    abstract = f.eval_shape()
    assert isinstance(abstract, Sharded)
    assert isinstance(abstract.w.value, jax.ShapeDtypeStruct)
    assert abstract.w.value.shape == (4, 8)


# -- the trace cache ----------------------------------------------------------------------------
def test_jit_no_retrace_on_value_changes_or_equal_structure():
    traces = [0]

    @nnx.jit
    def step(m, x):
        traces[0] += 1
        return m(x)

    m = Model(nnx.Rngs(0))
    for _ in range(5):
        step(m, X)
    assert traces[0] == 1
    # Value-only changes from outside.
    m.w.value = m.w.value * 3.0
    m.bn.mean.value = jnp.ones((4,))
    for _ in range(5):
        step(m, X)
    assert traces[0] == 1
    # A fresh model with equal structure and avals.
    m2 = Model(nnx.Rngs(5))
    for _ in range(5):
        step(m2, X)
    assert traces[0] == 1
    # New input values of the same aval.
    step(m, X + 1.0)
    assert traces[0] == 1


def test_jit_exactly_one_retrace_after_structural_change():
    traces = [0]

    @nnx.jit
    def step(m, x):
        traces[0] += 1
        return m(x)

    m = Model(nnx.Rngs(0))
    step(m, X)
    step(m, X)
    assert traces[0] == 1
    m.extra = nnx.Param(jnp.zeros((2,)))
    for _ in range(5):
        step(m, X)
    assert traces[0] == 2


def test_jit_retrace_when_structure_changes_inside():
    traces = [0]

    @nnx.jit
    def step(m):
        traces[0] += 1
        if not hasattr(m, "extra"):
            m.extra = nnx.BatchStat(jnp.zeros(()))
        m.extra.value = m.extra.value + 1.0

    m = BatchNormish(2)
    for _ in range(5):
        step(m)
    assert float(m.extra.value) == 5.0
    assert traces[0] == 2  # once without `extra`, once with it


def test_jit_retrace_on_aval_change():
    traces = [0]

    @nnx.jit
    def f(m):
        traces[0] += 1
        return m.mean.value.sum()

    m = BatchNormish(2)
    f(m)
    f(m)
    m.mean.value = jnp.zeros((5,))
    f(m)
    f(m)
    assert traces[0] == 2


# -- method decorator ----------------------------------------------------------------------------
class Counter(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.array(0))
        self.w = nnx.Param(jnp.array(2.0))

    @nnx.jit
    def step(self, k):
        self.count.value += k
        return self.w.value * k


def test_jit_as_method_decorator():
    c = Counter()
    assert float(c.step(2)) == 4.0
    assert float(c.step(3)) == 6.0
    assert int(c.count.value) == 5
    other = Counter()
    other.step(1)
    assert int(other.count.value) == 1
    assert int(c.count.value) == 5


# -- misc ---------------------------------------------------------------------------------------
def test_jit_failed_call_leaves_module_untouched():
    m = Model(nnx.Rngs(0))
    before = pure(m)

    @nnx.jit
    def bad(m, x):
        m(x)
        m.w.value = m.w.value * 2
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        bad(m, X)
    assert_tree_equal(pure(m), before)


# -- every transform: graph objects mixed in pytrees, sharing, write-back -----------------------
def _mixed_body(tree):
    """Checks sharing inside, changes a module's stat, a lone Variable, a shared Variable and an
    RNG counter, and returns a scalar that depends on all of them."""
    (m1, m2), [v], d = tree
    assert m1 is m2  # the same module passed twice is one object inside
    assert m1.shared is d["other"].shared  # a Variable shared by two modules
    m1.mean.value = m1.mean.value + 1.0
    v.value = v.value * 2.0
    d["other"].shared.value = d["other"].shared.value + 1.0
    key = d["rngs"]()
    return jnp.sum(m1.scale.value) + v.value + jax.random.uniform(key, ()) + m1.shared.value * 0.0


def _mixed_tree():
    shared = nnx.BatchStat(jnp.array(0.0))
    m = BatchNormish(2)
    m.shared = shared
    other = BatchNormish(3)
    other.shared = shared
    v = nnx.Variable(jnp.array(1.0))
    rngs = nnx.Rngs(0)
    return ((m, m), [v], {"rngs": rngs, "other": other}), (m, v, rngs, shared)


MIXED_TRANSFORMS = {
    "jit": lambda tree: nnx.jit(_mixed_body)(tree),
    "grad": lambda tree: nnx.grad(_mixed_body, argnums=0)(tree),
    "value_and_grad": lambda tree: nnx.value_and_grad(_mixed_body)(tree),
    "remat": lambda tree: nnx.remat(_mixed_body)(tree),
    "vmap": lambda tree: nnx.vmap(lambda t, x: _mixed_body(t) + x, in_axes=(None, 0))(
        tree, jnp.zeros((1,))
    ),
    "scan": lambda tree: nnx.scan(
        lambda c, t: c + _mixed_body(t), in_axes=(nnx.Carry, None), out_axes=nnx.Carry, length=1
    )(jnp.array(0.0), tree),
    "cond": lambda tree: nnx.cond(jnp.array(True), _mixed_body, _mixed_body, tree),
    "switch": lambda tree: nnx.switch(jnp.array(0), [_mixed_body, _mixed_body], tree),
    "fori_loop": lambda tree: nnx.fori_loop(0, 1, lambda i, t: (_mixed_body(t), t)[1], tree),
    "while_loop": lambda tree: nnx.while_loop(
        lambda t: t[1][0].value < 2.0, lambda t: (_mixed_body(t), t)[1], tree
    ),
    "checkify": lambda tree: nnx.checkify(_mixed_body)(tree),
}


@pytest.mark.parametrize("name", sorted(MIXED_TRANSFORMS))
def test_every_transform_takes_mixed_pytrees_and_writes_back(name):
    tree, (m, v, rngs, shared) = _mixed_tree()
    MIXED_TRANSFORMS[name](tree)
    np.testing.assert_array_equal(m.mean.value, [1.0, 1.0])  # once, not twice
    assert float(v.value) == 2.0
    assert float(shared.value) == 1.0
    assert int(rngs.default.count.value) == 1
    # Identity of everything is preserved.
    assert tree[0][0] is m and tree[0][1] is m and tree[1][0] is v and tree[2]["rngs"] is rngs
    assert m.shared is shared and tree[2]["other"].shared is shared
    for leaf in jax.tree.leaves(nnx.state(m)):
        assert isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
