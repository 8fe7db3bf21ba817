"""``nnx.vmap``: in_axes/out_axes with StateAxes, axis_name collectives, axis_size, ensembles
made with ``split_rngs`` + vmap, stacked layers with partition metadata, broadcast modules,
and write-back of state changed inside."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nnx


class Lin(nnx.Module):
    def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
        self.w = nnx.Param(
            jax.random.normal(rngs.params(), (din, dout)), sharding_names=("in", "out")
        )
        self.b = nnx.Param(jnp.zeros((dout,)))
        self.calls = nnx.BatchStat(jnp.array(0))

    def __call__(self, x):
        self.calls.value += 1
        return x @ self.w.value + self.b.value[None, :]


class BatchNormish(nnx.Module):
    def __init__(self, n: int):
        self.mean = nnx.BatchStat(jnp.zeros((n,)))

    def __call__(self, x):
        self.mean.value = 0.9 * self.mean.value + 0.1 * x.mean(axis=0)
        return x - self.mean.value[None, :]


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def key_data(k):
    return np.asarray(jax.random.key_data(k))


# -- ensembles and stacked layers ---------------------------------------------------------------
def make_ensemble(n: int, seed: int = 0) -> Lin:
    rngs = nnx.Rngs(seed)
    with nnx.split_rngs(rngs, splits=n):
        return nnx.vmap(lambda r: Lin(3, 2, r), in_axes=0, out_axes=0)(rngs)


def test_ensemble_creation_gives_distinct_members():
    ens = make_ensemble(4)
    assert isinstance(ens, Lin)
    assert ens.w.value.shape == (4, 3, 2)
    assert ens.b.value.shape == (4, 2)
    assert ens.calls.value.shape == (4,)
    members = [np.asarray(ens.w.value[i]) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(members[i], members[j])
    # Same seed, same ensemble; different seed, different ensemble.
    close(make_ensemble(4).w.value, ens.w.value)
    assert not np.allclose(make_ensemble(4, seed=1).w.value, ens.w.value)


def test_ensemble_members_match_the_split_keys():
    rngs = nnx.Rngs(0)
    ref = nnx.Rngs(0)
    keys = jax.random.split(ref.default(), 3)
    with nnx.split_rngs(rngs, splits=3):
        ens = nnx.vmap(lambda r: Lin(3, 2, r))(rngs)
    for i in range(3):
        # Inside the vmap each member's stream had key keys[i] and count 0.
        member = Lin(3, 2, nnx.Rngs(keys[i]))
        close(ens.w.value[i], member.w.value)
    # split_rngs restored the caller's stream (counter moved past the split).
    assert rngs.default.key.value.shape == ()
    assert int(rngs.default.count.value) == 1


def test_ensemble_forward_matches_a_python_loop_and_writes_back():
    ens = make_ensemble(4)
    x = jnp.arange(6.0).reshape(2, 3)
    w0 = np.asarray(ens.w.value)
    y = nnx.vmap(lambda m, x: m(x), in_axes=(0, None), out_axes=0)(ens, x)
    assert y.shape == (4, 2, 2)
    for i in range(4):
        close(y[i], x @ w0[i])
    np.testing.assert_array_equal(ens.calls.value, np.ones((4,), np.int32))
    assert ens.calls.value.shape == (4,)


def test_ensemble_with_batched_inputs_and_out_axes_1():
    ens = make_ensemble(3)
    xs = jnp.arange(18.0).reshape(3, 2, 3)
    y = nnx.vmap(lambda m, x: m(x), in_axes=(0, 0), out_axes=1)(ens, xs)
    assert y.shape == (2, 3, 2)
    for i in range(3):
        close(y[:, i], xs[i] @ ens.w.value[i])


def test_stacked_layers_carry_partition_metadata():
    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=5):
        layers = nnx.vmap(
            lambda r: Lin(4, 4, r), transform_metadata={nnx.PARTITION_NAME: "layers"}
        )(rngs)
    assert layers.w.value.shape == (5, 4, 4)
    assert layers.w.get_metadata("sharding_names") == ("layers", "in", "out")
    # Variables without sharding metadata are left alone.
    assert "sharding_names" not in layers.b.get_metadata()


def test_stacked_layers_partition_metadata_at_out_axis():
    class Kernel(nnx.Module):
        def __init__(self, rngs):
            self.w = nnx.Param(jax.random.normal(rngs(), (4, 3)), sharding_names=("in", "out"))

    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=5):
        layers = nnx.vmap(
            lambda r: Kernel(r), out_axes=1, transform_metadata={nnx.PARTITION_NAME: "layers"}
        )(rngs)
    assert layers.w.value.shape == (4, 5, 3)
    assert layers.w.get_metadata("sharding_names") == ("in", "layers", "out")


# -- in_axes / out_axes -------------------------------------------------------------------------
def test_state_axes_batches_params_and_broadcasts_stats():
    ens = make_ensemble(4)
    calls_before = ens.calls.value
    ens.calls.value = jnp.array(0)  # one shared counter: broadcast
    state_axes = nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: None})
    x = jnp.ones((2, 3))
    y = nnx.vmap(lambda m, x: m(x), in_axes=(state_axes, None))(ens, x)
    assert calls_before.shape == (4,)
    assert y.shape == (4, 2, 2)
    assert ens.calls.value.shape == ()
    assert int(ens.calls.value) == 1
    for i in range(4):
        close(y[i], x @ ens.w.value[i])


def test_state_axes_with_path_filter_and_axis_1():
    class M(nnx.Module):
        def __init__(self):
            self.a = nnx.Param(jnp.arange(6.0).reshape(2, 3))  # batched along axis 1
            self.b = nnx.Param(jnp.arange(3.0))  # batched along axis 0
            self.c = nnx.Param(jnp.array(10.0))  # broadcast

    m = M()
    axes = nnx.StateAxes({nnx.PathContains("a"): 1, nnx.PathContains("b"): 0, ...: None})
    y = nnx.vmap(lambda m: m.a.value.sum() + m.b.value + m.c.value, in_axes=(axes,))(m)
    close(y, np.arange(6.0).reshape(2, 3).sum(axis=0) + np.arange(3.0) + 10.0)


def test_state_changed_inside_comes_back_with_its_in_axis():
    class M(nnx.Module):
        def __init__(self):
            self.v = nnx.BatchStat(jnp.zeros((2, 3)))  # batched along axis 1

    m = M()

    def f(m, x):
        m.v.value = m.v.value + x

    nnx.vmap(f, in_axes=(nnx.StateAxes({...: 1}), 0))(m, jnp.arange(3.0))
    assert m.v.value.shape == (2, 3)
    close(m.v.value, np.broadcast_to(np.arange(3.0)[None, :], (2, 3)))


def test_broadcast_module_inside_vmap():
    m = Lin(3, 2, nnx.Rngs(0))
    xs = jnp.arange(12.0).reshape(4, 3)
    ys = nnx.vmap(lambda m, x: m(x[None, :])[0], in_axes=(None, 0))(m, xs)
    close(ys, xs @ m.w.value + m.b.value[None, :])
    assert int(m.calls.value) == 1


def test_in_axes_single_int_applies_to_all_arguments():
    class M(nnx.Module):
        def __init__(self):
            self.v = nnx.Param(jnp.arange(4.0))

    y = nnx.vmap(lambda m, x: m.v.value * x, in_axes=0)(M(), jnp.arange(4.0))
    close(y, np.arange(4.0) ** 2)


def test_vmap_of_a_variable_and_rngs():
    v = nnx.BatchStat(jnp.arange(4.0))

    def inc(v):
        v.value = v.value + 1.0

    nnx.vmap(inc)(v)
    close(v.value, np.arange(4.0) + 1.0)

    rngs = nnx.Rngs(0)
    ref = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=3):
        keys = nnx.vmap(lambda r: r())(rngs)
        assert rngs.default.count.value.shape == (3,)
        np.testing.assert_array_equal(rngs.default.count.value, [1, 1, 1])
    split = jax.random.split(ref.default(), 3)
    for i in range(3):
        np.testing.assert_array_equal(key_data(keys[i]), key_data(jax.random.fold_in(split[i], 0)))


def test_vmap_graph_objects_in_pytree_args_and_sharing():
    a = BatchNormish(2)
    seen = {}

    def f(pair, x):
        first, second = pair
        seen["same"] = first is second
        second.mean.value = second.mean.value + 1.0  # unbatched change of a broadcast leaf
        return first.mean.value * x

    xs = jnp.ones((3, 2))
    ys = nnx.vmap(f, in_axes=(None, 0))((a, a), xs)
    assert seen["same"] is True
    close(ys, np.ones((3, 2)))
    assert a.mean.value.shape == (2,)
    close(a.mean.value, [1.0, 1.0])


def test_vmap_returns_input_module_as_same_object():
    ens = make_ensemble(2)
    out, y = nnx.vmap(lambda m, x: (m, m(x)), in_axes=(0, None), out_axes=(0, 0))(
        ens, jnp.ones((1, 3))
    )
    assert out is ens
    assert y.shape == (2, 1, 2)


# -- axis_name / axis_size ----------------------------------------------------------------------
def test_axis_name_psum_and_pmean():
    class M(nnx.Module):
        def __init__(self):
            self.v = nnx.Param(jnp.arange(4.0))
            self.mean = nnx.BatchStat(jnp.zeros(()))

    m = M()

    def f(m):
        total = jax.lax.psum(m.v.value, "batch")
        m.mean.value = jax.lax.pmean(m.v.value, "batch")
        return total

    y = nnx.vmap(f, in_axes=(nnx.StateAxes({nnx.Param: 0, ...: None}),), axis_name="batch")(m)
    close(y, np.full((4,), 6.0))
    assert m.mean.value.shape == ()
    close(m.mean.value, 1.5)


def test_sync_batch_stats_with_axis_name():
    bn = BatchNormish(2)
    xs = jnp.arange(24.0).reshape(4, 3, 2)

    def f(bn, x):
        y = bn(x)
        bn.mean.value = jax.lax.pmean(bn.mean.value, "devices")
        return y

    nnx.vmap(f, in_axes=(None, 0), axis_name="devices")(bn, xs)
    close(bn.mean.value, 0.1 * xs.mean(axis=(0, 1)))


def test_axis_size_without_batched_inputs():
    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=3):
        ens = nnx.vmap(lambda r: Lin(2, 2, r), in_axes=0, axis_size=3)(rngs)
    assert ens.w.value.shape == (3, 2, 2)
    y = nnx.vmap(lambda: jnp.arange(2.0), in_axes=(), axis_size=5)()
    assert y.shape == (5, 2)


def test_vmap_under_jit_and_grad():
    ens = make_ensemble(3)
    x = jnp.ones((2, 3))

    @nnx.jit
    def loss_grads(ens, x):
        def loss(ens):
            ys = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ens, x)
            return jnp.sum(ys**2)

        return nnx.grad(loss)(ens)

    g = loss_grads(ens, x)
    assert g["w"].value.shape == (3, 3, 2)

    def ref(w, b):
        ys = jnp.einsum("bi,nio->nbo", x, w) + b[:, None, :]
        return jnp.sum(ys**2)

    close(g["w"].value, jax.grad(ref)(ens.w.value, ens.b.value))
    np.testing.assert_array_equal(ens.calls.value, [1, 1, 1])
