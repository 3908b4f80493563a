"""KVCacheManager: prefix hits, allocation order, capacity, reverse free, statistics.

Each test plays the scheduler by hand: look up a request's cached prefix, allocate slots
for the rest, record progress, free it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvspec.impl.block import get_block_hash
from kvspec.impl.errors import KVCacheError
from kvspec.impl.kv_cache_manager import AllocationError, KVCacheManager, PrefixCacheStats
from kvspec.impl.request import Request

PROFILES = ("current", "classic")


def req(m: KVCacheManager, rid: str, tokens, **kw) -> Request:
    return Request(rid, list(tokens), block_hasher=m.block_hasher, **kw)


def admit(m: KVCacheManager, r: Request, num_new_tokens: int | None = None):
    """Look up, then allocate the rest of the prompt (or ``num_new_tokens`` of it)."""
    hits, num_hit_tokens = m.get_computed_blocks(r)
    if num_new_tokens is None:
        num_new_tokens = r.num_tokens - num_hit_tokens
    new = m.allocate_slots(r, num_new_tokens, num_hit_tokens, hits)
    if new is not None:
        r.num_computed_tokens = num_hit_tokens + num_new_tokens
    return hits, num_hit_tokens, new


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


def queue(m: KVCacheManager) -> list[int]:
    return ids(m.block_pool.free_block_queue.get_all_free_blocks())


def snapshot(m: KVCacheManager):
    pool = m.block_pool
    return (
        [(b.ref_cnt, b.block_hash) for b in pool.blocks],
        queue(m),
        {k: ids(v) for k, v in m.req_to_blocks.items()},
        dict(m.num_cached_block),
        len(pool.cached_block_hash_to_block),
        m.get_prefix_cache_stats(),
    )


# -- lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_hits_stop_at_num_tokens_minus_one(profile):
    """A fully cached 48-token prompt at block size 16 hits 2 blocks (32 tokens), not 3:
    the last token must run to produce logits, and hits are whole blocks."""
    m = KVCacheManager(16, 16, profile=profile)
    prompt = list(range(48))
    a = req(m, "a", prompt)
    admit(m, a)
    assert len(a.block_hashes) == 3 and m.num_cached_block["a"] == 3  # all 3 are cached
    a_blocks = m.get_block_ids("a")
    m.free(a)

    b = req(m, "b", prompt)
    hits, num_hit_tokens = m.get_computed_blocks(b)
    assert (ids(hits), num_hit_tokens) == (a_blocks[:2], 32)

    # One more token (49) lifts the cap to 48 // 16 = 3 blocks.
    c = req(m, "c", prompt + [999])
    assert m.get_computed_blocks(c)[1] == 48


@pytest.mark.parametrize("profile", PROFILES)
def test_hits_stop_at_first_miss(profile):
    """Block 2 of b equals a's block 2, but b's block 1 differs: the chain breaks at 1."""
    m = KVCacheManager(16, 4, profile=profile)
    a = req(m, "a", [1] * 4 + [2] * 4 + [3] * 4 + [0])
    admit(m, a)
    b = req(m, "b", [1] * 4 + [9] * 4 + [3] * 4 + [0])
    assert m.get_computed_blocks(b)[1] == 4


@pytest.mark.parametrize("profile", PROFILES)
def test_get_computed_blocks_is_pure(profile):
    m = KVCacheManager(8, 4, profile=profile)
    a = req(m, "a", range(9))
    admit(m, a)
    m.free(a)
    before = snapshot(m)
    hits, _ = m.get_computed_blocks(req(m, "b", range(9)))
    assert [b.ref_cnt for b in hits] == [0, 0]  # still evictable: nothing protects them yet
    assert snapshot(m) == before


def test_caching_off_never_hits_nor_hashes():
    m = KVCacheManager(8, 4, enable_caching=False)
    a = req(m, "a", range(9))
    admit(m, a)
    assert all(b.block_hash is None for b in m.block_pool.blocks)
    m.free(a)
    assert m.get_computed_blocks(req(m, "b", range(9))) == ([], 0)
    assert queue(m)[:3] == [3, 2, 1]  # every freed block is prepended when caching is off


# -- allocate_slots ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_capacity_check_counts_evictable_hits(profile):
    """Touching a zero-ref hit takes it out of the free queue, so it costs a free block."""
    m = KVCacheManager(5, 4, profile=profile)  # 4 usable blocks
    a = req(m, "a", range(12))
    admit(m, a)
    m.free(a)  # 3 cached blocks, all free (ref_cnt 0)
    assert m.block_pool.get_num_free_blocks() == 4

    # 20 tokens: 3 hits + 2 new blocks. The new blocks alone (2) would fit in 4 free
    # blocks, but the 3 evictable hits consume 3 of them: 5 > 4.
    b = req(m, "b", list(range(12)) + [50] * 8)
    hits, n, new = admit(m, b)
    assert (len(hits), n, new) == (3, 12, None)

    # 16 tokens: 3 hits + 1 new block = exactly 4: an exact fit succeeds.
    c = req(m, "c", list(range(12)) + [60] * 4)
    hits, n, new = admit(m, c)
    assert new is not None and len(new) == 1
    assert m.get_block_ids("c") == ids(hits) + ids(new)
    assert m.block_pool.get_num_free_blocks() == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_failed_allocate_slots_changes_nothing(profile):
    m = KVCacheManager(5, 4, profile=profile)
    a = req(m, "a", range(12))
    admit(m, a)
    m.free(a)
    b = req(m, "b", list(range(12)) + [50] * 8)
    hits, n = m.get_computed_blocks(b)
    before = snapshot(m)
    assert m.allocate_slots(b, b.num_tokens - n, n, hits) is None
    assert snapshot(m) == before
    assert "b" not in m.req_to_blocks


@pytest.mark.parametrize("profile", PROFILES)
def test_hits_touched_before_new_blocks_taken(profile):
    """The hits stand at the front of the free queue. Popping the new block first would
    evict hit 2 and hand it out twice; touching first leaves block 4 to pop."""
    m = KVCacheManager(5, 4, profile=profile)
    a = req(m, "a", range(8))      # blocks [1, 2], both cached
    c = req(m, "c", [70] * 4)      # block [3]
    e = req(m, "e", [80] * 4)      # block [4]
    for r in (a, c, e):
        admit(m, r)
    m.free(a)
    m.free(e)
    assert queue(m) == [2, 1, 4]

    b = req(m, "b", list(range(8)) + [90])  # hits [1, 2], needs 1 new block
    hits, n, new = admit(m, b)
    assert ids(hits) == [1, 2] and ids(new) == [4]
    assert m.get_block_ids("b") == [1, 2, 4]
    assert [m.block_pool.blocks[i].ref_cnt for i in (1, 2, 4)] == [1, 1, 1]
    assert m.block_pool.blocks[2].block_hash is not None  # the hit kept its hash


@pytest.mark.parametrize("profile", PROFILES)
def test_shared_hits_count_both_holders(profile):
    m = KVCacheManager(16, 4, profile=profile)
    a = req(m, "a", range(12))
    admit(m, a)
    b = req(m, "b", range(12))
    hits, n, new = admit(m, b)
    assert n == 8 and ids(hits) == m.get_block_ids("a")[:2]
    assert [h.ref_cnt for h in hits] == [2, 2]
    # b recomputed its third block: the same content is cached a second time (no dedup),
    # and lookup keeps returning the first block inserted under the key.
    assert new[0].block_hash == m.block_pool.blocks[m.get_block_ids("a")[2]].block_hash
    c = req(m, "c", list(range(12)) + [0])
    assert ids(m.get_computed_blocks(c)[0]) == m.get_block_ids("a")


@pytest.mark.parametrize("profile", PROFILES)
def test_lookahead_slots_never_cached(profile):
    """Speculative slots are allocated, but their tokens may be rejected: never hashed."""
    m = KVCacheManager(8, 4, profile=profile)
    r = req(m, "r", range(8))
    hits, n = m.get_computed_blocks(r)
    new = m.allocate_slots(r, 8, n, hits, num_lookahead_tokens=4)
    assert len(new) == 3
    assert [b.block_hash is not None for b in new] == [True, True, False]
    assert m.num_cached_block["r"] == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_partial_block_never_cached(profile):
    m = KVCacheManager(8, 4, profile=profile)
    r = req(m, "r", range(10))
    _, _, new = admit(m, r)
    assert [b.block_hash is not None for b in new] == [True, True, False]

    # Decode: the sampled token is appended, then computed in the next step.
    r.append_output_token_ids(10)  # 11 tokens
    assert m.allocate_slots(r, 1) == []
    r.num_computed_tokens += 1
    assert m.get_blocks("r")[2].block_hash is None
    r.append_output_token_ids(11)  # 12 tokens: block 2 is full once this one is computed
    assert m.allocate_slots(r, 1) == []
    assert m.get_blocks("r")[2].block_hash is not None
    assert m.num_cached_block["r"] == 3


@pytest.mark.parametrize("profile", PROFILES)
def test_short_first_chunk_leaves_request_untracked(profile):
    """A request is 'running' only once it adopted hits or cached a block (5.6.4)."""
    m = KVCacheManager(8, 4, profile=profile)
    r = req(m, "r", range(10))
    m.get_computed_blocks(r)
    assert len(m.allocate_slots(r, 3)) == 1
    r.num_computed_tokens = 3
    assert "r" not in m.num_cached_block
    assert len(m.allocate_slots(r, 5)) == 1
    r.num_computed_tokens = 8
    assert m.num_cached_block["r"] == 2


def test_zero_new_tokens_allowed_only_when_adopting_hits_current():
    m = KVCacheManager(8, 4, profile="current")
    admit(m, req(m, "a", range(9)))
    b = req(m, "b", range(9))
    hits, n = m.get_computed_blocks(b)
    assert m.allocate_slots(b, 0, n, hits) == []
    assert m.get_block_ids("b") == ids(hits) and m.num_cached_block["b"] == 2
    with pytest.raises(ValueError, match="nothing to allocate"):
        m.allocate_slots(req(m, "c", range(3)), 0)


def test_zero_new_tokens_refused_classic():
    m = KVCacheManager(8, 4, profile="classic")
    admit(m, req(m, "a", range(9)))
    b = req(m, "b", range(9))
    hits, n = m.get_computed_blocks(b)
    before = snapshot(m)
    with pytest.raises(ValueError, match="nothing to allocate"):
        m.allocate_slots(b, 0, n, hits)
    assert snapshot(m) == before


@pytest.mark.parametrize("profile", PROFILES)
def test_hits_adopted_only_at_admission(profile):
    m = KVCacheManager(8, 4, profile=profile)
    admit(m, req(m, "a", range(9)))
    b = req(m, "b", range(9))
    admit(m, b, num_new_tokens=1)  # b now holds its hits and one block
    hits, n = m.get_computed_blocks(b)
    before = snapshot(m)
    with pytest.raises(AllocationError, match="already holds"):
        m.allocate_slots(b, 1, n, hits)
    assert snapshot(m) == before


def test_hit_count_must_match_hit_tokens():
    m = KVCacheManager(8, 4)
    admit(m, req(m, "a", range(9)))
    b = req(m, "b", range(9))
    hits, _ = m.get_computed_blocks(b)
    with pytest.raises(AllocationError, match="num_new_computed_tokens=4"):
        m.allocate_slots(b, 5, 4, hits)


def test_request_without_manager_hasher_is_refused_before_allocation():
    m = KVCacheManager(8, 4)
    r = Request("r", range(9))  # no block_hasher
    before = snapshot(m)
    with pytest.raises(AllocationError, match="block_hasher=manager.block_hasher"):
        m.allocate_slots(r, 9)
    assert snapshot(m) == before


def test_errors_share_one_base_class():
    m = KVCacheManager(8, 4)
    with pytest.raises(KVCacheError):
        m.allocate_slots(req(m, "r", range(4)), -1)


def test_max_model_len_caps_slots():
    m = KVCacheManager(8, 4, max_model_len=10)
    r = req(m, "r", range(10))
    hits, n = m.get_computed_blocks(r)
    assert len(m.allocate_slots(r, 10, n, hits, num_lookahead_tokens=4)) == 3


# -- free ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_free_request_reverse_order(profile):
    """A holds [a1, a2, a3], B holds [a1, a2, b3]; free A then B. The shared prefix ends at
    the back of the queue, behind both children, so it is evicted last."""
    m = KVCacheManager(10, 4, profile=profile)
    a = req(m, "a", range(12))
    admit(m, a)
    b = req(m, "b", list(range(8)) + [40, 41, 42, 43])
    admit(m, b)
    a1, a2, a3 = m.get_block_ids("a")
    _, _, b3 = m.get_block_ids("b")
    assert m.get_block_ids("b")[:2] == [a1, a2]

    m.free(a)
    assert queue(m)[-1] == a3  # only a3 reached 0
    m.free(b)
    assert queue(m)[-4:] == [a3, b3, a2, a1]
    assert m.get_block_ids("a") == [] and "a" not in m.num_cached_block


@pytest.mark.parametrize(("profile", "expected"), [
    ("classic", [4, 5, 6, 7, 3, 2, 1]),
    ("current", [3, 4, 5, 6, 7, 2, 1]),
])
def test_free_places_unhashed_tail_by_profile(profile, expected):
    """SEMANTICS 1.1's example: a 40-token request at block size 16 holds [1, 2, 3]."""
    m = KVCacheManager(8, 16, profile=profile)
    r = req(m, "r", range(40))
    admit(m, r)
    assert m.get_block_ids("r") == [1, 2, 3]
    m.free(r)
    assert queue(m) == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_free_unknown_or_freed_request_is_noop(profile):
    m = KVCacheManager(8, 4, profile=profile)
    r = req(m, "r", range(5))
    m.free(r)
    admit(m, r)
    m.free(r)
    before = snapshot(m)
    m.free(r)
    assert snapshot(m) == before


# -- reset, usage, statistics --------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_reset_prefix_cache_only_when_nothing_held(profile):
    m = KVCacheManager(8, 4, profile=profile)
    a = req(m, "a", range(9))
    admit(m, a)
    assert m.reset_prefix_cache() is False
    m.free(a)
    assert m.reset_prefix_cache() is True
    assert m.get_computed_blocks(req(m, "b", range(9))) == ([], 0)
    assert m.get_prefix_cache_stats().reset is True


def test_usage_counts_held_blocks_only():
    m = KVCacheManager(5, 4)
    assert m.usage == 0.0
    a = req(m, "a", range(8))
    admit(m, a)
    assert m.usage == 0.5
    m.free(a)
    assert m.usage == 0.0  # cached but evictable blocks are free


@pytest.mark.parametrize("profile", PROFILES)
def test_stats_counted_once_per_admitted_request(profile):
    m = KVCacheManager(5, 4, profile=profile)
    a = req(m, "a", range(12))
    admit(m, a)
    m.free(a)
    assert m.get_prefix_cache_stats() == PrefixCacheStats(requests=1, queries=12, hits=0)

    b = req(m, "b", list(range(12)) + [50] * 8)
    assert admit(m, b)[2] is None  # looked up, could not be scheduled: not counted
    assert m.get_prefix_cache_stats().requests == 1
    c = req(m, "c", list(range(12)) + [60] * 4)
    admit(m, c, num_new_tokens=2)  # admitted with a first chunk
    r = m.get_prefix_cache_stats()
    assert (r.requests, r.queries, r.hits) == (2, 28, 12)
    c.num_computed_tokens = 14
    m.allocate_slots(c, 2)  # later chunks are not new admissions
    assert m.get_prefix_cache_stats() == r
    assert r.hit_rate == 12 / 28


def test_stats_keep_readmissions_after_preemption_apart():
    m = KVCacheManager(8, 4)
    r = req(m, "r", range(9))
    admit(m, r)
    m.free(r)  # preempted: the scheduler frees it and will run it again from scratch
    r.num_computed_tokens = 0
    r.num_preemptions += 1
    admit(m, r)  # its own blocks come back as hits
    s = m.get_prefix_cache_stats()
    assert (s.requests, s.queries, s.hits) == (1, 9, 0)
    assert (s.preempted_requests, s.preempted_queries, s.preempted_hits) == (1, 9, 8)


def test_stats_off():
    m = KVCacheManager(5, 4, log_stats=False)
    admit(m, req(m, "a", range(4)))
    assert m.get_prefix_cache_stats() is None



# -- a random scheduler keeps the request-level invariants ---------------------------------


def check_invariants(m: KVCacheManager, requests: dict[str, Request]) -> None:
    pool = m.block_pool
    held: dict[int, int] = {}
    for rid, table in m.req_to_blocks.items():
        r = requests[rid]
        for i, b in enumerate(table):
            held[b.block_id] = held.get(b.block_id, 0) + 1
            if b.block_hash is not None:  # a hashed block holds this request's prefix
                assert get_block_hash(b.block_hash) == r.block_hashes[i]
        assert len(table) * m.block_size >= r.num_computed_tokens
        n = m.num_cached_block.get(rid, 0)
        assert n <= len(table) and all(b.block_hash is not None for b in table[:n])
    free = set(queue(m))
    for b in pool.blocks[1:]:
        assert b.ref_cnt == held.get(b.block_id, 0)  # every reference is a table slot
        assert (b.block_id in free) == (b.ref_cnt == 0)
    assert pool.get_num_free_blocks() + len(held) + 1 == pool.num_gpu_blocks


@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_scheduling_keeps_invariants(profile, data):
    """Shared prefixes, chunked prefill, decode with lookahead, preemption, reset."""
    m = KVCacheManager(data.draw(st.integers(3, 12)), 4, profile=profile)
    prefixes = [[p] * 8 + [p + 1] * 4 for p in (10, 20)]
    requests: dict[str, Request] = {}
    waiting: list[Request] = []
    running: list[Request] = []
    first = [0, 0, 0]  # requests, queries, hits of first admissions
    again = [0, 0, 0]  # ... of readmissions after preemption
    for step in range(data.draw(st.integers(1, 25))):
        op = data.draw(st.sampled_from(["new", "schedule", "step", "finish", "preempt",
                                        "reset"]))
        if op == "new":
            prefix = data.draw(st.sampled_from(prefixes))
            tail = data.draw(st.lists(st.integers(0, 3), max_size=6))
            r = req(m, f"r{step}", prefix[:data.draw(st.integers(1, 12))] + tail)
            requests[r.request_id] = r
            waiting.append(r)
        elif op == "schedule" and waiting:
            r = waiting[0]
            hits, n = m.get_computed_blocks(r)
            assert n % 4 == 0 and n <= r.num_tokens - 1
            assert [get_block_hash(b.block_hash) for b in hits] == r.block_hashes[:len(hits)]
            chunk = data.draw(st.integers(1, r.num_tokens - n))
            if m.allocate_slots(r, chunk, n, hits) is not None:
                r.num_computed_tokens = n + chunk
                running.append(waiting.pop(0))
                bucket = again if r.num_preemptions else first
                bucket[:] = [bucket[0] + 1, bucket[1] + r.num_tokens, bucket[2] + n]
        elif op == "step" and running:
            r = data.draw(st.sampled_from(running))
            if r.num_computed_tokens == r.num_tokens:
                r.append_output_token_ids(data.draw(st.integers(0, 3)))
            chunk = r.num_tokens - r.num_computed_tokens
            lookahead = data.draw(st.integers(0, 2))
            if m.allocate_slots(r, chunk, num_lookahead_tokens=lookahead) is not None:
                r.num_computed_tokens += chunk
        elif op in ("finish", "preempt") and running:
            r = running.pop(data.draw(st.integers(0, len(running) - 1)))
            m.free(r)
            if op == "preempt":
                r.num_computed_tokens = 0
                r.num_preemptions += 1
                waiting.insert(0, r)
        elif op == "reset":
            assert m.reset_prefix_cache() == (not running)
        check_invariants(m, requests)
    stats = m.get_prefix_cache_stats()
    assert [stats.requests, stats.queries, stats.hits] == first
    assert [stats.preempted_requests, stats.preempted_queries, stats.preempted_hits] == again
