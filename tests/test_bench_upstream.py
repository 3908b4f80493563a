"""The upstream benchmark's recorded traces: deterministic, exact in length, replayable in both
call shapes with the same end state.

Timing against vLLM itself is exercised in test_vllm_target.py, which runs where vLLM is
installed; what is here needs only kvspec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kvspec.benchmarks.pool_ops import (
    compile_events,
    count_calls,
    load_trace,
    record_ops,
    save_trace,
)
from kvspec.benchmarks.pool_trace import TraceShape
from kvspec.benchmarks.upstream import SHAPES, pool_contenders, replay_checked
from kvspec.conformance.pool.targets import impl_pool_factory

# A small pool under pressure: a few hundred requests already evict cached blocks.
SHAPE = TraceShape(
    num_gpu_blocks=128,
    num_prompts=8,
    prompt_blocks=(2, 8),
    unique_blocks=(1, 4),
    max_live=8,
    num_requests=2000,
)
IMPL = pool_contenders()["impl"]


def test_a_recording_has_exactly_the_operations_asked_for_and_is_deterministic() -> None:
    first = record_ops(impl_pool_factory, SHAPE, 500)
    again = record_ops(impl_pool_factory, SHAPE, 500)
    assert len(first.ops) == 500
    assert first.ops == again.ops
    counts = first.counts()
    assert counts["get_cached_block"] and counts["touch"] and counts["cache_block"]
    assert counts["get_new_blocks"] and counts["free_blocks"]


def test_a_recording_names_requests_not_block_ids() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 200)
    allocations = [op for op in trace.ops if op[0] == "get_new_blocks"]
    # (op, request, how many): the ids are resolved by whichever pool replays it.
    assert all(len(op) == 3 for op in allocations)


def test_a_small_pool_evicts_cached_blocks_while_recording() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 3000)
    assert trace.evictions is not None and trace.evictions > 0


def test_admissions_group_a_requests_consecutive_operations() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 1000)
    events = compile_events(trace.ops)
    admissions = [ev for ev in events if ev[0] == "admit"]
    assert len(admissions) == trace.counts()["get_new_blocks"] + (events[-1][4] is None)
    assert sum(1 for ev in events if ev[0] == "free") == trace.counts()["free_blocks"]
    # Per-block caching makes exactly the recorded calls; batching makes one per admission.
    assert count_calls(events, per_block=True) == len(trace.ops)
    assert count_calls(events, per_block=False) < len(trace.ops)
    assert count_calls(events, per_block=False, prefix_lookup=True) == (
        count_calls(events, per_block=False) - trace.counts()["get_cached_block"]
        + sum(1 for ev in events if ev[0] == "admit" and ev[2]))


@pytest.mark.parametrize("num_ops", [1000, 1001, 1002, 1003])
def test_a_trace_cut_inside_an_admission_replays_only_the_recorded_calls(num_ops: int) -> None:
    trace = record_ops(impl_pool_factory, SHAPE, num_ops)
    events = compile_events(trace.ops)
    assert count_calls(events, per_block=True) == num_ops
    replay_checked(IMPL, trace, events, SHAPES["pool, per-block"])


def test_every_call_shape_leaves_the_pool_in_the_same_state() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 3000)
    events = compile_events(trace.ops)
    ends = [replay_checked(IMPL, trace, events, shape) for shape in SHAPES.values()]
    assert ends[0] == ends[1] == ends[2]
    assert ends[0]["free_queue"] and ends[0]["tables"]


def test_the_replay_ends_where_the_recording_pool_ended() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 2000)
    recorded = impl_pool_factory(SHAPE.num_gpu_blocks)
    tables: dict[int, list[int]] = {}
    pending: dict[int, list[int]] = {}
    for op in trace.ops:  # the recording, replayed through the protocol adapter
        if op[0] == "get_cached_block":
            found = recorded.get_cached_block(op[2])
            if found is not None:
                pending.setdefault(op[1], []).append(found)
        elif op[0] == "touch":
            recorded.touch(pending[op[1]])
        elif op[0] == "get_new_blocks":
            tables[op[1]] = pending.pop(op[1], []) + recorded.get_new_blocks(op[2])
        elif op[0] == "cache_block":
            recorded.cache_block(tables[op[1]][op[2]], op[3])
        else:
            recorded.free_blocks(tables.pop(op[1])[::-1])
    end = replay_checked(IMPL, trace, compile_events(trace.ops), SHAPES["pool, batched"])
    assert end["free_queue"] == recorded.free_block_ids()
    assert end["ref_cnt"] == [recorded.ref_cnt(b) for b in range(SHAPE.num_gpu_blocks)]
    assert end["block_hash"] == [recorded.block_hash(b) for b in range(SHAPE.num_gpu_blocks)]


def test_a_lookup_that_differs_from_the_recording_is_reported() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 200)
    at = next(i for i, op in enumerate(trace.ops) if op[0] == "get_cached_block" and op[3])
    name, req, block_hash, _ = trace.ops[at]
    tampered = (*trace.ops[:at], (name, req, block_hash, False), *trace.ops[at + 1 :])
    with pytest.raises(AssertionError, match="admission .* the recording hit"):
        replay_checked(IMPL, trace, compile_events(tampered), SHAPES["pool, batched"])


def test_a_trace_file_round_trips(tmp_path: Path) -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 300)
    path = tmp_path / "ops.json"
    save_trace(trace, path)
    loaded = load_trace(path)
    assert loaded == trace
