"""LinearGeneral and Einsum: parity with jnp.tensordot/einsum and flax.nnx, lazy sizes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError


def _normal(seed, shape):
    """Test data from numpy: no XLA compilation per shape, unlike jax.random."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _randomize(model, seed=7):
    """Gives every parameter random values (biases start at zero otherwise)."""
    for i, (_, var) in enumerate(nnx.state(model, nnx.Param).flat_state()):
        var.value = _normal(seed + i, var.value.shape)
    return model


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- LinearGeneral


def test_multi_axis_matches_tensordot():
    layer = _randomize(nnx.LinearGeneral((3, 4), (2, 5), axis=(-2, -1), rngs=nnx.Rngs(0)))
    x = _normal(1, (6, 3, 4))
    expected = jnp.tensordot(x, layer.kernel.value, axes=((1, 2), (0, 1))) + layer.bias.value[None]
    assert layer.kernel.shape == (3, 4, 2, 5) and layer.bias.shape == (2, 5)
    _close(layer(x), expected)


def test_middle_axis_keeps_the_other_axes_in_order():
    layer = _randomize(nnx.LinearGeneral(3, 4, axis=1, rngs=nnx.Rngs(0)))
    x = _normal(1, (2, 3, 5))
    expected = jnp.einsum("acb,cd->abd", x, layer.kernel.value) + layer.bias.value[None, None]
    assert layer(x).shape == (2, 5, 4)
    _close(layer(x), expected)


def test_batch_axis_gives_each_index_its_own_kernel():
    layer = _randomize(nnx.LinearGeneral(4, (3, 2), batch_axis={0: 2}, rngs=nnx.Rngs(0)))
    x = _normal(1, (2, 5, 4))
    assert layer.kernel.shape == (2, 4, 3, 2) and layer.bias.shape == (2, 3, 2)
    expected = jnp.einsum("btd,bdxy->btxy", x, layer.kernel.value) + layer.bias.value[:, None]
    _close(layer(x), expected)


def test_kernel_init_sees_the_flattened_fan_in_and_fan_out():
    seen = []

    def init(key, shape, dtype):
        seen.append(shape)
        return jnp.ones(shape, dtype)

    nnx.LinearGeneral(
        (3, 4), (2, 5), axis=(0, 1), batch_axis={}, kernel_init=init, rngs=nnx.Rngs(0)
    )
    nnx.LinearGeneral(4, 3, batch_axis={0: 2}, kernel_init=init, rngs=nnx.Rngs(0))
    assert seen == [(12, 10), (8, 3)]


def test_dtypes_and_precision_settings():
    layer = nnx.LinearGeneral(3, 4, param_dtype=jnp.bfloat16, dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert layer.kernel.value.dtype == jnp.bfloat16
    assert layer(jnp.ones((2, 3))).dtype == jnp.float32
    half = nnx.LinearGeneral(3, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert half(jnp.ones((2, 3))).dtype == jnp.bfloat16
    acc = nnx.LinearGeneral(
        3, 4, dtype=jnp.bfloat16, preferred_element_type=jnp.float32, rngs=nnx.Rngs(0)
    )
    assert acc(jnp.ones((2, 3))).dtype == jnp.float32
    exact = nnx.LinearGeneral(3, 4, precision=jax.lax.Precision.HIGHEST, rngs=nnx.Rngs(0))
    assert exact(jnp.ones((2, 3))).shape == (2, 4)


def test_custom_dot_general_and_dot_general_cls():
    calls = []

    def dot(*args, **kwargs):
        calls.append("fn")
        return jax.lax.dot_general(*args, **kwargs)

    class Dot:
        def __call__(self, *args, **kwargs):
            calls.append("cls")
            return jax.lax.dot_general(*args, **kwargs)

    nnx.LinearGeneral(3, 4, dot_general=dot, rngs=nnx.Rngs(0))(jnp.ones((1, 3)))
    nnx.LinearGeneral(3, 4, dot_general=dot, dot_general_cls=Dot, rngs=nnx.Rngs(0))(
        jnp.ones((1, 3))
    )
    assert calls == ["fn", "cls"]


def test_metadata_reaches_the_variables():
    layer = nnx.LinearGeneral(
        3, 4, kernel_metadata={"sharding_names": ("a", "b")}, rngs=nnx.Rngs(0)
    )
    assert layer.kernel.get_metadata()["sharding_names"] == ("a", "b")


def test_lazy_in_features_and_second_call_check():
    layer = nnx.LinearGeneral(None, (2, 5), axis=(-2, -1), rngs=nnx.Rngs(0))
    assert layer.kernel is None
    assert layer(jnp.ones((6, 3, 4))).shape == (6, 2, 5)
    assert layer.in_features == (3, 4) and layer.kernel.shape == (3, 4, 2, 5)
    with pytest.raises(ShapeError, match=r"LinearGeneral .*in_features=\(3, 4\).*\(6, 3, 7\)"):
        layer(jnp.ones((6, 3, 7)))


def test_partially_lazy_in_features():
    layer = nnx.LinearGeneral((None, 4), 2, axis=(-2, -1), rngs=nnx.Rngs(0))
    assert layer(jnp.ones((5, 3, 4))).shape == (5, 2)
    assert layer.in_features == (3, 4)


def test_lazy_under_lazy_init_and_jit():
    abstract = nnx.lazy_init(nnx.LinearGeneral(None, 3, axis=0, rngs=nnx.Rngs(0)), jnp.ones((4, 2)))
    assert abstract.kernel.shape == (4, 3)
    jitted = nnx.LinearGeneral(None, 3, axis=0, rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, x: m(x))(jitted, jnp.ones((4, 2)))
    assert out.shape == (2, 3) and jitted.kernel.shape == (4, 3)


def test_wrong_feature_size_names_layer_config_and_path():
    class Model(nnx.Module):
        def __init__(self):
            self.proj = nnx.LinearGeneral((3, 4), 2, axis=(-2, -1), rngs=nnx.Rngs(0))

    model = Model()
    with pytest.raises(
        ShapeError, match=r"LinearGeneral at Model\.proj \(in_features=\(3, 4\), axis=\(-2, -1\)"
    ):
        model.proj(jnp.ones((2, 3, 5)))


def test_wrong_rank_is_a_shape_error():
    layer = nnx.LinearGeneral((3, 4), 2, axis=(-2, -1), rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        layer(jnp.ones((4,)))
    batched = nnx.LinearGeneral(4, 2, axis=-1, batch_axis={0: 3, 1: 2}, rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        batched(jnp.ones((4,)))
    with pytest.raises(ShapeError, match=r"sizes \(4,\) at axes \(-1,\) and \(3, 2\)"):
        batched(jnp.ones((3, 3, 4)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_features=-1, out_features=2), "in_features must be a positive int"),
        (dict(in_features=3, out_features=0), "out_features must be a positive int"),
        (dict(in_features=3, out_features=()), "out_features must be a positive int"),
        (dict(in_features=(3, 4), out_features=2), "gives 2 sizes but axis=-1 names 1"),
        (dict(in_features=3, out_features=2, axis="x"), "axis must be an int"),
        (dict(in_features=(3, 3), out_features=2, axis=(1, 1)), "names an axis twice"),
        (dict(in_features=3, out_features=2, batch_axis={1: 2}), "leading axes 0, 1"),
        (dict(in_features=3, out_features=2, batch_axis={0: 0}), "positive sizes"),
        (dict(in_features=3, out_features=2, axis=0, batch_axis={0: 2}), "both contracted"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        nnx.LinearGeneral(**kwargs, rngs=nnx.Rngs(0))


def test_negative_axis_overlapping_batch_axis_fails_at_call():
    layer = nnx.LinearGeneral(2, 3, axis=-2, batch_axis={0: 2}, rngs=nnx.Rngs(0))
    assert layer(jnp.ones((2, 2, 5))).shape == (2, 5, 3)
    with pytest.raises(ShapeError, match="contracts the batch axes"):
        layer(jnp.ones((2, 4)))


# --------------------------------------------------------------------------- Einsum


def test_einsum_matches_jnp_einsum_with_bias():
    layer = _randomize(nnx.Einsum("btd,dnh->btnh", (6, 2, 3), (2, 3), rngs=nnx.Rngs(0)))
    x = _normal(1, (2, 5, 6))
    expected = jnp.einsum("btd,dnh->btnh", x, layer.kernel.value) + layer.bias.value[None, None]
    _close(layer(x), expected)


def test_einsum_bias_broadcast_follows_the_output_order():
    # The kernel's output axes come out in a different order and between input axes.
    layer = _randomize(nnx.Einsum("bd,dnh->nbh", (6, 2, 3), (2, 3), rngs=nnx.Rngs(0)))
    x = _normal(1, (4, 6))
    bias = layer.bias.value  # (n, h) laid out as (n, 1, h)
    expected = jnp.einsum("bd,dnh->nbh", x, layer.kernel.value) + bias[:, None, :]
    _close(layer(x), expected)


def test_einsum_with_ellipses():
    layer = _randomize(nnx.Einsum("...d,df->...f", (6, 4), (4,), rngs=nnx.Rngs(0)))
    x = _normal(1, (2, 3, 6))
    _close(
        layer(x), jnp.einsum("...d,df->...f", x, layer.kernel.value) + layer.bias.value[None, None]
    )
    kernel_ellipsis = _randomize(nnx.Einsum("td,...dh->...th", (2, 6, 3), (2, 3), rngs=nnx.Rngs(0)))
    y = _normal(2, (5, 6))
    expected = jnp.einsum("td,...dh->...th", y, kernel_ellipsis.kernel.value)
    _close(kernel_ellipsis(y), expected + kernel_ellipsis.bias.value[:, None, :])


def test_einsum_str_at_call_overrides_and_spaces_are_ignored():
    layer = _randomize(nnx.Einsum("ab, bc -> ac", (3, 4), rngs=nnx.Rngs(0)))
    assert layer.einsum_str == "ab,bc->ac"
    x = _normal(1, (3, 2))
    _close(layer(x, "ba,bc->ac"), jnp.einsum("ba,bc->ac", x, layer.kernel.value))


def test_einsum_dtypes():
    layer = nnx.Einsum("ab,bc->ac", (3, 4), (4,), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer(jnp.ones((2, 3))).dtype == jnp.bfloat16
    acc = nnx.Einsum(
        "ab,bc->ac",
        (3, 4),
        dtype=jnp.bfloat16,
        preferred_element_type=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    assert acc(jnp.ones((2, 3))).dtype == jnp.float32


@pytest.mark.parametrize(
    "args, match",
    [
        (("ab,bc", (3, 4)), "explicit two-operand equation"),
        (("ab->ab", (3, 4)), "explicit two-operand equation"),
        (("ab,bc,cd->ad", (3, 4)), "explicit two-operand equation"),
        (("ab,bc->ac", (3, 4, 5)), "has 2 named axes but kernel_shape"),
        (("ab,bc->ac", (3, -4)), "kernel_shape must be a positive int"),
        (("ab,bc->ac", (3, 4), (5,)), "bias_shape=\\(5,\\) has 5 entries"),
        (("d,...dh->...h", (2, 6, 3), (3,)), "bias_shape=\\(3,\\) has 3 entries.*have 6"),
    ],
)
def test_einsum_bad_configuration(args, match):
    with pytest.raises(ConfigError, match=match):
        nnx.Einsum(*args, rngs=nnx.Rngs(0))


def test_einsum_bad_inputs_name_the_layer():
    layer = nnx.Einsum("btd,dh->bth", (6, 4), rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match=r"Einsum \(einsum_str='btd,dh->bth'.*\(2, 6\)"):
        layer(jnp.ones((2, 6)))
    with pytest.raises(ShapeError, match=r"shape \(2, 3, 5\)"):
        layer(jnp.ones((2, 3, 5)))


# --------------------------------------------------------------------------- flax oracle


def _copy_params(ours, theirs):
    for path, var in nnx.state(ours, nnx.Param).flat_state():
        target = theirs
        for part in path:
            target = getattr(target, part) if isinstance(part, str) else target[part]
        target[...] = jnp.asarray(var.value)


def _flat_grads(grads, flax_nnx=None):
    if flax_nnx is None:
        return {path: var.value for path, var in grads.flat_state()}
    return {path: var[...] for path, var in flax_nnx.to_flat_state(grads)}


def _compare_with_flax(ours, theirs, x, tol=1e-5):
    flax_nnx = pytest.importorskip("flax.nnx")
    _copy_params(ours, theirs)
    _close(ours(x), theirs(x), tol)
    loss = lambda m, x: jnp.sum(jnp.sin(m(x)))
    ours_g, ours_gx = nnx.grad(loss, argnums=(0, 1))(ours, x)
    theirs_g, theirs_gx = flax_nnx.grad(loss, argnums=(0, 1))(theirs, x)
    ours_flat, theirs_flat = _flat_grads(ours_g), _flat_grads(theirs_g, flax_nnx)
    assert set(ours_flat) == set(theirs_flat)
    for path, g in ours_flat.items():
        _close(g, theirs_flat[path], tol)
    _close(ours_gx, theirs_gx, tol)
    return float(jnp.max(jnp.abs(ours(x) - theirs(x))))


@pytest.mark.parametrize(
    "args, kwargs, shape",
    [
        (((3, 4), (2, 5)), dict(axis=(-2, -1)), (6, 3, 4)),
        ((4, (3, 2)), dict(batch_axis={0: 2}), (2, 5, 4)),
        pytest.param((3, 4), dict(axis=1, use_bias=False), (2, 3, 5), marks=pytest.mark.slow),
    ],
)
def test_linear_general_matches_flax(args, kwargs, shape):
    flax_nnx = pytest.importorskip("flax.nnx")
    ours = _randomize(nnx.LinearGeneral(*args, **kwargs, rngs=nnx.Rngs(0)))
    theirs = flax_nnx.LinearGeneral(*args, **kwargs, rngs=flax_nnx.Rngs(1))
    _compare_with_flax(ours, theirs, _normal(1, shape))


def test_einsum_matches_flax():
    flax_nnx = pytest.importorskip("flax.nnx")
    args = ("btd,dnh->nbth", (6, 2, 3), (2, 3))
    ours = _randomize(nnx.Einsum(*args, rngs=nnx.Rngs(0)))
    theirs = flax_nnx.Einsum(*args, rngs=flax_nnx.Rngs(1))
    _compare_with_flax(ours, theirs, _normal(1, (2, 5, 6)))
