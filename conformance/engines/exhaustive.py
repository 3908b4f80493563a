"""The exhaustive engine: breadth-first over every short protocol sequence, against the target.

Starting from the fresh state of each small configuration of a level, it takes every
operation of the level's vocabulary (:mod:`kvspec.conformance.level`) with every small
argument value, on a copy of the whole world (spec *and target*), and judges each step as
every engine does. A
state is the pair (spec state and harness bookkeeping, target observation including
lookups); a sequence that reaches a state already seen is pruned, since everything that
can follow it was already explored from the first sequence that reached it.

What "exhaustive to depth d" guarantees: every sequence of at most d operations of the
vocabulary, from every listed configuration, was judged, up to the pruning above; a
sequence that leaves the usage discipline or the trusted inputs is out of scope, as in
every engine. Each operation is one step, so breadth-first order makes the first failure
found a *shortest* one within the vocabulary.

What it does not guarantee: nothing about longer sequences, larger pools or argument
values outside the vocabulary (the random phase covers those), and nothing about a target
whose hidden state differs between two sequences that it shows identically (pruning
assumes that what a target shows determines what it does next). No symmetry reduction is
applied: a black-box target need not treat block ids or hash values symmetrically.

The search stops at the bound or at the time budget; the result always names the deepest
depth that was *completed*, never one it only started.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from kvspec.conformance.level import Harness, Level, Move, Recorder, RunOptions
from kvspec.conformance.outcome import Divergence, OutsideScope


@dataclass
class ExhaustiveResult:
    """What the search explored, and the shortest failure it found (if any)."""

    configs: list[Any]
    depth: int
    """The deepest depth completed: every sequence of at most this many steps was judged."""
    states: int
    transitions: int
    complete: bool
    """True when no new state remained below the bound (the whole space was explored)."""
    failure: Divergence | None
    seconds: float
    waived: frozenset[str] = frozenset()
    """Invariants waived on some explored state (its sequence left their discipline)."""

    @property
    def failing_depth(self) -> int | None:
        """The length of the failure found (every shorter sequence was judged first): 0
        when the fresh state already disagrees; None when none was found."""
        if self.failure is None:
            return None
        return 0 if not self.failure.steps else self.depth + 1

    def describe(self) -> str:
        sizes = sorted({c.num_blocks for c in self.configs})
        where = f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else f"{sizes[0]}"
        counts = f"{self.states:,} states, {self.transitions:,} steps judged"
        if self.failure is not None:
            if self.failing_depth == 0:
                return (f"exhaustive at {where} blocks: a failure in the fresh state, "
                        f"before any step ({counts})")
            return (f"exhaustive at {where} blocks: a failure at depth {self.failing_depth}, "
                    f"every shorter sequence judged first ({counts})")
        tail = ", every reachable state" if self.complete else ""
        return f"exhaustive to depth {self.depth} at {where} blocks: {counts}{tail}"


def _arguments(m: Move, harness: Harness) -> Iterator[dict[str, Any]]:
    names = list(m.args)
    domains = [list(m.args[n].small_values(harness)) for n in names]
    for values in itertools.product(*domains):
        yield dict(zip(names, values, strict=True))


def explore(
    level: Level,
    factory: Any,
    options: RunOptions,
    recorder: Recorder,
    *,
    max_depth: int,
    seconds: float,
    configs: list[Any] | None = None,
    on_depth: Callable[[int, int], None] | None = None,
    start_harness: Callable[..., Harness] | None = None,
) -> ExhaustiveResult:
    """Breadth-first search from every configuration (see the module docstring).

    ``start_harness`` explores another harness's moves instead of the level's vocabulary
    (with their domains' small values; the test suite explores the machines' own moves on
    the spec this way). A move may then take several steps: depth counts moves.
    """
    start = time.perf_counter()
    start_vocabulary = start_harness or level.start_vocabulary
    if start_vocabulary is None:
        raise ValueError(f"the {level.name} level has no vocabulary for the exhaustive engine")
    configs = configs if configs is not None else level.small_configs(factory, options)
    frontier: list[Harness] = []
    seen: set[Hashable] = set()
    for config in configs:
        try:
            harness = start_vocabulary(factory, config, options, recorder)
        except Divergence as failure:
            return ExhaustiveResult(configs, 0, len(seen), 0, False, failure,
                                    time.perf_counter() - start)
        key = (config, harness.state_key())
        if key not in seen:
            seen.add(key)
            frontier.append(harness)
    # The budget counts the search, not the first target's construction (which may import
    # a large package, as the vLLM target does), in this process's CPU seconds: on a loaded
    # machine the search reaches the same depth, so a run's verdicts do not depend on load.
    start = time.perf_counter()
    cpu_start = time.process_time()
    depth = 0
    transitions = 0
    waived: set[str] = set()
    out_of_time = False
    while frontier and depth < max_depth and not out_of_time:
        next_frontier: list[Harness] = []
        for harness in frontier:
            if time.process_time() - cpu_start > seconds:
                out_of_time = True  # this depth is not complete: report the one before
                break
            config = harness.driver.config  # type: ignore[attr-defined]
            for m in harness.enabled_moves():
                for args in _arguments(m, harness):
                    step = harness.first_step(m, args)
                    if step is None:
                        continue  # the move has nothing to do here
                    transitions += 1
                    try:
                        # A step the spec refuses changes nothing: judge it on this very
                        # world, without copying it; it leads to no new state.
                        if harness.driver.judge_refusal_in_place(step):
                            continue
                        child = harness.clone()
                        child.run_move(m, args)
                    except Divergence as failure:
                        return ExhaustiveResult(configs, depth, len(seen), transitions,
                                                False, failure, time.perf_counter() - start)
                    except OutsideScope:
                        continue
                    key = (config, child.state_key())
                    if key in seen:
                        continue
                    seen.add(key)
                    waived.update(getattr(child.driver, "waived", ()))
                    next_frontier.append(child)
        if out_of_time:
            break
        frontier = next_frontier
        depth += 1
        if on_depth:
            on_depth(depth, len(seen))
    return ExhaustiveResult(configs, depth, len(seen), transitions, not frontier, None,
                            time.perf_counter() - start, frozenset(waived))
