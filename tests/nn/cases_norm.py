"""Registry cases for the normalization layers and Dropout."""

from __future__ import annotations

import jax

import nnx
from tests.nn.registry import Case


def _x(*shape):
    return lambda key: (jax.random.normal(key, shape),)


CASES = [
    Case(
        name="LayerNorm",
        cls=nnx.LayerNorm,
        build=lambda rngs, dtype: nnx.LayerNorm(6, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.LayerNorm(None, dtype=dtype, rngs=rngs),
        inputs=_x(4, 6),
    ),
    Case(
        name="LayerNorm-2axes-slowvar",
        cls=nnx.LayerNorm,
        build=lambda rngs, dtype: nnx.LayerNorm(
            12,
            reduction_axes=(-2, -1),
            feature_axes=(-2, -1),
            use_fast_variance=False,
            dtype=dtype,
            rngs=rngs,
        ),
        lazy_build=lambda rngs, dtype: nnx.LayerNorm(
            None,
            reduction_axes=(-2, -1),
            feature_axes=(-2, -1),
            use_fast_variance=False,
            dtype=dtype,
            rngs=rngs,
        ),
        inputs=_x(2, 3, 4),
    ),
    Case(
        name="RMSNorm",
        cls=nnx.RMSNorm,
        build=lambda rngs, dtype: nnx.RMSNorm(6, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.RMSNorm(None, dtype=dtype, rngs=rngs),
        inputs=_x(4, 6),
    ),
    Case(
        name="GroupNorm",
        cls=nnx.GroupNorm,
        build=lambda rngs, dtype: nnx.GroupNorm(8, num_groups=4, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.GroupNorm(None, num_groups=4, dtype=dtype, rngs=rngs),
        inputs=_x(2, 5, 8),
    ),
    Case(
        name="GroupNorm-group_size",
        cls=nnx.GroupNorm,
        build=lambda rngs, dtype: nnx.GroupNorm(
            6, num_groups=None, group_size=3, dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: nnx.GroupNorm(
            None, num_groups=None, group_size=3, dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 3, 3, 6),
    ),
    Case(
        name="InstanceNorm",
        cls=nnx.InstanceNorm,
        build=lambda rngs, dtype: nnx.InstanceNorm(3, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.InstanceNorm(None, dtype=dtype, rngs=rngs),
        inputs=_x(2, 4, 4, 3),
    ),
    # Training mode updates the running statistics from the batch: not vmappable over inputs
    # with the model broadcast (each lane would want its own statistics).
    Case(
        name="BatchNorm-train",
        cls=nnx.BatchNorm,
        build=lambda rngs, dtype: nnx.BatchNorm(5, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.BatchNorm(None, dtype=dtype, rngs=rngs),
        inputs=_x(8, 5),
        batchable=False,
    ),
    Case(
        name="BatchNorm-eval-axis1",
        cls=nnx.BatchNorm,
        build=lambda rngs, dtype: nnx.BatchNorm(
            3, axis=1, use_running_average=True, dtype=dtype, rngs=rngs
        ),
        lazy_build=lambda rngs, dtype: nnx.BatchNorm(
            None, axis=1, use_running_average=True, dtype=dtype, rngs=rngs
        ),
        inputs=_x(4, 3, 2),
    ),
    Case(
        name="WeightNorm-Linear",
        cls=nnx.WeightNorm,
        build=lambda rngs, dtype: nnx.WeightNorm(
            nnx.Linear(5, 3, dtype=dtype, rngs=rngs), dtype=dtype, rngs=rngs
        ),
        inputs=_x(4, 5),
    ),
    Case(
        name="WeightNorm-Conv-frobenius",
        cls=nnx.WeightNorm,
        build=lambda rngs, dtype: nnx.WeightNorm(
            nnx.Conv(2, 3, (3,), dtype=dtype, rngs=rngs),
            feature_axes=None,
            dtype=dtype,
            rngs=rngs,
        ),
        inputs=_x(2, 6, 2),
    ),
    # update_stats=False: a call must not change the next one (the vmap check calls twice).
    Case(
        name="SpectralNorm-Linear",
        cls=nnx.SpectralNorm,
        build=lambda rngs, dtype: nnx.SpectralNorm(
            nnx.Linear(5, 3, dtype=dtype, rngs=rngs),
            n_steps=2,
            update_stats=False,
            dtype=dtype,
            rngs=rngs,
        ),
        inputs=_x(4, 5),
    ),
    Case(
        name="SpectralNorm-Conv-train",
        cls=nnx.SpectralNorm,
        build=lambda rngs, dtype: nnx.SpectralNorm(
            nnx.Conv(2, 3, (3,), dtype=dtype, rngs=rngs), dtype=dtype, rngs=rngs
        ),
        inputs=_x(2, 6, 2),
        batchable=False,
    ),
    # The registry needs a deterministic call; randomness is tested in test_dropout.py.
    Case(
        name="Dropout-deterministic",
        cls=nnx.Dropout,
        build=lambda rngs, dtype: nnx.Dropout(0.5, deterministic=True, rngs=rngs),
        inputs=_x(4, 5),
    ),
]
