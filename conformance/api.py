"""Conformance as test classes: kvspec's engines inside a user's own pytest suite.

``TestMyPool = pool_conformance("mypkg.pools:factory", mode="abstract")`` is a whole test
file. The class has two tests, the two engines ``kvspec check`` runs before its minimizer:

``test_exhaustive``
    the exhaustive engine (every short protocol sequence at tiny pools, within the time
    budget of kvspec's settings profile, ``$KVSPEC_SETTINGS``); deterministic, so it is an
    ordinary test, not a Hypothesis one;
``test_random``
    the level's Hypothesis state machine (``make_machine``, as ``kvspec check`` runs it)
    as an *ordinary Hypothesis test*. That is the decision that matters: run through
    ``run_check`` it would use kvspec's own settings and example folder, whereas as a
    Hypothesis test it takes the loaded Hypothesis settings profile (``max_examples``,
    ``stateful_step_count``, ``phases``, ``derandomize``) and the profile's example
    database, so failures are replayed first on the next run, shared between xdist workers
    and hosts, and HypoFuzz can fuzz it (HypoFuzz fuzzes only Hypothesis tests that use the
    default database). Only ``deadline`` (a state machine example is many steps) and the
    health checks are set here.

Either test, on a failure, runs kvspec's minimizer and fails with the report
``kvspec check`` prints: the 1-minimal sequence, both sides after its last step, and the
paths of the trace file and pytest function it wrote (``.kvspec/traces/<engine>`` by
default).

The example database key is a digest of the level, target, profile, mode and bad-input
choice (:func:`database_digest`), the same in every process and on every machine with the
same Hypothesis version: what one worker saves, another replays.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from hypothesis.stateful import run_state_machine_as_test
from kvspec.conformance.engines.exhaustive import ExhaustiveResult, explore
from kvspec.conformance.engines.minimize import minimize
from kvspec.conformance.engines.pipeline import EXHAUSTIVE_MAX_DEPTH
from kvspec.conformance.engines.randomized import make_machine
from kvspec.conformance.engines.settings import (
    SETTINGS_PROFILES,
    database_digest,
    settings_profile,
)
from kvspec.conformance.level import Level, Recorder, RunOptions
from kvspec.conformance.levels import get_level
from kvspec.conformance.outcome import Divergence
from kvspec.conformance.report import (
    DEFAULT_TRACE_DIR,
    count_steps,
    format_failure,
    write_failure,
)


def target_name(target: str | Callable[..., Any]) -> str:
    """How reports and file names call ``target``: the string itself, or the factory's
    ``module:qualname``."""
    if isinstance(target, str):
        return target.strip()
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"


def conformance(
    target: str | Callable[..., Any],
    *,
    level: str = "pool",
    profile: str = "current",
    mode: str = "strict",
    bad_input: str = "check",
    out: str | Path = DEFAULT_TRACE_DIR,
) -> type:
    """A pytest test class checking ``target`` (a ``--target`` string or a factory) at
    ``level`` (see the module docstring). A bad target or option raises at once, with one
    line naming it, so a test module that builds a class for a missing factory fails to
    import with that line."""
    lv = get_level(level)
    lv.check_mode(mode)
    if profile not in ("current", "classic"):
        raise ValueError(f"conformance: profile {profile!r}; expected 'current' or 'classic'")
    if bad_input not in ("check", "report", "off"):
        raise ValueError(f"conformance: bad_input {bad_input!r}; expected check, report or off")
    factory = lv.load_factory(target) if isinstance(target, str) else target
    name = target_name(target)
    suite = _Suite(lv, factory, name, profile, mode, bad_input, Path(out))
    return suite.test_class()


def pool_conformance(target: str | Callable[..., Any], **options: Any) -> type:
    """:func:`conformance` at the pool level."""
    return conformance(target, level="pool", **options)


def manager_conformance(target: str | Callable[..., Any], **options: Any) -> type:
    """:func:`conformance` at the manager level (strict mode only)."""
    return conformance(target, level="manager", **options)


class _Suite:
    """One target at one level, profile and mode: the engines and the failure report."""

    def __init__(self, level: Level, factory: Any, name: str, profile: str, mode: str,
                 bad_input: str, out: Path) -> None:
        self.level = level
        self.factory = factory
        self.name = name
        self.options = RunOptions(profile=profile, mode=mode, bad_input=bad_input)
        self.out = out

    def machine(self) -> type:
        machine = make_machine(self.level, self.factory, self.options, Recorder(),
                               on_failure=lambda _failure: None)
        o = self.options
        # Hypothesis keys a state machine's examples by a digest of the machine class,
        # which includes this attribute: one key per target, level, profile and mode.
        machine._hypothesis_internal_add_digest = database_digest(  # type: ignore[attr-defined]
            self.level.name, self.name, o.profile, o.mode, o.bad_input)
        return machine

    def test_class(self) -> type:
        suite = self
        machine = self.machine()

        def test_random(self: Any) -> None:
            try:
                run_state_machine_as_test(machine, settings=self.settings)
            except BaseException as exc:  # noqa: BLE001 - a divergence may come in a group
                failure = _first_divergence(exc)
                if failure is None:
                    raise
            else:
                return
            suite.fail(failure, found_by="random")

        # What HypoFuzz (and Hypothesis's unittest TestCase) look for on a stateful test.
        test_random._hypothesis_state_machine_class = machine  # type: ignore[attr-defined]
        test_random.is_hypothesis_test = True  # type: ignore[attr-defined]

        def settings(self: Any) -> Any:
            """The loaded Hypothesis profile, read when the test runs."""
            loaded = hypothesis_settings()
            return hypothesis_settings(
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[phase for phase in loaded.phases if phase is not Phase.shrink],
            )

        def test_exhaustive(self: Any) -> None:
            suite.run_exhaustive()

        members: dict[str, Any] = {
            "__doc__": f"{self.level.name} level conformance of {self.name} "
                       f"(profile {self.options.profile}, mode {self.options.mode}).",
            "settings": property(settings),
        }
        # In kvspec check's order; a level without a vocabulary has no exhaustive engine.
        if self.level.start_vocabulary is not None:
            members["test_exhaustive"] = test_exhaustive
        members["test_random"] = test_random
        return type(f"{self.level.name.title()}Conformance", (), members)

    def run_exhaustive(self) -> None:
        effort = SETTINGS_PROFILES[settings_profile(None)]
        result = explore(self.level, self.factory, self.options, Recorder(),
                         max_depth=EXHAUSTIVE_MAX_DEPTH, seconds=effort.exhaustive_seconds)
        if result.failure is not None:
            self.fail(result.failure, found_by="exhaustive", exhaustive=result)

    def fail(self, failure: Divergence, *, found_by: str,
             exhaustive: ExhaustiveResult | None = None) -> None:
        """Minimize ``failure``, write its trace, and fail the test with kvspec's report."""
        import pytest

        pytest.fail(self.report(failure, found_by=found_by, exhaustive=exhaustive),
                    pytrace=False)

    def report(self, failure: Divergence, *, found_by: str,
               exhaustive: ExhaustiveResult | None = None) -> str:
        found_length = len(failure.steps)
        minimized = minimize(self.level, self.factory, self.options, failure)
        failure = minimized.failure
        words = "1-minimal" if minimized.reproduced else ""
        if words and exhaustive is not None and len(failure.steps) == exhaustive.failing_depth:
            words += ", shortest in the exhaustive search"
        # One folder per engine: both may catch the same check with different sequences.
        trace_path, test_path = write_failure(failure, self.name, self.out / found_by)
        return (
            f"FAIL (found by the {found_by} engine, {count_steps(found_length)} before "
            f"minimizing)\n{format_failure(failure, how_minimal=words)}\n\n"
            f"trace:  {trace_path}   (kvspec replay {trace_path} --target {self.name})\n"
            f"pytest: {test_path}"
        )


def _first_divergence(exc: BaseException) -> Divergence | None:
    """The shortest kvspec divergence in ``exc`` (Hypothesis may group several bugs)."""
    if isinstance(exc, Divergence):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [d for d in map(_first_divergence, exc.exceptions) if d is not None]
        return min(found, key=lambda d: len(d.steps), default=None)
    return None
