"""Every registered layer pickles: the copy has an equal GraphDef and state and computes the
same outputs. The default initializers and activations are what makes that hold (JAX's
initializer closures and jitted activations do not pickle), so they are checked here too:
same values as JAX's, equality and hashing by arguments (identically-built layers share a
GraphDef, and ``nnx.jit`` does not retrace for the second)."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.nn import activations, initializers
from tests.nn.registry import CASES, Case

IDS = [c.name for c in CASES]


def state_of(model):
    """(path, leaf type, value) for every Variable and array leaf; RNG keys by their key
    data."""
    out = []
    for path, v in nnx.state(model).flat_state():
        value = v.value if isinstance(v, nnx.Variable) else v
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out.append((path, type(v), np.asarray(value)))
    return out


def assert_same_state(a, b):
    sa, sb = state_of(a), state_of(b)
    assert [(p, t) for p, t, _ in sa] == [(p, t) for p, t, _ in sb]
    for (path, _, x), (_, _, y) in zip(sa, sb, strict=True):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(x, y, err_msg=str(path))


# One compiled call per case: running every case is a slow test; a few families run by default.
QUICK = {"Linear", "Conv-1d", "MultiHeadAttention-self", "LSTMCell", "BatchNorm-train"}
RUN_CASES = [
    pytest.param(c, id=c.name, marks=() if c.name in QUICK else pytest.mark.slow) for c in CASES
]
LAZY_CASES = [
    pytest.param(c, id=c.name, marks=() if c.name in QUICK else pytest.mark.slow)
    for c in CASES
    if c.lazy_build
]


def test_quick_cases_exist():
    assert not QUICK - set(IDS), sorted(QUICK - set(IDS))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_layer_pickles(case: Case):
    model = case.build(nnx.Rngs(0), None)
    copy = pickle.loads(pickle.dumps(model))
    assert type(copy) is type(model)
    assert nnx.graphdef(copy) == nnx.graphdef(model)
    assert_same_state(copy, model)


@pytest.mark.parametrize("case", RUN_CASES)
def test_a_pickled_layer_computes_the_same(case: Case):
    model = case.build(nnx.Rngs(0), None)
    copy = pickle.loads(pickle.dumps(model))
    x = case.inputs(jax.random.key(1))
    traces = []

    @nnx.jit
    def run(m, *a):
        traces.append(1)
        return case.run(m, *a)

    want, got = run(model, *x), run(copy, *x)
    assert len(traces) == 1  # equal GraphDefs: one trace serves both
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert_same_state(copy, model)  # and the same state written by the call (stats, RNGs)


@pytest.mark.parametrize("case", LAZY_CASES)
def test_lazy_layers_pickle_before_their_first_call(case: Case):
    lazy = case.lazy_build(nnx.Rngs(0), None)
    copy = pickle.loads(pickle.dumps(lazy))
    x = case.inputs(jax.random.key(1))
    run = nnx.jit(case.run)
    for w, g in zip(jax.tree.leaves(run(lazy, *x)), jax.tree.leaves(run(copy, *x)), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert_same_state(copy, lazy)


def test_a_pickled_model_continues_its_random_streams_and_statistics():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(4, rngs=nnx.Rngs(0)),
        nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3)),
    )
    model(jnp.ones((2, 3)))  # an RNG count and statistics that are not the initial ones
    copy = pickle.loads(pickle.dumps(model))
    x = jax.random.normal(jax.random.key(2), (5, 3))
    np.testing.assert_array_equal(copy(x), model(x))
    assert_same_state(copy, model)


def test_identically_built_layers_share_a_graphdef_and_a_jit_trace():
    a, b = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    assert a.kernel_init == b.kernel_init and hash(a.kernel_init) == hash(b.kernel_init)
    assert nnx.graphdef(a) == nnx.graphdef(b)
    assert hash(nnx.graphdef(a)) == hash(nnx.graphdef(b))
    traces = []

    @nnx.jit
    def f(m, x):
        traces.append(1)
        return m(x)

    f(a, jnp.ones((1, 2)))
    f(b, jnp.ones((1, 2)))
    f(pickle.loads(pickle.dumps(a)), jnp.ones((1, 2)))
    assert len(traces) == 1
    c = nnx.Linear(2, 3, kernel_init=initializers.he_normal(), rngs=nnx.Rngs(0))
    assert nnx.graphdef(c) != nnx.graphdef(a)


FACTORIES = [
    ("lecun_normal", (), {}),
    ("lecun_uniform", (), {"in_axis": 0, "out_axis": 1}),
    ("glorot_normal", (), {"batch_axis": (0,)}),
    ("glorot_uniform", (), {}),
    ("xavier_normal", (), {}),
    ("xavier_uniform", (), {}),
    ("he_normal", (), {"dtype": jnp.float16}),
    ("he_uniform", (), {}),
    ("kaiming_normal", (), {}),
    ("kaiming_uniform", (), {}),
    ("variance_scaling", (0.5, "fan_avg", "uniform"), {}),
    ("normal", (0.3,), {}),
    ("uniform", (), {"scale": 2.0}),
    ("truncated_normal", (0.1,), {"lower": -1.0}),
    ("constant", (jnp.arange(12.0).reshape(3, 4),), {}),
    ("orthogonal", (2.0,), {}),
    ("delta_orthogonal", (), {}),
]


@pytest.mark.parametrize("name, args, kwargs", FACTORIES, ids=[f[0] for f in FACTORIES])
def test_initializers_are_jax_values_picklable_and_compare_by_arguments(name, args, kwargs):
    init = getattr(initializers, name)(*args, **kwargs)
    reference = getattr(jax.nn.initializers, name)(*args, **kwargs)
    shape = {"delta_orthogonal": (3, 3, 3, 4), "glorot_normal": (2, 3, 4)}.get(name, (3, 4))
    key = jax.random.key(7)
    for dtype in [None, jnp.float32]:
        got = init(key, shape) if dtype is None else init(key, shape, dtype)
        want = reference(key, shape) if dtype is None else reference(key, shape, dtype)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    copy = pickle.loads(pickle.dumps(init))
    assert copy == init and hash(copy) == hash(init) and copy is not init
    again = getattr(initializers, name)(*args, **kwargs)
    assert again == init and hash(again) == hash(init)
    jax_name = getattr(jax.nn.initializers, name).__name__  # xavier_normal is glorot_normal
    assert repr(init).startswith(f"nnx.initializers.{jax_name}(")


def test_initializer_equality_fills_in_defaults_and_tells_apart():
    assert initializers.normal() == initializers.normal(0.01)
    assert initializers.lecun_normal() == initializers.lecun_normal(in_axis=-2, batch_axis=())
    assert initializers.lecun_normal(in_axis=[0, 1]) == initializers.lecun_normal(in_axis=(0, 1))
    assert initializers.lecun_normal() != initializers.he_normal()
    assert initializers.normal(0.1) != initializers.normal(0.2)
    assert initializers.constant(jnp.ones(2)) == initializers.constant(jnp.ones(2))
    assert initializers.constant(jnp.ones(2)) != initializers.constant(jnp.zeros(2))
    assert repr(initializers.normal()) == "nnx.initializers.normal()"
    assert repr(initializers.normal(0.5)) == "nnx.initializers.normal(stddev=0.5)"
    assert initializers.lecun_normal() != jax.nn.initializers.lecun_normal()  # no crash


def test_activations_pickle_by_reference_and_compute_as_jax():
    x = jnp.linspace(-3.0, 3.0, 8).reshape(2, 4)
    for name in activations.__all__:
        fn = getattr(activations, name)
        assert pickle.loads(pickle.dumps(fn)) is fn, name
        assert getattr(nnx, name) is fn
        if name in ("one_hot", "logsumexp"):
            continue
        reference = jnp.tanh if name == "tanh" else getattr(jax.nn, name)
        np.testing.assert_array_equal(fn(x), reference(x), err_msg=name)
    assert activations.relu.__wrapped__ is jax.nn.relu
    grad = jax.grad(lambda v: jnp.sum(activations.relu(v)))(x)
    np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.sum(jax.nn.relu(v)))(x))


def test_layers_with_partitioned_or_annotated_initializers_pickle_and_share_a_graphdef():
    def build():
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
        bias = nnx.with_metadata(nnx.initializers.zeros, note="b")
        return nnx.Linear(2, 4, kernel_init=init, bias_init=bias, rngs=nnx.Rngs(0))

    a, b = build(), build()
    assert nnx.graphdef(a) == nnx.graphdef(b)
    assert hash(nnx.graphdef(a)) == hash(nnx.graphdef(b))
    c = pickle.loads(pickle.dumps(a))
    assert nnx.graphdef(c) == nnx.graphdef(a)
    assert c.kernel.out_sharding == (None, "model") and c.bias.note == "b"
    np.testing.assert_array_equal(c.kernel.value, a.kernel.value)
