"""A trace replayed into frames: both sides' observations after every step.

The page is built from a replay, not from the trace alone, because only the drivers know
the states: a trace holds operations, and what each did to the pool (and whether the
target agreed) comes from running it. Every step goes through the level's driver exactly
as in ``kvspec replay``, so the page shows the same verdict the replay prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvspec.conformance.level import RunOptions
from kvspec.conformance.levels import get_level
from kvspec.conformance.outcome import Divergence, OutsideScope
from kvspec.conformance.report import count_steps
from kvspec.conformance.trace import Step, Trace

#: Levels whose drivers the page can read (the content level's state is K/V bytes).
SHOWN_LEVELS = ("pool", "manager", "hybrid")


@dataclass
class Frame:
    """One step and both sides after it (``index`` 0: the fresh state, no step)."""

    index: int
    step: Step | None
    spec: dict[str, Any]
    target: dict[str, Any]
    status: str = "ok"
    """``ok``, ``refused`` (both sides refused, as the spec requires), ``divergent``,
    ``outside-scope``, or ``not-run`` (after the replay stopped)."""
    note: str = ""
    handed_out: list[int] = field(default_factory=list)
    """Pool level: the blocks this step handed out."""

    @property
    def differs(self) -> list[str]:
        """Observations on which the two sides disagree."""
        keys = dict.fromkeys([*self.spec, *self.target])
        return [k for k in keys if self.spec.get(k) != self.target.get(k)]


@dataclass
class Replayed:
    trace: Trace
    target: str
    frames: list[Frame]
    divergence: Divergence | None = None

    @property
    def verdict(self) -> str:
        d = self.divergence
        if d is not None:
            what = "SPEC ERROR" if d.spec_error else "diverges"
            return f"{what} at step {d.step_index}: caught by {d.caught_by}: {d.message}"
        stopped = [f for f in self.frames if f.status == "outside-scope"]
        if stopped:
            return f"outside the checked scope at step {stopped[0].index}: {stopped[0].note}"
        return f"no divergence in {count_steps(len(self.trace.steps))}"


def replay_frames(trace: Trace, target: str | Any = "impl", *, target_name: str = "") -> Replayed:
    """Replay ``trace`` on the spec and ``target`` (a name or a factory), keeping both sides'
    observations after every step."""
    if trace.level not in SHOWN_LEVELS:
        raise ValueError(f"show: a {trace.level} level trace; expected a level of "
                         f"{', '.join(SHOWN_LEVELS)}")
    level = get_level(trace.level)
    factory = level.load_factory(target) if isinstance(target, str) else target
    config = level.config_from_json(trace.config)
    options = RunOptions(profile=getattr(config, "profile", "current"),
                         mode=getattr(config, "mode", "strict"))
    name = target_name or (target if isinstance(target, str) else repr(target))
    result = Replayed(trace, name, [])
    frames = result.frames
    try:
        driver = level.replay_driver(factory, config, options)
        frames.append(Frame(0, None, *_views(driver)))
        for i, step in enumerate(trace.steps, start=1):
            outcome = driver.apply(step)
            frame = Frame(i, step, *_views(driver))
            if outcome.refused is not None:
                frame.status = "refused"
                frame.note = f"refused by both, as the spec requires: {outcome.refused.message}"
            frame.handed_out = _handed_out(step, outcome.result)
            frames.append(frame)
    except Divergence as failure:
        result.divergence = failure
        note = f"caught by {failure.caught_by}: {failure.message}"
        frames.append(Frame(len(failure.steps), failure.steps[-1] if failure.steps else None,
                            failure.spec_view, failure.target_view, "divergent", note))
    except OutsideScope as outside:
        frames.append(Frame(outside.step_index, trace.steps[outside.step_index - 1],
                            {}, {}, "outside-scope", outside.reason))
    last = frames[-1].index
    frames.extend(Frame(i, step, {}, {}, "not-run", "not run: the replay stopped before it")
                  for i, step in enumerate(trace.steps[last:], start=last + 1))
    return result


def _views(driver: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides' observations after the driver's last step, as the reports show them."""
    if hasattr(driver, "target_obs"):  # manager and hybrid drivers (the pool's: target_snap)
        return driver.observe_spec().view(), driver.target_obs.view()
    from kvspec.conformance.pool.driver import view
    from kvspec.spec.invariants import snapshot

    return view(snapshot(driver.spec)), view(driver.target_snap)


def _handed_out(step: Step, result: Any) -> list[int]:
    if step.op == "get_new_blocks" and isinstance(result, list):
        return list(result)
    if step.op == "fork_block" and isinstance(result, int) and result != step.args["block_id"]:
        return [result]
    return []
