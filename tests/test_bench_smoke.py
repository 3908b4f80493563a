"""``kvspec bench`` in miniature: structure and correctness of what it times, never the times.

Every queue contender must behave exactly like ``FreeKVCacheBlockQueue`` (same order, same
refusals), or the benchmark would compare different work.
"""

from __future__ import annotations

import sys
import types

import pytest
from kvspec.benchmarks import free_queue, pool_trace
from kvspec.benchmarks._harness import machine_info, measure
from kvspec.conformance.cli import main as kvspec
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import FreeQueueError, NoFreeBlocksError

CONTENDERS = list(free_queue.CONTENDERS)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_blocks", [1, 8, 40])
def test_every_queue_yields_the_linked_lists_order_for_the_same_operations(seed, num_blocks):
    expected = free_queue.scripted_order(free_queue.FreeKVCacheBlockQueue, num_blocks, 300, seed)
    assert expected[0], "the script should hand out some blocks"
    for name in CONTENDERS:
        got = free_queue.scripted_order(free_queue.CONTENDERS[name], num_blocks, 300, seed)
        assert got == expected, name


@pytest.mark.parametrize("name", CONTENDERS)
def test_prepend_n_puts_the_later_call_in_front(name):
    blocks = free_queue.make_blocks(6)
    queue = free_queue.CONTENDERS[name](blocks[:2])
    queue.prepend_n(blocks[2:4])
    queue.prepend_n(blocks[4:6])
    assert [b.block_id for b in queue.get_all_free_blocks()] == [4, 5, 2, 3, 0, 1]


@pytest.mark.parametrize("name", CONTENDERS)
def test_every_queue_refuses_like_the_linked_list(name):
    blocks = free_queue.make_blocks(3)
    queue = free_queue.CONTENDERS[name](blocks[:2])
    with pytest.raises(FreeQueueError, match="remove: block 2"):
        queue.remove(blocks[2])
    with pytest.raises(NoFreeBlocksError, match="popleft_n"):
        queue.popleft_n(3)
    queue.popleft_n(2)
    with pytest.raises(NoFreeBlocksError, match="popleft"):
        queue.popleft()
    assert queue.num_free_blocks == 0


def test_deque_index_queue_compacts_dead_entries_without_changing_order():
    blocks = free_queue.make_blocks(10)
    queue = free_queue.DequeIndexQueue(blocks)
    for _ in range(50):  # each remove + append leaves one dead entry behind
        for block in blocks[:5]:
            queue.remove(block)
            queue.append(block)
    assert len(queue._entries) <= 2 * 10 + 64 + 1
    assert [b.block_id for b in queue.get_all_free_blocks()] == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("workload", list(free_queue.WORKLOADS))
@pytest.mark.parametrize("name", CONTENDERS)
def test_each_workload_leaves_every_block_queued_once(workload, name):
    blocks = free_queue.make_blocks(50)
    queue = free_queue.CONTENDERS[name](blocks)
    free_queue.WORKLOADS[workload][1](queue, blocks, 200, 0)()
    ids = [b.block_id for b in queue.get_all_free_blocks()]
    assert sorted(ids) == list(range(50))
    assert queue.num_free_blocks == 50


def test_workloads_move_the_same_blocks_in_every_queue():
    orders = set()
    for name in CONTENDERS:
        blocks = free_queue.make_blocks(40)
        queue = free_queue.CONTENDERS[name](blocks)
        for workload in free_queue.WORKLOADS:
            free_queue.WORKLOADS[workload][1](queue, blocks, 100, 3)()
        orders.add(tuple(b.block_id for b in queue.get_all_free_blocks()))
    assert len(orders) == 1


def test_measure_reports_the_median_of_fresh_runs():
    setups = []

    def setup(ops):
        setups.append(ops)
        return lambda: sum(range(ops))

    m = measure(setup, repeats=3, ops=10)
    assert setups == [10, 10, 10]
    assert len(m.seconds) == 3 and m.ops == 10
    assert m.median_s == sorted(m.seconds)[1]


def test_queue_bench_has_one_cell_per_size_workload_and_queue():
    results = free_queue.run_queue_bench((16, 32), repeats=1, ops=8)
    keys = {(r.workload, r.size, r.contender) for r in results}
    assert len(keys) == len(results) == 2 * len(free_queue.WORKLOADS) * len(CONTENDERS)
    ratios = free_queue.ratios(results)
    assert all(ratios[(w, s, "linked")] == 1.0 for w in free_queue.WORKLOADS for s in (16, 32))
    text = free_queue.format_results(results)
    assert all(f"{w}:" in text for w in free_queue.WORKLOADS)


def test_predicted_bands_cover_every_contender_at_the_default_sizes():
    for workload in free_queue.WORKLOADS:
        for contender in CONTENDERS[1:]:
            bands = free_queue.PREDICTED[(workload, contender)]
            assert set(bands) == set(free_queue.DEFAULT_SIZES)
            assert all(lo < hi for lo, hi in bands.values())


def test_recorded_trace_is_deterministic_in_its_seed():
    shape = pool_trace.QUICK_SHAPE
    assert pool_trace.record_trace(shape) == pool_trace.record_trace(shape)


@pytest.mark.parametrize("profile", pool_trace.PROFILES)
def test_pool_trace_hits_evicts_and_returns_every_block(profile):
    shape = pool_trace.QUICK_SHAPE
    events = pool_trace.record_trace(shape)
    stats = pool_trace.trace_stats(events, shape.num_gpu_blocks, profile)
    assert stats.events == len(events)
    assert stats.hit_blocks > 0 and stats.evictions > 0
    assert 0 < stats.revived <= stats.hit_blocks
    pool = BlockPool(shape.num_gpu_blocks, profile=profile)
    pool_trace.replay(pool, events)
    assert pool.get_num_free_blocks() == shape.num_gpu_blocks - 1  # everything freed


def test_machine_info_names_python_platform_and_cpu():
    assert {"python", "platform", "cpu"} <= set(machine_info())


def test_bench_quick_prints_queue_and_pool_tables(capsys):
    assert kvspec(["bench", "--quick", "--sizes", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "== queue" in out and "== pool" in out
    assert "impl.BlockPool (current)" in out


def test_bench_options_may_follow_the_benchmark_name(capsys):
    assert kvspec(["bench", "queue", "--quick", "--sizes", "16", "--repeats", "1",
                   "--no-gc"]) == 0
    out = capsys.readouterr().out
    assert "garbage collector off" in out and "== pool" not in out


def test_bench_store_passes_its_arguments_to_the_store_benchmark(monkeypatch):
    seen = []
    fake = types.ModuleType("kvspec.benchmarks.block_store")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "kvspec.benchmarks.block_store", fake)
    assert kvspec(["bench", "store", "--device", "cpu"]) == 0
    assert seen == [["--device", "cpu"]]
