"""Conv and ConvTranspose: parity with a NumPy reference written from the definitions, with
``jax.lax`` formulas in another layout, and with flax.nnx (optional oracle); errors."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError

# -- NumPy references ------------------------------------------------------------------------


def _same_pads(n: int, k: int, s: int, lower: bool = False) -> tuple[int, int]:
    total = max((-(-n // s) - 1) * s + k - n, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def np_conv(x, w, strides, padding, input_dilation=None, kernel_dilation=None, groups=1):
    """Cross-correlation from its definition. x: (B, *S, C); w: (*K, C // groups, O)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    rank = w.ndim - 2
    ks, strides = w.shape[:rank], tuple(strides)
    kd = tuple(kernel_dilation or (1,) * rank)
    ld = tuple(input_dilation or (1,) * rank)
    extents = [(k - 1) * d for k, d in zip(ks, kd, strict=True)]
    if padding == "CIRCULAR":  # periodic: index modulo the size
        for a, e in enumerate(extents):
            n = x.shape[a + 1]
            x = np.take(x, np.arange(-(e // 2), n + e - e // 2) % n, axis=a + 1)
        padding = [(0, 0)] * rank
    elif padding == "REFLECT":
        x = np.pad(x, [(0, 0)] + [(e // 2, e - e // 2) for e in extents] + [(0, 0)], "reflect")
        padding = [(0, 0)] * rank
    elif padding == "CAUSAL":
        padding = [(extents[0], 0)]
    if any(d > 1 for d in ld):  # input dilation: zeros between the input's elements
        dilated = np.zeros(
            (
                x.shape[0],
                *[(n - 1) * d + 1 for n, d in zip(x.shape[1:-1], ld, strict=True)],
                x.shape[-1],
            )
        )
        dilated[(slice(None), *[slice(None, None, d) for d in ld])] = x
        x = dilated
    if padding in ("SAME", "SAME_LOWER"):
        padding = [
            _same_pads(n, e + 1, s, padding == "SAME_LOWER")
            for n, e, s in zip(x.shape[1:-1], extents, strides, strict=True)
        ]
    elif padding == "VALID":
        padding = [(0, 0)] * rank
    x = np.pad(x, [(0, 0), *list(padding), (0, 0)])
    out_sizes = [
        (n - e - 1) // s + 1 for n, e, s in zip(x.shape[1:-1], extents, strides, strict=True)
    ]
    cin, cout = w.shape[-2], w.shape[-1]
    out = np.zeros((x.shape[0], *out_sizes, cout))
    for t in itertools.product(*[range(k) for k in ks]):
        window = tuple(
            slice(ti * d, ti * d + s * (m - 1) + 1, s)
            for ti, d, s, m in zip(t, kd, strides, out_sizes, strict=True)
        )
        patch = x[(slice(None), *window)]  # (B, *out, C)
        patch = patch.reshape((*patch.shape[:-1], groups, cin))
        wt = w[t].reshape(cin, groups, cout // groups)
        out += np.einsum("...gc,cgo->...go", patch, wt).reshape(out.shape)
    return out


def np_conv_transpose(x, w, strides, padding, kernel_dilation=None, transpose_kernel=False):
    """Transposed convolution by scattering: input j and tap t land at ``j*s + (K-1-t)*d``
    (``jax.lax.conv_transpose`` convolves the stride-dilated input with the kernel). Padding
    is 'VALID' or 'CIRCULAR'."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    rank = w.ndim - 2
    ks = w.shape[:rank]
    if transpose_kernel:  # flip spatially, swap the feature axes
        w = np.swapaxes(np.flip(w, axis=tuple(range(rank))), -1, -2)
    kd = tuple(kernel_dilation or (1,) * rank)
    spans = [(k - 1) * d + 1 for k, d in zip(ks, kd, strict=True)]
    sizes = [
        max(n * s, (n - 1) * s + e) for n, s, e in zip(x.shape[1:-1], strides, spans, strict=True)
    ]
    full = np.zeros((x.shape[0], *sizes, w.shape[-1]))
    for j in itertools.product(*[range(n) for n in x.shape[1:-1]]):
        for t in itertools.product(*[range(k) for k in ks]):
            at = tuple(
                ji * s + (k - 1 - ti) * d
                for ji, ti, s, k, d in zip(j, t, strides, ks, kd, strict=True)
            )
            full[(slice(None), *at)] += x[(slice(None), *j)] @ w[t]
    if padding == "VALID":
        return full
    assert padding == "CIRCULAR"
    out = full
    for a, (n, s) in enumerate(zip(x.shape[1:-1], strides, strict=True)):
        period = n * s
        excess = out.shape[a + 1] - period
        shift = -(-excess // 2) if transpose_kernel else excess // 2
        idx = (np.arange(out.shape[a + 1]) - shift) % period
        folded = np.zeros((*out.shape[: a + 1], period, *out.shape[a + 2 :]))
        np.add.at(folded, (slice(None),) * (a + 1) + (idx,), out)
        out = folded
    return out


def _x(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(key, shape, dtype=jnp.float32):
    """A cheap random initializer for tests: drawing a fixed-size buffer compiles once,
    where ``jax.random.normal(key, shape)`` compiles anew for every kernel shape."""
    return jax.random.normal(key, (1024,), dtype)[: math.prod(shape)].reshape(shape)


def Conv(*args, **kwargs):
    return nnx.Conv(*args, **{"kernel_init": _init, **kwargs})


def ConvTranspose(*args, **kwargs):
    return nnx.ConvTranspose(*args, **{"kernel_init": _init, **kwargs})


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=tol
    )


def _bias(y, layer):
    return np.asarray(y) + (np.asarray(layer.bias.value) if layer.bias is not None else 0.0)


# -- Conv against the NumPy reference ---------------------------------------------------------

CONV_CONFIGS = [
    # (kernel_size, input spatial shape, in, out, kwargs)
    ((4,), (9,), 3, 4, dict(padding="VALID", strides=2)),
    ((3,), (10,), 2, 3, dict(padding="CAUSAL", kernel_dilation=2)),
    ((4,), (7,), 2, 3, dict(padding="CIRCULAR", strides=3)),
    ((3,), (8,), 2, 3, dict(padding="SAME_LOWER", strides=3)),
    ((3, 3), (6, 7), 3, 4, dict(strides=(2, 1))),
    ((3, 2), (6, 7), 3, 4, dict(padding=((1, 2), (0, 1)))),
    ((3, 3), (6, 7), 3, 4, dict(padding=2, kernel_dilation=(1, 2))),
    ((3, 4), (6, 7), 3, 4, dict(padding="CIRCULAR", strides=2, kernel_dilation=(2, 1))),
    ((2, 3), (5, 6), 3, 4, dict(padding="REFLECT")),
    ((3, 3), (5, 5), 4, 8, dict(feature_group_count=4)),  # depthwise, multiplier 2
    ((3, 3), (5, 5), 6, 4, dict(feature_group_count=2, strides=2)),
    ((3, 3), (5, 4), 2, 3, dict(input_dilation=2, padding="VALID")),
    ((3, 3), (5, 4), 2, 3, dict(input_dilation=(2, 1), padding=[1, (2, 0)])),
    ((2, 2, 2), (4, 5, 3), 2, 3, {}),
    ((3, 1, 2), (4, 5, 3), 2, 3, dict(padding="CIRCULAR", strides=(1, 2, 2))),
]


def _norm(value, rank):
    return (value,) * rank if isinstance(value, int) else tuple(value)


@pytest.mark.parametrize("ks,spatial,cin,cout,kw", CONV_CONFIGS, ids=str)
def test_conv_matches_numpy_reference(ks, spatial, cin, cout, kw):
    layer = Conv(cin, cout, ks, bias_init=_init, rngs=nnx.Rngs(0), **kw)
    rank = len(ks)
    x = _x((2, *spatial, cin))
    padding = kw.get("padding", "SAME")
    if isinstance(padding, int) or not isinstance(padding, str):
        padding = [
            p if isinstance(p, tuple) else (p, p)
            for p in (_norm(padding, rank) if isinstance(padding, int) else padding)
        ]
        padding = [p if isinstance(p, tuple) else (p, p) for p in padding]
    ref = np_conv(
        x,
        layer.kernel.value,
        _norm(kw.get("strides", 1), rank),
        padding,
        _norm(kw.get("input_dilation", 1), rank),
        _norm(kw.get("kernel_dilation", 1), rank),
        kw.get("feature_group_count", 1),
    )
    _close(layer(x), _bias(ref, layer), 1e-4)


def test_conv_nchw_lax_formula():
    """The same convolution written with NCHW / OIHW dimension numbers."""
    layer = Conv(3, 5, (3, 2), strides=(1, 2), padding=((1, 1), (0, 1)), rngs=nnx.Rngs(0))
    x = _x((2, 6, 7, 3))
    kernel = jnp.transpose(layer.kernel.value, (3, 2, 0, 1))  # HWIO -> OIHW
    y = jax.lax.conv_general_dilated(
        jnp.transpose(x, (0, 3, 1, 2)),
        kernel,
        (1, 2),
        ((1, 1), (0, 1)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    ref = jnp.transpose(y, (0, 2, 3, 1)) + layer.bias.value.reshape(1, 1, 1, -1)
    _close(layer(x), ref)


def test_causal_output_ignores_the_future():
    layer = Conv(2, 3, 4, padding="CAUSAL", kernel_dilation=2, rngs=nnx.Rngs(0))
    x = _x((1, 12, 2))
    jac = jax.jacobian(lambda x: layer(x)[0, :, 0])(x)[:, 0, :, 0]  # d y[t] / d x[u]
    assert layer(x).shape == (1, 12, 3)
    assert np.all(np.asarray(jac)[np.triu_indices(12, k=1)] == 0)
    assert np.all(np.asarray(jac)[np.arange(12), np.arange(12)] != 0)


def test_circular_is_equivariant_to_periodic_shifts():
    layer = Conv(2, 3, (3, 4), padding="CIRCULAR", rngs=nnx.Rngs(0))
    x = _x((1, 5, 6, 2))
    shifted = jnp.roll(x, (2, -1), axis=(1, 2))
    _close(layer(shifted), jnp.roll(layer(x), (2, -1), axis=(1, 2)), 1e-5)


# -- batch handling, mask, dtypes, hooks ------------------------------------------------------


@pytest.mark.parametrize("cls", [nnx.Conv, nnx.ConvTranspose])
def test_unbatched_and_several_batch_axes(cls):
    layer = cls(3, 4, (3, 2), strides=2, kernel_init=_init, rngs=nnx.Rngs(0))
    x = _x((2, 3, 5, 4, 3))
    flat = layer(x.reshape(6, 5, 4, 3))
    _close(layer(x), flat.reshape((2, 3, *flat.shape[1:])), 1e-6)
    _close(layer(x[0, 1]), flat[1], 1e-6)


def test_mask_zeroes_kernel_entries_and_their_gradients():
    mask = np.ones((3, 3, 2, 4), np.float32)
    mask[2, :] = 0.0  # a "causal" 2D mask: the last kernel row never contributes
    layer = Conv(2, 4, (3, 3), mask=mask, rngs=nnx.Rngs(0))
    plain = Conv(2, 4, (3, 3), rngs=nnx.Rngs(0))
    plain.kernel.value = layer.kernel.value * mask
    x = _x((2, 5, 5, 2))
    _close(layer(x), plain(x), 1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert np.all(np.asarray(grads["kernel"].value)[2] == 0)
    assert np.any(np.asarray(grads["kernel"].value)[:2] != 0)


def test_dtypes_and_preferred_element_type():
    layer = Conv(2, 3, 3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer.kernel.value.dtype == jnp.bfloat16
    assert layer(_x((1, 6, 2))).dtype == jnp.bfloat16
    acc = Conv(
        2,
        3,
        3,
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
        preferred_element_type=jnp.float32,
        use_bias=False,
        rngs=nnx.Rngs(0),
    )
    assert acc(_x((1, 6, 2))).dtype == jnp.float32


def test_custom_conv_function_and_metadata():
    calls = []

    def conv(*args, **kwargs):
        calls.append(kwargs)
        return jax.lax.conv_general_dilated(*args, **kwargs)

    layer = Conv(
        2,
        3,
        (3, 3),
        conv_general_dilated=conv,
        kernel_metadata={"tag": "k"},
        bias_metadata={"tag": "b"},
        rngs=nnx.Rngs(0),
    )
    layer(_x((1, 4, 4, 2)))
    assert len(calls) == 1 and "preferred_element_type" not in calls[0]
    assert (layer.kernel.tag, layer.bias.tag) == ("k", "b")


def test_kernel_shapes_and_initializers():
    conv = nnx.Conv(
        6,
        4,
        (3, 2),
        feature_group_count=2,
        kernel_init=nnx.initializers.ones,
        bias_init=nnx.initializers.ones,
        rngs=nnx.Rngs(0),
    )
    assert conv.kernel.value.shape == conv.kernel_shape == (3, 2, 3, 4)
    assert np.all(np.asarray(conv.kernel.value) == 1) and np.all(np.asarray(conv.bias.value) == 1)
    up = ConvTranspose(6, 4, 3, transpose_kernel=True, use_bias=False, rngs=nnx.Rngs(0))
    assert up.kernel.value.shape == (3, 4, 6) and up.bias is None


# -- lazy in_features -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [nnx.Conv, nnx.ConvTranspose])
def test_lazy_creates_then_checks(cls):
    layer = cls(None, 4, (3, 3), kernel_init=_init, rngs=nnx.Rngs(0))
    assert layer.kernel is None
    assert layer(_x((2, 5, 5, 6))).shape[-1] == 4
    assert layer.in_features == 6 and layer.kernel.value.shape[:2] == (3, 3)
    with pytest.raises(ShapeError, match=rf"{cls.__name__} expects .* \(in_features=6\)"):
        layer(_x((2, 5, 5, 3)))


def test_lazy_conv_in_jit_and_lazy_init():
    model = nnx.Sequential(
        Conv(None, 4, (3, 3), rngs=nnx.Rngs(0)),
        nnx.relu,
        Conv(None, 2, (3, 3), feature_group_count=2, rngs=nnx.Rngs(1)),
    )
    nnx.lazy_init(model, jnp.ones((1, 6, 6, 3)))
    assert model.layers[0].kernel.value.shape == (3, 3, 3, 4)
    assert model.layers[2].kernel.value.shape == (3, 3, 2, 2)
    jitted = Conv(None, 4, 3, padding="CAUSAL", rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(jitted, jnp.ones((2, 7, 5)))
    assert y.shape == (2, 7, 4) and jitted.kernel.value.shape == (3, 5, 4)


def test_lazy_errors():
    with pytest.raises(ShapeError, match=r"feature_group_count=2.*5 features"):
        Conv(None, 4, 3, feature_group_count=2, rngs=nnx.Rngs(0))(jnp.ones((1, 6, 5)))
    with pytest.raises(ShapeError, match=r"mask must have the kernel's shape \(3, 5, 4\)"):
        Conv(None, 4, 3, mask=jnp.ones((3, 2, 4)), rngs=nnx.Rngs(0))(jnp.ones((1, 6, 5)))


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,args,kwargs,match",
    [
        (nnx.Conv, (3, 4, 3), dict(padding="FULL"), r"padding must be one of .*got 'FULL'"),
        (nnx.Conv, (3, 4, (3, 3)), dict(padding=[1, 2, 3]), r"sequence of 2 entries"),
        (nnx.Conv, (3, 4, (3, 3)), dict(padding=[(1, 2, 3), 1]), r"padding must be"),
        (nnx.Conv, (3, 4, (3, 3)), dict(padding="CAUSAL"), r"'CAUSAL' is only defined for 1D"),
        (nnx.ConvTranspose, (3, 4, 3), dict(padding="CAUSAL"), r"padding must be one of"),
        (nnx.ConvTranspose, (3, 4, 3), dict(padding="REFLECT"), r"padding must be one of"),
        (nnx.Conv, (3, -4, 3), {}, r"out_features must be a positive int.*-4"),
        (nnx.Conv, (0, 4, 3), {}, r"in_features must be a positive int.*0"),
        (nnx.Conv, (3, None, 3), {}, r"out_features cannot be None"),
        (nnx.ConvTranspose, (-3, 4, 3), {}, r"in_features must be a positive int"),
        (nnx.Conv, (3, 4, (3, 3)), dict(strides=(1, 2, 1)), r"strides must be .* 2 positive"),
        (nnx.Conv, (3, 4, (3,)), dict(kernel_dilation=(1, 2)), r"kernel_dilation must be"),
        (nnx.Conv, (3, 4, (3, 3)), dict(input_dilation=0), r"input_dilation must be"),
        (nnx.ConvTranspose, (3, 4, (3, 3)), dict(strides=(2,)), r"strides must be"),
        (nnx.Conv, (3, 4, ()), {}, r"kernel_size must be"),
        (nnx.Conv, (3, 4, (3, 0)), {}, r"kernel_size must be"),
        (nnx.Conv, (4, 6, 3), dict(feature_group_count=3), r"feature_group_count=3 must divide"),
        (nnx.Conv, (6, 4, 3), dict(feature_group_count=3), r"must divide out_features=4"),
        (nnx.Conv, (6, 4, 3), dict(feature_group_count=0), r"feature_group_count must be"),
        (nnx.Conv, (3, 4, (3, 3)), dict(mask=jnp.ones((3, 3))), r"mask must have .*\(3, 3, 3, 4\)"),
        (nnx.ConvTranspose, (3, 4, 2), dict(mask=jnp.ones((2, 4, 3))), r"\(2, 3, 4\)"),
    ],
)
def test_bad_configuration_fails_at_construction(cls, args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(*args, **kwargs, rngs=nnx.Rngs(0))


class _Model(nnx.Module):
    def __init__(self, cls):
        self.blocks = [
            nnx.Linear(2, 2, rngs=nnx.Rngs(0)),
            cls(3, 4, (3, 3), kernel_init=_init, rngs=nnx.Rngs(0)),
        ]


@pytest.mark.parametrize("cls", [nnx.Conv, nnx.ConvTranspose])
def test_bad_input_names_layer_config_and_path(cls):
    model = _Model(cls)
    name = cls.__name__
    with pytest.raises(
        ShapeError,
        match=rf"{name} at _Model\.blocks\[1\] expects .*"
        r"\(in_features=3\).*shape \(2, 5, 5, 2\)",
    ):
        model.blocks[1](jnp.ones((2, 5, 5, 2)))
    with pytest.raises(
        ShapeError,
        match=rf"{name} at _Model\.blocks\[1\] \(kernel_size=\(3, 3\)"
        r"\) is a 2D convolution.*shape \(5, 3\)",
    ):
        model.blocks[1](jnp.ones((5, 3)))


# -- ConvTranspose ----------------------------------------------------------------------------

TRANSPOSE_CONFIGS = [
    # (kernel_size, input spatial shape, strides, kwargs)
    ((3,), (5,), (2,), {}),
    ((2,), (5,), (3,), {}),  # kernel smaller than the stride
    ((3,), (4,), (2,), dict(kernel_dilation=(2,))),
    ((4,), (5,), (2,), dict(transpose_kernel=True)),
    ((3, 2), (4, 3), (2, 3), {}),
    ((3, 3), (3, 4), (1, 2), dict(transpose_kernel=True, kernel_dilation=(1, 2))),
]


@pytest.mark.parametrize("padding", ["VALID", "CIRCULAR"])
@pytest.mark.parametrize("ks,spatial,strides,kw", TRANSPOSE_CONFIGS, ids=str)
def test_conv_transpose_matches_numpy_reference(ks, spatial, strides, kw, padding):
    layer = ConvTranspose(
        3, 2, ks, strides=strides, padding=padding, bias_init=_init, rngs=nnx.Rngs(0), **kw
    )
    x = _x((2, *spatial, 3))
    ref = np_conv_transpose(
        x,
        layer.kernel.value,
        strides,
        padding,
        kw.get("kernel_dilation"),
        kw.get("transpose_kernel", False),
    )
    y = layer(x)
    if padding == "CIRCULAR":
        assert y.shape[1:-1] == tuple(n * s for n, s in zip(spatial, strides, strict=True))
    _close(y, _bias(ref, layer), 1e-4)


@pytest.mark.parametrize("padding", ["SAME", ((1, 2), (0, 1)), 1])
def test_conv_transpose_lax_formula(padding):
    layer = ConvTranspose(3, 2, (3, 2), strides=(2, 1), padding=padding, rngs=nnx.Rngs(0))
    x = _x((2, 4, 5, 3))
    pads = ((1, 1), (1, 1)) if padding == 1 else padding
    y = jax.lax.conv_transpose(
        x, layer.kernel.value, (2, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    _close(layer(x), y + layer.bias.value.reshape(1, 1, 1, -1))


@pytest.mark.parametrize(
    "ks,strides,spatial,padding",
    [
        ((3,), 1, (7,), "CIRCULAR"),
        ((5,), 1, (6,), "CIRCULAR"),
        ((4,), 2, (8,), "CIRCULAR"),
        ((3, 2), (2, 2), (6, 4), "CIRCULAR"),
        ((3, 3), (2, 1), (6, 5), "SAME"),
        ((3,), 2, (7,), "VALID"),
    ],
    ids=str,
)
def test_transposed_kernel_is_the_adjoint_of_conv(ks, strides, spatial, padding):
    conv = Conv(3, 4, ks, strides=strides, padding=padding, use_bias=False, rngs=nnx.Rngs(0))
    up = ConvTranspose(
        4,
        3,
        ks,
        strides=strides,
        padding=padding,
        transpose_kernel=True,
        use_bias=False,
        rngs=nnx.Rngs(1),
    )
    up.kernel.value = conv.kernel.value
    x = _x((2, *spatial, 3))
    y, vjp = jax.vjp(conv, x)
    cotangent = _x(y.shape, seed=2)
    _close(up(cotangent), vjp(cotangent)[0], 1e-5)


# -- flax.nnx as an oracle --------------------------------------------------------------------


def _copy_params(ours, theirs):
    theirs.kernel.set_value(ours.kernel.value)
    if ours.bias is not None:
        theirs.bias.set_value(ours.bias.value)


def _compare_with_flax(ours, theirs, x, tol=1e-5):
    flax = pytest.importorskip("flax.nnx")
    _copy_params(ours, theirs)
    _close(ours(x), theirs(x), tol)

    def grads(lib, module):
        graphdef, params = lib.split(module)

        def loss(params, x):
            return jnp.sum(jnp.sin(lib.merge(graphdef, params)(x)))

        g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        return lib.to_pure_dict(g_params), g_x

    (ours_p, ours_x), (theirs_p, theirs_x) = grads(nnx, ours), grads(flax, theirs)
    _close(ours_x, theirs_x, tol)
    for name in ("kernel", "bias"):
        if name in theirs_p:
            _close(ours_p[name], theirs_p[name], tol)
    return float(np.max(np.abs(np.asarray(ours(x)) - np.asarray(theirs(x)))))


FLAX_CONV = [
    ((3,), (9,), 3, 4, {}),
    ((3,), (9,), 3, 4, dict(padding="CAUSAL", kernel_dilation=2)),
    ((4,), (9,), 3, 4, dict(padding="CIRCULAR", strides=2)),
    ((3, 3), (6, 7), 3, 4, dict(strides=(2, 1), padding="VALID")),
    ((3, 3), (6, 7), 3, 4, dict(padding=[(1, 0), 2], use_bias=False)),
    ((2, 3), (6, 7), 3, 4, dict(padding="REFLECT")),
    ((3, 4), (6, 7), 3, 4, dict(padding="CIRCULAR", kernel_dilation=(2, 1))),
    ((3, 3), (5, 5), 4, 8, dict(feature_group_count=4)),
    ((3, 3), (5, 5), 2, 3, dict(input_dilation=2, padding=((1, 1), (1, 1)))),
    ((2, 2, 2), (4, 5, 3), 2, 3, dict(strides=2)),
]


@pytest.mark.parametrize("ks,spatial,cin,cout,kw", FLAX_CONV, ids=str)
def test_conv_matches_flax(ks, spatial, cin, cout, kw):
    flax = pytest.importorskip("flax.nnx")
    ours = Conv(cin, cout, ks, rngs=nnx.Rngs(0), **kw)
    theirs = flax.Conv(cin, cout, ks, kernel_init=_init, rngs=flax.Rngs(0), **kw)
    assert _compare_with_flax(ours, theirs, _x((2, *spatial, cin))) < 1e-5


def test_matches_flax_unbatched_and_masked():
    flax = pytest.importorskip("flax.nnx")
    mask = jnp.ones((3, 3, 2, 3)).at[2].set(0.0)
    ours = Conv(2, 3, (3, 3), mask=mask, rngs=nnx.Rngs(0))
    theirs = flax.Conv(2, 3, (3, 3), mask=mask, kernel_init=_init, rngs=flax.Rngs(0))
    _compare_with_flax(ours, theirs, _x((5, 4, 2)))
    _compare_with_flax(ours, theirs, _x((2, 3, 5, 4, 2)))
    ours = ConvTranspose(2, 3, (3, 2), strides=2, padding="CIRCULAR", rngs=nnx.Rngs(0))
    theirs = flax.ConvTranspose(
        2, 3, (3, 2), strides=2, padding="CIRCULAR", kernel_init=_init, rngs=flax.Rngs(0)
    )
    _compare_with_flax(ours, theirs, _x((5, 4, 2)))


FLAX_TRANSPOSE = [
    ((3,), (5,), dict(strides=2)),
    ((4,), (5,), dict(strides=2, padding="CIRCULAR")),
    ((5,), (4,), dict(strides=3, padding="CIRCULAR", transpose_kernel=True)),
    ((3, 2), (4, 3), dict(strides=(2, 3), kernel_dilation=(1, 2))),
    ((3, 3), (4, 3), dict(strides=2, padding="CIRCULAR", transpose_kernel=True)),
    ((2, 4), (3, 4), dict(padding=((1, 2), (0, 1)), use_bias=False)),
    ((2, 2, 2), (3, 2, 3), dict(strides=2)),
]


@pytest.mark.parametrize("ks,spatial,kw", FLAX_TRANSPOSE, ids=str)
def test_conv_transpose_matches_flax(ks, spatial, kw):
    flax = pytest.importorskip("flax.nnx")
    ours = ConvTranspose(3, 2, ks, rngs=nnx.Rngs(0), **kw)
    theirs = flax.ConvTranspose(3, 2, ks, kernel_init=_init, rngs=flax.Rngs(0), **kw)
    assert _compare_with_flax(ours, theirs, _x((2, *spatial, 3))) < 1e-5


def test_signatures_match_flax():
    flax = pytest.importorskip("flax.nnx")
    import inspect

    for name in ("Conv", "ConvTranspose"):
        ours = inspect.signature(getattr(nnx, name).__init__).parameters
        theirs = inspect.signature(getattr(flax, name).__init__).parameters
        assert list(ours) == list(theirs), name
        for p in ours:
            assert ours[p].kind == theirs[p].kind, (name, p)
    ours_call = inspect.signature(nnx.Conv.__call__).parameters
    assert list(ours_call) == list(inspect.signature(flax.Conv.__call__).parameters)
    assert math.prod((1,)) == 1
