"""What a keyed step's per-item code may use inside the loop that :mod:`.chain` generates.

A keyed step (:mod:`.keyed`, :mod:`.system_windows`) gives its per-item work as lines of Python
source, :class:`LoopCode`, which the chain compiles into the loop of the stateless steps before
it. That source is checked here, once, when the :class:`LoopCode` is made (at import): against
:data:`LOOP_NAMES`, the names the loop gives it, and :data:`LOOP_GLOBALS`, the only names it may
look up as globals. Everything else it reads must be a local it binds itself, and it may not
bind a name of the loop's own (:func:`is_loop_own`): a template that breaks the rules fails at
import, not on the one item that takes an untested path.

>>> LoopCode("count", ("_emit = []", "_state = _k.state"), ("_state[_key] = _value",))
LoopCode(kind='count', setup=('_emit = []', '_state = _k.state'), per_key=('_state[_key] = _value',))
>>> LoopCode("count", ("_emit = []",), ("_total += _valeu",))
Traceback (most recent call last):
ValueError: loop code of count, per_key line 1 ('_total += _valeu'): reads '_valeu', which is not
in LOOP_NAMES, not in LOOP_GLOBALS, and not bound by the code itself
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

#: A value no user function gives; keyed code sees it as ``_MISSING`` (``.get()`` defaults).
MISSING: Any = object()

#: The names the loop binds for a keyed step's code, and what each holds. ``setup`` runs once
#: per batch and sees the first group; ``per_key`` runs once per item and sees them all.
LOOP_NAMES: dict[str, str] = {
    "_k": "the step's logic object (a KeyedLogic): its state, its user functions, its errors",
    "_MISSING": "MISSING, a value no user function gives (a .get() default)",
    # Builtins bound as locals: a local costs less than a global lookup on every item.
    "_type": "the builtin type",
    "_tuple": "the builtin tuple",
    "_str": "the builtin str",
    "_int": "the builtin int",
    # Bound by setup, read by the loop after the batch: what the step emits, in order.
    "_emit": "the list of what the step emits; setup must bind it, per_key appends to it",
    # Per item, once the loop has checked the item and taken it apart.
    "_key": "the item's key, a str or an int (per_key only)",
    "_value": "the item's value (per_key only)",
}

#: The names a keyed step's code may look up as globals (the generated module holds only
#: :data:`MISSING`, so anything else is a builtin).
LOOP_GLOBALS: frozenset[str] = frozenset({"len", "KeyError"})

#: The names the loop itself binds, which keyed code must leave alone: rebinding one would
#: corrupt the loop around it (``_touched`` records the keys a snapshot must store, ``_parts``
#: what goes to other workers, ``_f<i>`` are the stateless steps' functions...).
LOOP_OWN_NAMES: frozenset[str] = frozenset(
    {
        "_factory",
        "run",
        "batch",
        "epoch",
        "_not_bool",
        "_names",
        "_r",
        "_item",
        "_out",
        "_keep",
        "_touched",
        "_key_type",
        "_count",
        "_me",
        "_owners_get",
        "_owner_of",
        "_parts",
        "_dest",
        "_",
        # A counted loop's (see chain._write_items): its counters, and the items it took in.
        "_n",
        "_c",
    }
)
#: The loop's numbered names: ``_f<i>`` the functions of step ``i``, ``_i<i>`` its output
#: item, ``_r<i>`` a flat_map's result, ``_c<i>`` a counted loop's count of its items.
LOOP_OWN_PATTERN = re.compile(r"_[firc]\d+")

#: The globals the loop itself reads (its own code, around the keyed step's).
CHAIN_GLOBALS: frozenset[str] = frozenset({"MISSING", "type", "tuple", "str", "int", "range", "len", "sum", "map"})

# Statements that would change what the loop is rather than work inside it: a return or a
# yield ends or suspends the whole batch, an import or a definition binds a name unchecked.
_REFUSED = (
    ast.Return,
    ast.Yield,
    ast.YieldFrom,
    ast.Await,
    ast.Global,
    ast.Nonlocal,
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)


def is_loop_own(name: str) -> bool:
    """Whether the loop binds ``name`` for itself (see :data:`LOOP_OWN_NAMES`)."""
    return name in LOOP_OWN_NAMES or LOOP_OWN_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True)
class LoopCode:
    """A keyed step's code for the generated loop (checked by :func:`check_loop_code`).

    ``setup`` runs once per batch, after the stateless steps' captures: it binds the step's
    locals and ``_emit``, the list of what the step emits. ``per_key`` runs per item, once the
    loop has checked the item and unpacked it into ``_key`` and ``_value``; nesting is four
    spaces. Both see :data:`LOOP_NAMES`. ``per_key`` must fall through to the end (no
    ``continue``): the loop records the key as touched after it.
    """

    kind: str
    setup: tuple[str, ...]
    per_key: tuple[str, ...]

    def __post_init__(self) -> None:
        check_loop_code(self)


def check_loop_code(code: LoopCode) -> frozenset[str]:
    """Refuse ``code`` (a :class:`ValueError` naming the line) if it does not compile as the
    body of the loop, reads a name that is neither in :data:`LOOP_NAMES`, nor in
    :data:`LOOP_GLOBALS`, nor bound by itself, binds a name of the loop's, or leaves ``_emit``
    unbound; return the attributes of ``_k`` it uses."""
    # Line by line: where each line of the checked source came from, for the error.
    origin: list[tuple[str, int, str]] = []
    body: list[str] = []
    for part, lines in (("setup", code.setup), ("per_key", code.per_key)):
        for number, line in enumerate(lines, 1):
            origin.append((part, number, line))
            body.append("    " + line)
    params = ", ".join(name for name in LOOP_NAMES if name != "_emit")
    source = "\n".join([f"def _check({params}):", *body, "    return _emit"]) + "\n"

    def fail(lineno: int | None, problem: str) -> ValueError:
        if lineno is None or not 2 <= lineno < 2 + len(origin):
            return ValueError(f"loop code of {code.kind}: {problem}")
        part, number, line = origin[lineno - 2]
        return ValueError(f"loop code of {code.kind}, {part} line {number} ({line!r}): {problem}")

    try:
        # Compiled outside any loop, so a ``continue`` or ``break`` of per_key's own fails.
        compile(source, f"<loop code of {code.kind}>", "exec")
    except SyntaxError as exc:
        raise fail(exc.lineno, f"does not compile: {exc.msg}") from None
    function = ast.parse(source).body[0]
    assert isinstance(function, ast.FunctionDef)
    setup_end = 1 + len(code.setup)  # the last line of setup in ``source``
    statements = function.body[:-1]  # without the closing ``return _emit``
    bound: set[str] = set()
    reads: list[tuple[int, str]] = []
    attributes: set[str] = set()
    for node in (child for statement in statements for child in ast.walk(statement)):
        if isinstance(node, _REFUSED):
            raise fail(node.lineno, f"a {type(node).__name__} statement has no place in the loop")
        lineno = getattr(node, "lineno", 0)
        names: list[str] = []
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                reads.append((lineno, node.id))
                continue
            names = [node.id]
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names = [node.name]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "_k":
                attributes.add(node.attr)
        for name in names:
            if is_loop_own(name):
                raise fail(lineno, f"binds {name!r}, which the loop uses for itself")
            if name in LOOP_NAMES and not (name == "_emit" and lineno <= setup_end):
                raise fail(lineno, f"binds {name!r}, which the loop gives it (LOOP_NAMES)")
            if not name.startswith("_"):
                raise fail(lineno, f"binds {name!r}: the code's own names start with '_'")
            bound.add(name)
    if "_emit" not in bound:
        raise fail(None, "setup must bind _emit, the list of what the step emits")
    for lineno, name in reads:
        if name in ("_key", "_value") and lineno <= setup_end:
            raise fail(lineno, f"reads {name!r} in setup, which runs before any item")
        if name not in LOOP_NAMES and name not in LOOP_GLOBALS and name not in bound:
            raise fail(
                lineno,
                f"reads {name!r}, which is not in LOOP_NAMES, not in LOOP_GLOBALS, and not bound by the code itself",
            )
    return frozenset(attributes)
