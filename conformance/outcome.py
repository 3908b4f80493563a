"""What judging one step can end in: agreement, a divergence, or a sequence out of scope.

Every level's driver takes a step on the spec and on a target and ends in one of three ways:

* an :class:`Outcome`: both sides agree (the spec's result, or the refusal both made);
* a :class:`Divergence`: they disagree, or a check failed. ``caught_by`` names the check.
  When the *spec's own state* breaks one of its invariants, ``spec_error`` is set and the
  name reads ``spec:NAME``: a bug in the spec, never blamed on the target;
* :class:`OutsideScope`: the sequence is not one the run checks, so there is nothing to
  judge: it passes the target input the protocol says it never passes (the manager
  protocol's trusted inputs), or it sends bad input in a run that does not check bad input.
  The machines never produce such a sequence; the minimizer discards such candidates;
  ``kvspec replay`` says where the trace leaves the scope.

A sequence that leaves the usage discipline an invariant assumes (``eviction-order``) is
still judged, on everything else: that invariant alone is waived from that step on, and a
report lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from kvspec.conformance.trace import Step, Trace


class LevelConfig(Protocol):
    """A level's configuration: it round-trips through a trace's ``config``."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass
class Outcome:
    """What one step did: the spec's result, or the refusal both sides agreed on."""

    result: Any = None
    refused: Any = None  # the spec's Refused, when both sides refused


@dataclass
class Divergence(AssertionError):
    """The target and the spec disagree (or the spec breaks its own invariant).

    ``steps`` are the steps taken, the last one being where it failed (none: the fresh
    state already disagrees). ``spec_view`` and ``target_view`` show both sides *after the
    same step*.
    """

    caught_by: str
    message: str
    level: str
    config: LevelConfig
    steps: list[Step]
    spec_view: dict[str, Any] = field(default_factory=dict)
    target_view: dict[str, Any] = field(default_factory=dict)
    spec_error: bool = False
    detail: list[Step] = field(default_factory=list)
    """Lower-level calls behind the last step, where a level records them (content)."""
    waived: dict[str, str] = field(default_factory=dict)
    """Invariants not checked by the time of the failure, each with why (the sequence left
    the usage discipline they assume)."""
    groups: list[int] = field(default_factory=list)
    """Indices in ``steps`` where a harness move began (the minimizer removes whole moves
    first); empty when unknown."""

    def __str__(self) -> str:
        return f"[{self.caught_by}] {self.message}"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # An exception pickles as its class called with ``args``, which a dataclass
        # exception leaves empty: rebuild it from its fields instead (a result sent back
        # from a worker process holds one).
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    @property
    def step_index(self) -> int:
        return len(self.steps)

    def trace(self) -> Trace:
        return Trace(
            level=self.level,
            config=self.config.to_json(),
            steps=list(self.steps),
            note=f"caught by {self.caught_by}: {self.message}",
        )


class OutsideScope(Exception):
    """The sequence leaves what the run checks at step ``step_index`` (see the module doc)."""

    def __init__(self, step_index: int, reason: str) -> None:
        super().__init__(f"step {step_index}: {reason}")
        self.step_index = step_index
        self.reason = reason
