"""Registry cases for the convolutions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import nnx
from tests.nn.registry import Case


def _x(*shape):
    # A slice of one fixed-size draw: jax.random.normal compiles once per shape, and those
    # compilations would dominate the run time of these small cases.
    return lambda key: (_init(key, shape),)


def _init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, (1024,), dtype)[: math.prod(shape)].reshape(shape)


def Conv(*args, **kwargs):
    return nnx.Conv(*args, **{"kernel_init": _init, **kwargs})


def ConvTranspose(*args, **kwargs):
    return nnx.ConvTranspose(*args, **{"kernel_init": _init, **kwargs})


CASES = [
    Case(
        name="Conv-1d",
        cls=nnx.Conv,
        build=lambda rngs, dtype: nnx.Conv(3, 4, 3, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.Conv(None, 4, 3, dtype=dtype, rngs=rngs),
        inputs=_x(2, 9, 3),
    ),
    Case(
        name="Conv-2d-strided-valid",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(
            3, 4, (3, 2), strides=(2, 1), padding="VALID", dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: Conv(
            None, 4, (3, 2), strides=(2, 1), padding="VALID", dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 7, 6, 3),
    ),
    Case(
        name="Conv-3d",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(2, 3, (2, 2, 2), dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: Conv(None, 3, (2, 2, 2), dtype=dtype, rngs=rngs),
        inputs=_x(2, 4, 5, 3, 2),
    ),
    Case(
        name="Conv-depthwise",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(4, 8, (3, 3), feature_group_count=4, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: Conv(
            None, 8, (3, 3), feature_group_count=4, dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 5, 5, 4),
    ),
    Case(
        name="Conv-dilated-nobias",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(
            3, 2, (3, 3), kernel_dilation=2, use_bias=False, dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 8, 8, 3),
    ),
    Case(
        name="Conv-circular",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(
            3, 4, (3, 4), strides=2, padding="CIRCULAR", dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: Conv(
            None, 4, (3, 4), strides=2, padding="CIRCULAR", dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 6, 7, 3),
    ),
    Case(
        name="Conv-causal",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(
            3, 4, 3, padding="CAUSAL", kernel_dilation=2, dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: Conv(
            None, 4, 3, padding="CAUSAL", kernel_dilation=2, dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 10, 3),
    ),
    Case(
        name="Conv-masked-unbatched",
        cls=nnx.Conv,
        build=lambda rngs, dtype: Conv(
            3,
            2,
            (3, 3),
            mask=jnp.ones((3, 3, 3, 2)).at[2].set(0.0),
            dtype=dtype,
            rngs=rngs,
        ),
        inputs=_x(5, 5, 3),
    ),
    Case(
        name="ConvTranspose-1d",
        cls=nnx.ConvTranspose,
        build=lambda rngs, dtype: nnx.ConvTranspose(3, 4, 3, strides=2, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.ConvTranspose(
            None, 4, 3, strides=2, dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 6, 3),
    ),
    Case(
        name="ConvTranspose-2d-valid",
        cls=nnx.ConvTranspose,
        build=lambda rngs, dtype: ConvTranspose(
            3, 2, (3, 2), strides=(2, 3), padding="VALID", dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: ConvTranspose(
            None, 2, (3, 2), strides=(2, 3), padding="VALID", dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 4, 3, 3),
    ),
    Case(
        name="ConvTranspose-2d-circular-transposed",
        cls=nnx.ConvTranspose,
        build=lambda rngs, dtype: ConvTranspose(
            3,
            2,
            (3, 3),
            strides=2,
            padding="CIRCULAR",
            transpose_kernel=True,
            dtype=dtype,
            rngs=rngs,
        ),
        lazy_build=lambda rngs, dtype: ConvTranspose(
            None,
            2,
            (3, 3),
            strides=2,
            padding="CIRCULAR",
            transpose_kernel=True,
            dtype=dtype,
            rngs=rngs,
        ),
        inputs=_x(2, 4, 3, 3),
    ),
]
