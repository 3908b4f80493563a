"""Ctrl-C for long runs (``kvspec check``, ``kvspec prove``): never lost, always reported."""

from __future__ import annotations

import gc
import signal
import sys
import threading
import traceback
from types import TracebackType
from typing import Any


class CtrlC:
    """Ctrl-C that is never lost.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be; when that
    is a garbage-collector callback (Hypothesis registers one), the exception is reported
    as "ignored" and the run goes on (z3's objects free themselves in ``__del__``: the same).
    Inside this context the handler also remembers the press, :meth:`check` (called at every
    step of an engine, around every z3 query) raises it again, and the "ignored" report of
    that exception (or of a finalizer failing on an object the press left half-built) is
    dropped. Installed only over Python's default handler,
    in the main thread."""

    def __init__(self) -> None:
        self.pressed = False
        self.previous: Any = None
        self.hook: Any = None

    def __enter__(self) -> CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._pressed)
            self.hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _pressed(self, _signum: int, _frame: Any) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def _unraisable(self, unraisable: Any) -> None:
        # ctypes reports a press during a foreign call's argument conversion (z3's
        # ``__del__``) as an ArgumentError naming the KeyboardInterrupt.
        is_press = (unraisable.exc_type is KeyboardInterrupt
                    or "KeyboardInterrupt" in str(unraisable.exc_value))
        # A press can also cut a constructor short; the half-built object's finalizer then
        # fails on the attributes it never got (z3's ``AstRef.__del__``: no ``ctx``).
        cut_short = getattr(unraisable.object, "__name__", None) == "__del__"
        if not (self.pressed and (is_press or cut_short)):
            self.hook(unraisable)

    def check(self) -> None:
        """Raise the press that an earlier ``KeyboardInterrupt`` did not deliver."""
        if self.pressed:
            raise KeyboardInterrupt

    def __exit__(self, exc_type: type[BaseException] | None = None, exc: object = None,
                 tb: TracebackType | None = None) -> None:
        if self.pressed and tb is not None:
            # Objects the press left half-built are held by the finished frames of the
            # traceback: free them now, while their failing finalizers are still dropped.
            traceback.clear_frames(tb)
            gc.collect()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            sys.unraisablehook = self.hook
        if (self.pressed and exc_type is not None
                and not issubclass(exc_type, KeyboardInterrupt)):
            # The press, turned into another error on its way out (ctypes reports an
            # interrupt during a foreign call's argument conversion as ArgumentError).
            raise KeyboardInterrupt from None
