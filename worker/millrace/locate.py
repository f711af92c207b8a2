"""Finding a flow from the command line: ``FILE_OR_MODULE[:ATTR]``, as ``python -m bytewax.run``
takes it.

A target naming a file (it ends in ``.py``, holds a path separator or exists) is imported as a
module, its folder first on ``sys.path`` (and the packages around it, where ``__init__.py``
files say so), so a flow's classes and functions pickle by name in the processes of a cluster
as they do in this one; anything else is a module to import. ``ATTR`` defaults to ``flow``.

What the user got wrong (no such file, module or attribute, an attribute that is not a
Dataflow) is a :class:`FlowNotFound` with one line naming it; an error raised by the flow's own
code while it is imported leaves :func:`load` as it was raised, with its traceback.

>>> load("millrace.no_such_module")
Traceback (most recent call last):
...
millrace.locate.FlowNotFound: no module named 'millrace.no_such_module'
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .dataflow import Dataflow

__all__ = ["FlowNotFound", "Target", "parse_target", "load", "load_target"]

DEFAULT_ATTRIBUTE = "flow"


class FlowNotFound(Exception):
    """The target names no file, module or attribute, or the attribute is not a Dataflow."""


@dataclass(frozen=True)
class Target:
    """A parsed ``FILE_OR_MODULE[:ATTR]``: ``file`` is set for a file, ``module`` otherwise."""

    text: str
    attribute: str
    file: Path | None = None
    module: str | None = None


def parse_target(text: str) -> Target:
    """Split ``text`` into a file or module and an attribute.

    >>> parse_target("examples/wordcount.py")
    Target(text='examples/wordcount.py', attribute='flow', file=PosixPath('examples/wordcount.py'), module=None)
    >>> parse_target("shop.flows:orders")
    Target(text='shop.flows:orders', attribute='orders', file=None, module='shop.flows')
    """
    where, sep, attribute = text.rpartition(":")
    if not sep:
        where, attribute = text, DEFAULT_ATTRIBUTE
    if not where:
        raise FlowNotFound(f"no file or module before ':' in {text!r}")
    if not attribute.isidentifier():
        raise FlowNotFound(f"{attribute!r} in {text!r} is not an attribute name")
    looks_like_file = where.endswith(".py") or os.sep in where or "/" in where or Path(where).exists()
    if looks_like_file:
        return Target(text, attribute, file=Path(where))
    return Target(text, attribute, module=where)


def _module_name_of(file: Path) -> str:
    """The dotted name ``file`` imports as, with its folder (above its packages) on
    ``sys.path``; as Flask and Bytewax find an app."""
    path = file.resolve()
    if path.suffix != ".py":
        raise FlowNotFound(f"{file} is not a Python file (.py)")
    parts = [] if path.name == "__init__.py" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    if not parts or not all(part.isidentifier() for part in parts):
        raise FlowNotFound(f"{file} cannot be imported: {'.'.join(parts)!r} is not a module name")
    if parts[0] in sys.stdlib_module_names:
        # First on sys.path, it would stand in for the standard library's module everywhere.
        raise FlowNotFound(f"{file} would import as {parts[0]!r}, a module of the standard library: rename it")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    name = ".".join(parts)
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path:
        raise FlowNotFound(f"{file} imports as {name!r}, which is already the module {loaded.__file__ or name}")
    return name


def _import(target: Target) -> ModuleType:
    if target.file is not None:
        if not target.file.exists():
            raise FlowNotFound(f"no such file: {target.file}")
        if not target.file.is_file():
            raise FlowNotFound(f"{target.file} is not a file")
        name = _module_name_of(target.file)
    else:
        assert target.module is not None
        name = target.module
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    # Whether the module exists is asked before it runs: a ModuleNotFoundError raised by the
    # flow's own imports is the flow's error, with its traceback, not a bad target.
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise FlowNotFound(f"no module named {exc.name!r}") from None
        raise
    except ValueError as exc:  # an empty or relative name
        raise FlowNotFound(f"{name!r} is not a module name: {exc}") from None
    if spec is None:
        raise FlowNotFound(f"no module named {name!r}")
    return importlib.import_module(name)


def load(text: str) -> Dataflow:
    """The :class:`~millrace.dataflow.Dataflow` that ``text`` (``FILE_OR_MODULE[:ATTR]``) names."""
    return load_target(parse_target(text))


def load_target(target: Target) -> Dataflow:
    """The :class:`~millrace.dataflow.Dataflow` that ``target`` names (a file named as it is,
    whatever ``:`` its path holds)."""
    module = _import(target)
    where = target.file if target.file is not None else target.module
    if not hasattr(module, target.attribute):
        raise FlowNotFound(f"{where} has no attribute {target.attribute!r}")
    flow = getattr(module, target.attribute)
    if not isinstance(flow, Dataflow):
        raise FlowNotFound(f"{where}:{target.attribute} is a {type(flow).__name__}, not a Dataflow")
    return flow
