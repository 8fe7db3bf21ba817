"""nnx.quantize: weight-only int8 kernels with per-output-channel QuantScale Variables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError


def _param_bytes(model: nnx.Module) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _x(*shape: int) -> jax.Array:
    return jax.random.normal(jax.random.key(1), shape)


# (layer, input, kernel attribute, expected scale shape)
LAYERS = [
    (lambda r: nnx.Linear(6, 5, rngs=r), (3, 6), "kernel", (1, 5)),
    (lambda r: nnx.Conv(3, 4, kernel_size=(3, 3), rngs=r), (2, 5, 5, 3), "kernel", (1, 1, 1, 4)),
    (
        lambda r: nnx.ConvTranspose(3, 4, kernel_size=(3,), rngs=r),
        (2, 5, 3),
        "kernel",
        (1, 1, 4),
    ),
    (
        lambda r: nnx.ConvTranspose(3, 4, kernel_size=(3,), transpose_kernel=True, rngs=r),
        (2, 5, 3),
        "kernel",
        (1, 4, 1),
    ),
    (
        lambda r: nnx.LinearGeneral((2, 3), (4, 5), axis=(-2, -1), rngs=r),
        (7, 2, 3),
        "kernel",
        (1, 1, 4, 5),
    ),
    (lambda r: nnx.Einsum("btd,dnh->btnh", (6, 2, 3), rngs=r), (2, 4, 6), "kernel", (1, 2, 3)),
]


@pytest.mark.parametrize("make, shape, name, scale_shape", LAYERS)
def test_layer_output_close_to_float_and_kernel_is_int8(make, shape, name, scale_shape):
    layer = make(nnx.Rngs(0))
    x = _x(*shape)
    w = getattr(layer, name).value
    y = layer(x)
    nnx.quantize(layer)
    kernel, scale = getattr(layer, name), getattr(layer, f"{name}_scale")
    assert kernel.raw_value.dtype == jnp.int8 and isinstance(scale, nnx.QuantScale)
    assert scale.shape == scale_shape
    # symmetric: the largest |w| of each output channel maps to +-127
    assert int(jnp.max(jnp.abs(kernel.raw_value.astype(jnp.int32)))) == 127
    assert float(jnp.max(jnp.abs(kernel.raw_value * scale.value - w))) <= float(
        jnp.max(scale.value) / 2 + 1e-7
    )
    y_q = layer(x)
    assert y_q.dtype == y.dtype
    np.testing.assert_allclose(y_q, y, atol=0.05 * float(jnp.max(jnp.abs(y))))
    assert not np.array_equal(y_q, y)  # the int8 kernel is really used


def test_quantized_layer_runs_under_jit():
    layer = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    nnx.quantize(layer)
    x = _x(3, 6)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), layer(x), rtol=1e-5, atol=1e-6)


def test_embed_lookup_and_attend_use_per_row_scales():
    embed = nnx.Embed(10, 8, rngs=nnx.Rngs(0))
    ids = jnp.array([[1, 2], [9, 0]])
    q = _x(3, 8)
    lookup, att = embed(ids), embed.attend(q)
    nnx.quantize(embed)
    assert embed.embedding.raw_value.dtype == jnp.int8
    assert embed.embedding_scale.shape == (10, 1)
    np.testing.assert_allclose(embed(ids), lookup, atol=0.01)
    np.testing.assert_allclose(embed.attend(q), att, atol=0.05)


def test_quantized_embed_dequantises_only_the_rows_it_looks_up():
    embed = nnx.Embed(1000, 8, rngs=nnx.Rngs(0))
    nnx.quantize(embed)
    ids = jnp.array([[3, 999], [0, 3]])
    # the same values as dequantising the whole table and then looking up
    whole = embed.embedding.raw_value.astype(jnp.float32) * embed.embedding_scale.value
    np.testing.assert_array_equal(embed(ids), jnp.take(whole, ids, axis=0))
    jaxpr = jax.make_jaxpr(lambda m, i: m(i))(embed, ids)
    float_tables = [
        v.aval.shape
        for eqn in jaxpr.eqns
        for v in eqn.outvars
        if v.aval.shape == (1000, 8) and jnp.issubdtype(v.aval.dtype, jnp.floating)
    ]
    assert float_tables == [], "the whole table was dequantised for a lookup of four rows"


def test_filter_selects_layers_and_quantize_is_idempotent():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs))
    assert nnx.quantize(model, nnx.PathContains(1)) is model
    assert model.layers[0].kernel.raw_value.dtype == jnp.float32
    assert model.layers[1].kernel.raw_value.dtype == jnp.int8
    q1 = model.layers[1].kernel.raw_value
    nnx.quantize(model)
    assert model.layers[0].kernel.raw_value.dtype == jnp.int8
    assert model.layers[1].kernel.raw_value is q1  # not quantised twice


def test_quantized_model_splits_merges_and_keeps_kinds():
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    nnx.quantize(model)
    graphdef, params = nnx.split(model, nnx.Param)
    assert set(params.to_pure_dict()) == {"kernel", "kernel_scale", "bias"}
    assert nnx.state(model, nnx.QuantScale)["kernel_scale"].shape == (1, 3)
    again = nnx.merge(graphdef, params)
    x = jnp.ones((2, 4))
    np.testing.assert_array_equal(again(x), model(x))


class _WithNorm(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 3, rngs=rngs)
        self.norm = nnx.LayerNorm(3, rngs=rngs)


def test_unsupported_layer_names_it_and_why_and_changes_nothing():
    model = _WithNorm(nnx.Rngs(0))
    before = jax.tree.map(lambda x: x, nnx.state(model))
    with pytest.raises(ConfigError, match=r"(?s)LayerNorm.*\['scale', 'bias'\].*output-channel"):
        nnx.quantize(model, nnx.Any(nnx.Linear, nnx.LayerNorm))
    assert not hasattr(model.linear, "kernel_scale")
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), before)


def test_everything_filter_refuses_unsupported_layers():
    model = _WithNorm(nnx.Rngs(0))
    with pytest.raises(ConfigError, match="LayerNorm"):
        nnx.quantize(model, ...)


def test_lazy_einsum_ellipsis_and_tied_kernels_are_refused():
    lazy = nnx.Linear(None, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="never called"):
        nnx.quantize(lazy)
    ell = nnx.Einsum("...d,...dh->...h", (4, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="ellipsis"):
        nnx.quantize(ell)
    rngs = nnx.Rngs(0)
    a, b = nnx.Linear(3, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs)
    b.kernel = a.kernel
    model = nnx.Sequential(a, b)
    with pytest.raises(ConfigError, match="tied"):
        nnx.quantize(model)
    assert a.kernel.raw_value.dtype == jnp.float32 and not hasattr(a, "kernel_scale")


@pytest.mark.slow
def test_digits_int8_accuracy_within_one_point_and_4x_smaller():
    pytest.importorskip("sklearn")
    from nnx.examples import digits

    x_train, y_train, x_test, y_test = digits.load_digits(0)
    model = digits.CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, digits._adam(1e-3))
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    rng = np.random.default_rng(0)
    for _ in range(6):
        order = rng.permutation(len(y_train))
        for i in range(0, len(order) - 31, 32):
            idx = order[i : i + 32]
            digits.train_step(
                model, optimizer, metrics, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
            )

    def accuracy(m: nnx.Module) -> float:
        metrics.reset()
        digits.eval_step(m, metrics, jnp.asarray(x_test), jnp.asarray(y_test))
        return float(metrics.compute()["accuracy"])

    fp32 = nnx.inference(model)
    int8 = nnx.quantize(nnx.inference(model))
    acc_f, acc_q = accuracy(fp32), accuracy(int8)
    bytes_f, bytes_q = _param_bytes(fp32), _param_bytes(int8)
    print(f"digits: fp32 acc {acc_f:.4f} {bytes_f} B; int8 acc {acc_q:.4f} {bytes_q} B")
    assert acc_f > 0.9
    assert abs(acc_f - acc_q) <= 0.01
    assert 3.5 < bytes_f / bytes_q <= 4.0
