"""The minimizer: turn a failing sequence into a 1-minimal one by replaying candidates.

A trace is *1-minimal* when removing any one step, or simplifying any one argument (a
smaller count, one id fewer in a list, no parent hash, a smaller pool), gives a sequence
that no longer diverges: it replays without divergence, or it leaves the scope of the run
(:class:`~kvspec.conformance.outcome.OutsideScope`: outside the protocol's trusted inputs,
where there is nothing to judge). A spec error is minimized as a spec error, a target
divergence as a target divergence.

How: steps after the failing one are dropped; then delta debugging (Zeller's ddmin)
removes chunks of steps, halving the chunk size down to single steps; then each argument
is lowered one at a time; both repeat until nothing changes. Each candidate is replayed
from a fresh target, which costs microseconds per step, so this is much faster than
shrinking through Hypothesis and, unlike it, guarantees 1-minimality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kvspec.conformance.level import Level, RunOptions
from kvspec.conformance.outcome import Divergence, OutsideScope
from kvspec.conformance.trace import Step


@dataclass
class Minimized:
    failure: Divergence
    replays: int
    reproduced: bool = True
    """False when the failure did not reproduce from its own trace (it is then kept as
    found, not minimized: a target whose behaviour depends on more than its inputs)."""


def replay(level: Level, factory: Any, config: Any, options: RunOptions,
           steps: list[Step]) -> Divergence | None:
    """The divergence ``steps`` reach from a fresh target, or None (out of scope: None)."""
    try:
        driver = level.replay_driver(factory, config, options)
        for step in steps:
            driver.apply(step)
    except Divergence as failure:
        return failure
    except OutsideScope:
        return None
    return None


def minimize(level: Level, factory: Any, options: RunOptions, failure: Divergence,
             ) -> Minimized:
    """A 1-minimal version of ``failure`` (see the module docstring)."""
    replays = 0

    def fails(config: Any, steps: list[Step]) -> Divergence | None:
        nonlocal replays
        replays += 1
        found = replay(level, factory, config, options, steps)
        if found is None or found.spec_error != failure.spec_error:
            return None
        return found

    best = fails(failure.config, list(failure.steps))
    if best is None:  # a failure that does not reproduce from its trace is kept as it is
        return Minimized(failure, replays, reproduced=False)
    while True:
        config = best.config
        shorter = _ddmin(best, lambda steps, config=config: fails(config, steps))
        simpler = _simplify(level, shorter, fails)
        if simpler is shorter:
            return Minimized(simpler, replays)
        best = simpler


def _ddmin(failure: Divergence, fails: Callable[[list[Step]], Divergence | None]
           ) -> Divergence:
    """Remove chunks of steps, then single steps, while the sequence still fails."""
    best = failure
    chunk = max(1, len(best.steps) // 2)
    while best.steps:
        removed = False
        start = 0
        while start < len(best.steps):
            candidate = best.steps[:start] + best.steps[start + chunk:]
            found = fails(candidate)
            if found is not None:
                best = found  # its steps end at the (possibly earlier) failing step
                removed = True
            else:
                start += chunk
        if chunk == 1 and not removed:
            return best
        chunk = max(1, chunk // 2) if not removed else max(1, min(chunk, len(best.steps) // 2))
    return best


def _simplify(level: Level, failure: Divergence,
              fails: Callable[[Any, list[Step]], Divergence | None]) -> Divergence:
    """The first single simplification (of the config, then of one step) that still fails;
    ``failure`` itself when none does."""
    for config in _smaller_configs(failure.config):
        found = fails(config, list(failure.steps))
        if found is not None:
            return found
    for i, step in enumerate(failure.steps):
        for simpler in level.simplify(step):
            found = fails(failure.config, [*failure.steps[:i], simpler, *failure.steps[i + 1:]])
            if found is not None:
                return found
    return failure


def _smaller_configs(config: Any) -> Iterator[Any]:
    """The same configuration with one block fewer (a pool needs two: the null and one)."""
    n = getattr(config, "num_blocks", None)
    if isinstance(n, int) and n > 2 and dataclasses.is_dataclass(config):
        yield dataclasses.replace(config, num_blocks=n - 1)
