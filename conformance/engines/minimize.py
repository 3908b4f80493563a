"""The minimizer: turn a failing sequence into a 1-minimal one by replaying candidates.

A trace is *1-minimal* when removing any one step, or simplifying any one argument (a
smaller count, one id fewer in a list, no parent hash, a smaller pool), gives a sequence
that no longer diverges: it replays without divergence, or it leaves the scope of the run
(:class:`~kvspec.conformance.outcome.OutsideScope`: outside the protocol's trusted inputs,
where there is nothing to judge). A spec error is minimized as a spec error, a target
divergence as a target divergence.

How: steps after the failing one are dropped; delta debugging (Zeller's ddmin) removes
whole moves first, when the engine recorded them, then chunks of steps, halving the chunk
size down to single steps, then windows of two and three consecutive steps; then the pool
is made smaller and each argument is lowered, one at a time; all of it repeats until
nothing changes. This is much faster than shrinking through Hypothesis and, unlike it,
guarantees 1-minimality.

Candidates come in scans: each one keeps a prefix of the current sequence and changes what
follows (a chunk removed at ``i``, a step simplified at ``i``), and ``i`` only grows along
a scan. So the minimizer keeps one driver that has taken the scan's prefix so far, advances
it step by step, and replays each candidate from a copy of it (``Driver.clone``: spec and
target, as the exhaustive engine copies them) instead of from a fresh target: a replay then
costs the steps after the prefix, not the whole sequence. A level whose driver cannot be
copied replays every candidate from a fresh target. Copies only find the fixed point: the
last round (every single removal and simplification) replays each candidate from a fresh
target, so 1-minimality is judged exactly as ``kvspec replay`` would judge each candidate,
whatever the copies did.
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


class _Replayer:
    """Replays candidates, each from a copy of a driver that has taken the candidate's
    stable prefix (see the module docstring), or from a fresh target."""

    def __init__(self, level: Level, factory: Any, options: RunOptions, *,
                 copies: bool) -> None:
        self.level, self.factory, self.options = level, factory, options
        self.copies = copies
        self.replays = 0
        self.copied = 0
        """Candidates replayed from a copy."""
        self.cursor: Any = None
        """A driver that has taken ``taken``, from a fresh target under ``config``."""
        self.config: Any = None
        self.taken: list[Step] = []

    def run(self, config: Any, steps: list[Step], stable: int) -> Divergence | None:
        """The divergence ``steps`` reach from a fresh target under ``config``, or None;
        ``steps[:stable]`` is the prefix that the scan's later candidates share."""
        self.replays += 1
        driver = self._at(config, steps, stable) if self.copies and stable > 0 else None
        if driver is None:
            return replay(self.level, self.factory, config, self.options, steps)
        try:
            for step in steps[stable:]:
                driver.apply(step)
        except Divergence as failure:
            return failure
        except OutsideScope:
            return None
        return None

    def _at(self, config: Any, steps: list[Step], stable: int) -> Any:
        """A copy of a driver that has taken ``steps[:stable]`` (None: there is none)."""
        taken = self.taken
        same = (self.cursor is not None and config == self.config and len(taken) <= stable
                and all(a is b for a, b in zip(taken, steps, strict=False)))
        try:
            if not same:
                self.cursor, self.config, self.taken = None, config, []
                self.cursor = self.level.replay_driver(self.factory, config, self.options)
            if not callable(getattr(self.cursor, "clone", None)):
                self.copies = False  # this level's driver cannot be copied
                return None
            for step in steps[len(self.taken):stable]:
                self.cursor.apply(step)
                self.taken.append(step)
            self.copied += 1
            return self.cursor.clone()
        except (Divergence, OutsideScope):
            # The prefix itself fails or leaves the scope: no cursor, a fresh replay says so.
            self.cursor, self.taken = None, []
            return None


def minimize(level: Level, factory: Any, options: RunOptions, failure: Divergence, *,
             copies: bool = True) -> Minimized:
    """A 1-minimal version of ``failure`` (see the module docstring); ``copies=False``
    replays every candidate from a fresh target."""
    replayer = _Replayer(level, factory, options, copies=copies)

    def fails(config: Any, steps: list[Step], stable: int = 0) -> Divergence | None:
        found = replayer.run(config, steps, stable)
        if found is None or found.spec_error != failure.spec_error:
            return None
        return found

    best = fails(failure.config, list(failure.steps))
    if best is None:  # a failure that does not reproduce from its trace is kept as it is
        return Minimized(failure, replayer.replays, reproduced=False)
    if failure.groups:  # whole moves first: they keep lookups and their admissions together
        units = _regroup(best.steps, failure.groups)
        best = _ddmin(best, units, lambda steps, stable, c=best.config: fails(c, steps, stable))
    best = _ddmin(best, [[s] for s in best.steps],
                  lambda steps, stable, c=best.config: fails(c, steps, stable))
    widths: tuple[int, ...] = (1, 2, 3)
    while True:  # single steps and windows again after each simplification, to a fixed point
        config = best.config
        shorter = _drop_windows(best, widths,
                                lambda steps, stable, c=config: fails(c, steps, stable))
        simpler = _simplify(level, shorter, fails)
        if simpler is shorter and len(shorter.steps) == len(best.steps):
            if not replayer.copied:
                return Minimized(simpler, replayer.replays)
            # The fixed point was found with copies: it must fail from a fresh target (if
            # not, the copies were not faithful: start over without them), then one more
            # round of single removals and simplifications, each replayed from a fresh
            # target, says it is 1-minimal (or goes on minimizing, without copies).
            replayer.copies, replayer.copied, widths = False, 0, (1,)
            if fails(simpler.config, list(simpler.steps)) is None:
                again = minimize(level, factory, options, failure, copies=False)
                again.replays += replayer.replays
                return again
        else:
            widths = (1, 2, 3)
        best = simpler


def _regroup(steps: list[Step], starts: list[int]) -> list[list[Step]]:
    """``steps`` cut at the given start indices (the moves that took them)."""
    cuts = sorted({0, *(i for i in starts if 0 < i < len(steps))}) + [len(steps)]
    return [steps[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


Fails = Callable[[list[Step], int], Divergence | None]
"""Whether a candidate still fails, given the steps and the length of their stable prefix."""


def _ddmin(failure: Divergence, units: list[list[Step]], fails: Fails) -> Divergence:
    """Remove chunks of units (steps, or the steps of whole moves), halving the chunk down
    to single units, while the sequence still fails."""
    best = failure
    chunk = max(1, len(units) // 2)
    while units:
        removed = False
        start = 0
        prefix = 0  # the steps in units[:start]
        while start < len(units):
            kept = units[:start] + units[start + chunk:]
            found = fails([s for unit in kept for s in unit], prefix)
            if found is not None:
                best = found  # its steps end at the (possibly earlier) failing step
                units = _truncate(kept, len(found.steps))
                removed = True
            else:
                prefix += sum(len(unit) for unit in units[start:start + chunk])
                start += chunk
        if chunk == 1 and not removed:
            return best
        chunk = max(1, chunk // 2) if not removed else max(1, min(chunk, len(units) // 2))
    return best


def _truncate(units: list[list[Step]], length: int) -> list[list[Step]]:
    """The units covering the first ``length`` steps."""
    out: list[list[Step]] = []
    for unit in units:
        if length <= 0:
            break
        out.append(unit[:length])
        length -= len(unit)
    return out


def _drop_windows(failure: Divergence, widths: tuple[int, ...], fails: Fails) -> Divergence:
    """Remove ``widths`` consecutive steps at every position: single steps (what
    1-minimality is about), then two and three (a lookup with its admission, a step with its
    compute), which single removals cannot take when each alone leaves the scope."""
    best = failure
    for width in widths:
        i = 0
        while i + width <= len(best.steps):
            found = fails(best.steps[:i] + best.steps[i + width:], i)
            if found is not None:
                best = found
            else:
                i += 1
    return best


def _simplify(level: Level, failure: Divergence,
              fails: Callable[[Any, list[Step], int], Divergence | None]) -> Divergence:
    """Every single simplification that still fails, taken greedily in one pass: the
    smallest pool first, then each step's simpler arguments. ``failure`` itself (the same
    object) when none does."""
    best = failure
    for config in _smaller_configs(best.config):
        found = fails(config, list(best.steps), 0)
        if found is not None:
            best = found
            break
    i = 0
    while i < len(best.steps):
        for simpler in level.simplify(best.steps[i]):
            found = fails(best.config, [*best.steps[:i], simpler, *best.steps[i + 1:]], i)
            if found is not None:
                best = found
                break
        else:
            i += 1
    return best


def _smaller_configs(config: Any) -> Iterator[Any]:
    """The same configuration with fewer blocks, fewest first (a pool needs two: the null
    block and one more)."""
    n = getattr(config, "num_blocks", None)
    if isinstance(n, int) and dataclasses.is_dataclass(config):
        for smaller in range(2, n):
            yield dataclasses.replace(config, num_blocks=smaller)
