"""flax.nnx 0.12 code runs unchanged: every public name of flax.nnx exists in nnx with the same
parameters (names, kinds, order, defaults), except the deliberate differences listed here.
Where nnx accepts more than flax (a default where flax requires the argument, a parameter
that can also be passed by keyword), flax code cannot tell, so that counts as the same.

The list below is the single record of those differences; ``docs/coming-from-flax.md`` shows
it (its "Signature differences" table is checked against it both ways), so the page cannot
drift from the code. Needs flax (the ``compat`` extra, which CI installs); skips without it.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import types
from collections.abc import Mapping
from typing import Any

import pytest

import nnx

flax_nnx = pytest.importorskip("flax.nnx")

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "coming-from-flax.md"

# name, or "name(param)", or "Class.method" -> why nnx differs. Keep each reason one line: it is
# what the docs table shows.
DIFFERENCES: dict[str, str] = {
    "Optimizer.update": "update(model, grads) as in flax, and update(grads) as before flax 0.11",
    "ModelAndOptimizer.update": "update(grads) as in flax, and update(model, grads) too",
    "EMA(only)": "averages the nnx.Params by default; flax averages every Variable",
    "EMA(wrt)": "extra alias of only=, the name nnx.Optimizer uses",
    "reseed(policy)": "'match_shape' by default, so batched (split) keys reseed too",
    "restore_int_paths(reference)": "optional State: turns back into ints only its int keys",
    "call(states)": "call(graphdef, state) works as well as flax's call((graphdef, state))",
    "tabulate(row_filter)": "None keeps every row; nnx's RngStreams never appear as rows",
    "GraphDef": "nnx's own hashable encoding, made by split/graphdef, never built by hand",
    "GraphState": "made by nnx.unpack; fields graphdef and state, not flax's private names",
    "SplitContext": "made by nnx.split_context; nnx's own index bookkeeping, no RefMap",
    "UpdateContext": "made by nnx.update_context; no static cache (no cached_partial cache)",
    "GraphDef.with_matching_outer_index": "flax's outer-index bookkeeping; nnx has none",
    "GraphDef.with_no_outer_index": "flax's outer-index bookkeeping; nnx has none",
    "GraphDef.with_same_outer_index": "flax's outer-index bookkeeping; nnx has none",
}

# flax.nnx names nnx does not provide, with the reason.
ABSENT: dict[str, str] = {
    "proxy_caller": "the machinery behind nnx.call and GraphDef.apply, which nnx provides",
}


def _flax_public() -> list[str]:
    return sorted(n for n in dir(flax_nnx) if not n.startswith("_"))


def _is_missing_sentinel(value: Any) -> bool:
    """flax's ``Missing`` and nnx's private "no argument given" markers (a bare ``object()``,
    a ``_Missing`` class): each library's way of saying "not passed", like ``None``."""
    if type(value) is object:
        return True
    cls = value if isinstance(value, type) else type(value)
    return cls.__name__ in ("Missing", "_Missing") and cls.__module__.startswith(("flax", "nnx"))


def _norm_default(value: Any) -> Any:
    """A default in a form where flax's and nnx's spellings of the same thing compare equal."""
    if value is inspect.Parameter.empty:
        return "<required>"
    if value is None or _is_missing_sentinel(value):
        return "<none>"  # flax's Missing sentinel plays the role of our None
    if isinstance(value, Mapping):  # dict, MappingProxyType, flax's FrozenDict, our frozen map
        value = dict(value)
        return ("dict", tuple(sorted((repr(k), _norm_default(v)) for k, v in value.items())))
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(_norm_default(v) for v in value))
    if isinstance(value, type):
        return ("type", value.__name__)
    if type(value).__name__ == "_CarryType":  # nnx.Carry is a marker object, flax's a class
        return ("type", "Carry")
    if callable(value):
        return "<callable>"  # initializers, promote_dtype, activation functions
    if type(value).__module__.startswith(("flax", "nnx")):
        # filter objects and sentinels: the class name and the fields that define them
        fields = getattr(value, "__dict__", None) or {
            s: getattr(value, s) for s in getattr(type(value), "__slots__", ()) if hasattr(value, s)
        }
        return (type(value).__name__, tuple(sorted((k, repr(v)) for k, v in fields.items())))
    return ("value", repr(value))


def _params(obj: Any) -> list[tuple[str, str, Any]] | None:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if inspect.isclass(obj) and params and params[0].name == "self":
        params = params[1:]
    return [(p.name, p.kind.name, _norm_default(p.default)) for p in params]


def _accepts(ours: tuple, theirs: tuple) -> bool:
    """Whether our parameter takes every call flax's takes: the same kind and default, or a
    superset (a default where flax requires the argument; by keyword too where flax's is
    positional-only). flax code never notices either."""
    if ours == theirs:
        return True
    _, o_kind, o_default = ours
    _, t_kind, t_default = theirs
    kind_ok = o_kind == t_kind or (t_kind, o_kind) == ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")
    default_ok = o_default == t_default or t_default == "<required>"
    return kind_ok and default_ok


def _diffs(name: str, theirs: list, ours: list) -> list[tuple[str, str]]:
    """(key, description) for each differing parameter; key is 'name(param)'."""
    out = []
    t = {p[0]: p for p in theirs}
    o = {p[0]: p for p in ours}
    for pname, kind, default in theirs:
        if pname not in o:
            out.append((f"{name}({pname})", f"missing parameter {pname} ({kind})"))
        elif not _accepts(o[pname], (pname, kind, default)):
            out.append((f"{name}({pname})", f"flax {kind} {default!r}, nnx {o[pname][1:]!r}"))
    for pname, kind, _ in ours:
        if pname not in t and kind not in ("VAR_KEYWORD",):
            out.append((f"{name}({pname})", f"extra parameter {pname} ({kind})"))
    common_t = [p[0] for p in theirs if p[0] in o]
    common_o = [p[0] for p in ours if p[0] in t]
    if not out and common_t != common_o:
        out.append((f"{name}()", f"parameter order: flax {common_t}, nnx {common_o}"))
    return out


def _excused(key: str) -> bool:
    name = key.split("(")[0]
    return key in DIFFERENCES or name in DIFFERENCES


def test_every_flax_name_exists():
    missing = [n for n in _flax_public() if not hasattr(nnx, n) and n not in ABSENT]
    assert not missing, (
        f"flax.nnx names nnx lacks: {missing}. Add them, or list each in ABSENT with the reason."
    )


def test_absent_names_are_really_absent():
    present = [n for n in ABSENT if hasattr(nnx, n)]
    assert not present, f"listed as absent but nnx has them (remove from ABSENT): {present}"


def _signature_diffs() -> list[tuple[str, str]]:
    out = []
    for name in _flax_public():
        theirs_obj = getattr(flax_nnx, name)
        if not hasattr(nnx, name) or isinstance(theirs_obj, types.ModuleType):
            continue
        if not callable(theirs_obj):
            continue
        theirs, ours = _params(theirs_obj), _params(getattr(nnx, name))
        if theirs is None or ours is None:
            continue
        out.extend(_diffs(name, theirs, ours))
    return out


def test_signatures_match_flax():
    unexpected = [f"{k}: {d}" for k, d in _signature_diffs() if not _excused(k)]
    assert not unexpected, (
        "nnx signatures differ from flax.nnx 0.12 (make them equal, or list the difference in "
        "DIFFERENCES with its reason):\n  " + "\n  ".join(unexpected)
    )


def test_listed_differences_still_exist():
    keys = {k for k, _ in _signature_diffs()}
    names = {k.split("(")[0] for k in keys}
    stale = [k for k in DIFFERENCES if "(" in k and k not in keys]
    stale += [k for k in DIFFERENCES if "(" not in k and "." not in k and k not in names]
    assert not stale, f"listed differences that are gone (remove them): {stale}"


def _docs_table() -> dict[str, str]:
    text = DOCS.read_text()
    section = text.split("## Signature differences", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \|$", section, flags=re.M)
    return dict(rows)


def test_docs_list_every_difference():
    table = _docs_table()
    listed = {**DIFFERENCES, **ABSENT}
    assert set(table) == set(listed), (
        f"docs/coming-from-flax.md 'Signature differences' table and DIFFERENCES/ABSENT differ: "
        f"only in docs {sorted(set(table) - set(listed))}, only in the test "
        f"{sorted(set(listed) - set(table))}"
    )
    wrong = [k for k, why in listed.items() if table[k].strip() != why]
    assert not wrong, f"reasons differ between the docs table and the test: {wrong}"


# Classes whose public methods users call: each flax method must exist here with the same
# parameters (the first, ``self``/``cls``, aside).
METHOD_CLASSES = [
    "Module", "Variable", "Rngs", "RngStream", "Optimizer", "ModelAndOptimizer", "State",
    "GraphDef", "Metric", "MultiMetric", "List", "Dict", "Pytree", "EMA",
]


def _method_diffs() -> list[tuple[str, str]]:
    out = []
    for cls_name in METHOD_CLASSES:
        theirs_cls, ours_cls = getattr(flax_nnx, cls_name), getattr(nnx, cls_name)
        for meth in sorted(vars(theirs_cls)):
            if meth.startswith("_") and meth != "__call__":
                continue
            theirs_m = getattr(theirs_cls, meth)
            if not callable(theirs_m) or isinstance(theirs_m, type):
                continue
            key = f"{cls_name}.{meth}"
            if not hasattr(ours_cls, meth):
                out.append((key, "missing method"))
                continue
            theirs, ours = _params(theirs_m), _params(getattr(ours_cls, meth))
            if theirs is None or ours is None:
                continue
            theirs, ours = theirs[1:] if theirs else theirs, ours[1:] if ours else ours
            out.extend(_diffs(key, theirs, ours))
    return out


def test_methods_match_flax():
    unexpected = [f"{k}: {d}" for k, d in _method_diffs() if not _excused(k)]
    assert not unexpected, (
        "methods differ from flax.nnx 0.12 (make them equal, or list the difference in "
        "DIFFERENCES with its reason):\n  " + "\n  ".join(unexpected)
    )
