"""Errors raised by nnx.

Every nnx error derives from :class:`NNXError` and says three things: what went wrong, where
(the class and the path in the model, e.g. ``model.blocks[3].attn``), and how to fix it.
Each concrete class also derives from the builtin exception a caller would naturally catch
(``ValueError``, ``TypeError``, ``KeyError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

__all__ = [
    "ArgumentError",
    "AttributeNotFoundError",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMismatchError",
    "FilterError",
    "GraphDefMismatchError",
    "KeyNotFoundError",
    "MergeError",
    "NNXError",
    "RngStreamError",
    "ConfigError",
    "ShapeError",
    "ShardingError",
    "StaticAttributeError",
    "TraceContextError",
    "TransformError",
    "UpdateError",
    "VariableInPlaceError",
    "format_path",
]


class NNXError(Exception):
    """Base class of every error raised by nnx."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ArgumentError(NNXError, TypeError, ValueError):
    """A function got an argument it cannot use (a missing filter, a seed of the wrong type, a
    Variable type that does not fit). Both a TypeError and a ValueError, since flax.nnx raises
    one or the other for these calls."""


class KeyNotFoundError(NNXError, KeyError, ValueError):
    """A key or path was looked up that is not there (a Variable's metadata, a state path).
    Also a ValueError, which flax.nnx raises for unknown pure-dict paths."""


class AttributeNotFoundError(NNXError, AttributeError, ValueError):
    """An attribute was asked for that no object has (a Variable, State or Dict attribute, an
    attribute for ``Module.set_attributes``). Also a ValueError, which flax.nnx's
    ``set_attributes`` raises."""


class FilterError(NNXError, ValueError):
    """A filter set did not cover the state, or a filter could not be understood."""


class UpdateError(NNXError, ValueError):
    """`nnx.update` got a state that does not fit the model; the model is left unchanged."""


class MergeError(NNXError, ValueError):
    """`nnx.merge` got states that do not fit the GraphDef."""


class GraphDefMismatchError(MergeError):
    """A State was merged with a GraphDef of a different structure."""


class StaticAttributeError(NNXError, TypeError):
    """A static (non-data) attribute cannot go into a GraphDef (usually: it is unhashable)."""


class TraceContextError(NNXError, RuntimeError):
    """State was changed inside a transform in a way the transform cannot carry back out."""


class TransformError(NNXError, ValueError):
    """A transform's arguments (axes, argnums, shardings) do not fit the state it was given."""


class ShapeError(NNXError, ValueError):
    """A layer got an input whose shape does not fit its configuration."""


class ShardingError(NNXError, ValueError):
    """A Variable's sharding annotation does not fit its value or the mesh (too many axis
    names for its rank, a mesh axis that does not exist, conflicting logical axis rules)."""


class ConfigError(NNXError, ValueError):
    """A layer was constructed with invalid arguments."""


class VariableInPlaceError(NNXError, NotImplementedError):
    """An augmented assignment (``v += x``) was applied to a Variable object itself."""


class RngStreamError(NNXError, AttributeError, KeyError):
    """An RNG stream was requested that the Rngs object does not have."""


class CheckpointError(NNXError, ValueError):
    """A checkpoint could not be saved or restored (missing step, not a checkpoint...)."""


class CheckpointMismatchError(CheckpointError):
    """The saved structure, shapes or dtypes differ from the restore target."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint's files are damaged: a checksum, a size or a metadata file is wrong."""


def format_path(path: Sequence[Hashable], root: str = "model") -> str:
    """Formats a state path the way a user would write it in Python.

    Args:
      path: a tuple of attribute names (str) and container keys (int or str).
      root: the name used for the root object.

    Returns:
      A string such as ``model.blocks[3].attn``.

    Example:
      >>> format_path(('blocks', 3, 'attn', 'kernel'))
      'model.blocks[3].attn.kernel'
      >>> format_path(())
      'model'
    """
    out = root
    for part in path:
        if isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


def short_list(items: Sequence[Any], limit: int = 10) -> str:
    """One item a line, at most `limit` lines, then a count of the rest."""
    lines = [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)
