"""What the configuration classes share: the checks their ``__post_init__`` repeat, worded once.

The configurations are frozen dataclasses, so a field that ``__post_init__`` normalises (a copy,
a conversion) is stored with :func:`set_field`.
"""

from __future__ import annotations

from typing import Any


def check_callable(config: object, name: str) -> None:
    """Refuse ``config.<name>`` unless it is callable.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Example:
    ...     builder: object
    >>> check_callable(Example(3), "builder")
    Traceback (most recent call last):
    TypeError: Example needs a callable builder, got 3
    """
    value = getattr(config, name)
    if not callable(value):
        raise TypeError(f"{type(config).__name__} needs a callable {name}, got {value!r}")


def check_type(config: object, name: str, expected: type | tuple[type, ...], what: str) -> None:
    """Refuse ``config.<name>`` unless it is an instance of ``expected`` (``what`` names it).

    >>> from dataclasses import dataclass
    >>> from datetime import timedelta
    >>> @dataclass
    ... class Example:
    ...     length: object
    >>> check_type(Example(5), "length", timedelta, "a timedelta")
    Traceback (most recent call last):
    TypeError: Example length must be a timedelta, got 5
    """
    value = getattr(config, name)
    if not isinstance(value, expected):
        raise TypeError(f"{type(config).__name__} {name} must be {what}, got {value!r}")


def set_field(config: object, name: str, value: Any) -> None:
    """Store ``value`` as ``config.<name>`` from ``__post_init__``, which a frozen dataclass's
    own ``__setattr__`` refuses."""
    object.__setattr__(config, name, value)
