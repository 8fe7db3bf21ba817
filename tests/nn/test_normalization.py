"""Normalization layers: parity with plain jax.numpy formulas and with flax.nnx (optional
oracle), running statistics, statistics across devices, lazy creation, train/eval, errors."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nnx
from nnx.errors import ConfigError, ShapeError


def _x(shape, seed=1, offset=0.0):
    return jax.random.normal(jax.random.key(seed), shape) * 2.0 + offset


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def _randomize(layer, seed=7):
    """Non-trivial scale and bias, so that parity checks see them."""
    for i, name in enumerate(("scale", "bias")):
        var = getattr(layer, name, None)
        if var is not None:
            var.value = jax.random.normal(jax.random.key(seed + i), var.value.shape)
    return layer


def _axes(ndim, axes):
    axes = (axes,) if isinstance(axes, int) else axes
    return tuple(sorted(a % ndim for a in axes))


def _reference(x, red, feat, scale, bias, eps, use_mean=True):
    """(x - E[x]) / sqrt(Var[x] + eps) * scale + bias, statistics over `red`."""
    red, feat = _axes(x.ndim, red), _axes(x.ndim, feat)
    mean = x.mean(red, keepdims=True) if use_mean else jnp.zeros(())
    var = ((x - mean) ** 2).mean(red, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + eps)
    shape = tuple(x.shape[a] if a in feat else 1 for a in range(x.ndim))
    if scale is not None:
        y = y * scale.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _val(v):
    return None if v is None else v.value


# -- formulas ---------------------------------------------------------------------------------

LAYER_NORM = [
    ((4, 6), {}),
    ((2, 3, 4), dict(reduction_axes=(1, 2))),
    ((2, 3, 4), dict(reduction_axes=(-2, -1), feature_axes=(-2, -1))),
    ((2, 3, 4), dict(reduction_axes=-1, feature_axes=1)),
    ((4, 6), dict(use_fast_variance=False, epsilon=1e-3)),
    ((4, 6), dict(use_bias=False, use_scale=False)),
]


@pytest.mark.parametrize("shape,kw", LAYER_NORM, ids=str)
def test_layer_norm_matches_formula(shape, kw):
    feat = kw.get("feature_axes", -1)
    n = int(np.prod([shape[a] for a in _axes(len(shape), feat)]))
    layer = _randomize(nnx.LayerNorm(n, rngs=nnx.Rngs(0), **kw))
    x = _x(shape, offset=3.0)
    ref = _reference(
        x,
        kw.get("reduction_axes", -1),
        feat,
        _val(layer.scale),
        _val(layer.bias),
        kw.get("epsilon", 1e-6),
    )
    _close(layer(x), ref, 1e-4)
    assert (layer.scale is None) == (kw.get("use_scale") is False)


def test_rms_norm_matches_formula():
    layer = _randomize(nnx.RMSNorm(6, rngs=nnx.Rngs(0)))
    x = _x((3, 6), offset=1.0)
    ref = x / jnp.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * layer.scale.value[None]
    _close(layer(x), ref, 1e-5)
    assert not hasattr(layer, "bias") or layer.bias is None
    plain = nnx.RMSNorm(6, use_scale=False, rngs=nnx.Rngs(0))
    _close(plain(x), ref / layer.scale.value[None], 1e-5)


@pytest.mark.parametrize(
    "kw,groups,axes",
    [
        (dict(num_groups=4), 4, None),
        (dict(num_groups=None, group_size=2), 4, None),
        (dict(num_groups=2, reduction_axes=(-1,)), 2, (-1,)),
    ],
    ids=["num_groups", "group_size", "per-position"],
)
def test_group_norm_matches_formula(kw, groups, axes):
    layer = _randomize(nnx.GroupNorm(8, rngs=nnx.Rngs(0), **kw))
    assert (layer.num_groups, layer.group_size) == (groups, 8 // groups)
    x = _x((2, 5, 8), offset=2.0)
    g = x.reshape(2, 5, groups, 8 // groups)
    red = (1, 3) if axes is None else (3,)
    mean, var = g.mean(red, keepdims=True), g.var(red, keepdims=True)
    ref = ((g - mean) / jnp.sqrt(var + 1e-6)).reshape(x.shape)
    ref = ref * layer.scale.value.reshape(1, 1, 8) + layer.bias.value.reshape(1, 1, 8)
    _close(layer(x), ref, 1e-4)


def test_instance_norm_matches_formula():
    layer = _randomize(nnx.InstanceNorm(3, rngs=nnx.Rngs(0)))
    x = _x((2, 4, 5, 3), offset=-1.0)
    ref = _reference(x, (1, 2), -1, layer.scale.value, layer.bias.value, 1e-6)
    _close(layer(x), ref, 1e-4)


def test_mask_restricts_the_statistics():
    layer = nnx.LayerNorm(6, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    x = _x((2, 6))
    mask = jnp.array([[True] * 4 + [False] * 2, [True] * 6])
    y = layer(x, mask=mask)
    _close(y[0, :4], _reference(x[0, :4], -1, -1, None, None, 1e-6), 1e-4)
    _close(y[1], _reference(x[1], -1, -1, None, None, 1e-6), 1e-4)


def test_statistics_in_float32_for_bfloat16():
    layer = nnx.LayerNorm(8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = _x((4, 8), offset=100.0)  # large offset: bf16 statistics would lose the signal
    y = layer(x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and layer.scale.value.dtype == jnp.float32
    ref = _reference(x.astype(jnp.bfloat16).astype(jnp.float32), -1, -1, None, None, 1e-6)
    _close(y.astype(jnp.float32), ref, 0.05)


# -- BatchNorm --------------------------------------------------------------------------------


def test_batch_norm_training_and_running_statistics():
    bn = _randomize(nnx.BatchNorm(3, momentum=0.8, rngs=nnx.Rngs(0)))
    mean, var = np.zeros(3), np.ones(3)
    for step in range(3):
        x = _x((16, 2, 3), seed=step, offset=step)
        y = bn(x)
        batch_mean, batch_var = x.mean((0, 1)), x.var((0, 1))
        _close(y, _reference(x, (0, 1), -1, bn.scale.value, bn.bias.value, 1e-5), 1e-4)
        mean = 0.8 * mean + 0.2 * np.asarray(batch_mean)
        var = 0.8 * var + 0.2 * np.asarray(batch_var)
        _close(bn.mean.value, mean, 1e-5)
        _close(bn.var.value, var, 1e-5)
    assert bn.mean.value.dtype == jnp.float32 and isinstance(bn.mean, nnx.BatchStat)
    # Evaluation: normalise with the running statistics, leave them alone.
    bn.eval()
    assert bn.use_running_average is True
    x = _x((4, 2, 3), seed=9)
    mean, var = mean.reshape(1, 1, 3), var.reshape(1, 1, 3)
    scale, bias = bn.scale.value.reshape(1, 1, 3), bn.bias.value.reshape(1, 1, 3)
    expected = (x - mean) / np.sqrt(var + 1e-5) * scale + bias
    _close(bn(x), expected, 1e-4)
    _close(bn.mean.value, mean.reshape(3), 1e-6)
    # The call argument overrides the attribute, both ways.
    bn(x, use_running_average=False)
    assert not np.allclose(bn.mean.value, mean.reshape(3))
    bn.train()
    assert bn.use_running_average is False
    before = bn.mean.value
    bn(x, use_running_average=True)
    _close(bn.mean.value, before, 0)


def test_batch_norm_feature_axis_and_mode_errors():
    bn = nnx.BatchNorm(3, axis=1, use_running_average=None, rngs=nnx.Rngs(0))
    x = _x((4, 3, 5))
    with pytest.raises(ConfigError, match=r"BatchNorm .*use_running_average is None"):
        bn(x)
    y = bn(x, use_running_average=False)
    _close(y, _reference(x, (0, 2), 1, bn.scale.value, bn.bias.value, 1e-5), 1e-4)
    assert bn.mean.value.shape == (3,)


def test_batch_norm_in_jit_writes_statistics_back():
    bn = nnx.BatchNorm(3, momentum=0.5, rngs=nnx.Rngs(0))
    x = _x((8, 3), offset=2.0)
    step = nnx.jit(lambda m, x: m(x))
    step(bn, x)
    step(bn, x)
    _close(bn.mean.value, 0.75 * x.mean(0), 1e-5)


# -- statistics across devices ----------------------------------------------------------------


def test_batch_norm_axis_name_under_vmap_and_shard_map():
    x = _x((8, 4, 3), offset=1.0)
    ref = nnx.BatchNorm(3, momentum=0.5, rngs=nnx.Rngs(0))
    expected = ref(x.reshape(32, 3)).reshape(8, 4, 3)

    bn = nnx.BatchNorm(3, momentum=0.5, axis_name="batch", rngs=nnx.Rngs(0))
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(bn, x)
    _close(y, expected, 1e-5)
    _close(bn.mean.value, ref.mean.value, 1e-6)
    _close(bn.var.value, ref.var.value, 1e-6)

    mesh = jax.make_mesh((8,), ("data",))
    bn = nnx.BatchNorm(3, momentum=0.5, axis_name="data", rngs=nnx.Rngs(0))
    xs = jax.device_put(x.reshape(32, 3), NamedSharding(mesh, P("data")))
    f = nnx.shard_map(lambda m, x: m(x), mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    _close(f(bn, xs).reshape(8, 4, 3), expected, 1e-5)
    _close(bn.mean.value, ref.mean.value, 1e-6)


def test_layer_norm_axis_name_under_vmap():
    # Each lane holds part of the features: statistics over the named axis see all of them.
    x = _x((2, 8))
    ln = nnx.LayerNorm(2, axis_name="shard", use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    parts = x.reshape(2, 4, 2).transpose(1, 0, 2)  # 4 lanes of (2, 2)
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="shard")(ln, parts)
    _close(y.transpose(1, 0, 2).reshape(2, 8), _reference(x, -1, -1, None, None, 1e-6), 1e-4)


def test_axis_index_groups_under_pmap():
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    x = _x((8, 4, 3), offset=1.0)
    bn = nnx.BatchNorm(3, axis_name="d", axis_index_groups=groups, rngs=nnx.Rngs(0))
    y = nnx.pmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="d")(bn, x)
    for half in (slice(0, 4), slice(4, 8)):
        part = x[half].reshape(16, 3)
        expected = _reference(part, 0, -1, None, None, 1e-5).reshape(4, 4, 3)
        _close(y[half], expected, 1e-4)


# -- WeightNorm and SpectralNorm --------------------------------------------------------------


def test_weight_norm_matches_formula_and_keeps_the_weights():
    inner = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    wn = nnx.WeightNorm(inner, rngs=nnx.Rngs(1))
    wn.scales["kernel"].value = jnp.array([0.5, 2.0, -1.0])
    v = inner.kernel.value
    w = wn.scales["kernel"].value[None] * v / jnp.linalg.norm(v, axis=0, keepdims=True)
    x = _x((5, 4))
    b = inner.bias.value[None]
    _close(wn(x), x @ w + b, 1e-5)
    _close(inner.kernel.value, v, 0)  # the direction is not overwritten
    _close(wn(x), x @ w + b, 1e-5)  # so a second call gives the same
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(wn)
    assert set(dict(nnx.to_pure_dict(grads))) == {"layer_instance", "scales"}
    # Only the norm of each output column changes the output through the scale.
    assert bool(jnp.all(grads["scales"]["kernel"].value != 0))
    w_plain = v / jnp.linalg.norm(v, axis=0, keepdims=True)
    plain = nnx.WeightNorm(inner, use_scale=False, rngs=nnx.Rngs(1))
    assert plain.scales is None
    _close(plain(x), x @ w_plain + b, 1e-5)


def test_weight_norm_frobenius_and_custom_filter():
    conv = nnx.Conv(2, 3, (3,), rngs=nnx.Rngs(0))
    wn = nnx.WeightNorm(conv, feature_axes=None, rngs=nnx.Rngs(1))
    assert wn.scales["kernel"].value.shape == ()
    k = conv.kernel.value
    ref = nnx.Conv(2, 3, (3,), rngs=nnx.Rngs(0))
    ref.kernel.value = k / jnp.linalg.norm(k)
    x = _x((2, 6, 2))
    _close(wn(x), ref(x), 1e-5)
    seq = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    both = nnx.WeightNorm(seq, variable_filter=nnx.PathContains("kernel"), rngs=nnx.Rngs(2))
    assert sorted(both.scales) == ["layers/0/kernel", "layers/1/kernel"]
    assert both(_x((4, 2))).shape == (4, 2)


def _power_iteration(w, u, n):
    for _ in range(n):
        v = u @ w.T
        v = v / jnp.linalg.norm(v)
        u = v @ w
        u = u / jnp.linalg.norm(u)
    return u, v, (v @ w @ u.T)[0, 0]


def test_spectral_norm_power_iteration_and_stats():
    inner = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    sn = nnx.SpectralNorm(inner, n_steps=3, rngs=nnx.Rngs(1))
    stats = sn.batch_stats["kernel"]
    assert isinstance(stats["u"], nnx.BatchStat) and stats["u"].value.shape == (1, 3)
    w, u0 = inner.kernel.value, stats["u"].value
    u, _, sigma = _power_iteration(w, u0, 3)
    x = _x((5, 4))
    _close(sn(x), x @ (w / sigma) + inner.bias.value[None], 1e-5)
    _close(stats["u"].value, u, 1e-5)
    _close(stats["sigma"].value, sigma, 1e-5)
    _close(inner.kernel.value, w, 0)
    # Evaluation (or update_stats=False) leaves the power-iteration state alone.
    u = stats["u"].value
    sn.eval()
    sn(x)
    _close(stats["u"].value, u, 0)
    sn.train()
    sn(x, update_stats=False)
    _close(stats["u"].value, u, 0)
    sn(x)
    assert not np.array_equal(stats["u"].value, u)
    # Many steps converge on the largest singular value.
    for _ in range(10):
        sn(x)
    _close(stats["sigma"].value, jnp.linalg.norm(w, 2), 1e-4)


def test_spectral_norm_gradient_treats_u_v_as_constants():
    inner = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    sn = nnx.SpectralNorm(inner, n_steps=2, update_stats=False, rngs=nnx.Rngs(1))
    u0 = sn.batch_stats["kernel"]["u"].value
    x = _x((5, 4))

    def ref_loss(w):
        u, v, _ = _power_iteration(w, u0, 2)
        u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
        return jnp.sum(jnp.sin(x @ (w / (v @ w @ u.T)[0, 0]) + inner.bias.value[None]))

    grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(sn)
    _close(grads["layer_instance"]["kernel"].value, jax.grad(ref_loss)(inner.kernel.value), 1e-5)


def test_spectral_norm_conv_kernel_as_matrix():
    conv = nnx.Conv(2, 3, (3,), rngs=nnx.Rngs(0))
    sn = nnx.SpectralNorm(conv, rngs=nnx.Rngs(1))
    assert sn.batch_stats["kernel"]["u"].value.shape == (1, 3)
    assert sn(_x((2, 6, 2))).shape == (2, 6, 3)
    with pytest.raises(ConfigError, match=r"'kernel' has shape \(3, 2, 3\).*error_on_non_matrix"):
        nnx.SpectralNorm(conv, error_on_non_matrix=True, rngs=nnx.Rngs(1))


# -- lazy creation ----------------------------------------------------------------------------


class _Model(nnx.Module):
    def __init__(self, norm):
        self.blocks = [nnx.Linear(2, 2, rngs=nnx.Rngs(0)), norm]


LAZY = {
    "LayerNorm": (lambda: nnx.LayerNorm(None, rngs=nnx.Rngs(0)), (2, 5), 5, (2, 6)),
    "LayerNorm-2axes": (
        lambda: nnx.LayerNorm(None, reduction_axes=(1, 2), feature_axes=(1, 2), rngs=nnx.Rngs(0)),
        (2, 3, 4),
        12,
        (2, 3, 5),
    ),
    "RMSNorm": (lambda: nnx.RMSNorm(None, rngs=nnx.Rngs(0)), (2, 5), 5, (2, 6)),
    "GroupNorm": (
        lambda: nnx.GroupNorm(None, num_groups=2, rngs=nnx.Rngs(0)),
        (2, 3, 6),
        6,
        (2, 3, 4),
    ),
    "InstanceNorm": (lambda: nnx.InstanceNorm(None, rngs=nnx.Rngs(0)), (2, 3, 4), 4, (2, 3, 5)),
    "BatchNorm": (lambda: nnx.BatchNorm(None, axis=1, rngs=nnx.Rngs(0)), (4, 5, 2), 5, (4, 6, 2)),
}


def _re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("make,shape,n,bad", list(LAZY.values()), ids=list(LAZY))
def test_lazy_creates_then_checks(make, shape, n, bad):
    model = _Model(make())
    norm = model.blocks[1]
    assert norm.scale is None and norm.num_features is None
    norm(_x(shape))
    assert norm.num_features == n and norm.scale.value.shape == (n,)
    assert not hasattr(norm, "lazy_rngs")
    name = type(norm).__name__
    with pytest.raises(
        ShapeError,
        match=rf"{name} at _Model\.blocks\[1\] expects .*num_features={n}.*{_re_shape(bad)}",
    ):
        norm(_x(bad))


def test_lazy_batch_norm_under_lazy_init_and_jit():
    bn = nnx.BatchNorm(None, rngs=nnx.Rngs(0))  # training mode: a call updates the stats
    nnx.lazy_init(bn, jnp.ones((4, 3)))
    assert bn.mean.value.tolist() == [0.0] * 3 and bn.var.value.tolist() == [1.0] * 3
    in_jit = nnx.BatchNorm(None, momentum=0.5, rngs=nnx.Rngs(0))
    x = _x((4, 3), offset=1.0)
    nnx.jit(lambda m, x: m(x))(in_jit, x)
    _close(in_jit.mean.value, 0.5 * x.mean(0), 1e-5)


def test_lazy_group_norm_checks_divisibility_at_first_call():
    gn = nnx.GroupNorm(None, num_groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ShapeError, match=r"num_groups=4 does not divide .*\(6\)"):
        gn(jnp.ones((2, 6)))


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: nnx.LayerNorm(0, rngs=nnx.Rngs(0)), r"LayerNorm: num_features must be"),
        (lambda: nnx.BatchNorm(-2, rngs=nnx.Rngs(0)), r"BatchNorm: num_features must be"),
        (lambda: nnx.LayerNorm(3, epsilon=-1.0, rngs=nnx.Rngs(0)), r"epsilon must be"),
        (lambda: nnx.LayerNorm(3, reduction_axes="x", rngs=nnx.Rngs(0)), r"reduction_axes"),
        (lambda: nnx.RMSNorm(3, feature_axes=(), rngs=nnx.Rngs(0)), r"feature_axes must be"),
        (lambda: nnx.GroupNorm(8, num_groups=3, rngs=nnx.Rngs(0)), r"num_groups=3 does not"),
        (lambda: nnx.GroupNorm(8, group_size=4, rngs=nnx.Rngs(0)), r"exactly one of"),
        (lambda: nnx.GroupNorm(8, num_groups=None, rngs=nnx.Rngs(0)), r"exactly one of"),
        (lambda: nnx.GroupNorm(8, num_groups=0, rngs=nnx.Rngs(0)), r"num_groups must be"),
        (lambda: nnx.BatchNorm(3, momentum=1.5, rngs=nnx.Rngs(0)), r"momentum must be"),
        (lambda: nnx.BatchNorm(3, axis=(0, 1), rngs=nnx.Rngs(0)), r"axis must be an int"),
        (
            lambda: nnx.WeightNorm(nnx.Linear(None, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0)),
            r"(?s)no parameter of the wrapped Linear matches.*lazy_init",
        ),
        (
            lambda: nnx.SpectralNorm(
                nnx.Linear(2, 2, rngs=nnx.Rngs(0)), n_steps=-1, rngs=nnx.Rngs(0)
            ),
            r"n_steps must be",
        ),
        (
            lambda: nnx.SpectralNorm(nnx.LayerNorm(3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0)),
            r"no parameter with two or more dimensions",
        ),
    ],
)
def test_bad_configuration_fails_at_construction(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_bad_input_names_layer_config_and_path():
    model = _Model(nnx.LayerNorm(4, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ShapeError,
        match=r"LayerNorm at _Model\.blocks\[1\] expects inputs with "
        r"dimension 4 at axis 1 \(num_features=4\).*\(2, 5\)",
    ):
        model.blocks[1](jnp.ones((2, 5)))
    with pytest.raises(
        ShapeError,
        match=r"LayerNorm at _Model\.blocks\[1\] normalizes with "
        r"reduction_axes=-1 .*shape \(\)",
    ):
        model.blocks[1](jnp.ones(()))
    multi = _Model(nnx.LayerNorm(12, reduction_axes=(1, 2), feature_axes=(1, 2), rngs=nnx.Rngs(0)))
    with pytest.raises(ShapeError, match=r"feature axes \(1, 2\) hold 12 values .*\(2, 3, 5\)"):
        multi.blocks[1](jnp.ones((2, 3, 5)))
    bn = _Model(nnx.BatchNorm(3, axis=2, rngs=nnx.Rngs(0)))
    with pytest.raises(ShapeError, match=r"BatchNorm at _Model\.blocks\[1\] .*axis=2"):
        bn.blocks[1](jnp.ones((2, 3)))
    gn = _Model(nnx.GroupNorm(4, num_groups=2, reduction_axes=(1,), rngs=nnx.Rngs(0)))
    with pytest.raises(ShapeError, match=r"reduction_axes=\(1,\) must include the last"):
        gn.blocks[1](jnp.ones((2, 3, 4)))


def test_train_eval_flip_every_mode_attribute():
    model = nnx.Sequential(
        nnx.Linear(3, 3, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(3, rngs=nnx.Rngs(0)),
        nnx.SpectralNorm(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0)),
        nnx.Dropout(0.5, rngs=nnx.Rngs(0)),
    )
    model.eval()
    assert model.layers[1].use_running_average and model.layers[2].use_running_average
    assert model.layers[3].deterministic
    model.train()
    assert not model.layers[1].use_running_average and not model.layers[2].use_running_average
    assert not model.layers[3].deterministic


# -- flax.nnx as an oracle --------------------------------------------------------------------


def _copy(ours, theirs, names=("scale", "bias", "mean", "var")):
    for name in names:
        var = getattr(ours, name, None)
        if var is not None:
            getattr(theirs, name).set_value(var.value)


def _grads(lib, module, x, **call):
    graphdef, state = lib.split(module)

    def loss(state, x):
        return jnp.sum(jnp.sin(lib.merge(graphdef, state)(x, **call)))

    g_state, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(state, x)
    return lib.to_pure_dict(g_state), g_x


def _compare(ours, theirs, x, names=("scale", "bias"), **call):
    """Max abs difference of outputs; asserts outputs and gradients agree."""
    y_ours, y_theirs = ours(x, **call), theirs(x, **call)
    _close(y_ours, y_theirs, 1e-5)
    (g_ours, gx_ours), (g_theirs, gx_theirs) = (
        _grads(nnx, ours, x),
        _grads(pytest.importorskip("flax.nnx"), theirs, x),
    )
    _close(gx_ours, gx_theirs, 1e-4)
    for name in names:
        if name in g_theirs:
            _close(g_ours[name], g_theirs[name], 1e-4)
    return float(jnp.max(jnp.abs(y_ours - y_theirs)))


_slow = pytest.mark.slow
FLAX_NORMS = [
    ("LayerNorm", 6, (4, 6), {}),
    pytest.param(
        "LayerNorm",
        12,
        (2, 3, 4),
        dict(reduction_axes=(-2, -1), feature_axes=(-2, -1)),
        marks=_slow,
    ),
    pytest.param(
        "LayerNorm", 6, (4, 6), dict(use_fast_variance=False, use_bias=False), marks=_slow
    ),
    ("RMSNorm", 6, (4, 6), {}),
    pytest.param("RMSNorm", 4, (2, 3, 4), dict(reduction_axes=(1, 2)), marks=_slow),
    ("GroupNorm", 8, (2, 5, 8), dict(num_groups=4)),
    pytest.param("GroupNorm", 6, (2, 3, 3, 6), dict(num_groups=None, group_size=3), marks=_slow),
    ("InstanceNorm", 3, (2, 4, 5, 3), {}),
    pytest.param("InstanceNorm", 12, (2, 5, 3, 4), dict(feature_axes=(-2, -1)), marks=_slow),
]


@pytest.mark.parametrize("name,n,shape,kw", FLAX_NORMS, ids=str)
def test_norms_match_flax(name, n, shape, kw):
    flax = pytest.importorskip("flax.nnx")
    ours = _randomize(getattr(nnx, name)(n, rngs=nnx.Rngs(0), **kw))
    theirs = getattr(flax, name)(n, rngs=flax.Rngs(0), **kw)
    _copy(ours, theirs)
    assert _compare(ours, theirs, _x(shape, offset=1.5)) < 1e-5


@pytest.mark.parametrize(
    "kw", [{}, pytest.param(dict(axis=1, use_fast_variance=False), marks=_slow)], ids=str
)
def test_batch_norm_matches_flax_over_training_steps(kw):
    flax = pytest.importorskip("flax.nnx")
    ours = _randomize(nnx.BatchNorm(3, momentum=0.7, rngs=nnx.Rngs(0), **kw))
    theirs = flax.BatchNorm(3, momentum=0.7, rngs=flax.Rngs(0), **kw)
    _copy(ours, theirs)
    shape = (6, 3) if not kw else (4, 3, 5)
    for step in range(3):
        x = _x(shape, seed=step, offset=step)
        _close(ours(x), theirs(x), 1e-5)
        _close(ours.mean.value, theirs.mean[...], 1e-6)
        _close(ours.var.value, theirs.var[...], 1e-6)
    assert _compare(ours, theirs, _x(shape, seed=5)) < 1e-5
    assert _compare(ours, theirs, _x(shape, seed=5), use_running_average=True) < 1e-5


def test_weight_norm_matches_flax():
    flax = pytest.importorskip("flax.nnx")
    ours = nnx.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    theirs = flax.WeightNorm(flax.Linear(4, 3, rngs=flax.Rngs(0)), rngs=flax.Rngs(1))
    ours.scales["kernel"].value = jnp.array([0.5, 2.0, -1.0])
    theirs.layer_instance.kernel.set_value(ours.layer_instance.kernel.value)
    theirs.scales[("kernel",)] = ours.scales["kernel"].value
    x = _x((5, 4))
    k0 = ours.layer_instance.kernel.value
    g_ours, _ = _grads(nnx, ours, x)
    g_theirs, _ = _grads(flax, theirs, x)  # before flax's call overwrites its kernel
    _close(g_ours["layer_instance"]["kernel"], g_theirs["layer_instance"]["kernel"], 1e-5)
    _close(ours(x), theirs(x), 1e-5)
    _close(ours.layer_instance.kernel.value, k0, 0)


def test_spectral_norm_matches_flax():
    flax = pytest.importorskip("flax.nnx")
    ours = nnx.SpectralNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), n_steps=2, rngs=nnx.Rngs(1))
    theirs = flax.SpectralNorm(flax.Linear(4, 3, rngs=flax.Rngs(0)), n_steps=2, rngs=flax.Rngs(1))
    theirs.layer_instance.kernel.set_value(ours.layer_instance.kernel.value)
    theirs.batch_stats[("kernel", "u")].set_value(ours.batch_stats["kernel"]["u"].value)
    x = _x((5, 4))
    g_ours, _ = _grads(nnx, ours, x)
    g_theirs, _ = _grads(flax, theirs, x)
    _close(g_ours["layer_instance"]["kernel"], g_theirs["layer_instance"]["kernel"], 1e-5)
    _close(ours(x), theirs(x), 1e-5)
    _close(ours.batch_stats["kernel"]["u"].value, theirs.batch_stats[("kernel", "u")][...], 1e-6)
    _close(
        ours.batch_stats["kernel"]["sigma"].value,
        theirs.batch_stats[("kernel", "sigma")][...],
        1e-6,
    )


NAMES = [
    "LayerNorm",
    "RMSNorm",
    "BatchNorm",
    "GroupNorm",
    "InstanceNorm",
    "WeightNorm",
    "SpectralNorm",
]


@pytest.mark.parametrize("name", NAMES)
def test_signatures_match_flax(name):
    flax = pytest.importorskip("flax.nnx")
    for method in ("__init__", "__call__"):
        ours = inspect.signature(getattr(getattr(nnx, name), method)).parameters
        theirs = inspect.signature(getattr(getattr(flax, name), method)).parameters
        assert list(ours) == list(theirs), (name, method)
        for p in ours:
            assert ours[p].kind == theirs[p].kind, (name, method, p)
