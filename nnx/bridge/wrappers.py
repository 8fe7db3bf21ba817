"""flax.nnx.bridge.wrappers' names in one place (the classes live in ``wrap_linen.py``,
``wrap_nnx.py`` and ``functional.py``)."""

from .functional import Functional as Functional
from .functional import functional as functional
from .wrap_linen import ToNNX as ToNNX
from .wrap_linen import lazy_init as lazy_init
from .wrap_nnx import ToLinen as ToLinen
from .wrap_nnx import to_linen as to_linen
from .wrap_nnx import to_linen_class as to_linen_class

__all__ = [
    "Functional",
    "ToLinen",
    "ToNNX",
    "functional",
    "lazy_init",
    "to_linen",
    "to_linen_class",
]
