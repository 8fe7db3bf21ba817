"""LoRA, LoRALinear and PReLU: equations, adapter-only training, flax parity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError


def _x(seed=0, shape=(4, 3)):
    return jax.random.normal(jax.random.key(seed), shape)


def test_lora_equation_and_base_module():
    base = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    lora = nnx.LoRA(
        3, 2, 2, base_module=base, b_initializer=nnx.initializers.ones, rngs=nnx.Rngs(0)
    )
    x = _x()
    want = x @ lora.lora_a.value @ lora.lora_b.value + base(x)
    np.testing.assert_allclose(lora(x), want, atol=1e-5)
    assert isinstance(lora.lora_a, nnx.LoRAParam) and isinstance(lora.lora_a, nnx.Param)


def test_lora_linear_equation_and_zero_init():
    layer = nnx.LoRALinear(3, 2, lora_rank=2, rngs=nnx.Rngs(0))
    x = _x()
    plain = x @ layer.kernel.value + layer.bias.value[None]
    np.testing.assert_allclose(layer(x), plain, atol=1e-6)  # lora_b starts at zero
    layer.lora.lora_b.value = jnp.ones((2, 2))
    want = plain + x @ layer.lora.lora_a.value @ layer.lora.lora_b.value
    np.testing.assert_allclose(layer(x), want, atol=1e-5)


def test_grad_only_for_adapters():
    layer = nnx.LoRALinear(3, 2, lora_rank=2, rngs=nnx.Rngs(0))
    x = _x()
    grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam))(
        layer, x
    )
    paths = [p for p, _ in grads.flat_state()]
    assert sorted(paths) == [("lora", "lora_a"), ("lora", "lora_b")]


def test_optimizer_wrt_lora_leaves_base_unchanged():
    layer = nnx.LoRALinear(3, 2, lora_rank=2, rngs=nnx.Rngs(0))
    kernel, a, b = (
        jnp.array(v.value) for v in (layer.kernel, layer.lora.lora_a, layer.lora.lora_b)
    )
    opt = nnx.Optimizer(layer, optax.sgd(0.1), wrt=nnx.LoRAParam)
    x = _x()

    @nnx.jit
    def step(m, opt, x):
        grads = nnx.grad(
            lambda m: jnp.sum((m(x) - 1.0) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam)
        )(m)
        opt.update(m, grads)

    step(layer, opt, x)
    np.testing.assert_array_equal(layer.kernel.value, kernel)
    assert not np.allclose(layer.lora.lora_b.value, b)
    np.testing.assert_array_equal(layer.lora.lora_a.value, a)  # b was zero: no grad for a yet
    step(layer, opt, x)
    assert not np.allclose(layer.lora.lora_a.value, a)
    np.testing.assert_array_equal(layer.kernel.value, kernel)


def test_errors():
    with pytest.raises(ConfigError, match="lora_rank"):
        nnx.LoRA(3, 0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="negative_slope_init"):
        nnx.PReLU("a")
    with pytest.raises(ShapeError, match="in_features=3"):
        nnx.LoRA(3, 2, 2, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))


def test_prelu_equation_and_grad():
    act = nnx.PReLU(0.25)
    x = jnp.array([-2.0, -0.5, 0.0, 3.0])
    np.testing.assert_allclose(act(x), jnp.where(x >= 0, x, 0.25 * x))
    g = nnx.grad(lambda m: jnp.sum(m(x)))(act)
    np.testing.assert_allclose(g["negative_slope"].value, -2.5)


def test_flax_parity():
    flax = pytest.importorskip("flax.nnx")
    ours = nnx.LoRALinear(3, 2, lora_rank=2, b_initializer=nnx.initializers.ones, rngs=nnx.Rngs(0))
    theirs = flax.LoRALinear(3, 2, lora_rank=2, rngs=flax.Rngs(1))
    flat = dict(nnx.state(ours).flat_state())
    for path, var in flax.state(theirs).flat_state():
        var.value = flat[tuple(path)].value
    x = _x()
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-6)
    p_ours, p_theirs = nnx.PReLU(0.3), flax.PReLU(0.3)
    np.testing.assert_allclose(p_ours(x), p_theirs(x), atol=1e-7)
