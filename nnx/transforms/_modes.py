"""flax.nnx's ``graph=`` / ``graph_updates=`` keywords on the transforms.

nnx has one traversal (graph semantics), so these keywords never pick another code path;
they add flax's checks (see ``nnx/_graph_mode.py``). A transform resolves them once, when it
is applied to a function (as flax does), into a :class:`Mode`, or None for the default
(``graph=True, graph_updates=True``), which costs nothing afterwards:

* ``graph=False`` (tree mode): at each call the inputs may not share Variables or
  sub-objects, nor hold cycles (:func:`check_call`); tree mode also implies the next point;
* ``graph_updates=False``: inside the trace, after the function ran (:func:`check_trace`), a
  structural change of the inputs (an attribute or Variable added, removed or replaced)
  raises instead of being silently dropped as in flax (nnx's deliberate difference), and an
  input Variable returned in the output is refused, as flax refuses it. Variable values
  (and metadata) changed inside still come out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .._encoding import summary
from .._graph_mode import find_duplicates, graph_mode, graph_updates, iter_paths
from ..errors import ArgumentError, TransformError, format_path, short_list
from ..variablelib import Variable
from ._lift import Traced, after

__all__ = ["Mode", "check_call", "check_trace", "resolve"]


class Mode(NamedTuple):
    """A transform's resolved non-default keywords.

    Attributes:
      name: the transform, as users call it (``"jit"``).
      tree: ``graph=False``.
    """

    name: str
    tree: bool


def resolve(name: str, graph: bool | None, updates: bool | None) -> Mode | None:
    """The :class:`Mode` for these keywords (None against the current defaults), or None
    when both are True: the transform's usual path, unchanged."""
    tree = not graph_mode(graph)
    if not tree and graph_updates(updates):
        return None
    return Mode(name, tree)


def _lines(found: list[list[tuple]], limit: int = 6) -> str:
    """One line per object reached along several paths (`found` from find_duplicates, each
    path starting with the name of its root: ``args``, ``kwargs`` or ``out``)."""
    lines = ["  " + " = ".join(_fmt(p) for p in paths) for paths in found[:limit]]
    if len(found) > limit:
        lines.append(f"  ... and {len(found) - limit} more")
    return "\n".join(lines)


def _fmt(path: tuple) -> str:
    return format_path(path[1:], str(path[0]))


def _shared(name: str, found: list[list[tuple]], what: str) -> ArgumentError:
    return ArgumentError(
        f"nnx.{name}(graph=False) found shared references among its {what}, which tree mode "
        f"does not allow (each line is one object reached along several paths):\n"
        f"{_lines(found)}\n"
        f"Fix: drop graph=False (nnx handles shared references at the same speed), or give "
        f"each place its own object (nnx.clone)."
    )


def check_call(mode: Mode, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> None:
    """At a call in tree mode: refuses shared references and cycles among the inputs (paths
    are shown as ``args[0].layers[1]``, ``kwargs['model']``)."""
    if mode.tree:
        found = find_duplicates({"args": tuple(args), "kwargs": dict(kwargs or {})})
        if found:
            raise _shared(mode.name, found, "inputs")


_STRUCTURE = (
    "nnx.{name}(graph_updates=False): the function changed the structure of its graph "
    "inputs ({changes}), which graph_updates=False does not carry out (flax drops such a "
    "change silently; nnx refuses it so that it is not lost unnoticed):\n{paths}\n"
    "Fix: drop graph_updates=False{tree}, or make the change outside the transform (e.g. "
    "create attributes and Variables before it); changing Variable values is fine."
)
_ALIASED = (
    "nnx.{name}(graph_updates=False): the function returned Variables of its inputs:\n"
    "{paths}\ngraph_updates=False does not support Variable aliasing between inputs and "
    "outputs (as in flax).\n"
    "Fix: drop graph_updates=False{tree}, or return new values (e.g. `m.w[...]`, or "
    "nnx.clone(...)) instead of the input Variables."
)


def _root_name(spec: Any, k: int) -> str:
    p = spec.positions[k]
    return f"args[{p}]" if isinstance(p, int) else f"kwargs[{p!r}]"


def _line(t: Traced, path: tuple, what: str) -> str:
    root = _root_name(t.spec, path[0])
    cls = type(t.roots[path[0]]).__name__
    return f"{format_path(path[1:], root)} ({what}; {root} is a {cls})"


def check_trace(mode: Mode, t: Traced, out: Any, *, carry: Any = None) -> None:
    """Inside the trace, after the function ran (``graph_updates=False`` or tree mode):
    refuses a structural change of the graph inputs and input Variables in `out` (`carry`,
    an output a loop or scan hands on, may be input objects). In tree mode, also refuses a
    Variable reached twice in `out`."""
    spec = t.spec
    post = after(t)
    known = {id(n) for n in t.nodes}
    tree = " (and graph=False)" if mode.tree else ""
    if post.graphdef != spec.graphdef or any(
        isinstance(leaf, Variable) and id(leaf) not in known for leaf in post.leaves
    ):
        before = {(spec.root_of[i], *spec.paths[i]) for i in range(len(spec.paths))}
        now = {p: leaf for p, leaf in zip(post.paths, post.leaves, strict=True)}
        lines, kinds = [], []
        for path in sorted(now.keys() - before, key=repr):
            lines.append(_line(t, path, "added"))
        for path in sorted(before - now.keys(), key=repr):
            lines.append(_line(t, path, "removed"))
        for path, leaf in now.items():
            if path in before and isinstance(leaf, Variable) and id(leaf) not in known:
                lines.append(_line(t, path, "replaced"))
        for word in ("added", "removed", "replaced"):
            if any(f"({word};" in line for line in lines):
                kinds.append(word)
        if not lines:
            lines = [f"before {summary(spec.graphdef)}, after {summary(post.graphdef)}"]
            kinds = ["a static attribute or the object structure changed"]
        changes = ", ".join(kinds) if kinds[0] in ("added", "removed", "replaced") else kinds[0]
        raise TransformError(
            _STRUCTURE.format(name=mode.name, changes=changes, paths=short_list(lines), tree=tree)
        )
    inputs = {id(n) for n in t.nodes if isinstance(n, Variable)}
    if carry is not None:
        inputs -= {id(obj) for _, obj in iter_paths(carry) if isinstance(obj, Variable)}
    aliased = [
        _fmt(("out", *path))
        for path, obj in iter_paths(out)
        if isinstance(obj, Variable) and id(obj) in inputs
    ]
    if aliased:
        raise TransformError(
            _ALIASED.format(name=mode.name, paths=short_list(aliased), tree=tree)
        )
    if mode.tree:
        found = find_duplicates(out, only=Variable)
        if found:
            raise _shared(mode.name, [[("out", *p) for p in ps] for ps in found], "outputs")
