"""Pooling functions against a NumPy reference written from the definition, and against
flax.nnx (optional oracle); dtypes and errors."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx.errors import ConfigError, ShapeError


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _same_pads(n, w, s, lower=False):
    total = max((-(-n // s) - 1) * s + w - n, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def np_pool(x, window, strides, padding, kind, count_include_pad=True):
    """Pools the window axes (those just before the last) by looping over window offsets."""
    x = np.asarray(x, np.float64)
    rank = len(window)
    strides = strides or (1,) * rank
    spatial = x.shape[x.ndim - rank - 1 : -1]
    if isinstance(padding, str):
        padding = [
            _same_pads(n, w, s, padding == "SAME_LOWER") if padding != "VALID" else (0, 0)
            for n, w, s in zip(spatial, window, strides, strict=True)
        ]
    fill = {"max": -np.inf, "min": np.inf, "avg": 0.0}[kind]
    lead = [(0, 0)] * (x.ndim - rank - 1)
    padded = np.pad(x, lead + list(padding) + [(0, 0)], constant_values=fill)
    real = np.pad(np.ones(spatial), list(padding))  # 1 where a position is real input
    sizes = [
        (n - w) // s + 1
        for n, w, s in zip(padded.shape[len(lead) : -1], window, strides, strict=True)
    ]
    values, counts = [], np.zeros(sizes)
    for t in itertools.product(*[range(w) for w in window]):
        idx = tuple(
            slice(ti, ti + s * (m - 1) + 1, s) for ti, s, m in zip(t, strides, sizes, strict=True)
        )
        values.append(padded[(Ellipsis, *idx, slice(None))])
        counts += real[idx]
    stacked = np.stack(values)
    if kind == "max":
        return stacked.max(0)
    if kind == "min":
        return stacked.min(0)
    total = stacked.sum(0)
    return total / np.prod(window) if count_include_pad else total / counts[..., None]


CONFIGS = [
    # (input shape, window, strides, padding)
    ((2, 9, 3), (3,), None, "VALID"),
    ((2, 9, 3), (2,), (2,), "SAME"),
    ((2, 8, 3), (3,), (3,), "SAME_LOWER"),
    ((2, 7, 6, 3), (2, 2), (2, 2), "VALID"),
    ((2, 7, 6, 3), (3, 3), (2, 1), "SAME"),
    ((2, 7, 6, 3), (3, 2), (1, 2), ((1, 1), (0, 1))),
    ((3, 2, 5, 6, 2), (2, 3), (2, 2), ((1, 0), (2, 1))),  # two batch axes
    ((5, 6, 2), (3, 2), None, "SAME"),  # unbatched
    ((2, 4, 5, 3, 2), (2, 2, 2), (1, 2, 1), "SAME"),  # 3D
]


@pytest.mark.parametrize("shape,window,strides,padding", CONFIGS, ids=str)
def test_pools_match_numpy_reference(shape, window, strides, padding):
    x = _x(shape)
    tol = dict(atol=1e-5, rtol=1e-5)
    for fn, kind in ((nnx.max_pool, "max"), (nnx.min_pool, "min"), (nnx.avg_pool, "avg")):
        ref = np_pool(x, window, strides, padding, kind)
        np.testing.assert_allclose(fn(x, window, strides, padding), ref, **tol)
    ref = np_pool(x, window, strides, padding, "avg", count_include_pad=False)
    out = nnx.avg_pool(x, window, strides, padding, count_include_pad=False)
    np.testing.assert_allclose(out, ref, **tol)


def test_general_pool_with_a_custom_reduction():
    x = _x((2, 6, 3))
    out = nnx.pool(x, 1.0, jax.lax.mul, (3,), (3,), "VALID")
    ref = np.asarray(x).reshape(2, 2, 3, 3).prod(axis=2)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    # Padded positions hold `init`: with init=1 they do not change a product.
    padded = nnx.pool(x, 1.0, jax.lax.mul, (3,), (3,), ((1, 2),))
    np.testing.assert_allclose(padded[:, 0], np.asarray(x)[:, :2].prod(axis=1), rtol=1e-5)


def test_dtypes():
    x = _x((2, 6, 6, 3)).astype(jnp.bfloat16)
    for out in (
        nnx.max_pool(x, (2, 2), padding="SAME"),
        nnx.avg_pool(x, (2, 2), padding="SAME"),
        nnx.avg_pool(x, (2, 2), padding="SAME", count_include_pad=False),
        nnx.pool(x, 0.0, jax.lax.add, (2, 2), None, "VALID"),
    ):
        assert out.dtype == jnp.bfloat16
    ints = jnp.arange(24, dtype=jnp.int32).reshape(1, 8, 3) - 12
    assert nnx.max_pool(ints, (2,), (2,), "SAME").dtype == jnp.int32
    np.testing.assert_array_equal(nnx.max_pool(ints, (2,), (2,)), np.asarray(ints)[:, 1::2])
    np.testing.assert_array_equal(
        nnx.min_pool(ints, (3,), (3,), "SAME")[:, -1], np.asarray(ints)[:, 6]
    )
    assert nnx.avg_pool(ints, (2,)).dtype == jnp.float32


def test_under_jit_vmap_and_grad():
    x = _x((3, 2, 6, 6, 2))
    f = lambda x: nnx.avg_pool(nnx.max_pool(x, (2, 2), (2, 2)), (3, 3), padding="SAME")
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(x), f(x), atol=1e-6)
    g = jax.grad(lambda x: nnx.max_pool(x, (2, 2), (2, 2)).sum())(x[0])
    np.testing.assert_array_equal(np.asarray(g).reshape(2, 3, 2, 3, 2, 2).sum((2, 4)), 1.0)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda x: nnx.max_pool(x, (2, 2), (1,)), ConfigError, r"strides must be a tuple of 2"),
        (lambda x: nnx.avg_pool(x, (2, 2), (1, 0)), ConfigError, r"strides must be"),
        (lambda x: nnx.min_pool(x, 2), ConfigError, r"window_shape must be a non-empty tuple"),
        (lambda x: nnx.max_pool(x, ()), ConfigError, r"window_shape must be"),
        (lambda x: nnx.max_pool(x, (2, 2), padding="FULL"), ConfigError, r"padding must be"),
        (lambda x: nnx.avg_pool(x, (2, 2), padding=((1, 1),)), ConfigError, r"2 \(low, high\)"),
        (lambda x: nnx.max_pool(x, (2, 2, 2, 2)), ShapeError, r"shape \(2, 6, 6, 3\)"),
        (
            lambda x: nnx.pool(x[0, 0], 0.0, jax.lax.add, (2, 2), None, "VALID"),
            ShapeError,
            r"pool with window_shape=\(2, 2\) pools 2 axes.*at least 3 dimensions",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(_x((2, 6, 6, 3)))


# -- flax.nnx as an oracle ---------------------------------------------------------------------

FLAX_CONFIGS = [c for c in CONFIGS if len(c[0]) == len(c[1]) + 2 and c[3] != "SAME_LOWER"]


@pytest.mark.parametrize("shape,window,strides,padding", FLAX_CONFIGS, ids=str)
def test_pools_match_flax(shape, window, strides, padding):
    flax = pytest.importorskip("flax.nnx")
    x = _x(shape)
    cases = [  # (ours, theirs, kwargs, compare gradients)
        (nnx.max_pool, flax.max_pool, {}, True),
        (nnx.min_pool, flax.min_pool, {}, False),
        (nnx.avg_pool, flax.avg_pool, {}, False),
        (nnx.avg_pool, flax.avg_pool, dict(count_include_pad=False), True),
    ]
    for ours, theirs, kw, grads in cases:

        def loss(x, fn, kw=kw):
            return jnp.sum(jnp.sin(fn(x, window, strides, padding, **kw)))

        np.testing.assert_allclose(
            ours(x, window, strides, padding, **kw),
            theirs(x, window, strides, padding, **kw),
            atol=1e-6,
        )
        if grads:
            np.testing.assert_allclose(
                jax.grad(loss)(x, ours), jax.grad(loss)(x, theirs), atol=1e-6
            )
    out = nnx.pool(x, 0.0, jax.lax.add, window, strides, padding)
    ref = flax.pool(x, 0.0, jax.lax.add, window, strides, padding)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_signatures_match_flax():
    flax = pytest.importorskip("flax.nnx")
    import inspect

    for name in ("avg_pool", "max_pool", "min_pool", "pool"):
        ours = inspect.signature(getattr(nnx, name)).parameters
        theirs = inspect.signature(getattr(flax, name)).parameters
        assert [(p, v.default) for p, v in ours.items()] == [
            (p, v.default) for p, v in theirs.items()
        ], name
