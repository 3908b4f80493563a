"""``kvspec bench check``: what a checked step costs, against an empty machine.

For each level, three Hypothesis runs of the same number of examples, interleaved and
repeated (medians):

* **checked**: the random engine as ``kvspec check`` runs it, against kvspec's own target;
* **empty, same arguments**: the same machine (configurations, swarm, weighted move choice,
  every move's arguments drawn from the same generator) whose moves do nothing;
* **empty**: a machine with one rule and no arguments, Hypothesis's own cost per step.

It prints steps per second for each and the ratios ``checked / empty-same-arguments`` and
``checked / empty``: the share of a run's time that is Hypothesis and argument drawing
rather than stepping and judging the spec and the target.

Time is this process's CPU time by default (``--clock cpu``), as in ``kvspec bench
upstream``: on a shared machine, time spent waiting for a core then counts against none of
the three runs. ``--clock wall`` times wall-clock seconds instead.

    python -m kvspec.benchmarks.check [--examples N] [--repeats R] [--levels pool,manager]
        [--clock cpu|wall]
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from typing import Any

import hypothesis
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, initialize, rule
from kvspec.benchmarks._harness import CPU_CLOCK, WALL_CLOCK, Clock, format_machine_info
from kvspec.conformance.cli import Parser
from kvspec.conformance.engines.randomized import hypothesis_settings, make_machine
from kvspec.conformance.level import Harness, Level, Move, Recorder, RunOptions
from kvspec.conformance.levels import get_level

STEPS_PER_EXAMPLE = 50
CLOCKS: dict[str, Clock] = {"cpu": CPU_CLOCK, "wall": WALL_CLOCK}


class _Idle(Harness):
    """A harness that keeps a level's moves and does nothing with them."""

    def __init__(self, moves: tuple[Move, ...]) -> None:
        self.moves = moves  # type: ignore[misc]
        self.current_move = "-"

    def run_move(self, m: Move, args: dict[str, Any]) -> None:
        return None

    def enabled_moves(self) -> list[Move]:
        return list(self.moves)


def _idle_level(level: Level, factory: Any) -> Level:
    """``level`` with a harness whose moves are chosen, and their arguments drawn, but that
    does nothing: no driver, no target."""
    sample = level.config_from_json({"num_blocks": 4, "block_size": 2})
    moves = tuple(replace(m, enabled=lambda _h: True)
                  for m in level.start(factory, sample, RunOptions(), Recorder()).moves)
    return replace(level, start=lambda *_args: _Idle(moves))


class _Bare(RuleBasedStateMachine):
    """Hypothesis's own cost per step: one rule, no arguments, nothing done."""

    @initialize()
    def start(self) -> None:
        pass

    @rule()
    def step(self) -> None:
        pass


def _counted(base: type[RuleBasedStateMachine], counter: list[int]
             ) -> type[RuleBasedStateMachine]:
    """``base`` with its one rule counting its calls into ``counter[0]``."""

    class Counted(base):  # type: ignore[valid-type, misc]
        @rule()
        def step(self) -> None:
            counter[0] += 1
            super().step()

    return Counted


def _run(machine: type[RuleBasedStateMachine], examples: int, counter: list[int],
         clock: Clock = CPU_CLOCK) -> float:
    test = get_state_machine_test(machine, settings=hypothesis_settings(
        max_examples=examples, steps=STEPS_PER_EXAMPLE, database=None))
    test = hypothesis.seed(0)(test)
    start = clock()
    test()
    return counter[0] / (clock() - start)


def measure(level_name: str, examples: int, repeats: int,
            clock: Clock = CPU_CLOCK) -> dict[str, float]:
    level = get_level(level_name)
    factory = level.load_factory("impl")
    options = RunOptions()
    rates: dict[str, list[float]] = {"checked": [], "empty, same arguments": [], "empty": []}
    for _ in range(repeats):
        for name in rates:
            counter = [0]
            base = _Bare if name == "empty" else make_machine(
                level if name == "checked" else _idle_level(level, factory),
                factory, options, Recorder(), lambda _f: None)
            rates[name].append(_run(_counted(base, counter), examples, counter, clock))
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="kvspec bench check", description=__doc__)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default="pool,manager")
    parser.add_argument("--clock", choices=list(CLOCKS), default="cpu",
                        help="cpu: this process's CPU time (default); wall: wall-clock time")
    parser.add_argument("--quick", action="store_true", help="a tiny run; numbers not meaningful")
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.repeats = 10, 1
    print(format_machine_info())
    print(f"{args.examples} examples of up to {STEPS_PER_EXAMPLE} steps per run, {args.repeats} "
          f"interleaved runs each, medians of steps per {args.clock} second")
    print(f"{'level':<8} {'checked':>9} {'empty, same args':>17} {'empty':>9} "
          f"{'ratio same args':>16} {'ratio empty':>12}   (steps per second, medians)")
    for level in args.levels.split(","):
        r = measure(level, args.examples, args.repeats, CLOCKS[args.clock])
        same, bare = r["empty, same arguments"], r["empty"]
        print(f"{level:<8} {r['checked']:>9,.0f} {same:>17,.0f} {bare:>9,.0f} "
              f"{r['checked'] / same:>16.2f} {r['checked'] / bare:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
