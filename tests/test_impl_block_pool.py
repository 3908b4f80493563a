"""BlockPool behaviour, including every study-sheet exercise that has an answer in code."""

from __future__ import annotations

import pytest
from kvspec.impl.block import KVCacheBlock, get_block_hash, make_block_hash_with_group_id
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import InvalidArgumentError
from kvspec.impl.free_queue import FreeKVCacheBlockQueue

BOTH = pytest.mark.parametrize("profile", ["current", "classic"])


def queue_ids(pool: BlockPool) -> list[int]:
    return [b.block_id for b in pool.free_block_queue.get_all_free_blocks()]


def cached_id(pool: BlockPool, block_hash: bytes) -> int | None:
    hit = pool.get_cached_block(block_hash)
    return None if hit is None else hit[0].block_id


# --------------------------------------------------------------------------- construction


def test_null_block_is_block_zero_and_never_queued() -> None:
    pool = BlockPool(5)
    assert pool.null_block is pool.blocks[0]
    assert pool.null_block.is_null
    assert queue_ids(pool) == [1, 2, 3, 4]
    assert pool.get_num_free_blocks() == 4


def test_unknown_profile_is_a_value_error_listing_valid_names() -> None:
    with pytest.raises(ValueError, match="'current', 'classic'"):
        BlockPool(4, profile="newest")
    with pytest.raises(InvalidArgumentError):
        BlockPool(4, profile="newest")


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_pool_size_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="num_gpu_blocks"):
        BlockPool(bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- allocation


def test_get_new_blocks_pops_front_in_queue_order_with_ref_cnt_one() -> None:
    pool = BlockPool(6)
    got = pool.get_new_blocks(3)
    assert [b.block_id for b in got] == [1, 2, 3]
    assert all(b.ref_cnt == 1 and b.block_hash is None for b in got)
    assert queue_ids(pool) == [4, 5]
    assert pool.get_new_blocks(0) == []


def test_get_new_blocks_evicts_cached_block_hash_before_ref_cnt_set() -> None:
    """Study sheet: which method clears the hash, and why before ``ref_cnt`` is set."""

    class RecordingPool(BlockPool):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.seen: list[tuple[int, int, bool, bool]] = []

        def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
            had_hash = block.block_hash is not None
            evicted = super()._maybe_evict_cached_block(block)
            # Right after eviction: the block is still unowned and no lookup returns it.
            found = cached_id(self, b"h") == block.block_id
            self.seen.append((block.block_id, block.ref_cnt, had_hash, found))
            return evicted

    pool = RecordingPool(4)
    b1, b2, b3 = pool.get_new_blocks(3)
    pool.cache_block(b2, b"h")
    pool.free_blocks([b3, b2])  # current: unhashed b3 prepended, hashed b2 appended
    assert queue_ids(pool) == [3, 2]
    pool.seen.clear()

    got = pool.get_new_blocks(2)

    assert [b.block_id for b in got] == [3, 2]
    # _maybe_evict_cached_block ran for the popped cached block (the eviction victim) while
    # its ref_cnt was still 0, and its key was already gone from the index at that point.
    assert pool.seen == [(2, 0, True, False)]
    assert b2.ref_cnt == 1 and b2.block_hash is None
    assert pool.get_cached_block(b"h") is None


def test_get_new_blocks_with_caching_disabled_never_looks_at_the_index() -> None:
    pool = BlockPool(4, enable_caching=False)
    blocks = pool.get_new_blocks(3)
    pool.free_blocks(blocks)
    assert [b.block_id for b in pool.get_new_blocks(3)] == [1, 2, 3]
    assert pool.get_cached_block(b"anything") is None


# -------------------------------------------------------------------------------- touch


def test_touch_cached_block_with_ref_cnt_zero_removes_it_from_free_queue() -> None:
    """Study sheet: the list operation is ``remove`` (O(1)); the event is a prefix-cache hit."""

    class RecordingQueue(FreeKVCacheBlockQueue):
        __slots__ = ()
        calls: list[tuple[str, int]] = []

        def remove(self, block: KVCacheBlock) -> None:
            RecordingQueue.calls.append(("remove", block.block_id))
            super().remove(block)

        def popleft(self) -> KVCacheBlock:
            RecordingQueue.calls.append(("popleft", -1))
            return super().popleft()

        def popleft_n(self, n: int) -> list[KVCacheBlock]:
            RecordingQueue.calls.append(("popleft_n", n))
            return super().popleft_n(n)

    pool = BlockPool(6)
    b1, b2, b3 = pool.get_new_blocks(3)
    pool.cache_block(b2, b"prefix")
    pool.free_blocks([b3, b2, b1])
    assert queue_ids(pool) == [3, 1, 4, 5, 2]  # b2, cached, waits at the tail
    pool.free_block_queue.__class__ = RecordingQueue
    RecordingQueue.calls = []

    hit = pool.get_cached_block(b"prefix")
    assert hit == [b2]
    pool.touch(hit)

    assert RecordingQueue.calls == [("remove", 2)]
    assert b2.ref_cnt == 1
    assert b2.block_hash is not None  # still cached: touch revives, it does not evict
    assert queue_ids(pool) == [3, 1, 4, 5]
    assert pool.blocks[5].next_free_block is pool.free_block_queue.fake_free_list_tail


def test_touch_of_referenced_block_only_increments() -> None:
    pool = BlockPool(4)
    (b1,) = pool.get_new_blocks(1)
    pool.touch([b1, b1])
    assert b1.ref_cnt == 3
    assert queue_ids(pool) == [2, 3]


def test_touch_null_block_current_skips_it_classic_counts_it() -> None:
    current, classic = BlockPool(3), BlockPool(3, profile="classic")
    current.touch([current.null_block])
    classic.touch([classic.null_block, classic.null_block])
    assert current.null_block.ref_cnt == 0
    assert classic.null_block.ref_cnt == 2
    assert queue_ids(current) == queue_ids(classic) == [1, 2]


# --------------------------------------------------------------------------- free_blocks


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("classic", [4, 5, 6, 7, 3, 2, 1]), ("current", [3, 4, 5, 6, 7, 2, 1])],
)
def test_free_placement_of_a_40_token_request_per_profile(
    profile: str, expected: list[int]
) -> None:
    """SEMANTICS 1.1: 8 blocks, block size 16; blocks 1 and 2 full and hashed, 3 partial."""
    pool = BlockPool(8, profile=profile)
    blocks = pool.get_new_blocks(3)
    pool.cache_full_blocks([b"h1", b"h2"], blocks, num_cached_blocks=0, num_full_blocks=2)
    pool.free_blocks(list(reversed(blocks)))
    assert queue_ids(pool) == expected


@BOTH
def test_free_tail_first_puts_head_block_behind_tail_block(profile: str) -> None:
    """Study sheet: freeing a request tail-first leaves its head (prefix) evicted last."""
    for cached in (False, True):
        pool = BlockPool(8, profile=profile)
        table = pool.get_new_blocks(3)
        if cached:
            pool.cache_full_blocks([b"p0", b"p1", b"p2"], table, 0, 3)
        head, tail = table[0].block_id, table[-1].block_id
        pool.free_blocks(reversed(table))
        order = queue_ids(pool)
        assert order.index(tail) < order.index(head), (profile, cached, order)


def test_current_prepends_unhashed_and_appends_hashed_each_in_given_order() -> None:
    pool = BlockPool(8)
    blocks = pool.get_new_blocks(4)
    pool.cache_block(blocks[1], b"x")
    pool.cache_block(blocks[3], b"y")
    pool.free_blocks([blocks[3], blocks[2], blocks[1], blocks[0]])
    assert queue_ids(pool) == [3, 1, 5, 6, 7, 4, 2]


@pytest.mark.parametrize(
    ("profile", "expected"), [("current", [3, 1, 2, 4]), ("classic", [4, 3, 1, 2])]
)
def test_caching_disabled_current_prepends_every_freed_block(
    profile: str, expected: list[int]
) -> None:
    pool = BlockPool(5, enable_caching=False, profile=profile)
    b1, b2, b3 = pool.get_new_blocks(3)
    pool.free_blocks([b3, b1, b2])
    assert queue_ids(pool) == expected


def test_free_of_shared_block_only_decrements() -> None:
    pool = BlockPool(4)
    (b1,) = pool.get_new_blocks(1)
    pool.touch([b1])
    pool.free_blocks([b1])
    assert b1.ref_cnt == 1
    assert 1 not in queue_ids(pool)


def test_free_same_block_twice_in_one_call_when_it_holds_two_references() -> None:
    pool = BlockPool(4)
    (b1,) = pool.get_new_blocks(1)
    pool.touch([b1])
    pool.free_blocks([b1, b1])
    assert b1.ref_cnt == 0
    assert queue_ids(pool) == [1, 2, 3]  # queued once, at the front (unhashed, current)


def test_free_null_block_classic_drifts_negative_current_skips() -> None:
    current, classic = BlockPool(3), BlockPool(3, profile="classic")
    current.free_blocks([current.null_block])
    classic.free_blocks([classic.null_block, classic.null_block])
    assert current.null_block.ref_cnt == 0
    assert classic.null_block.ref_cnt == -2
    assert queue_ids(current) == queue_ids(classic) == [1, 2]


@BOTH
def test_reverse_order_free_keeps_shared_prefix_behind_tails(profile: str) -> None:
    """SEMANTICS 8: A holds [a1, a2, a3], B holds [a1, a2, b3]; free A, then B."""

    def run(reverse: bool) -> BlockPool:
        pool = BlockPool(8, profile=profile)
        table_a = pool.get_new_blocks(3)
        pool.cache_full_blocks([b"h1", b"h2", b"h3"], table_a, 0, 3)
        hits = [pool.get_cached_block(h)[0] for h in (b"h1", b"h2")]  # type: ignore[index]
        pool.touch(hits)
        table_b = hits + pool.get_new_blocks(1)
        pool.cache_full_blocks([b"h1", b"h2", b"hb3"], table_b, 2, 3)
        for table in (table_a, table_b):
            pool.free_blocks(reversed(table) if reverse else table)
        return pool

    a1, a2, a3, b3 = 1, 2, 3, 4
    reverse, forward = run(reverse=True), run(reverse=False)
    assert queue_ids(reverse)[-4:] == [a3, b3, a2, a1]
    assert queue_ids(forward)[-4:] == [a3, a1, a2, b3]

    # Reuse five blocks (the three never-used ones and two cached ones).
    for pool in (reverse, forward):
        pool.get_new_blocks(5)
    # Reverse: the tails went first; the shared prefix is still a hit.
    assert cached_id(reverse, b"h1") == a1 and cached_id(reverse, b"h2") == a2
    # Forward: a1 went first; a2 and b3 keep their hashes but can never hit again
    # (lookup starts at block 0 and stops at h1's miss): orphans.
    assert cached_id(forward, b"h1") is None
    assert forward.blocks[a2].block_hash is not None
    assert forward.blocks[b3].block_hash is not None


# ---------------------------------------------------------------------------- caching


def test_cache_block_indexes_under_group_zero_key() -> None:
    pool = BlockPool(4)
    (b1,) = pool.get_new_blocks(1)
    pool.cache_block(b1, b"abc")
    assert b1.block_hash == make_block_hash_with_group_id(b"abc", 0)
    assert get_block_hash(b1.block_hash) == b"abc"
    assert pool.get_cached_block(b"abc") == [b1]
    assert pool.get_cached_block(b"abc", kv_cache_group_ids=(1,)) is None


def test_duplicates_under_one_hash_first_inserted_wins_and_popping_one_keeps_other() -> None:
    pool = BlockPool(4)
    b1, b2 = pool.get_new_blocks(2)
    pool.cache_block(b1, b"same")
    pool.cache_block(b2, b"same")  # no dedup: both hold the key
    assert len(pool.cached_block_hash_to_block) == 1
    assert pool.get_cached_block(b"same") == [b1]
    pool.free_blocks([b1, b2])
    assert queue_ids(pool) == [3, 1, 2]
    pool.get_new_blocks(2)  # reuses block 3 and b1: b1's key entry goes
    assert b1.block_hash is None
    assert pool.get_cached_block(b"same") == [b2]


def test_get_cached_block_is_all_or_nothing_across_groups() -> None:
    pool = BlockPool(5)
    b1, b2 = pool.get_new_blocks(2)
    pool.cache_block(b1, b"h", group_id=0)
    assert pool.get_cached_block(b"h", kv_cache_group_ids=(0, 1)) is None
    pool.cache_block(b2, b"h", group_id=1)
    assert pool.get_cached_block(b"h", kv_cache_group_ids=(0, 1)) == [b1, b2]
    assert pool.get_cached_block(b"h", kv_cache_group_ids=(1,)) == [b2]


def test_get_cached_block_is_pure() -> None:
    pool = BlockPool(4)
    (b1,) = pool.get_new_blocks(1)
    pool.cache_block(b1, b"h")
    pool.free_blocks([b1])
    before = queue_ids(pool)
    assert pool.get_cached_block(b"h") == [b1]
    assert b1.ref_cnt == 0 and queue_ids(pool) == before


def test_get_cached_prefix_is_the_per_block_lookups_up_to_the_first_miss() -> None:
    pool = BlockPool(8)
    b1, b2, b3, b4, b5 = pool.get_new_blocks(5)
    pool.cache_full_blocks([b"a", b"b", b"c"], [b1, b2, b3], 0, 3)
    pool.cache_block(b4, b"b")  # a duplicate: lookups keep returning the first holder
    pool.cache_block(b5, b"z", group_id=1)
    chain = [b"a", b"b", b"x", b"c"]  # "c" is cached but follows a miss
    per_block = []
    for block_hash in chain:
        hit = pool.get_cached_block(block_hash, [0])
        if hit is None:
            break
        per_block.append(hit[0])
    assert pool.get_cached_prefix(chain) == per_block == [b1, b2]
    assert pool.get_cached_prefix((b"a", b"b", b"c")) == [b1, b2, b3]
    assert pool.get_cached_prefix([b"z"], 1) == [b5] and pool.get_cached_prefix([b"z"]) == []
    assert BlockPool(4, enable_caching=False).get_cached_prefix([b"a"]) == []


def test_get_cached_prefix_checks_every_hash_and_changes_nothing() -> None:
    pool = BlockPool(4)
    (b1,) = pool.get_new_blocks(1)
    pool.cache_block(b1, b"a")
    pool.free_blocks([b1])
    before = (queue_ids(pool), b1.ref_cnt, b1.block_hash)
    with pytest.raises(InvalidArgumentError, match="get_cached_prefix: a block hash=None"):
        pool.get_cached_prefix([b"a", b"miss", None])  # after the miss, still checked
    with pytest.raises(InvalidArgumentError, match="group id -1"):
        pool.get_cached_prefix([b"a"], -1)
    with pytest.raises(InvalidArgumentError, match="block_hashes=b'a'"):
        pool.get_cached_prefix(b"a")
    assert pool.get_cached_prefix(iter([b"a"])) == [b1]
    assert (queue_ids(pool), b1.ref_cnt, b1.block_hash) == before


def test_cache_full_blocks_hashes_new_full_blocks_and_skips_null() -> None:
    pool = BlockPool(8)
    table = [pool.null_block, *pool.get_new_blocks(3)]
    hashes = [b"h0", b"h1", b"h2", b"h3"]
    pool.cache_full_blocks(
        hashes, table, num_cached_blocks=0, num_full_blocks=2, kv_cache_group_id=3
    )
    assert pool.null_block.block_hash is None
    assert table[1].block_hash == make_block_hash_with_group_id(b"h1", 3)
    assert table[2].block_hash is None
    pool.cache_full_blocks(
        hashes, table, num_cached_blocks=2, num_full_blocks=4, kv_cache_group_id=3
    )
    assert [get_block_hash(b.block_hash) for b in table[1:]] == [b"h1", b"h2", b"h3"]
    pool.cache_full_blocks(hashes, table, num_cached_blocks=4, num_full_blocks=4)  # no-op


def test_evict_blocks_drops_hashes_only() -> None:
    pool = BlockPool(5)
    b1, b2 = pool.get_new_blocks(2)
    pool.cache_block(b1, b"h1")
    pool.cache_block(b2, b"h2")
    pool.free_blocks([b2])
    pool.evict_blocks({1, 2, 3})
    assert b1.block_hash is None and b2.block_hash is None
    assert b1.ref_cnt == 1 and b2.ref_cnt == 0
    assert queue_ids(pool) == [3, 4, 2]
    assert len(pool.cached_block_hash_to_block) == 0


@BOTH
def test_reset_prefix_cache_needs_an_idle_pool_and_keeps_queue_order(profile: str) -> None:
    pool = BlockPool(5, profile=profile)
    b1, b2 = pool.get_new_blocks(2)
    pool.cache_block(b1, b"h1")
    pool.free_blocks([b1])
    assert pool.reset_prefix_cache() is False
    assert b1.block_hash is not None
    pool.free_blocks([b2])
    order = queue_ids(pool)
    assert pool.reset_prefix_cache() is True
    assert all(b.block_hash is None for b in pool.blocks)
    assert len(pool.cached_block_hash_to_block) == 0
    assert queue_ids(pool) == order


# ------------------------------------------------------------------------- fork_block


@BOTH
def test_fork_block_two_holders_one_forks_other_view_unchanged(profile: str) -> None:
    """Study sheet: copy-on-write. Two requests share a block; one forks."""
    pool = BlockPool(5, profile=profile)
    table_a = pool.get_new_blocks(1)
    pool.cache_block(table_a[0], b"shared")
    table_b = list(pool.get_cached_block(b"shared"))  # type: ignore[arg-type]
    pool.touch(table_b)
    shared = table_a[0]
    assert shared.ref_cnt == 2

    copy = pool.fork_block(table_b[0])
    table_b[0] = copy

    assert copy is not shared
    assert copy.ref_cnt == 1 and copy.block_hash is None
    # A's view: same block, same hash, still the hit for that content.
    assert table_a == [shared]
    assert shared.ref_cnt == 1
    assert get_block_hash(shared.block_hash) == b"shared"
    assert pool.get_cached_block(b"shared") == [shared]
    assert shared.block_id not in queue_ids(pool)
    # A now owns its block outright: forking returns it unchanged.
    assert pool.fork_block(shared) is shared
    assert shared.ref_cnt == 1


def test_fork_block_takes_the_copy_like_get_new_blocks_evicting_a_cached_front_block() -> None:
    pool = BlockPool(3)
    b1, b2 = pool.get_new_blocks(2)
    pool.cache_block(b2, b"old")
    pool.free_blocks([b2])
    pool.touch([b1])
    copy = pool.fork_block(b1)
    assert copy is b2
    assert pool.get_cached_block(b"old") is None
    assert b1.ref_cnt == 1 and b2.ref_cnt == 1


# ------------------------------------------------------------------------------- usage


def test_get_usage_zero_with_only_null_block_and_approaches_one() -> None:
    """Study sheet: subtracting 1 for the null block makes an idle pool read exactly 0."""
    pool = BlockPool(9)
    assert pool.get_num_free_blocks() == 8
    assert pool.get_usage() == 0.0  # without the -1 it would read 1/9
    usages = []
    for _ in range(8):
        pool.get_new_blocks(1)
        usages.append(pool.get_usage())
    assert usages == sorted(usages) and len(set(usages)) == 8
    assert usages[0] == pytest.approx(1 / 8)
    assert usages[-1] == 1.0


def test_get_usage_counts_evictable_cached_blocks_as_free() -> None:
    pool = BlockPool(5)
    (b1,) = pool.get_new_blocks(1)
    pool.cache_block(b1, b"h")
    assert pool.get_usage() == pytest.approx(0.25)
    pool.free_blocks([b1])
    assert pool.get_usage() == 0.0


def test_pool_of_only_the_null_block_reports_zero_usage() -> None:
    pool = BlockPool(1)
    assert pool.get_num_free_blocks() == 0
    assert pool.get_usage() == 0.0
