"""Rngs: streams, defaults and fallback, counters, state, fork/split, reseed, split_rngs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import errors


def kd(key):
    """Raw key data, for comparing typed keys."""
    return np.asarray(jax.random.key_data(key))


def same(a, b):
    return np.array_equal(kd(a), kd(b))


def test_default_stream_from_a_positional_seed():
    rngs = nnx.Rngs(0)
    assert list(rngs) == ["default"]
    assert "default" in rngs and len(rngs) == 1
    k = rngs()
    assert jnp.issubdtype(k.dtype, jax.dtypes.prng_key) and k.shape == ()
    assert int(rngs.default.count.value) == 1
    assert same(k, jax.random.fold_in(jax.random.key(0), 0))


def test_named_streams():
    rngs = nnx.Rngs(params=0, dropout=1)
    assert sorted(rngs) == ["dropout", "params"]
    p, d = rngs.params(), rngs.dropout()
    assert same(p, jax.random.fold_in(jax.random.key(0), 0))
    assert same(d, jax.random.fold_in(jax.random.key(1), 0))
    assert rngs["params"] is rngs.params
    assert dict(rngs.items())["dropout"] is rngs.dropout
    text = repr(rngs)
    assert text.startswith("Rngs(\n  dropout=RngStream(\n    tag='dropout',")
    assert "params=RngStream(" in text and "RngCount(value=Array(1, dtype=uint32)" in text


def test_counter_increments_and_keys_differ():
    rngs = nnx.Rngs(params=0)
    keys = [rngs.params() for _ in range(3)]
    assert int(rngs.params.count.value) == 3
    assert not same(keys[0], keys[1]) and not same(keys[1], keys[2])
    assert same(keys[2], jax.random.fold_in(jax.random.key(0), 2))


def test_unknown_stream_falls_back_to_default():
    rngs = nnx.Rngs(0, dropout=1)
    rngs.params()
    rngs.anything()
    assert int(rngs.default.count.value) == 2
    assert int(rngs.dropout.count.value) == 0
    assert rngs["params"] is rngs.default
    assert "params" not in rngs


def test_unknown_stream_without_default_raises():
    rngs = nnx.Rngs(params=0, dropout=1)
    with pytest.raises(
        errors.RngStreamError,
        match=r"(?s)no stream 'noise'.*available streams: \['dropout', 'params'\].*"
        r"Fix: .*nnx\.Rngs\(noise=0",
    ):
        rngs.noise()
    assert issubclass(errors.RngStreamError, errors.NNXError)
    with pytest.raises(AttributeError):  # hasattr/getattr(default) keep working
        rngs.noise  # noqa: B018
    assert not hasattr(rngs, "noise")
    with pytest.raises(KeyError):
        rngs["noise"]
    assert int(rngs.params.count.value) == 0


def test_keys_and_counters_are_variables_in_the_state():
    rngs = nnx.Rngs(params=0, dropout=1)
    assert type(rngs.params.key) is nnx.RngKey and type(rngs.params.count) is nnx.RngCount
    assert isinstance(rngs.params.key, nnx.RngState)
    assert rngs.params.key.tag == "params"
    state = nnx.state(rngs)
    assert state.flat_state().paths == (
        ("dropout", "count"),
        ("dropout", "key"),
        ("params", "count"),
        ("params", "key"),
    )
    assert list(nnx.state(rngs, nnx.RngKey).flat_state().paths) == [
        ("dropout", "key"),
        ("params", "key"),
    ]
    assert len(nnx.state(rngs, "dropout").flat_state()) == 2

    class M(nnx.Module):
        def __init__(self, rngs):
            self.rngs = rngs
            self.w = nnx.Param(jnp.ones(1))

    m = M(rngs)
    assert ("rngs", "params", "count") in nnx.state(m, nnx.RngState).flat_state().paths
    assert nnx.state(m, nnx.Param).flat_state().paths == (("w",),)


def test_rngs_survive_split_and_merge():
    rngs = nnx.Rngs(params=0, dropout=1)
    rngs.params()
    graphdef, state = nnx.split(rngs)
    copy = nnx.merge(graphdef, state)
    assert type(copy) is nnx.Rngs and sorted(copy) == ["dropout", "params"]
    assert int(copy.params.count.value) == 1
    assert same(copy.params(), rngs.params())
    copy.dropout()
    assert int(rngs.dropout.count.value) == 0  # independent objects


def test_rngs_inside_a_module_survive_split_and_merge_and_update():
    class M(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(0)

        def __call__(self):
            return self.rngs()

    m = M()
    saved = nnx.state(m)
    k1 = m()
    m2 = nnx.merge(*nnx.split(M()))
    assert same(m2(), k1)
    nnx.update(m, saved)
    assert int(m.rngs.default.count.value) == 0
    assert same(m(), k1)


def test_fork_is_independent():
    rngs = nnx.Rngs(params=0, dropout=1)
    forked = rngs.fork()
    assert sorted(forked) == ["dropout", "params"]
    assert int(rngs.params.count.value) == 1  # the parent spent one key per stream
    assert int(forked.params.count.value) == 0
    a = forked.params()
    b = rngs.params()
    assert not same(a, b)
    forked.params()
    assert int(rngs.params.count.value) == 2
    again = nnx.Rngs(params=0, dropout=1).fork()
    assert same(again.params(), a)  # deterministic


def test_fork_with_split_gives_batched_keys():
    rngs = nnx.Rngs(params=0, dropout=1)
    forked = rngs.fork(split=4)
    assert forked.params.key.value.shape == (4,)
    assert forked.params.count.value.shape == (4,)
    keys = forked.params()
    assert keys.shape == (4,)
    assert len({tuple(kd(k)) for k in keys}) == 4
    assert forked.dropout.key.value.shape == (4,)
    assert rngs.fork(split=(2, 3)).params().shape == (2, 3)


def test_split_is_fork_with_split():
    a = nnx.Rngs(params=0).split(3)
    b = nnx.Rngs(params=0).fork(split=3)
    assert a.params.key.value.shape == (3,)
    assert np.array_equal(kd(a.params()), kd(b.params()))


def test_fork_with_a_split_per_stream_name():
    rngs = nnx.Rngs(params=0, dropout=1, noise=2)
    forked = rngs.fork(split={"dropout": 4, nnx.PathContains("noise"): (2, 2)})
    assert forked.params.key.value.shape == ()
    assert forked.dropout.key.value.shape == (4,)
    assert forked.noise.key.value.shape == (2, 2)
    only = rngs.fork(split={...: 2})
    assert all(only[name].key.value.shape == (2,) for name in only)


def test_reseed_restarts_the_sequence_of_a_freshly_built_model():
    def make():
        return nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=42))

    x = jnp.ones((2, 16))
    drop = make()
    y1 = drop(x)
    y2 = drop(x)
    assert not np.array_equal(y1, y2)
    nnx.reseed(drop, dropout=42)
    np.testing.assert_array_equal(drop(x), y1)
    np.testing.assert_array_equal(drop(x), y2)
    np.testing.assert_array_equal(make()(x), y1)


def test_reseed_resets_counters_and_matches_a_fresh_forked_stream():
    rngs = nnx.Rngs(params=0, dropout=1)
    for _ in range(3):
        rngs.params()
        rngs.dropout()
    nnx.reseed(rngs, params=7)
    assert int(rngs.params.count.value) == 0
    assert int(rngs.dropout.count.value) == 3  # not named: untouched
    fresh = nnx.Rngs(params=7).fork()  # what a layer built with Rngs(params=7) holds
    for _ in range(3):
        assert same(rngs.params(), fresh.params())
    # reseeding twice with the same seed gives the same sequence again
    nnx.reseed(rngs, params=7)
    first = rngs.params()
    nnx.reseed(rngs, params=7)
    assert same(rngs.params(), first)
    nnx.reseed(rngs, params=8)
    assert not same(rngs.params(), first)


def test_reseed_of_batched_streams_keeps_the_shape():
    rngs = nnx.Rngs(params=0).fork(split=3)
    nnx.reseed(rngs, params=1)
    assert rngs.params.key.value.shape == (3,)
    assert rngs.params.count.value.shape == (3,)
    assert int(rngs.params.count.value.sum()) == 0


def test_reseed_everywhere_in_a_model():
    class M(nnx.Module):
        def __init__(self):
            self.a = nnx.Rngs(dropout=0)
            self.b = [nnx.Rngs(dropout=1)]

    m = M()
    m.a.dropout()
    m.b[0].dropout()
    nnx.reseed(m, dropout=5)
    assert same(m.a.dropout(), m.b[0].dropout())


def test_split_rngs_as_a_function_and_restore():
    rngs = nnx.Rngs(params=0, dropout=1)
    before = kd(rngs.params.key.value)
    backups = nnx.split_rngs(rngs, splits=4)
    assert isinstance(backups, nnx.rngs.SplitBackups)
    assert rngs.params.key.value.shape == (4,) and rngs.dropout.key.value.shape == (4,)
    assert rngs.params.count.value.shape == (4,)
    nnx.restore_rngs(backups)
    assert rngs.params.key.value.shape == ()
    np.testing.assert_array_equal(kd(rngs.params.key.value), before)
    assert int(rngs.params.count.value) == 1  # moved past the key spent on the split
    assert len(backups) == 0


def test_split_rngs_as_a_context_manager_with_only():
    rngs = nnx.Rngs(params=0, dropout=1)
    with nnx.split_rngs(rngs, splits=(2, 3), only="dropout"):
        assert rngs.dropout.key.value.shape == (2, 3)
        assert rngs.params.key.value.shape == ()
    assert rngs.dropout.key.value.shape == ()
    assert int(rngs.params.count.value) == 0
    assert int(rngs.dropout.count.value) == 1


def test_split_rngs_as_a_decorator():
    @nnx.split_rngs(splits=5, only=nnx.Not("params"))
    def shapes(model, *, other):
        return model.rngs.params.key.value.shape, model.rngs.dropout.key.value.shape, other

    class M(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(params=0, dropout=1)

    m = M()
    assert shapes(m, other=3) == ((), (5,), 3)
    assert m.rngs.dropout.key.value.shape == ()
    assert shapes.__name__ == "shapes"


def test_split_rngs_squeeze():
    rngs = nnx.Rngs(0)
    with nnx.split_rngs(rngs, splits=1, squeeze=True):
        assert rngs.default.key.value.shape == ()
    with nnx.split_rngs(rngs, splits=1):
        assert rngs.default.key.value.shape == (1,)


def test_split_rngs_for_vmap():
    class M(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(0)

    m = M()
    with nnx.split_rngs(m, splits=3):
        keys = jax.vmap(lambda k, c: jax.random.fold_in(k, c))(
            m.rngs.default.key.value, m.rngs.default.count.value
        )
    assert keys.shape == (3,)
    assert len({tuple(kd(k)) for k in keys}) == 3


def test_fork_rngs_in_place():
    rngs = nnx.Rngs(params=0)
    with nnx.fork_rngs(rngs, split=2):
        assert rngs.params.key.value.shape == (2,)
    assert rngs.params.key.value.shape == ()


@pytest.mark.parametrize(
    "seed",
    [
        3,
        jnp.array(3),
        jax.random.key(3),
        jax.random.PRNGKey(3),  # raw uint32[2] key data
        jax.random.key_data(jax.random.key(3)),
        np.array(3, dtype=np.int32),
    ],
    ids=["int", "int-array", "typed-key", "raw-prngkey", "key-data", "numpy-int"],
)
def test_seed_forms(seed):
    rngs = nnx.Rngs(seed, params=seed)
    expected = jax.random.fold_in(jax.random.key(3), 0)
    assert same(rngs(), expected)
    assert same(rngs.params(), expected)


def test_batched_seed_array():
    rngs = nnx.Rngs(jnp.arange(4))
    assert rngs.default.key.value.shape == (4,)
    keys = rngs()
    assert keys.shape == (4,)
    assert same(keys[2], jax.random.fold_in(jax.random.key(2), 0))


def test_bad_seed_raises():
    with pytest.raises(TypeError, match="An RNG seed must be"):
        nnx.Rngs(1.5)
    # ValueError is what flax.nnx raises
    with pytest.raises(
        nnx.errors.ArgumentError,
        match=r"(?s)got 1\.5 for stream 'params' \(dtype float32\).*Fix: e\.g\. nnx\.Rngs\(0\)",
    ):
        nnx.Rngs(params=1.5)
    with pytest.raises(ValueError, match=r"got 'a' for stream 'default' \(not an array\)"):
        nnx.Rngs("a")


def test_rngs_from_an_rngstream_copies_it():
    src = nnx.Rngs(params=0)
    src.params()
    rngs = nnx.Rngs(dropout=src.params)
    assert rngs.dropout.tag == "dropout"
    assert int(rngs.dropout.count.value) == 1
    assert rngs.dropout is not src.params
    assert same(rngs.dropout(), src.params())


def test_rng_streams_under_jit():
    class M(nnx.Module):
        def __init__(self):
            self.rngs = nnx.Rngs(0)

        def __call__(self):
            return jax.random.uniform(self.rngs(), ())

    m = M()
    f = nnx.jit(lambda m: m())
    a, b = f(m), f(m)
    assert float(a) != float(b)
    assert int(m.rngs.default.count.value) == 2
