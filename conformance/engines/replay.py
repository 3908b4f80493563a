"""Replay a ``kvspec-trace`` on the spec and a target, and say where they diverge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvspec.conformance.manager.driver import ManagerConfig
from kvspec.conformance.manager.driver import replay_steps as replay_manager_steps
from kvspec.conformance.manager.targets import load_manager_factory
from kvspec.conformance.pool.driver import Divergence, PoolConfig, replay_steps
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.pool.targets import load_factory
from kvspec.conformance.trace import Trace


@dataclass
class ReplayResult:
    ok: bool
    steps_run: int
    divergence: Divergence | None = None

    @property
    def message(self) -> str:
        if self.divergence is None:
            return f"no divergence in {self.steps_run} steps"
        return (
            f"diverges at step {self.divergence.step_index}: "
            f"[{self.divergence.caught_by}] {self.divergence.message}"
        )


def replay_trace(
    trace: Trace,
    target: str | Callable[..., PoolTarget] = "impl",
    *,
    mode: str | None = None,
) -> ReplayResult:
    """Run every step of ``trace`` on the spec and ``target`` in lockstep."""
    if trace.level == "manager":
        return _replay_manager_trace(trace, target, mode=mode)
    if trace.level == "content":
        from kvspec.conformance.content.driver import replay_content_trace

        return replay_content_trace(trace, target, mode=mode)
    if trace.level != "pool":
        raise ValueError(f"this kvspec replays pool and manager traces, not {trace.level!r}")
    factory = load_factory(target) if isinstance(target, str) else target
    config = PoolConfig.from_json({**trace.config, **({"mode": mode} if mode else {})})
    try:
        driver = replay_steps(factory, config, trace.steps)
    except Divergence as failure:
        return ReplayResult(False, failure.step_index, failure)
    return ReplayResult(True, len(driver.steps))


def _replay_manager_trace(
    trace: Trace, target: str | Callable[..., Any], *, mode: str | None = None
) -> ReplayResult:
    """A manager-level trace: ``target`` names (or is) a manager factory."""
    factory = load_manager_factory(target) if isinstance(target, str) else target
    config = ManagerConfig.from_json({**trace.config, **({"mode": mode} if mode else {})})
    try:
        driver = replay_manager_steps(factory, config, trace.steps)
    except Divergence as failure:
        return ReplayResult(False, failure.step_index, failure)
    return ReplayResult(True, len(driver.steps))
