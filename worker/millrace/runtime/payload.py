"""How a flow travels to the processes :func:`~millrace.execution.spawn_cluster` starts:
cloudpickle (lambdas, closures, functions of ``__main__`` travel by value), except that code
keeps the name of the file it came from.

cloudpickle writes ``<dynamic-code>`` as the file of every function it pickles by value (for
payloads that do not depend on where a function was defined), so a traceback in a child
would not say where in your script it happened. Here the file name travels beside the code.

>>> def double(x):
...     return 2 * x
>>> back = cloudpickle.loads(dumps(double))
>>> back(4), back.__code__.co_filename == double.__code__.co_filename
(8, True)
"""

from __future__ import annotations

import io
import types
from collections import ChainMap
from typing import Any, ClassVar

import cloudpickle

_DYNAMIC = "<dynamic-code>"
_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _named(code: types.CodeType, filename: str) -> types.CodeType:
    """``code`` as it was, with its file name back (called when the payload is loaded)."""
    return code.replace(co_filename=filename)


def _reduce_code(code: types.CodeType) -> Any:
    if code.co_filename == _DYNAMIC:
        return _cloudpickle_code_reduce(code)
    # The copy is named as cloudpickle would name it, so it takes cloudpickle's way above.
    return _named, (code.replace(co_filename=_DYNAMIC), code.co_filename)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no types
    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
    )


def dumps(obj: Any) -> bytes:
    """``obj`` pickled as cloudpickle does, code keeping its file names; load it with
    :func:`cloudpickle.loads` (or :func:`pickle.loads`)."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()
