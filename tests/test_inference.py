"""nnx.inference (an eval-mode copy without unused state) and nnx.cast (dtype by filter)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ArgumentError


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.sampler_rngs = rngs.fork()  # another RNG user: kept
        self.cache = nnx.Cache(jnp.zeros(2))  # kept
        self.step = nnx.Variable(jnp.array(3))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sow(nnx.Intermediate, "hidden", x)
        return self.drop(self.norm(self.linear(x)))


def _arrays(node: object) -> list[np.ndarray]:
    """Every array of `node`'s state, keys as their key data."""
    leaves = jax.tree.leaves(nnx.state(node))
    return [
        np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for x in leaves
    ]


def _net() -> Net:
    net = Net(nnx.Rngs(0))
    net(jnp.ones((8, 3)))  # train mode: updates batch stats, sows, draws a dropout key
    return net


def test_inference_is_an_eval_copy_without_unused_state():
    net = _net()
    before = _arrays(net)
    fast = nnx.inference(net)
    assert fast is not net and fast.linear.kernel is not net.linear.kernel
    assert fast.drop.deterministic and fast.norm.use_running_average
    assert fast.drop.rngs is None and not hasattr(fast, "hidden")
    assert nnx.state(fast, (nnx.Intermediate, nnx.Perturbation)).to_pure_dict() == {}
    # kept: params, batch stats, other rngs, caches, plain Variables
    assert isinstance(fast.sampler_rngs, nnx.Rngs)
    np.testing.assert_array_equal(fast.cache.value, net.cache.value)
    np.testing.assert_array_equal(fast.norm.mean.value, net.norm.mean.value)
    assert int(fast.step.value) == 3
    # the original is untouched
    assert not net.drop.deterministic and net.drop.rngs is not None and hasattr(net, "hidden")
    for a, b in zip(_arrays(net), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # eval output: deterministic, equals the original in eval mode
    x = jax.random.normal(jax.random.key(0), (5, 3))
    y = fast(x)
    np.testing.assert_array_equal(y, fast(x))
    net.eval()
    np.testing.assert_allclose(net(x), y, rtol=1e-6)


def test_inference_refuses_a_non_module():
    with pytest.raises(ArgumentError, match=r"expects an nnx\.Module"):
        nnx.inference({"w": nnx.Param(jnp.ones(2))})


def test_cast_params_only_floats_and_in_place():
    net = _net()
    kernel = net.linear.kernel
    assert nnx.cast(net, jnp.bfloat16) is net
    assert net.linear.kernel is kernel and kernel.raw_value.dtype == jnp.bfloat16
    assert net.norm.scale.raw_value.dtype == jnp.bfloat16
    assert net.norm.mean.raw_value.dtype == jnp.float32  # BatchStat: not selected
    assert net.step.raw_value.dtype == jnp.int32  # not selected, and an int anyway
    key = net.sampler_rngs.default.key.raw_value
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_cast_leaves_ints_and_keys_even_when_selected():
    net = _net()
    nnx.cast(net, jnp.float16, nnx.Variable)
    assert net.norm.mean.raw_value.dtype == jnp.float16
    assert net.step.raw_value.dtype == jnp.int32
    assert jax.dtypes.issubdtype(net.sampler_rngs.default.key.raw_value.dtype, jax.dtypes.prng_key)
    assert net.sampler_rngs.default.count.raw_value.dtype == jnp.uint32
    assert net(jnp.ones((2, 3), jnp.float16)).dtype == jnp.float16


def test_cast_refuses_a_non_float_dtype_and_changes_nothing():
    net = _net()
    with pytest.raises(ArgumentError, match=r"(?s)floating dtype.*nnx.quantize"):
        nnx.cast(net, jnp.int8)
    assert net.linear.kernel.raw_value.dtype == jnp.float32
