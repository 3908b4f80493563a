"""Run a conformance machine under Hypothesis and turn its outcome into a report.

``run_check`` is what ``kvspec check`` and ``kvspec mutants`` call. It picks the settings
profile, seeds Hypothesis, points its example database at ``.kvspec/examples`` (one key
per target, level, profile and mode, so one target's failures are not replayed against
another), prints a progress line, and, on a failure, returns the *shrunk* divergence:
Hypothesis replays the minimal example last, so the last divergence seen is the one to
show.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test
from kvspec.conformance.manager.machine import make_manager_machine, unsupported_bad_inputs
from kvspec.conformance.pool.driver import Divergence
from kvspec.conformance.pool.machine import RunStats, make_pool_machine
from kvspec.conformance.pool.protocol import PoolTarget

LEVELS = ("pool", "manager")
"""The machines ``run_check`` can run; ``kvspec check --level all`` runs them in order."""
SETTINGS_ENV = "KVSPEC_SETTINGS"
DEFAULT_DB = Path(".kvspec") / "examples"

# name -> (max_examples, stateful_step_count)
SETTINGS_PROFILES: dict[str, tuple[int, int]] = {
    "dev": (150, 40),
    "ci": (300, 50),
    "thorough": (3000, 80),
}


def settings_profile(name: str | None) -> str:
    """The chosen settings profile: the flag, else $KVSPEC_SETTINGS, else ``dev``."""
    chosen = name or os.environ.get(SETTINGS_ENV) or "dev"
    if chosen not in SETTINGS_PROFILES:
        valid = ", ".join(SETTINGS_PROFILES)
        raise ValueError(f"unknown settings profile {chosen!r}; expected one of: {valid}")
    return chosen


@dataclass
class CheckResult:
    target: str
    level: str
    profile: str
    mode: str
    failure: Divergence | None
    stats: RunStats
    seconds: float
    examples_to_failure: int | None = None
    unsupported: frozenset[str] = field(default_factory=frozenset)

    @property
    def passed(self) -> bool:
        return self.failure is None


class Progress:
    """A one-line progress display on stderr, refreshed at most twice a second."""

    def __init__(self, stats: RunStats, enabled: bool) -> None:
        self.stats = stats
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last = 0.0

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
            f"\r  {self.stats.examples} examples, {self.stats.steps} steps, "
            f"{rate:,.0f} steps/s, {elapsed:.0f}s "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


def build_settings(
    profile_name: str,
    *,
    max_examples: int | None,
    steps: int | None,
    database: Path | None,
) -> settings:
    examples, step_count = SETTINGS_PROFILES[profile_name]
    return settings(
        max_examples=max_examples or examples,
        stateful_step_count=steps or step_count,
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(database)) if database else None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        print_blob=False,
        verbosity=hypothesis.Verbosity.quiet,
    )


def run_machine(
    machine: type[RuleBasedStateMachine],
    config: settings,
    *,
    seed: int | None,
    database_key: str,
) -> None:
    """Run one machine class as a Hypothesis test (raises on failure)."""
    test = get_state_machine_test(machine, settings=config)
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    test._hypothesis_internal_database_key = database_key.encode()  # type: ignore[attr-defined]
    test()


def run_check(
    factory: Callable[..., PoolTarget],
    *,
    target_name: str = "impl",
    level: str = "pool",
    profile: str = "current",
    mode: str = "strict",
    settings_name: str | None = None,
    max_examples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    database: Path | None = DEFAULT_DB,
    progress: bool = True,
    bad_input: bool = True,
) -> CheckResult:
    """Drive ``factory``'s targets against the spec; the result holds the shrunk failure."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    if level == "manager" and mode != "strict":
        raise ValueError(f"the manager level runs in strict mode only, not {mode!r}")
    unsupported = frozenset(getattr(factory, "unsupported", frozenset()))
    if level == "manager":
        switched_off = frozenset(f"bad:{k}" for k in unsupported_bad_inputs(factory))

        def build(stats: RunStats, on_failure: OnFailure, on_step: OnStep) -> MachineClass:
            return make_manager_machine(
                factory, profile=profile, bad_input=bad_input, stats=stats,
                on_failure=on_failure, on_step=on_step,
            )
    else:
        switched_off = unsupported

        def build(stats: RunStats, on_failure: OnFailure, on_step: OnStep) -> MachineClass:
            return make_pool_machine(
                factory, profile=profile, mode=mode, bad_input=bad_input,
                unsupported=unsupported, stats=stats, on_failure=on_failure, on_step=on_step,
            )

    return drive(
        build,
        target_name=target_name,
        level=level,
        profile=profile,
        mode=mode,
        settings_name=settings_name,
        max_examples=max_examples,
        steps=steps,
        seed=seed,
        database=database,
        database_key=f"kvspec:{level}:{target_name}:{profile}:{mode}",
        progress=progress,
        unsupported=switched_off,
    )


OnFailure = Callable[[Divergence], None]
OnStep = Callable[[], None]
MachineClass = type[RuleBasedStateMachine]


def drive(
    build: Callable[[RunStats, OnFailure, OnStep], MachineClass],
    *,
    target_name: str,
    level: str,
    profile: str,
    mode: str,
    settings_name: str | None,
    max_examples: int | None,
    steps: int | None,
    seed: int | None,
    database: Path | None,
    database_key: str,
    progress: bool,
    unsupported: frozenset[str] = frozenset(),
) -> CheckResult:
    """Run the machine ``build`` makes under Hypothesis; every level's runner ends here.

    ``build(stats, on_failure, on_step)`` returns the machine class, wired to count into
    ``stats``, to report each divergence it raises, and to tick the progress line.
    """
    chosen = settings_profile(settings_name)
    stats = RunStats()
    failures: list[Divergence] = []
    first_failure_at: list[int] = []
    display = Progress(stats, progress)

    def on_failure(failure: Divergence) -> None:
        if not first_failure_at:
            first_failure_at.append(stats.examples)
        failures.append(failure)

    machine = build(stats, on_failure, display.tick)
    start = time.perf_counter()
    failure: Divergence | None = None
    try:
        run_machine(
            machine,
            build_settings(chosen, max_examples=max_examples, steps=steps, database=database),
            seed=seed,
            database_key=database_key,
        )
    except Divergence:
        failure = failures[-1]
    except Exception:
        if not failures:  # a harness error with no divergence behind it is a real error
            raise
        failure = failures[-1]
    finally:
        display.done()
    return CheckResult(
        target=target_name,
        level=level,
        profile=profile,
        mode=mode,
        failure=failure,
        stats=stats,
        seconds=time.perf_counter() - start,
        examples_to_failure=first_failure_at[0] if first_failure_at else None,
        unsupported=unsupported,
    )
