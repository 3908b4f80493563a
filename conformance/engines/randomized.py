"""The random engine: a level's harness run as a Hypothesis state machine.

One machine class serves every level: its ``start`` draws a configuration and builds the
level's harness, and its one rule picks a move among those enabled and the move's
arguments. Both come from a random generator Hypothesis seeds per example, so a run replays
exactly from Hypothesis's database; drawing each argument through Hypothesis instead cost a
third of a run, and its choices favour the first entries of a list (an unweighted machine
spent more steps on ``reset``, sorted first, than on anything else, wiping the cache states
eviction bugs need). What keeps one move from dominating:

* **weights**: each step chooses among the enabled moves in proportion to their weights;
  moves that only repair (reset, lookups) are light;
* **swarm testing**: each example switches a random subset of moves off, so that
  "repairing" moves do not always drain the pressure a bug needs;
* **composite moves** in the harnesses (a whole prefill, a fill of the pool, a scheduler's
  turn) make deep states common. (Targeted search, which hill-climbs on drawn values, is
  off: on a seed it only reruns examples.)

A divergence raised in a step is captured (``on_failure``) and ends the example; a sequence
out of scope (:class:`~kvspec.conformance.outcome.OutsideScope`) is rejected, not failed.
The engine does not shrink: the minimizer (:mod:`kvspec.conformance.engines.minimize`)
replays the failing trace directly, which is much faster and makes it 1-minimal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    rule,
)
from kvspec.conformance.level import Harness, Level, Move, Recorder, RunOptions
from kvspec.conformance.outcome import Divergence, OutsideScope

OnFailure = Callable[[Divergence], None]


def _guarded(action: Callable[[], Any], on_failure: OnFailure,
             harness: Harness | None = None) -> Any:
    try:
        return action()
    except Divergence as failure:
        if harness is not None:
            failure.groups = list(harness.move_starts)
        on_failure(failure)
        raise
    except OutsideScope:
        hypothesis.reject()




def make_machine(
    level: Level,
    factory: Any,
    options: RunOptions,
    recorder: Recorder,
    on_failure: OnFailure,
    on_example: Callable[[Harness], None] | None = None,
) -> type[RuleBasedStateMachine]:
    """A machine class that drives targets built by ``factory`` at ``level``;
    ``on_example`` sees each example's harness when the example ends."""
    config_strategy = level.configs(factory, options)

    class LevelMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.harness: Harness | None = None
            self.moves: list[Move] = []
            recorder.stats.examples += 1

        @initialize(config=config_strategy, data=st.data())
        def start(self, config: Any, data: st.DataObject) -> None:
            harness = _guarded(lambda: level.start(factory, config, options, recorder),
                               on_failure)
            names = [m.name for m in harness.moves]
            # Swarm testing: switch a subset of moves off for this example (never all).
            off = data.draw(st.frozensets(st.sampled_from(names), max_size=len(names) - 1),
                            label="moves switched off")
            self.moves = [m for m in harness.moves if m.name not in off]
            self.rng = data.draw(st.randoms(use_true_random=True), label="choices")
            self.harness = harness

        @rule()
        def step(self) -> None:
            harness = self.harness
            assert harness is not None
            enabled = [m for m in self.moves if m.enabled(harness)]
            if not enabled:
                return
            chosen = self.rng.choices(enabled, weights=[m.weight for m in enabled])[0]
            args = {name: d.sample(self.rng) for name, d in chosen.args.items()}  # type: ignore[misc]
            _guarded(lambda: harness.run_move(chosen, args), on_failure, harness)

        @invariant()
        def bookkeeping(self) -> None:
            if self.harness is not None:
                self.harness.check_bookkeeping()

        def teardown(self) -> None:
            if on_example is not None and self.harness is not None:
                on_example(self.harness)

    LevelMachine.__name__ = LevelMachine.__qualname__ = f"{level.name.title()}Machine"
    return LevelMachine


def hypothesis_settings(
    *, max_examples: int, steps: int, database: Path | None
) -> settings:
    return settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(database)) if database else None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        # No shrinking here: the minimizer replays the failing trace, faster and 1-minimal.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        print_blob=False,
        verbosity=hypothesis.Verbosity.quiet,
    )


def run_random(
    level: Level,
    factory: Any,
    options: RunOptions,
    recorder: Recorder,
    *,
    max_examples: int,
    steps: int,
    seed: int | None,
    database: Path | None,
    database_digest: bytes,
    on_example: Callable[[Harness], None] | None = None,
) -> tuple[Divergence | None, int | None]:
    """Run the machine; the first divergence found (unshrunk) and the example it took."""
    failures: list[Divergence] = []
    found_at: list[int] = []

    def on_failure(failure: Divergence) -> None:
        if not failures:
            found_at.append(recorder.stats.examples)
        failures.append(failure)

    machine = make_machine(level, factory, options, recorder, on_failure, on_example)
    # The database key is Hypothesis's digest of the machine plus ours, as in the pytest
    # plugin (:func:`kvspec.conformance.engines.settings.database_digest`).
    machine._hypothesis_internal_add_digest = database_digest  # type: ignore[attr-defined]
    test = get_state_machine_test(
        machine, settings=hypothesis_settings(max_examples=max_examples, steps=steps,
                                              database=database)
    )
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    try:
        test()
    except Divergence:
        pass
    except Exception:
        if not failures:  # a harness error with no divergence behind it is a real error
            raise
    if not failures:
        return None, None
    # Hypothesis replays the failing example last; that run's divergence is the one to keep.
    return failures[-1], found_at[0]
