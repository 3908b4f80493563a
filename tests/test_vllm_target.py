"""Upstream vLLM 0.33.0's BlockPool, driven through the pool protocol (``--target vllm``).

vLLM is an optional target (``scripts/install-vllm-target.sh``), so this module runs only
where it is installed. The last group of tests pins upstream's handling of bad input as
docs/upstream.md reports it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from kvspec.conformance.pool.protocol import PoolTarget  # noqa: E402
from kvspec.conformance.pool.targets import load_factory, unsupported_operations  # noqa: E402
from kvspec.conformance.upstream.vllm_pool import BlockIdError, vllm_pool_factory  # noqa: E402


def held_request(pool: PoolTarget, hashes: list[bytes | None]) -> list[int]:
    """Allocate one block per entry and cache those with a hash, as a request would."""
    blocks = pool.get_new_blocks(len(hashes))
    for block, block_hash in zip(blocks, hashes, strict=True):
        if block_hash is not None:
            pool.cache_block(block, block_hash)
    return blocks


# ------------------------------------------------------------------ the adapter


def test_factory_builds_a_pool_target_and_is_loadable_by_name() -> None:
    assert isinstance(vllm_pool_factory(4), PoolTarget)
    assert load_factory("vllm") is vllm_pool_factory


def test_fresh_pool_queues_every_block_but_the_null_block_in_id_order() -> None:
    pool = vllm_pool_factory(5)
    assert pool.free_block_ids() == [1, 2, 3, 4]
    assert pool.get_num_free_blocks() == 4
    assert pool.get_usage() == 0.0
    assert [pool.ref_cnt(b) for b in range(5)] == [0, 0, 0, 0, 0]


def test_allocation_takes_the_front_of_the_queue_with_one_reference_each() -> None:
    pool = vllm_pool_factory(5)
    assert pool.get_new_blocks(2) == [1, 2]
    assert pool.free_block_ids() == [3, 4]
    assert (pool.ref_cnt(1), pool.ref_cnt(2)) == (1, 1)
    assert pool.get_usage() == pytest.approx(0.5)


def test_cached_block_is_observed_by_hash_without_the_group_id() -> None:
    pool = vllm_pool_factory(4)
    [block] = held_request(pool, [b"abc"])
    assert pool.block_hash(block) == b"abc"
    assert pool.get_cached_block(b"abc") == block
    assert pool.get_cached_block(b"other") is None


def test_identical_content_is_not_deduplicated_and_the_first_block_answers() -> None:
    pool = vllm_pool_factory(4)
    first, second = held_request(pool, [b"same", b"same"])
    assert pool.block_hash(second) == b"same"
    assert pool.get_cached_block(b"same") == first


def test_a_hit_on_a_freed_cached_block_revives_it_out_of_the_queue() -> None:
    pool = vllm_pool_factory(4)
    [block] = held_request(pool, [b"prefix"])
    pool.free_blocks([block])
    assert pool.free_block_ids() == [2, 3, 1]  # hashed: appended to the tail
    hit = pool.get_cached_block(b"prefix")
    assert hit == block
    pool.touch([hit])
    assert pool.ref_cnt(block) == 1
    assert pool.free_block_ids() == [2, 3]


def test_eviction_is_lazy_the_hash_goes_only_when_the_block_is_reused() -> None:
    pool = vllm_pool_factory(3)
    [block] = held_request(pool, [b"old"])
    pool.free_blocks([block])
    assert pool.block_hash(block) == b"old"
    assert pool.get_new_blocks(2) == [2, 1]
    assert pool.block_hash(block) is None
    assert pool.get_cached_block(b"old") is None


def test_current_profile_free_order_matches_the_semantics_example() -> None:
    # SEMANTICS 1.1: a 40-token request holds [1, 2, 3]; 1 and 2 are full and hashed.
    pool = vllm_pool_factory(8)
    assert held_request(pool, [b"h1", b"h2", None]) == [1, 2, 3]
    pool.free_blocks([3, 2, 1])
    assert pool.free_block_ids() == [3, 4, 5, 6, 7, 2, 1]


def test_with_caching_off_every_freed_block_goes_to_the_front() -> None:
    pool = vllm_pool_factory(5, enable_caching=False)
    pool.get_new_blocks(2)
    pool.free_blocks([2, 1])
    assert pool.free_block_ids() == [2, 1, 3, 4]


def test_the_null_block_is_skipped_by_touch_and_free() -> None:
    pool = vllm_pool_factory(4)
    pool.touch([0])
    pool.free_blocks([0])
    assert pool.ref_cnt(0) == 0
    assert 0 not in pool.free_block_ids()


def test_reset_prefix_cache_waits_until_no_block_is_held() -> None:
    pool = vllm_pool_factory(4)
    blocks = held_request(pool, [b"a", b"b"])
    assert pool.reset_prefix_cache() is False
    assert pool.block_hash(blocks[0]) == b"a"
    pool.free_blocks(list(reversed(blocks)))
    queue = pool.free_block_ids()
    assert pool.reset_prefix_cache() is True
    assert [pool.block_hash(b) for b in blocks] == [None, None]
    assert pool.free_block_ids() == queue


def test_only_the_current_profile_is_offered() -> None:
    with pytest.raises(ValueError, match="'classic' is vLLM 0.22.x"):
        vllm_pool_factory(4, profile="classic")


def test_fork_block_is_declared_unsupported_and_not_implemented() -> None:
    assert unsupported_operations(vllm_pool_factory) == frozenset({"fork_block"})
    pool = vllm_pool_factory(4)
    pool.get_new_blocks(1)
    with pytest.raises(NotImplementedError, match="fork_block: block 1"):
        pool.fork_block(1)


def test_an_id_outside_the_pool_is_refused_before_upstream_sees_any_id() -> None:
    pool = vllm_pool_factory(4)
    pool.get_new_blocks(1)
    for bad in (4, -1):
        with pytest.raises(BlockIdError, match=f"touch: block {bad} is not in 0..3"):
            pool.touch([1, bad])
        with pytest.raises(BlockIdError, match=f"free_blocks: block {bad}"):
            pool.free_blocks([1, bad])
    assert pool.ref_cnt(1) == 1
    assert pool.free_block_ids() == [2, 3]


# ------------------------------------------------------------------ upstream on bad input


def test_upstream_refuses_over_allocation_with_value_error_and_changes_nothing() -> None:
    pool = vllm_pool_factory(4)
    with pytest.raises(ValueError, match="Cannot get 4 free blocks"):
        pool.get_new_blocks(4)
    assert pool.free_block_ids() == [1, 2, 3]


def test_upstream_accepts_a_negative_count_and_its_free_counter_drifts() -> None:
    pool = vllm_pool_factory(4)
    assert pool.get_new_blocks(-1) == []
    assert pool.free_block_ids() == [1, 2, 3]
    assert pool.get_num_free_blocks() == 4


def test_upstream_accepts_a_double_free_and_the_next_reuse_trips_an_assert() -> None:
    pool = vllm_pool_factory(4)
    pool.get_new_blocks(1)
    pool.free_blocks([1])
    pool.free_blocks([1])
    assert pool.ref_cnt(1) == -1
    assert pool.free_block_ids() == [1, 2, 3]
    with pytest.raises(AssertionError):
        pool.get_new_blocks(1)
    # Block 1 has left the queue but was never handed out: it is lost to the pool.
    assert pool.free_block_ids() == [2, 3]
    assert pool.ref_cnt(1) == -1


def test_upstream_caches_an_unreferenced_block_and_the_null_block_silently() -> None:
    pool = vllm_pool_factory(4)
    pool.cache_block(2, b"x")
    assert pool.block_hash(2) == b"x"
    assert pool.get_cached_block(b"x") == 2
    pool.cache_block(0, b"y")  # skipped: the null block never enters the map
    assert pool.block_hash(0) is None
    assert pool.get_cached_block(b"y") is None


def test_upstream_asserts_when_a_hashed_block_is_cached_again() -> None:
    pool = vllm_pool_factory(4)
    [block] = held_request(pool, [b"x"])
    with pytest.raises(AssertionError):
        pool.cache_block(block, b"y")
    assert pool.block_hash(block) == b"x"
    assert pool.get_cached_block(b"y") is None


def test_upstream_queues_a_block_freed_twice_in_one_call_at_ref_cnt_minus_one() -> None:
    pool = vllm_pool_factory(4)
    [block] = held_request(pool, [b"x"])
    pool.free_blocks([block, block])
    assert pool.ref_cnt(block) == -1
    assert pool.free_block_ids() == [2, 3, block]  # hashed: at the tail


def test_upstream_caches_with_caching_off_and_reuse_keeps_the_stale_hash() -> None:
    pool = vllm_pool_factory(3, enable_caching=False)
    [block] = pool.get_new_blocks(1)
    pool.cache_block(block, b"x")
    assert pool.get_cached_block(b"x") == block
    pool.free_blocks([block])
    assert pool.free_block_ids() == [block, 2]  # caching off: to the front
    assert pool.get_new_blocks(1) == [block]
    assert pool.block_hash(block) == b"x"  # not evicted on reuse
    assert pool.get_cached_block(b"x") == block


# ------------------------------------------------------------------ the upstream benchmark


def test_the_benchmark_replays_one_trace_on_both_pools_and_prints_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvspec.benchmarks import upstream

    assert upstream.main(["--ops", "400", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "trace: 400 pool operations" in out
    assert "vLLM 0.33.0 BlockPool" in out
    assert "ratio impl / upstream:" in out
