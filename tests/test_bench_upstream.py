"""The upstream benchmark's recorded trace: deterministic, exact in length, replayable.

Timing against vLLM itself is exercised in test_vllm_target.py, which runs where vLLM is
installed; what is here needs only kvspec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kvspec.benchmarks.pool_trace import TraceShape
from kvspec.benchmarks.upstream import load_trace, record_ops, replay, replay_checked, save_trace
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


def test_the_same_pool_replays_its_recording_with_every_lookup_as_recorded() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 1000)
    first = replay_checked(impl_pool_factory(SHAPE.num_gpu_blocks), trace.ops, SHAPE.num_gpu_blocks)
    second = replay_checked(
        impl_pool_factory(SHAPE.num_gpu_blocks), trace.ops, SHAPE.num_gpu_blocks
    )
    assert first == second
    replay(impl_pool_factory(SHAPE.num_gpu_blocks), trace.ops)  # the unchecked loop runs too


def test_a_lookup_that_differs_from_the_recording_is_reported() -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 200)
    at = next(i for i, op in enumerate(trace.ops) if op[0] == "get_cached_block" and op[3])
    name, req, block_hash, _ = trace.ops[at]
    tampered = (*trace.ops[:at], (name, req, block_hash, False), *trace.ops[at + 1 :])
    with pytest.raises(AssertionError, match=f"operation {at} get_cached_block"):
        replay_checked(impl_pool_factory(SHAPE.num_gpu_blocks), tampered, SHAPE.num_gpu_blocks)


def test_a_trace_file_round_trips(tmp_path: Path) -> None:
    trace = record_ops(impl_pool_factory, SHAPE, 300)
    path = tmp_path / "ops.json"
    save_trace(trace, path)
    loaded = load_trace(path)
    assert loaded == trace
