"""The public face of nnx is a checked-in list: an API change is always a conscious diff."""

from __future__ import annotations

import builtins
import pathlib

import nnx

LISTED = pathlib.Path(__file__).with_name("public_api.txt").read_text().split()


def test_public_names_match_the_checked_in_list():
    # `nnx.examples` is a subpackage run with `python -m`; importing it (as the example test
    # does) sets the attribute, but it is not re-exported.
    names = sorted(n for n in vars(nnx) if not n.startswith("_") and n != "examples")
    added = sorted(set(names) - set(LISTED))
    removed = sorted(set(LISTED) - set(names))
    assert not added and not removed, (
        f"public API changed: added {added}, removed {removed}. If intended, update "
        "tests/public_api.txt."
    )


def test_no_public_name_shadows_a_builtin():
    shadowing = sorted(set(LISTED) & set(dir(builtins)))
    assert not shadowing, f"nnx exports names that shadow builtins: {shadowing}"
