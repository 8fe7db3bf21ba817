"""``nnx.vmap``: in_axes/out_axes with StateAxes, axis_name collectives, axis_size, ensembles
made with ``split_rngs`` + vmap, stacked layers with partition metadata, broadcast modules,
write-back of state changed inside, and structural changes inside (new Variables and
sub-modules batched along the in axis, as in flax; what cannot be batched is refused)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


# -- structural changes inside vmap (as in flax: new state is batched along the in axis) --------
def _pure(m) -> dict:
    return jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())


def _assert_same_tree(a: dict, b: dict) -> None:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert np.shape(x) == np.shape(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _blocks(lib, n: int = 3):
    """`n` stacked decoder blocks of `lib` (nnx or flax.nnx), built with vmap."""

    class Block(lib.Module):
        def __init__(self, rngs):
            self.attn = lib.MultiHeadAttention(
                num_heads=2, in_features=8, qkv_features=8, decode=True, rngs=rngs
            )

        def __call__(self, x):
            return x + self.attn(x)

    rngs = lib.Rngs(0)
    with lib.split_rngs(rngs, splits=n):
        return lib.vmap(lambda r: Block(r), in_axes=0, out_axes=0)(rngs)


def test_init_cache_on_stacked_layers_matches_flax():
    fnnx = pytest.importorskip("flax.nnx")
    ours, theirs = _blocks(nnx), _blocks(fnnx)
    params = nnx.state(ours, nnx.Param)
    params.replace_by_pure_dict(fnnx.to_pure_dict(fnnx.state(theirs, fnnx.Param)))
    nnx.update(ours, params)
    attn = ours.attn

    nnx.vmap(lambda b: b.attn.init_cache((4, 5, 8)), in_axes=0)(ours)
    fnnx.vmap(lambda b: b.attn.init_cache((4, 5, 8)), in_axes=0)(theirs)

    assert ours.attn is attn  # the caller's own module got the cache
    assert attn.cached_key.value.shape == (3, 4, 5, 2, 4)  # stacked along the layer axis
    assert attn.cache_index.value.dtype == jnp.int32
    _assert_same_tree(
        nnx.state(ours, nnx.Cache).to_pure_dict(),
        fnnx.to_pure_dict(fnnx.state(theirs, fnnx.Cache)),
    )

    # Decode two positions, scanning over the stacked layers: same outputs and caches.
    xs = jax.random.normal(jax.random.key(1), (2, 4, 1, 8))
    outs = []
    for lib, model in ((nnx, ours), (fnnx, theirs)):
        step = lib.scan(lambda x, b: b(x), in_axes=(lib.Carry, 0), out_axes=lib.Carry)
        outs.append([step(x, model) for x in xs])
    for a, b in zip(*outs, strict=True):
        assert a.shape == (4, 1, 8)
        close(a, b)
    np.testing.assert_array_equal(attn.cache_index.value, [2, 2, 2])
    _assert_same_tree(
        nnx.state(ours, nnx.Cache).to_pure_dict(),
        fnnx.to_pure_dict(fnnx.state(theirs, fnnx.Cache)),
    )


def test_init_cache_under_jit():
    blocks = _blocks(nnx, n=2)

    @nnx.jit
    def init(blocks):
        nnx.vmap(lambda b: b.attn.init_cache((1, 3, 8)))(blocks)

    init(blocks)
    assert blocks.attn.cached_value.value.shape == (2, 1, 3, 2, 4)
    np.testing.assert_array_equal(blocks.attn.cache_index.value, [0, 0])


class _Two:
    """Builds the same small module in nnx or flax.nnx: a Param (4, 3) and a BatchStat (4,),
    for a batch of 4 along axis 0 (with `transpose`: (3, 4) and (2, 4), along axis 1)."""

    @staticmethod
    def make(lib, transpose: bool = False):
        class M(lib.Module):
            def __init__(self):
                w = jnp.arange(12.0).reshape(4, 3)
                self.w = lib.Param(w.T if transpose else w)
                s = jnp.arange(4.0)
                self.s = lib.BatchStat(jnp.stack([s, -s]) if transpose else s)

        return M()


def _add_cache(lib, m, *x):
    m.c = lib.Cache(jnp.zeros((5,)) + m.w[...].sum())


def _add_unbatched_cache(lib, m, *x):
    m.c = lib.Cache(jnp.zeros((5,)))


def _add_param_from_x(lib, m, x):
    m.p = lib.Param(jnp.zeros((2,)) + x)


def _add_unbatched_param(lib, m, x):
    m.p = lib.Param(jnp.zeros((2,)))


def _add_submodule(lib, m, *x):
    m.sub = lib.Linear(3, 2, rngs=lib.Rngs(0))
    m.sub.kernel[...] = m.sub.kernel[...] + m.w[...][:, None]


def _add_rngs(lib, m, *x):
    m.r = lib.Rngs(1)


def _add_array(lib, m, *x):
    m.arr = lib.data(jnp.ones((2,)) * m.s[...])


def _delete(lib, m, *x):
    del m.s


def _change_type(lib, m, *x):
    m.s = lib.Param(m.s[...] * 2)


def _add_static(lib, m, *x):
    m.flag = "on"


def _add_and_return(lib, m, *x):
    m.c = lib.Cache(m.s[...] * 2)
    return m.c


def _state_axes(lib, spec):
    return lib.StateAxes({getattr(lib, k) if isinstance(k, str) else k: v for k, v in spec})


X4 = jnp.arange(4.0)
# (change, in_axes of the module (or a StateAxes as pairs), out_axes, passes x, transposed)
BATCHABLE = [
    (_add_cache, 0, 0, False, False),
    (_add_cache, 0, 1, False, False),  # out_axes does not matter: the in axis does
    (_add_unbatched_cache, 0, 0, False, False),  # broadcast to every member
    (_add_cache, 1, 0, False, True),
    (_add_unbatched_cache, None, 0, True, False),  # broadcast module: stays unbatched
    (_add_param_from_x, (("Param", 0), (..., None)), 0, True, False),
    (_add_unbatched_param, (("Param", 0), (..., None)), 0, True, False),
    (_add_unbatched_cache, (("Param", 0), (..., None)), 0, True, False),
    (_add_param_from_x, (("Param", 1), (..., None)), 0, True, True),
    (_add_submodule, 0, 0, False, False),
    (_add_rngs, 0, 0, False, False),
    (_add_array, 0, 0, False, False),
    (_delete, 0, 0, False, False),
    (_delete, None, 0, True, False),
    (_change_type, 0, 0, False, False),
    (_add_static, 0, 0, False, False),
    (_add_and_return, 0, 0, False, False),
]


@pytest.mark.parametrize(
    "change, axes, out_axes, with_x, transpose",
    BATCHABLE,
    ids=[f"{c[0].__name__[1:]}-in{c[1]}-out{c[2]}".replace(" ", "") for c in BATCHABLE],
)
def test_batchable_structural_change_matches_flax(change, axes, out_axes, with_x, transpose):
    fnnx = pytest.importorskip("flax.nnx")
    results = []
    for lib in (nnx, fnnx):
        m = _Two.make(lib, transpose)
        ax = _state_axes(lib, axes) if isinstance(axes, tuple) else axes
        args, in_axes = ((m, X4), (ax, 0)) if with_x else ((m,), (ax,))
        out = lib.vmap(functools.partial(change, lib), in_axes=in_axes, out_axes=out_axes)(*args)
        pure = lib.state(m).to_pure_dict() if lib is nnx else fnnx.to_pure_dict(fnnx.state(m))
        results.append((m, out, jax.tree.map(lambda x: x, pure)))
    (ours, out, ours_pure), (theirs, ref, theirs_pure) = results
    for pure in (ours_pure, theirs_pure):  # rng keys: compare their data
        if "r" in pure:
            pure["r"]["default"]["key"] = jax.random.key_data(pure["r"]["default"]["key"])
    _assert_same_tree(ours_pure, theirs_pure)
    assert getattr(ours, "flag", None) == getattr(theirs, "flag", None)
    assert type(ours.s).__name__ == type(theirs.s).__name__ if hasattr(theirs, "s") else True
    assert hasattr(ours, "s") == hasattr(theirs, "s")
    if ref is not None:
        assert isinstance(out, nnx.Cache) and out.value.shape == ref[...].shape
        assert out is ours.c  # the returned Variable is the one the module holds


def test_new_submodule_is_batched_and_independent_per_member():
    ens = make_ensemble(3)

    def add_head(m, x):
        m.head = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
        m.head.bias.value = m.head.bias.value + x

    nnx.vmap(add_head, in_axes=(0, 0))(ens, jnp.arange(3.0))
    assert isinstance(ens.head, nnx.Linear)
    assert ens.head.kernel.value.shape == (3, 2, 1)
    close(ens.head.bias.value[:, 0], [0.0, 1.0, 2.0])
    # The new sub-module is ordinary batched state from now on.
    y = nnx.vmap(lambda m, x: m.head(m(x)), in_axes=(0, None))(ens, jnp.ones((5, 3)))
    assert y.shape == (3, 5, 1)


def test_new_variable_shared_by_two_attributes_stays_shared():
    ens = make_ensemble(2)

    def f(m):
        v = nnx.Cache(m.b.value * 2)
        m.c, m.d = v, v
        m.alias = m.w  # an existing Variable under a second name

    nnx.vmap(f)(ens)
    assert ens.c is ens.d and ens.c.value.shape == (2, 2)
    assert ens.alias is ens.w


def test_new_variable_on_one_of_several_arguments():
    ens = make_ensemble(4)
    bn = BatchNormish(2)

    def f(m, bn, x):
        m.seen = nnx.Intermediate(x)
        bn.total = nnx.BatchStat(jnp.zeros((2,)))  # broadcast argument, unbatched: fine
        return m(x[None, :3])[0]

    ys = nnx.vmap(f, in_axes=(0, None, 0))(ens, bn, jnp.arange(16.0).reshape(4, 4))
    assert ys.shape == (4, 2)
    assert ens.seen.value.shape == (4, 4)
    assert bn.total.value.shape == (2,)


def test_new_variables_get_the_partition_name_at_their_axis():
    ens = make_ensemble(3)

    def f(m):
        m.c = nnx.Cache(jnp.zeros((5,)), sharding_names=("seq",))

    nnx.vmap(f, transform_metadata={nnx.PARTITION_NAME: "layers"})(ens)
    assert ens.c.value.shape == (3, 5)
    assert ens.c.get_metadata("sharding_names") == ("layers", "seq")
    # State that went in is left as it was.
    assert ens.w.get_metadata("sharding_names") == ("in", "out")


def test_new_variable_inside_nested_vmaps_is_batched_along_both_axes():
    class M(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.arange(24.0).reshape(2, 3, 4))

    m = M()

    def inner(m):
        m.c = nnx.Cache(m.w.value * 2)
        m.empty = nnx.Variable(None)  # no array: passes through as None

    nnx.vmap(lambda m: nnx.vmap(inner, in_axes=1)(m), in_axes=0)(m)
    close(m.c.value, np.arange(24.0).reshape(2, 3, 4) * 2)
    assert m.empty.value is None


# -- what cannot be batched: refused, with the caller's objects untouched ------------------------
def _refused(m, fn, in_axes, *args, match, out_axes=0):
    def attributes():  # the module's own attributes, not nnx's caches
        return {k: v for k, v in vars(m).items() if not k.startswith("_nnx")}

    before, attrs = _pure(m), attributes()
    with pytest.raises(nnx.errors.TraceContextError, match=match):
        nnx.vmap(fn, in_axes=in_axes, out_axes=out_axes)(m, *args)
    assert attributes().keys() == attrs.keys()
    assert all(attributes()[k] is v for k, v in attrs.items())
    _assert_same_tree(_pure(m), before)
    for leaf in jax.tree.leaves(nnx.state(m)):
        assert not isinstance(leaf, jax.core.Tracer)


BROADCAST_BATCHED = r"args\[0\]\.{} has axis None .*differs per batch element.*\nFix: .*{}"


def test_new_broadcast_variable_with_a_batched_value_is_refused():
    def f(m, x):
        m.c = nnx.Cache(jnp.zeros((2,)) + x)
        m.s.value = m.s.value + 1.0  # a value change too: must not leak out either

    for axes in (None, _state_axes(nnx, (("Param", 0), (..., None)))):
        m = _Two.make(nnx)
        match = BROADCAST_BATCHED.format("c", r"StateAxes\(\{nnx\.Cache: 0, \.\.\.: None\}\)")
        _refused(m, f, (axes, 0), X4, match=match)
        assert not hasattr(m, "c")


def test_existing_broadcast_variable_given_a_batched_value_is_refused():
    def f(m, x):
        m.c = nnx.Cache(jnp.zeros((2,)))  # fine alone
        m.s.value = m.s.value + x

    m = _Two.make(nnx)
    match = BROADCAST_BATCHED.format("s", r"nnx\.BatchStat: 0")
    _refused(m, f, (None, 0), X4, match=match)


def test_broadcast_change_in_a_new_submodule_names_its_path():
    def f(m, x):
        m.sub = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        m.sub.bias.value = m.sub.bias.value + x

    m = _Two.make(nnx)
    _refused(m, f, (None, 0), X4, match=BROADCAST_BATCHED.format(r"sub\.bias", "in_axes=0"))


def test_new_variable_no_state_axes_entry_matches_is_refused():
    def f(m, x):
        m.c = nnx.Cache(jnp.zeros((2,)) + x)

    axes = nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: None})
    match = (
        r"args\[0\]\.c \(a Cache created inside the function\) matches no entry of "
        r"StateAxes.*\nFix: add an entry for it \(e\.g\. `nnx\.Cache: 0`\)"
    )
    _refused(_Two.make(nnx), f, (axes, 0), X4, match=match)


def test_returned_new_object_with_out_axes_none_and_batched_value_is_refused():
    def f(m):
        m.s.value = m.s.value + 1.0
        return nnx.Cache(m.s.value * 2)

    match = r"obj \(graph object 0 of the output\) has axis None.*\nFix: .*out_axes=0"
    _refused(_Two.make(nnx), f, 0, match=match, out_axes=None)
