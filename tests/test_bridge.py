"""nnx.bridge: linen modules inside nnx models (ToNNX) and nnx modules inside linen (ToLinen).

flax.linen is optional: the whole file is skipped without it, except the checks that nnx itself
never imports flax and that nnx.bridge says what to install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnx


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_nnx_does_not_import_flax():
    result = _run("import sys, nnx; assert 'flax' not in sys.modules, 'flax imported'")
    assert result.returncode == 0, result.stderr


def test_bridge_without_flax_says_what_to_install():
    result = _run(
        """
        import sys
        sys.modules['flax'] = None
        import nnx
        try:
            import nnx.bridge
        except ImportError as e:
            assert isinstance(e, nnx.NNXError), type(e)
            print(e)
        else:
            raise SystemExit('no error')
        """
    )
    assert result.returncode == 0, result.stderr
    assert "nnx.bridge needs flax.linen: pip install 'nnx-jax[linen]'" in result.stdout
    assert "Fix:" in result.stdout


nn = pytest.importorskip("flax.linen")
bridge = pytest.importorskip("nnx.bridge")


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        x = nn.relu(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(2)(x)


def _data():
    x = jax.random.normal(jax.random.key(1), (4, 5, 5, 3))
    y = jax.random.normal(jax.random.key(2), (4, 2))
    return x, y


@pytest.mark.slow  # about 8 s; ToNNX against flax and linen stays in the default run
def test_to_nnx_train_step_matches_linen_with_jax_jit_and_optax():
    x, y = _data()
    model = bridge.ToNNX(LinenNet(), rngs=nnx.Rngs(params=0, dropout=1)).lazy_init(x)
    variables = bridge.variables.nnx_attrs_to_linen_vars(model._attrs())
    params, batch_stats = variables["params"], variables["batch_stats"]
    dropout_key = nnx.clone(model.to_nnx__rngs).dropout()  # the key the next call will draw
    tx = optax.adam(1e-2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        def loss_fn(model):
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @jax.jit
    def linen_step(params, batch_stats, opt_state, x, y):
        def loss_fn(params):
            out, updates = LinenNet().apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                rngs={"dropout": dropout_key},
                mutable=["batch_stats"],
            )
            return jnp.mean((out - y) ** 2), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), new_stats

    want_loss, want_params, want_stats = linen_step(params, batch_stats, tx.init(params), x, y)
    loss = nnx_step(model, optimizer, x, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    got = bridge.variables.nnx_attrs_to_linen_vars(model._attrs())
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (got["params"], got["batch_stats"]),
        (want_params, want_stats),
    )
    assert not np.allclose(got["batch_stats"]["BatchNorm_0"]["mean"], 0)


def test_to_nnx_matches_flax_bridge():
    flax_nnx = pytest.importorskip("flax.nnx")
    x, _ = _data()
    ours = bridge.ToNNX(LinenNet(), rngs=nnx.Rngs(params=0, dropout=1)).lazy_init(x)
    theirs = flax_nnx.bridge.ToNNX(LinenNet(), rngs=flax_nnx.Rngs(params=0, dropout=1))
    theirs = theirs.lazy_init(x)
    ours_init = nnx.state(ours, nnx.Param).to_pure_dict()
    theirs_init = flax_nnx.to_pure_dict(flax_nnx.state(theirs, flax_nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, ours_init, theirs_init)
    # Same call (flax needs mutable= spelled out; ours defaults to the held collections).
    out = ours(x)
    want = theirs(x, mutable=["batch_stats"])
    np.testing.assert_allclose(out, want, rtol=1e-6)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.state(ours, nnx.BatchStat).to_pure_dict(),
        flax_nnx.to_pure_dict(flax_nnx.state(theirs, flax_nnx.BatchStat)),
    )


def test_to_nnx_state_paths_and_types():
    x, _ = _data()
    model = bridge.ToNNX(LinenNet(), rngs=nnx.Rngs(0)).lazy_init(x)
    _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    assert sorted(params.flat_state().paths) == [
        ("BatchNorm_0", "bias"),
        ("BatchNorm_0", "scale"),
        ("Conv_0", "bias"),
        ("Conv_0", "kernel"),
        ("Dense_0", "bias"),
        ("Dense_0", "kernel"),
    ]
    assert sorted(stats.flat_state().paths) == [("BatchNorm_0", "mean"), ("BatchNorm_0", "var")]
    assert all(p[0] == "to_nnx__rngs" for p in rest.flat_state().paths)
    assert isinstance(model.BatchNorm_0["mean"], nnx.BatchStat)
    assert model.Dense_0.kernel.shape == (100, 2)


def test_to_nnx_other_collections_get_registered_variable_types():
    class Counter(nn.Module):
        @nn.compact
        def __call__(self, x):
            count = self.variable("counter_stats", "n", lambda: jnp.zeros((), jnp.int32))
            count.value += 1
            return x

    model = bridge.ToNNX(Counter(), rngs=nnx.Rngs(0))
    model(jnp.ones(2))  # the first call initializes
    vtype = nnx.variablelib.variable_type_from_name("counter_stats")
    assert isinstance(model.n, vtype)
    model(jnp.ones(2))
    model(jnp.ones(2))
    assert int(model.n.value) == 3  # init's increment, then one per call


def test_to_nnx_linen_method_and_explicit_mutable():
    class Enc(nn.Module):
        def setup(self):
            self.dense = nn.Dense(3)

        def __call__(self, x):
            return self.dense(x)

        def encode(self, x):
            return self.dense(x) * 2

    model = bridge.ToNNX(Enc(), rngs=nnx.Rngs(0)).lazy_init(jnp.ones((1, 2)))
    np.testing.assert_allclose(model.encode(jnp.ones((1, 2))), 2 * model(jnp.ones((1, 2))))
    assert model(jnp.ones((1, 2)), mutable=False).shape == (1, 3)


def test_to_nnx_partitioned_params_become_sharding_metadata():
    class Sharded(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
            return nn.Dense(4, kernel_init=init)(x)

    model = bridge.ToNNX(Sharded(), rngs=nnx.Rngs(0)).lazy_init(jnp.ones((1, 2)))
    kernel = model.Dense_0["kernel"]
    assert kernel.out_sharding == (None, "model")
    assert nnx.get_partition_spec(nnx.state(model))["Dense_0"]["kernel"].value == (
        jax.sharding.PartitionSpec(None, "model")
    )
    # Back to linen: the box is rebuilt, so linen's own sharding tools see it.
    boxed = bridge.variables.to_linen_var(kernel)
    assert isinstance(boxed, nn.Partitioned) and boxed.names == (None, "model")
    model(jnp.ones((1, 2)))  # apply with the boxed value works
    assert model.Dense_0["kernel"].out_sharding == (None, "model")


def _raw(a):
    return jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a


def test_to_nnx_errors_leave_the_model_unchanged():
    with pytest.raises(nnx.errors.ArgumentError, match="linen module instance"):
        bridge.ToNNX(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    model = bridge.ToNNX(nn.Dense(3), rngs=nnx.Rngs(0)).lazy_init(jnp.ones((1, 2)))
    before = jax.tree.map(_raw, nnx.state(model).to_pure_dict())
    with pytest.raises(Exception):  # noqa: B017 - linen's own shape error
        model(jnp.ones((1, 5)))
    after = jax.tree.map(_raw, nnx.state(model).to_pure_dict())
    jax.tree.map(np.testing.assert_array_equal, after, before)
    with pytest.raises(AttributeError, match="neither one of its variables"):
        model.not_there  # noqa: B018
    with pytest.raises(nnx.errors.ArgumentError, match="Module or a method"):
        bridge.lazy_init(lambda x: x, 1)


class MLP(nnx.Module):
    def __init__(self, din, dout, *, rngs):
        self.l1 = nnx.Linear(din, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs)
        self.l2 = nnx.Linear(8, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


def test_to_linen_matches_the_nnx_model_run_eagerly():
    x = jax.random.normal(jax.random.key(3), (4, 3))
    linen_model = bridge.ToLinen(MLP, args=(3, 2))
    variables = linen_model.init(jax.random.key(0), x)
    assert set(variables) == {"params", "batch_stats"}
    eager = MLP(3, 2, rngs=nnx.Rngs(5))
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(
        nnx.state(eager, nnx.Param).to_pure_dict()
    )
    nnx.update(eager, variables["params"], variables["batch_stats"])
    out, updates = linen_model.apply(variables, x, mutable=["batch_stats"])
    want = eager(x)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    jax.tree.map(
        np.testing.assert_allclose,
        updates["batch_stats"],
        nnx.state(eager, nnx.BatchStat).to_pure_dict(),
    )
    assert not np.allclose(updates["batch_stats"]["bn"]["mean"], 0)


def test_to_linen_matches_flax_bridge():
    flax_nnx = pytest.importorskip("flax.nnx")

    class FlaxMLP(flax_nnx.Module):
        def __init__(self, din, dout, *, rngs):
            self.l1 = flax_nnx.Linear(din, 8, rngs=rngs)
            self.bn = flax_nnx.BatchNorm(8, momentum=0.5, rngs=rngs)
            self.l2 = flax_nnx.Linear(8, dout, rngs=rngs)

        def __call__(self, x):
            return self.l2(flax_nnx.relu(self.bn(self.l1(x))))

    x = jax.random.normal(jax.random.key(3), (4, 3))
    ours = bridge.to_linen(MLP, 3, 2)
    theirs = flax_nnx.bridge.to_linen(FlaxMLP, 3, 2)
    v_ours, v_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)
    out_ours, up_ours = ours.apply(v_ours, x, mutable=["batch_stats"])
    out_theirs, up_theirs = theirs.apply(v_theirs, x, mutable=["batch_stats"])
    np.testing.assert_allclose(out_ours, out_theirs, rtol=1e-6)
    jax.tree.map(np.testing.assert_allclose, up_ours, up_theirs)


def test_to_linen_inside_a_linen_model_and_partitioning():
    init = bridge.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = bridge.to_linen(nnx.Linear, 3, 4, kernel_init=init, name="inner")(x)
            return nn.Dense(1)(x)

    variables = Outer().init(jax.random.key(0), jnp.ones((1, 3)))
    kernel = variables["params"]["inner"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == (None, "model")
    specs = nn.get_partition_spec(variables)
    assert specs["params"]["inner"]["kernel"] == jax.sharding.PartitionSpec(None, "model")
    assert Outer().apply(variables, jnp.ones((2, 3))).shape == (2, 1)


def test_to_linen_class_presets_arguments():
    LinenLinear = bridge.wrappers.to_linen_class(nnx.Linear, in_features=3)
    variables = LinenLinear(out_features=5).init(jax.random.key(0), jnp.ones((1, 3)))
    assert variables["params"]["kernel"].shape == (3, 5)


def test_round_trip_to_linen_of_to_nnx():
    dense = nn.Dense(3)
    wrapped = bridge.ToLinen(bridge.ToNNX, args=(dense,))
    x = jnp.ones((2, 4))
    variables = wrapped.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"kernel": (4, 3), "bias": (3,)}}
    np.testing.assert_allclose(wrapped.apply(variables, x), dense.apply(variables, x), rtol=1e-6)


def test_functional():
    f = bridge.functional(nnx.Linear)(3, 4)
    with pytest.raises(nnx.errors.ArgumentError, match="before init"):
        f.apply({})
    state = f.init(rngs=nnx.Rngs(0))
    y, (graphdef, new_state) = f.apply(state)(jnp.ones((1, 3)))
    assert y.shape == (1, 4)
    assert isinstance(nnx.merge(graphdef, new_state), nnx.Linear)


_names = st.sampled_from(["a", "b", "Dense_0", "kernel"])
_trees = st.recursive(
    st.builds(lambda n: jnp.full((2,), n, jnp.float32), st.integers(0, 9)),
    lambda children: st.dictionaries(_names, children, min_size=1, max_size=3),
    max_leaves=6,
).filter(lambda t: isinstance(t, dict))


@given(params=_trees, stats=_trees)
def test_collections_round_trip_through_nnx_attrs(params, stats):
    variables = {"params": params, "batch_stats": {"stats": stats}}
    attrs = bridge.variables.linen_vars_to_nnx_attrs(variables)
    back = bridge.variables.nnx_attrs_to_linen_vars(attrs)
    assert jax.tree.structure(back) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, back, variables)


def test_same_path_in_two_collections_is_an_error():
    with pytest.raises(nnx.errors.ArgumentError, match="in both collections"):
        bridge.variables.linen_vars_to_nnx_attrs(
            {"params": {"w": jnp.ones(1)}, "batch_stats": {"w": jnp.ones(1)}}
        )


def test_to_nnx_as_submodule_keeps_its_variables_across_jitted_calls():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.body = bridge.ToNNX(nn.BatchNorm(use_running_average=False), rngs=rngs)
            self.head = nnx.Linear(3, 1, rngs=rngs)

        def __call__(self, x):
            return self.head(self.body(x))

    model = Model(nnx.Rngs(0))
    bridge.lazy_init(model, jnp.ones((2, 3)))
    mean = model.body.mean
    x = jax.random.normal(jax.random.key(0), (4, 3))
    nnx.jit(lambda m, x: m(x))(model, x)
    assert model.body.mean is mean  # written in place, not replaced
    np.testing.assert_allclose(mean.value, 0.01 * x.mean(0), rtol=1e-5)
