"""A check that a failure is 1-minimal, for the tests of every engine and the zoo."""

from __future__ import annotations

from typing import Any

from kvspec.conformance.engines.minimize import replay
from kvspec.conformance.level import Level, RunOptions
from kvspec.conformance.outcome import Divergence


def assert_one_minimal(level: Level, factory: Any, failure: Divergence,
                       options: RunOptions | None = None) -> None:
    """The failure reproduces from its own trace; removing any one step, or simplifying
    any one argument, gives a sequence that no longer diverges."""
    options = options or RunOptions(profile=failure.config.profile)
    steps = list(failure.steps)
    again = replay(level, factory, failure.config, options, steps)
    assert again is not None and again.spec_error == failure.spec_error, (
        "the reported trace does not reproduce its failure")
    for i in range(len(steps)):
        shorter = steps[:i] + steps[i + 1:]
        found = replay(level, factory, failure.config, options, shorter)
        assert found is None or found.spec_error != failure.spec_error, (
            f"still fails without step {i + 1} ({steps[i].describe()}): [{found.caught_by}]")
    for i, step in enumerate(steps):
        for simpler in level.simplify(step):
            candidate = [*steps[:i], simpler, *steps[i + 1:]]
            found = replay(level, factory, failure.config, options, candidate)
            assert found is None or found.spec_error != failure.spec_error, (
                f"still fails with step {i + 1} simplified to {simpler.describe()}")
