"""Registry cases for the dense layers and Sequential."""

from __future__ import annotations

import jax

import nnx
from tests.nn.registry import Case

CASES = [
    Case(
        name="Linear",
        cls=nnx.Linear,
        build=lambda rngs, dtype: nnx.Linear(5, 3, dtype=dtype, rngs=rngs),
        lazy_build=lambda rngs, dtype: nnx.Linear(None, 3, dtype=dtype, rngs=rngs),
        inputs=lambda key: (jax.random.normal(key, (4, 5)),),
    ),
    Case(
        name="Linear-nobias-3d",
        cls=nnx.Linear,
        build=lambda rngs, dtype: nnx.Linear(5, 2, use_bias=False, dtype=dtype, rngs=rngs),
        inputs=lambda key: (jax.random.normal(key, (2, 3, 5)),),
    ),
    Case(
        name="Sequential",
        cls=nnx.Sequential,
        build=lambda rngs, dtype: nnx.Sequential(
            nnx.Linear(5, 8, dtype=dtype, rngs=rngs),
            nnx.relu,
            nnx.Linear(8, 2, dtype=dtype, rngs=rngs),
        ),
        lazy_build=lambda rngs, dtype: nnx.Sequential(
            nnx.Linear(None, 8, dtype=dtype, rngs=rngs),
            nnx.relu,
            nnx.Linear(None, 2, dtype=dtype, rngs=rngs),
        ),
        inputs=lambda key: (jax.random.normal(key, (4, 5)),),
    ),
]
