"""Ctrl-C inside :class:`CtrlC`: remembered, raised again, and nothing "ignored" reported."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytest
from kvspec.conformance.interrupts import CtrlC


class HalfBuilt:
    """Like a z3 term: its finalizer needs an attribute the constructor sets last."""

    def __init__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the press lands before ``ctx`` is set
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
        self.ctx = object()

    def __del__(self) -> None:
        assert self.ctx is not None


@pytest.fixture
def reported(monkeypatch) -> list[Any]:
    """What reaches the process's "Exception ignored" report."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def test_an_object_the_press_left_half_built_is_freed_without_a_report(reported):
    with pytest.raises(KeyboardInterrupt), CtrlC() as ctrl_c:
        HalfBuilt()
    assert ctrl_c.pressed
    assert reported == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_press_a_failing_finalizer_is_still_reported(reported):
    class Broken:
        def __del__(self) -> None:
            raise AttributeError("ctx")

    with CtrlC():
        Broken()
    assert [r.exc_type for r in reported] == [AttributeError]
