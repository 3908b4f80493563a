"""The zoo's registry: one :class:`Mutant` record per named bug, by name.

Each level's mutants live in their own module (``pool``, ``manager``, ``store``) and are
registered by :mod:`kvspec.conformance.mutants`; this module imports none of them, so every
one of them can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mutant:
    name: str
    level: str
    factory: Callable[..., Any]
    summary: str
    profile: str = "current"
    symbolic: str | None = None


MUTANTS: dict[str, Mutant] = {}


def register(mutants: list[Mutant]) -> None:
    """Add mutants to the zoo."""
    for m in mutants:
        if m.name in MUTANTS:
            raise ValueError(f"mutant {m.name!r} is registered twice")
        MUTANTS[m.name] = m
