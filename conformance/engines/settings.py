"""How much effort a run spends: named settings profiles, and where examples are kept.

``dev`` is the quick default, ``ci`` what a CI job runs, ``thorough`` a long run before a
release. Each names the exhaustive engine's time budget and the random engine's examples
and steps per example; ``--max-examples``, ``--steps`` and ``--seed`` override.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SETTINGS_ENV = "KVSPEC_SETTINGS"
DEFAULT_DB = Path(".kvspec") / "examples"


@dataclass(frozen=True)
class Effort:
    max_examples: int
    steps: int
    exhaustive_seconds: float
    """CPU seconds the exhaustive engine may spend per level (it stops at a completed
    depth)."""


# Steps per example are at least Hypothesis's default (50), which the pytest plugin and
# HypoFuzz campaigns use: a failure they save replays within kvspec check's cap too.
SETTINGS_PROFILES: dict[str, Effort] = {
    "dev": Effort(max_examples=150, steps=50, exhaustive_seconds=3.0),
    "ci": Effort(max_examples=300, steps=50, exhaustive_seconds=5.0),
    "thorough": Effort(max_examples=3000, steps=80, exhaustive_seconds=20.0),
}


def settings_profile(name: str | None) -> str:
    """The chosen settings profile: the flag, else $KVSPEC_SETTINGS, else ``dev``."""
    chosen = name or os.environ.get(SETTINGS_ENV) or "dev"
    if chosen not in SETTINGS_PROFILES:
        valid = ", ".join(SETTINGS_PROFILES)
        source = "" if name else f" (from ${SETTINGS_ENV})"
        raise ValueError(f"unknown settings profile {chosen!r}{source}; expected one of: {valid}")
    return chosen


def database_digest(level: str, target: str, profile: str, mode: str, bad_input: str) -> bytes:
    """What makes one conformance machine's examples its own in a shared example database.

    Hypothesis keys a state machine's examples by a digest of the machine class plus this
    (``_hypothesis_internal_add_digest``), so ``kvspec check``, the pytest plugin and a
    HypoFuzz campaign over the same target, level, profile, mode and bad-input choice read
    and write the same examples.
    """
    return f"kvspec:{level}:{target}:{profile}:{mode}:{bad_input}".encode()
