"""The ``kvspec`` subcommands, one module each (see :mod:`kvspec.conformance.cli`).

Every command keeps the same exit statuses, which :func:`kvspec.conformance.cli.main`
enforces at the boundary:

* 0: the target agrees with the spec, the proof holds, the command did what was asked;
* 1: a divergence, a counterexample, a mutant that survives;
* 2: a usage error (a bad option, target, trace or path), refused in one line on stderr
  before any work is done and before anything is written;
* 3: ``kvspec prove`` only: a check of the z3 model against the spec failed;
* 130: interrupted (Ctrl-C), after one line saying what was interrupted and how far it got;
* 141: the output pipe was closed (``| head``): stopped quietly.

A command refuses bad input by raising :class:`UsageError` (or a ``TargetSpecError`` or
``TraceError``); the option types below refuse bad numbers while arguments are parsed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from kvspec.conformance.errors import UsageError

__all__ = ["Interrupted", "UsageError", "non_negative_float", "positive_float", "positive_int",
           "usable_level", "writable_path"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, caught where the command can say how far it got: ``summary`` is the line
    (or lines) :func:`kvspec.conformance.cli.main` prints before exiting with 130."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


def positive_int(text: str) -> int:
    """An option's value: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An option's value: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An option's value: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of at least 0, got {text}")
    return value


def usable_level(name: str) -> Any:
    """The level called ``name``; one it cannot import (the content level without torch)
    is a usage error saying what to install."""
    from kvspec.conformance.levels import get_level

    try:
        return get_level(name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"the {name} level needs {exc.name}, which is not installed "
                         "(pip install 'kvspec[store]')") from None


def writable_path(path: Path, option: str, *, folder: bool) -> None:
    """Refuse, before any work, an output path that could not be written at the end.

    ``folder``: ``path`` is a folder to write files into (it may not exist yet), else a
    file to write (or replace). Every existing ancestor must be a folder.
    """
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; expected a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is not a folder")
            break
