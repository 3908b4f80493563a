"""Replay a ``kvspec-trace`` on the spec and a target, and say where they diverge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvspec.conformance.level import RunOptions
from kvspec.conformance.levels import get_level
from kvspec.conformance.outcome import Divergence, OutsideScope
from kvspec.conformance.trace import Trace


@dataclass
class ReplayResult:
    ok: bool
    steps_run: int
    divergence: Divergence | None = None
    outside_scope: OutsideScope | None = None
    refused: list[int] = field(default_factory=list)
    """Steps (1-based) that both sides refused, as the spec requires."""
    waived: dict[str, str] = field(default_factory=dict)
    """Invariants not checked by the end, each with why (see the drivers)."""

    @property
    def message(self) -> str:
        if self.outside_scope is not None:
            return f"outside the checked scope at {self.outside_scope}"
        if self.divergence is None and not self.steps_run:
            return "no divergence: the trace has no steps, and the fresh states agree"
        if self.divergence is None:
            return f"no divergence in {self.steps_run} steps"
        return (
            f"diverges at step {self.divergence.step_index}: "
            f"[{self.divergence.caught_by}] {self.divergence.message}"
        )


def replay_trace(
    trace: Trace,
    target: str | Any = "impl",
    *,
    mode: str | None = None,
    bad_input: str = "check",
) -> ReplayResult:
    """Run every step of ``trace`` on the spec and ``target`` (a name or a factory) in
    lockstep; the result says whether, and where, they diverge."""
    level = get_level(trace.level)
    factory = level.load_factory(target) if isinstance(target, str) else target
    data = {**trace.config, **({"mode": mode} if mode else {})}
    config = level.config_from_json(data)
    options = RunOptions(profile=getattr(config, "profile", "current"),
                         mode=getattr(config, "mode", "strict"), bad_input=bad_input)
    refused: list[int] = []
    try:
        driver = level.replay_driver(factory, config, options)
        for i, step in enumerate(trace.steps, start=1):
            if driver.apply(step).refused is not None:
                refused.append(i)
    except Divergence as failure:
        return ReplayResult(False, failure.step_index, failure, refused=refused,
                            waived=failure.waived)
    except OutsideScope as outside:
        return ReplayResult(False, outside.step_index, outside_scope=outside, refused=refused)
    return ReplayResult(True, len(trace.steps), refused=refused,
                        waived=dict(getattr(driver, "waived", {})))
