"""Boundary checks shared by the pool, the manager and the hybrid coordinator.

Every public operation checks its arguments once, with these helpers, before it changes
anything; the inner helpers it calls afterwards trust them. Checking again at every layer
would cost a pass per layer on the hot paths, and a check that runs after the first change
would leave a refused call half done.

Each refusal is one line: the operation, the offending value (shortened, so a huge argument
cannot flood a log) and what was expected. ``bool`` is refused wherever an ``int`` is
expected: ``True`` as a block count or a group id is a caller mistake, not a number.
"""

from __future__ import annotations

import reprlib
from typing import Any

from kvspec.impl.errors import InvalidArgumentError

_SHORT = reprlib.Repr()
_SHORT.maxstring = 48
_SHORT.maxother = 48
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def show(value: object) -> str:
    """``repr(value)`` on one line and at most a few dozen characters."""
    return _SHORT.repr(value)


def is_int(value: object) -> bool:
    """An ``int`` (or subclass) that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(op: str, name: str, value: object, minimum: int = 0) -> int:
    """``value`` as a plain ``int`` of at least ``minimum``, else :class:`InvalidArgumentError`."""
    if not is_int(value) or value < minimum:  # type: ignore[operator]
        expected = "a non-negative int" if minimum == 0 else f"an int >= {minimum}"
        raise InvalidArgumentError(f"{op}: {name}={show(value)}; expected {expected}")
    return int(value)  # type: ignore[call-overload]


def check_optional_int(op: str, name: str, value: object, minimum: int) -> int | None:
    """Like :func:`check_int`, with ``None`` allowed (meaning "no limit")."""
    return None if value is None else check_int(op, name, value, minimum)


def check_bool(op: str, name: str, value: object) -> bool:
    """``value`` if it is a ``bool``; an ``int`` 0/1 or a truthy object is a mistake."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{op}: {name}={show(value)}; expected True or False")
    return value


def check_bytes(op: str, name: str, value: object) -> bytes:
    """``value`` if it is ``bytes`` (a block hash); ``str``, ``bytearray`` and ints are not."""
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"{op}: {name}={show(value)}; expected bytes")
    return value


def check_str(op: str, name: str, value: object) -> str:
    """``value`` if it is a ``str`` (a request id)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{op}: {name}={show(value)}; expected a str")
    return value


def check_callable(op: str, name: str, value: object) -> Any:
    """``value`` if it can be called (a hash function)."""
    if not callable(value):
        raise InvalidArgumentError(f"{op}: {name}={show(value)}; expected a callable")
    return value


def as_list(op: str, name: str, value: Any) -> list[Any]:
    """``value`` as a list, consumed once; refused unless it is an iterable other than
    ``str``/``bytes`` (a string of ids is a mistake, not a sequence of them)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str | bytes | bytearray):
        raise InvalidArgumentError(
            f"{op}: {name}={show(value)}; expected an iterable other than str or bytes"
        )
    try:
        return list(value)
    except TypeError:
        raise InvalidArgumentError(
            f"{op}: {name}={show(value)}; expected an iterable"
        ) from None
