"""Pieces of the training floor's error messages."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ..pytreelib import is_array

__all__ = ["what"]


def what(x: Any) -> str:
    """What an argument is, for error messages: ``MLP``, ``State``, ``None``..."""
    if x is None:
        return "None"
    if is_array(x):
        return f"array of shape {tuple(jnp.shape(x))}"
    if type(x) in (tuple, list):
        return f"{type(x).__name__} of {len(x)} items"
    return type(x).__name__
