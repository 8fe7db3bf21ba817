"""Stochastic layers: :class:`Dropout`.

Example:
  >>> drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
  >>> y = drop(jnp.ones((2, 4)))            # zeros, or the input scaled by 1 / (1 - rate)
  >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [0.0], [2.0])
  True
  >>> drop.eval()                           # deterministic: the identity
  >>> drop(jnp.ones(3)).tolist()
  [1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ..errors import ConfigError, ShapeError
from ..locate import describe
from ..module import Module
from ..rngs import Rngs, RngStream

__all__ = ["Dropout"]


class Dropout(Module):
    """Randomly zeroes inputs with probability `rate` and scales the rest by
    ``1 / (1 - rate)``, so that the expected output equals the input.

    Dropout keeps its own random stream: a fork of ``rngs[rng_collection]`` taken at
    construction (it falls back on the ``default`` stream). Each call draws a new key from it,
    so successive calls drop different entries; the stream's counter is state, carried through
    ``nnx.jit`` and the other transforms. Keys can also be given at call time
    (``rngs=`` an Rngs, an RngStream or a key).

    Args:
      rate: the probability of zeroing an entry, in [0, 1].
      broadcast_dims: axes along which the same mask is shared (e.g. ``(1,)`` to drop whole
        time steps' features consistently over a sequence axis 1).
      deterministic: if True, the layer is the identity. ``model.train()`` /
        ``model.eval()`` set it; the call argument overrides it.
      rng_collection: the name of the stream to draw from.
      rngs: random streams (optional if keys are given at call time).

    Raises:
      ConfigError: `rate` is not a number in [0, 1].
    """

    rngs: RngStream | None

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | RngStream | None = None,
    ):
        try:
            valid = 0.0 <= float(rate) <= 1.0
        except (TypeError, ValueError):
            valid = False
        if isinstance(rate, bool) or not valid:
            raise ConfigError(
                f"Dropout: rate is the probability of dropping an entry and must be a number "
                f"in [0, 1], got {rate!r}.\nFix: e.g. nnx.Dropout(0.1, rngs=rngs)."
            )
        dims = (broadcast_dims,) if isinstance(broadcast_dims, int) else tuple(broadcast_dims)
        if any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
            raise ConfigError(
                f"Dropout: broadcast_dims must be a sequence of ints, got {broadcast_dims!r}."
            )
        self.rate = float(rate)
        self.broadcast_dims = dims
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = None
        else:
            raise ConfigError(
                f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or None, got "
                f"{type(rngs).__name__}."
            )

    def _key(self, rngs: Rngs | RngStream | jax.Array | None) -> jax.Array:
        if rngs is None:
            rngs = self.rngs
        if isinstance(rngs, Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, RngStream):
            return rngs()
        if rngs is None:
            raise ConfigError(
                f"{describe(self)} (rate={self.rate}) needs random keys, but it was built "
                "without rngs and none were given to the call.\nFix: build it with "
                f"nnx.Dropout({self.rate}, rngs=nnx.Rngs({self.rng_collection}=0)), pass "
                "rngs= to the call, or call it with deterministic=True."
            )
        return rngs

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: Rngs | RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout.

        Args:
          inputs: any array.
          deterministic: overrides the attribute for this call.
          rngs: keys for this call, instead of the layer's own stream.
        """
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None:
            raise ConfigError(
                f"{describe(self)} does not know whether to drop: deterministic is None both "
                "in the constructor and in the call.\nFix: call model.train() or "
                "model.eval(), or pass deterministic=True/False."
            )
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        shape = list(jnp.shape(inputs))
        for d in self.broadcast_dims:
            if not -len(shape) <= d < len(shape):
                raise ShapeError(
                    f"{describe(self)} has broadcast_dims={self.broadcast_dims} but got an "
                    f"array of shape {tuple(shape)}, which has no axis {d}.\nFix: choose "
                    "broadcast_dims among the input's axes."
                )
            shape[d] = 1
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self._key(rngs), keep, tuple(shape))
        mask = jnp.broadcast_to(mask, jnp.shape(inputs))
        return lax.select(mask, inputs / keep, jnp.zeros_like(inputs))
