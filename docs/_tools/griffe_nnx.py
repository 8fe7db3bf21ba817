"""A griffe extension for the docs build: reads nnx's docstrings the way the doctests do.

nnx's docstrings are Google style with a few habits griffe's Google parser does not know.
This extension adapts the text griffe sees at load time; the library files are not touched.

* ``Example:`` (singular, 98 sections) becomes ``Examples:``: griffe knows only the plural,
  and would otherwise render the ``>>>`` lines as prose inside an admonition instead of a
  highlighted console block.
* Sphinx roles (``:class:`Optimizer```, ``:func:`~nnx.grad```) become inline code; markdown
  has no roles and would print them verbatim.
* An ``Args:`` entry whose comma-separated names wrap onto the next line (``a, b,`` then
  ``c: ...``) is joined into one line, so griffe reads one entry instead of dropping it.
* A line of prose at the entries' indentation in a ``Raises:`` section (``In every case the
  targets are left untouched.``) is moved out of the section, into a paragraph after it;
  griffe would drop it as an entry without an exception name.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
_WRAPPED_NAMES = re.compile(
    r"^([ \t]+\w+(?:, \w+)*,)[ \t]*\n[ \t]+(?=\w+(?:, \w+)*:)", re.MULTILINE
)


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    target = target.strip()
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_RAISES_ENTRY = re.compile(r"^\s*[\w.]+:(\s|$)")


def _prose_out_of_raises(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    section = entry = None  # indentation of the "Raises:" line and of its entries
    prose = False  # inside a prose line moved out of the section (and its continuation)
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        indent = _indent(line)
        if section is not None and indent <= section:
            section = entry = None
            prose = False
        if section is None:
            if line.strip() == "Raises:":
                section = indent
            out.append(line)
            continue
        if entry is None:
            entry = indent
        if indent == entry:
            prose = not _RAISES_ENTRY.match(line) or bool(_SECTION.match(line))
            if prose:
                out.append("")
        out.append(" " * section + line.lstrip() if prose else line)
    return "\n".join(out)


def adapt(text: str) -> str:
    """The docstring text griffe should parse in place of `text`."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(_role, text)
    text = _WRAPPED_NAMES.sub(r"\1 ", text)
    return _prose_out_of_raises(text)


class NnxDocstrings(griffe.Extension):
    """Rewrites each docstring once, when griffe creates the object that owns it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = adapt(obj.docstring.value)
