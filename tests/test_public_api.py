"""The public face of nnx is a checked-in list: an API change is always a conscious diff."""

from __future__ import annotations

import builtins
import pathlib
import subprocess
import sys

import pytest

import nnx

LAZY = ("bridge", "wrappers")
LISTED = pathlib.Path(__file__).with_name("public_api.txt").read_text().split()


def test_public_names_match_the_checked_in_list():
    # `nnx.examples` is a subpackage run with `python -m`; importing it (as the example test
    # does) sets the attribute, but it is not re-exported.
    # `bridge` and `wrappers` are lazy (they need flax.linen), so not in vars(nnx) until used.
    names = sorted(
        {n for n in vars(nnx) if not n.startswith("_") and n != "examples"} | set(LAZY)
    )
    added = sorted(set(names) - set(LISTED))
    removed = sorted(set(LISTED) - set(names))
    assert not added and not removed, (
        f"public API changed: added {added}, removed {removed}. If intended, update "
        "tests/public_api.txt."
    )


# flax.nnx exports these two, so nnx must too (`nnx.map(f, model)`, the `nnx.object` module);
# they are only ever used qualified, never star-imported.
FLAX_NAMES_SHADOWING_BUILTINS = {"map", "object"}


def test_no_public_name_shadows_a_builtin():
    shadowing = sorted(set(LISTED) & set(dir(builtins)) - FLAX_NAMES_SHADOWING_BUILTINS)
    assert not shadowing, f"nnx exports names that shadow builtins: {shadowing}"


def test_lazy_names_resolve_only_on_use():
    pytest.importorskip("flax.linen")
    code = (
        "import sys, nnx\n"
        "assert 'flax' not in sys.modules, 'import nnx imported flax'\n"
        "assert nnx.bridge.ToNNX and nnx.wrappers.ToLinen\n"
        "assert 'flax' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
