"""A *level* of the protocol, described once so that every engine can run it.

kvspec checks allocators at several levels (the block pool, the KV-cache manager, the block
store's bytes) with several engines (random, exhaustive, minimize, replay). Each level is
one :class:`Level`; each engine is written once against it, so a new level or a new engine
is one module.

A level has:

* a **driver** (``conformance/<level>/driver.py``): it takes one protocol step on the spec
  and on a target and judges it (:mod:`kvspec.conformance.outcome`);
* a **harness** (``conformance/<level>/harness.py``): the scheduler's side, that is the
  bookkeeping of who holds what (tables, requests) and the **moves** that decide which step
  makes sense next, for the random engine. Each move is a method decorated with
  :func:`move`, whose arguments are :class:`Domain` values (how to draw one);
* a **vocabulary** (``conformance/<level>/vocabulary.py``): a harness without bookkeeping
  whose moves are the protocol's operations themselves, each with every value of a small
  finite set of arguments, for the exhaustive engine. Each of its moves takes exactly one
  step, so breadth-first order is an order by trace length, and since its sequences are
  arbitrary protocol sequences, the minimizer (which deletes steps) cannot leave it;
* its configurations (a Hypothesis strategy, and the small ones the exhaustive engine
  starts from), and how to simplify one step's arguments (for the minimizer).

Engines take steps through a harness's moves: :meth:`Harness.do` takes one step through the
driver and counts it in a :class:`Recorder`, shared by every copy of the harness.
"""

from __future__ import annotations

import copy
import pickle
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from hypothesis.strategies import SearchStrategy
from kvspec.conformance.outcome import LevelConfig, Outcome
from kvspec.conformance.trace import Step


class Driver(Protocol):
    """What engines need of a level's driver."""

    steps: list[Step]

    def apply(self, step: Step) -> Outcome: ...
    def state_key(self) -> Hashable: ...
    def clone(self) -> Driver: ...
    def judge_refusal_in_place(self, step: Step) -> bool: ...


class _FirstStep(Exception):
    """Raised by a dry run at its first step (:meth:`Harness.first_step`)."""

    def __init__(self, step: Step) -> None:
        super().__init__(step.op)
        self.step = step


def _stop_at_first_step(op: str, **args: Any) -> Outcome:
    raise _FirstStep(Step(op, dict(args)))


Sampler = Callable[[random.Random], Any]


@dataclass(frozen=True)
class Domain:
    """The values one move argument takes.

    ``sample`` draws one for the random engine, from the example's generator (Hypothesis
    seeds it per example, so a run replays exactly; drawing each argument through Hypothesis
    instead cost a third of a run's time). ``values`` (a tuple, or a function of the
    harness) is the small set an exhaustive exploration takes.
    """

    sample: Sampler | None = None
    values: Sequence[Any] | Callable[[Any], Iterable[Any]] = ()

    def small_values(self, harness: Any) -> Iterable[Any]:
        return self.values(harness) if callable(self.values) else self.values


def integers(low: int, high: int) -> Sampler:
    """Any integer in ``low..high``."""
    return lambda rng: rng.randint(low, high)


def one_of(values: Sequence[Any]) -> Sampler:
    """One of ``values``, each equally likely."""
    return lambda rng: rng.choice(values)


def sequences(values: Sequence[Any], min_size: int, max_size: int) -> Sampler:
    """A tuple of ``min_size..max_size`` items, each one of ``values``."""
    return lambda rng: tuple(rng.choice(values) for _ in range(rng.randint(min_size, max_size)))


@dataclass(frozen=True)
class Move:
    """One thing the harness can do next. See :func:`move`."""

    name: str
    function: Callable[..., None]
    args: dict[str, Domain]
    enabled: Callable[[Any], bool]
    weight: int

    def run(self, harness: Any, **args: Any) -> None:
        self.function(harness, **args)


def move(
    *,
    weight: int = 1,
    enabled: Callable[[Any], bool] | None = None,
    **args: Domain,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare a harness method a move.

    ``weight`` is its relative frequency in the random engine (the choice is among enabled
    moves only). ``enabled`` is its precondition.
    """

    def mark(function: Callable[..., None]) -> Callable[..., None]:
        function._kvspec_move = Move(  # type: ignore[attr-defined]
            name=function.__name__,
            function=function,
            args=dict(args),
            enabled=enabled or (lambda _h: True),
            weight=weight,
        )
        return function

    return mark


@dataclass
class RunStats:
    """Counts for the summary: what the engines did, checked and reached."""

    examples: int = 0
    steps: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    invariant_checks: Counter[str] = field(default_factory=Counter)
    situations: Counter[str] = field(default_factory=Counter)


class Recorder:
    """Where a harness reports its steps: counts, named situations, and a progress tick.
    Shared by every copy of a harness (the exhaustive engine copies harnesses)."""

    def __init__(self, stats: RunStats | None = None,
                 on_step: Callable[[], None] | None = None) -> None:
        self.stats = stats if stats is not None else RunStats()
        self.on_step = on_step

    def __deepcopy__(self, memo: dict[int, Any]) -> Recorder:
        return self

    def count_check(self, invariant: str) -> None:
        """A driver's ``on_check``: one more check of ``invariant``."""
        self.stats.invariant_checks[invariant] += 1


_UNPICKLABLE: set[type] = set()
_UNCOPYABLE: set[type] = set()


def copy_target(target: Any, rebuild: Callable[[], Any]) -> Any:
    """An independent copy of a target, hidden state included.

    A pickle round trip is about twice as fast as ``copy.deepcopy`` on a small pool and
    copies the same object graph; a target that cannot be pickled is deep-copied, and one
    that cannot be copied at all (it holds a module, a lock...) is rebuilt by ``rebuild``,
    which replays the steps so far on a fresh target. Each fallback is found once per type.
    """
    kind = type(target)
    if kind not in _UNPICKLABLE:
        try:
            return pickle.loads(pickle.dumps(target, pickle.HIGHEST_PROTOCOL))
        except Exception:  # noqa: BLE001 - any pickling failure: fall back
            _UNPICKLABLE.add(kind)
    if kind not in _UNCOPYABLE:
        try:
            return copy.deepcopy(target)
        except Exception:  # noqa: BLE001 - any copying failure: rebuild instead
            _UNCOPYABLE.add(kind)
    return rebuild()


class Harness:
    """The scheduler's side of a level: bookkeeping, moves, and the way steps are taken.

    Subclasses declare moves with :func:`move`, simplest first (an exhaustive exploration
    tries earlier moves first, so its failures read simply), and implement :meth:`key`.
    """

    moves: ClassVar[tuple[Move, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Move] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if hasattr(value, "_kvspec_move"):
                    found[name] = value._kvspec_move
        cls.moves = tuple(found.values())

    def __init__(self, driver: Driver, recorder: Recorder) -> None:
        self.driver = driver
        self.recorder = recorder
        self.current_move = "-"
        self.last_outcome: Outcome | None = None
        self.move_starts: list[int] = []
        """Where each move's steps begin in the driver's steps (for the minimizer)."""

    def do(self, op: str, **args: Any) -> Outcome:
        """Take one protocol step through the driver, counted under the current move."""
        stats = self.recorder.stats
        stats.steps += 1
        stats.rules[self.current_move] += 1
        if self.recorder.on_step:
            self.recorder.on_step()
        # The step is recorded as it is now: a list the harness keeps (a table) and changes
        # later must not change the recorded step, or the trace would not replay.
        frozen = {k: list(v) if isinstance(v, list) else v for k, v in args.items()}
        self.last_outcome = self.driver.apply(Step(op, frozen))
        return self.last_outcome

    def note(self, situation: str) -> None:
        """Record that a named situation was reached (coverage, see ``Level.situations``)."""
        self.recorder.stats.situations[situation] += 1

    def run_move(self, m: Move, args: dict[str, Any]) -> None:
        self.current_move = m.name
        self.move_starts.append(len(self.driver.steps))
        m.run(self, **args)

    def key(self) -> Hashable:
        """The harness's own bookkeeping, as a hashable value (with the driver's key)."""
        raise NotImplementedError

    def state_key(self) -> Hashable:
        return (self.key(), self.driver.state_key())

    def check_bookkeeping(self) -> None:
        """The harness's own records agree with the spec (a harness bug otherwise)."""

    def copy_bookkeeping(self) -> Harness:
        """A copy sharing the driver, with its own bookkeeping (levels override this with
        a cheaper copy of what their moves change)."""
        twin = self.shallow_copy()
        for name, value in vars(self).items():
            if name not in ("driver", "recorder"):
                setattr(twin, name, copy.deepcopy(value))
        return twin

    def shallow_copy(self) -> Harness:
        twin = self.__class__.__new__(self.__class__)
        twin.__dict__.update(self.__dict__)
        twin.move_starts = list(self.move_starts)
        return twin

    def clone(self) -> Harness:
        """An independent copy, target included (the exhaustive engine expands copies)."""
        twin = self.copy_bookkeeping()
        twin.driver = self.driver.clone()
        return twin

    def first_step(self, m: Move, args: dict[str, Any]) -> Step | None:
        """The protocol step ``m`` with ``args`` takes first from here (None: it has nothing
        to do), found by a dry run on a copy of the bookkeeping; nothing is judged."""
        probe = self.copy_bookkeeping()
        probe.do = _stop_at_first_step  # type: ignore[method-assign]
        probe.note = lambda _situation: None  # type: ignore[method-assign]
        try:
            probe.run_move(m, args)
        except _FirstStep as first:
            return first.step
        return None

    def enabled_moves(self) -> list[Move]:
        return [m for m in self.moves if m.enabled(self)]


@dataclass(frozen=True)
class RunOptions:
    """What a run checks, shared by every engine: the upstream profile, the mode, and
    whether operations the spec refuses are sent (``check``) or not (``report``/``off``)."""

    profile: str = "current"
    mode: str = "strict"
    bad_input: str = "check"
    device: str = "cpu"
    """Where a level with a block store keeps it (content level)."""
    dtype: str = "float32"

    @property
    def checks_bad_input(self) -> bool:
        return self.bad_input == "check"


@dataclass(frozen=True)
class Level:
    """Everything engines need to run one level (see the module docstring)."""

    name: str
    modes: tuple[str, ...]
    config_from_json: Callable[[dict[str, Any]], LevelConfig]
    load_factory: Callable[[str], Any]
    """Resolve a ``--target`` string to this level's factory."""
    start: Callable[[Any, LevelConfig, RunOptions, Recorder], Harness]
    """Build the driver and harness for a fresh target and check the fresh state."""
    start_vocabulary: Callable[[Any, LevelConfig, RunOptions, Recorder], Harness] | None
    """The same for the exhaustive engine's vocabulary (None: the level has none)."""
    configs: Callable[[Any, RunOptions], SearchStrategy[LevelConfig]]
    """The random engine's configurations for a factory."""
    small_configs: Callable[[Any, RunOptions], list[LevelConfig]]
    """The exhaustive engine's configurations."""
    replay_driver: Callable[[Any, LevelConfig, RunOptions], Driver]
    """A driver for replaying a trace, its fresh state already checked."""
    simplify: Callable[[Step], Iterator[Step]]
    """Simpler versions of one step (arguments lowered), simplest first."""
    situations: tuple[str, ...] = ()
    """Named situations the harness reports reaching (coverage in the summary)."""
    switched_off: Callable[[Any], frozenset[str]] = lambda _factory: frozenset()
    """What a factory says its targets do not support: moves never made, and reported."""
    check_options: Callable[[RunOptions], None] = lambda _options: None
    """Refuse options the level cannot run with (ValueError), before anything runs."""

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(
                f"the {self.name} level runs in {' or '.join(self.modes)} mode, not {mode!r}"
            )
