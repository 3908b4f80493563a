"""``kvspec check`` for one level: exhaustive first, then random, then the minimizer.

1. The exhaustive engine searches every short sequence at tiny configurations, within a
   time budget: seconds, and within its bound it misses nothing, its first failure being a
   shortest one.
2. The random engine (Hypothesis) goes deeper and wider: larger pools, longer sequences,
   more argument values.
3. Any failure goes through the minimizer, which makes it 1-minimal.

The result says which engine found the failure, how far the exhaustive search got, and
what the random phase did (examples, steps, moves, invariant checks, situations reached).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvspec.conformance.engines.exhaustive import ExhaustiveResult, explore
from kvspec.conformance.engines.minimize import minimize
from kvspec.conformance.engines.randomized import run_random
from kvspec.conformance.engines.settings import (
    DEFAULT_DB,
    SETTINGS_PROFILES,
    database_digest,
    settings_profile,
)
from kvspec.conformance.interrupts import CtrlC
from kvspec.conformance.level import Harness, Level, Recorder, RunOptions, RunStats
from kvspec.conformance.levels import get_level
from kvspec.conformance.outcome import Divergence

EXHAUSTIVE_MAX_DEPTH = 12


@dataclass
class CheckResult:
    target: str
    level: str
    profile: str
    mode: str
    failure: Divergence | None
    stats: RunStats
    seconds: float
    exhaustive: ExhaustiveResult | None = None
    found_by: str | None = None
    """``exhaustive`` or ``random``: which engine found the failure."""
    examples_to_failure: int | None = None
    found_length: int | None = None
    """The failing sequence's length as found, before the minimizer."""
    minimal: bool = False
    """The minimizer made the failure 1-minimal (False: it did not reproduce on replay)."""
    unsupported: frozenset[str] = field(default_factory=frozenset)
    situations: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.failure is None


class CheckInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_check`: ``result`` holds what had run (its counts, the
    exhaustive search's bound if it had finished), ``progress`` says in words where it
    stopped. A ``KeyboardInterrupt``, so callers that do not look stop as usual."""

    def __init__(self, result: CheckResult, progress: str) -> None:
        super().__init__(progress)
        self.result = result
        self.progress = progress


class Progress:
    """A one-line progress display on stderr, refreshed at most twice a second."""

    def __init__(self, stats: RunStats, enabled: bool) -> None:
        self.stats = stats
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last = 0.0
        self.prefix = ""

    def tick(self) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last < 0.5:
            return
        self.last = now
        elapsed = now - self.start
        rate = self.stats.steps / elapsed if elapsed else 0.0
        sys.stderr.write(
            f"\r  {self.prefix}{self.stats.examples} examples, {self.stats.steps} steps, "
            f"{rate:,.0f} steps/s, {elapsed:.0f}s "
        )
        sys.stderr.flush()

    def say(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 78 + "\r  " + text)
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()


def run_check(
    factory: Any,
    *,
    target_name: str = "impl",
    level: str | Level = "pool",
    profile: str = "current",
    mode: str = "strict",
    settings_name: str | None = None,
    max_examples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    database: Path | None = DEFAULT_DB,
    progress: bool = True,
    bad_input: str | bool = "check",
    exhaustive: bool = True,
    exhaustive_seconds: float | None = None,
    exhaustive_depth: int = EXHAUSTIVE_MAX_DEPTH,
    random: bool = True,
    device: str = "cpu",
    dtype: Any = "float32",
    on_example: Callable[[Harness], None] | None = None,
) -> CheckResult:
    """Check ``factory``'s targets at ``level`` against the spec (see the module doc)."""
    lv = get_level(level) if isinstance(level, str) else level
    lv.check_mode(mode)
    for name, value in (("max_examples", max_examples), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"run_check: {name} {value!r}; expected a whole number of at "
                             "least 1 (None: the settings' own)")
    if not isinstance(dtype, str):  # a torch dtype
        dtype = str(dtype).removeprefix("torch.")
    if isinstance(bad_input, bool):
        bad_input = "check" if bad_input else "off"
    effort = SETTINGS_PROFILES[settings_profile(settings_name)]
    options = RunOptions(profile=profile, mode=mode, bad_input=bad_input, device=device,
                         dtype=dtype)
    lv.check_options(options)
    stats = RunStats()
    display = Progress(stats, progress)
    ctrl_c = CtrlC()

    def tick() -> None:
        ctrl_c.check()
        display.tick()

    start = time.perf_counter()
    result = CheckResult(
        target=target_name, level=lv.name, profile=profile, mode=mode, failure=None,
        stats=stats, seconds=0.0, situations=lv.situations,
        unsupported=lv.switched_off(factory),
    )
    stage = "before the first step"
    reached = "no depth complete"
    ctrl_c.__enter__()
    try:
        failure: Divergence | None = None
        if exhaustive and lv.start_vocabulary is not None:
            def on_depth(depth: int, states: int) -> None:
                nonlocal reached
                reached = f"depth {depth} complete, {states:,} states"
                display.say(f"exhaustive: {reached}")

            stage = "exhaustive"
            result.exhaustive = explore(
                lv, factory, options, Recorder(on_step=ctrl_c.check),
                max_depth=exhaustive_depth,
                seconds=effort.exhaustive_seconds if exhaustive_seconds is None
                else exhaustive_seconds,
                on_depth=on_depth,
            )
            failure = result.exhaustive.failure
            if failure is not None:
                result.found_by = "exhaustive"
        if failure is None and random:
            stage = "random"
            failure, result.examples_to_failure = run_random(
                lv, factory, options, Recorder(stats, tick),
                max_examples=max_examples or effort.max_examples,
                steps=steps or effort.steps,
                seed=seed,
                database=database,
                database_digest=database_digest(
                    lv.name, target_name if lv.name != "content" else
                    f"{target_name}:{device}:{dtype}", profile, mode, bad_input),
                on_example=on_example,
            )
            if failure is not None:
                result.found_by = "random"
        if failure is not None:
            display.say(f"minimizing a {len(failure.steps)}-step failure")
            stage = "minimizing"
            result.found_length = len(failure.steps)
            minimized = minimize(lv, factory, options, failure)
            failure, result.minimal = minimized.failure, minimized.reproduced
        ctrl_c.check()
        result.failure = failure
    except KeyboardInterrupt:
        display.done()
        result.seconds = time.perf_counter() - start
        progress = {
            "exhaustive": f"in the exhaustive search ({reached})",
            "random": f"in the random engine ({stats.examples} examples, {stats.steps} steps "
                      "run)",
            "minimizing": f"while minimizing a {result.found_length}-step failure found by "
                          f"the {result.found_by} engine",
        }.get(stage, stage)
        raise CheckInterrupted(result, f"after {result.seconds:.1f}s, {progress}") from None
    finally:
        ctrl_c.__exit__()
        display.done()
        result.seconds = time.perf_counter() - start
    return result
