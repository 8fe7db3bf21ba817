"""nnx.bridge: use flax.linen modules inside nnx models, and nnx modules inside linen models.

Design note. Linen keeps state outside the module (``variables`` dicts of collections, passed
to ``init``/``apply``); nnx keeps it on the objects. The bridge converts at the boundary:

- :class:`ToNNX` wraps a linen module instance as an nnx Module. Its first call (or
  :func:`lazy_init`) runs linen ``init``; every collection becomes Variables on the wrapper,
  at the same paths linen uses (``model.Dense_0['kernel']``), with the Variable type registered
  for the collection name (``params`` -> ``nnx.Param``, ``batch_stats`` -> ``nnx.BatchStat``,
  others -> a type registered on first sight). Later calls run ``apply`` and write the updated
  collections back in place.
- :class:`ToLinen` / :func:`to_linen` wrap an nnx Module *class* as a linen module: the nnx
  module is built from linen's RNG streams inside ``init``/``apply``, and its state is exposed
  as linen collections (the reverse mapping).
- ``variables.py`` holds the conversions: Variable <-> linen value, metadata boxes
  (``nn.Partitioned`` -> ``out_sharding``), :class:`NNXMeta` for metadata linen has no box for.

flax is an optional dependency: ``import nnx`` never imports it; importing this package without
flax.linen raises :class:`LinenNotInstalledError` (an ImportError and an ``nnx.NNXError``).

Example:
  >>> import flax.linen as nn
  >>> model = nnx.bridge.ToNNX(nn.Dense(3), rngs=nnx.Rngs(0))
  >>> model.lazy_init(jnp.ones((1, 2))).kernel.shape
  (2, 3)
"""

from __future__ import annotations

from ..errors import NNXError


class LinenNotInstalledError(NNXError, ImportError):
    """``nnx.bridge`` was used but flax.linen cannot be imported."""


_MISSING_MESSAGE = (
    "nnx.bridge needs flax.linen: pip install 'nnx-jax[linen]'. Importing flax.linen failed "
    "({error}).\nFix: install flax (the optional 'linen' extra), or use only nnx modules."
)

try:
    import flax.linen as _linen  # noqa: F401  (the availability check)
except ImportError as _error:
    raise LinenNotInstalledError(_MISSING_MESSAGE.format(error=_error)) from _error

from ..nn import initializers as initializers  # noqa: E402
from . import variables as variables  # noqa: E402
from . import wrappers as wrappers  # noqa: E402
from .functional import Functional as Functional  # noqa: E402
from .functional import functional as functional  # noqa: E402
from .variables import NNXMeta as NNXMeta  # noqa: E402
from .variables import with_partitioning as with_partitioning  # noqa: E402
from .wrap_linen import ToNNX as ToNNX  # noqa: E402
from .wrap_linen import lazy_init as lazy_init  # noqa: E402
from .wrap_nnx import ToLinen as ToLinen  # noqa: E402
from .wrap_nnx import to_linen as to_linen  # noqa: E402
from .wrap_nnx import to_linen_class as to_linen_class  # noqa: E402

__all__ = [
    "Functional",
    "LinenNotInstalledError",
    "NNXMeta",
    "ToLinen",
    "ToNNX",
    "functional",
    "initializers",
    "lazy_init",
    "to_linen",
    "to_linen_class",
    "variables",
    "with_partitioning",
    "wrappers",
]
