"""A griffe extension for the API reference: millrace's docstrings are written as reST (Sphinx
roles, doctest blocks), and mkdocstrings renders Markdown. Before rendering, each docstring of
millrace gets its doctest blocks fenced as ``pycon`` code, and its roles (:func:`x`,
:class:`~a.b.C`...) turned into cross-references when they name an object of millrace, or into
code when they name something else (``TypeError``, :mod:`multiprocessing`). A role naming
``millrace.…`` that does not exist stays a cross-reference, so the strict build reports it.

>>> to_markdown(">>> 1 + 1\\n2\\n\\nText.", lambda target: None)
'```pycon\\n>>> 1 + 1\\n2\\n```\\n\\nText.'
>>> to_markdown("See :func:`~millrace.execution.run_main`.", lambda target: target)
'See [`run_main`][millrace.execution.run_main].'
>>> to_markdown("A :class:`TypeError`.", lambda target: None)
'A `TypeError`.'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`<>]+)`")
PACKAGE = "millrace"


def to_markdown(text: str, resolve: Callable[[str], str | None]) -> str:
    """``text`` (a docstring) with its doctest blocks fenced and its roles made Markdown;
    ``resolve(target)`` gives the identifier a role's target links to, or ``None`` for code."""
    return ROLE.sub(lambda match: _role(match, resolve), _fence_doctests(text))


def _role(match: re.Match[str], resolve: Callable[[str], str | None]) -> str:
    short, target = match.group(1) == "~", match.group(2).strip()
    display = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
    identifier = resolve(target)
    if identifier is None and target.startswith(PACKAGE + "."):
        identifier = target  # a reference into millrace that resolves nowhere: the build says so
    return f"`{display}`" if identifier is None else f"[`{display}`][{identifier}]"


def _fence_doctests(text: str) -> str:
    """Doctest blocks (a ``>>>`` line and what follows up to a blank line) as fenced code."""
    out: list[str] = []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.lstrip()
        if not stripped.startswith(">>>"):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(stripped)]
        out.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip():
            out.append(lines[index])
            index += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class RestDocstrings(griffe.Extension):
    """Rewrites the docstrings of millrace's objects as :func:`to_markdown` says."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is None or not obj.path.startswith(PACKAGE):
            return
        obj.docstring.value = to_markdown(obj.docstring.value, lambda target: _resolve(obj, target))


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The path of the millrace object ``target`` names, seen from ``obj``: a member of it, of
    its class or module, or of a public module; ``None`` when nothing in millrace is called so."""
    name = target.lstrip(".")
    if target.startswith(PACKAGE + "."):
        candidates = [target]
    else:
        scopes = [obj, obj.parent, obj.module]
        candidates = [f"{scope.path}.{name}" for scope in scopes if scope is not None]
        package = obj.modules_collection[PACKAGE]
        candidates += [f"{module.path}.{name}" for module in package.modules.values()]
    for candidate in candidates:
        try:
            found = obj.modules_collection[candidate]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        # A name a module imports from elsewhere (``multiprocessing`` in millrace.execution)
        # is not millrace's to document.
        if found.is_alias and not found.target_path.startswith(PACKAGE + "."):
            continue
        return candidate
    return None
