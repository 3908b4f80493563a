"""The manager comparison's scheduler trace: deterministic, and replayed with the recorded hits.

Timing against vLLM's manager runs where vLLM is installed (``kvspec bench upstream``); what is
here needs only kvspec.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from kvspec.benchmarks.scheduler_trace import (
    QUICK_SHAPE,
    manager_contenders,
    record_schedule,
    replay_checked,
)

SHAPE = replace(QUICK_SHAPE, num_requests=40)
IMPL = manager_contenders()["impl"]


def test_a_schedule_is_deterministic_and_admits_and_frees_every_request_once() -> None:
    trace = record_schedule(SHAPE)
    assert trace == record_schedule(SHAPE)
    counts = trace.counts()
    assert counts["admit"] == counts["free"] == SHAPE.num_requests
    assert trace.calls == 2 * counts["admit"] + counts["run"] + counts["free"]
    assert trace.hit_tokens > 0, "shared system prompts should hit"


def test_prefill_runs_in_chunks_then_decodes_one_token_per_step() -> None:
    trace = record_schedule(replace(SHAPE, chunk_tokens=64))
    steps = [event[2] for event in trace.events if event[0] == "run"]
    assert max(steps) == 64 and 1 in steps
    assert all(event[2] <= 64 for event in trace.events if event[0] == "admit")


def test_the_manager_replays_the_schedule_hitting_as_recorded_and_ends_idle() -> None:
    trace = record_schedule(SHAPE)
    end = replay_checked(IMPL, trace)
    assert end["tables"] == {}, "every request was freed"
    assert end["stats"][:3] == (SHAPE.num_requests, sum(map(len, trace.tokens)),
                                trace.hit_tokens)
    assert replay_checked(IMPL, trace) == end


def test_a_hit_that_differs_from_the_recording_is_reported() -> None:
    trace = record_schedule(SHAPE)
    at = next(i for i, event in enumerate(trace.events)
              if event[0] == "admit" and event[3] > 0)
    kind, index, tokens, hits = trace.events[at]
    tampered = replace(trace, events=(*trace.events[:at], (kind, index, tokens, hits + 1),
                                      *trace.events[at + 1:]))
    with pytest.raises(AssertionError, match="the recording hit"):
        replay_checked(IMPL, tampered)
