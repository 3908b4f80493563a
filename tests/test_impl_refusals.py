"""Every caller mistake is refused with a kvspec exception before anything changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import (
    CacheStateError,
    InvalidArgumentError,
    InvalidBlockError,
    KVCacheError,
    NoFreeBlocksError,
    RefCountError,
)


def snapshot(pool: BlockPool) -> dict[str, Any]:
    """Every observation of the pool: per-block state, queue links and order, the index."""

    def link(block: KVCacheBlock | None) -> int | None:
        return None if block is None else block.block_id

    index = {
        key: (value.block_id,) if isinstance(value, KVCacheBlock) else tuple(value)
        for key, value in pool.cached_block_hash_to_block._cache.items()
    }
    return {
        "blocks": [
            (b.block_id, b.ref_cnt, b.block_hash, link(b.prev_free_block), link(b.next_free_block))
            for b in pool.blocks
        ],
        "queue": [b.block_id for b in pool.free_block_queue.get_all_free_blocks()],
        "num_free": pool.get_num_free_blocks(),
        "usage": pool.get_usage(),
        "index": index,
    }


def busy_pool(profile: str) -> BlockPool:
    """Block 1: ref 2, cached 'h1'. Block 2: ref 1, cached 'h2'. Block 3: ref 1, uncached.
    Block 4: free and cached 'h4'. Block 5: free. Queue [5, 4]."""
    pool = BlockPool(6, profile=profile)
    b1, b2, b3, b4 = pool.get_new_blocks(4)
    pool.cache_block(b1, b"h1")
    pool.cache_block(b2, b"h2")
    pool.cache_block(b4, b"h4")
    pool.touch([b1])
    pool.free_blocks([b4])
    assert [b.block_id for b in pool.free_block_queue.get_all_free_blocks()] == [5, 4]
    return pool


Op = Callable[[BlockPool], object]
FOREIGN_IN_RANGE = KVCacheBlock(3)  # a valid id, but not this pool's object
FOREIGN_OUT_OF_RANGE = KVCacheBlock(99)

CASES: list[tuple[str, Op, type[KVCacheError], str]] = [
    ("negative count", lambda p: p.get_new_blocks(-1), InvalidArgumentError, "num_blocks=-1"),
    ("more than free", lambda p: p.get_new_blocks(3), NoFreeBlocksError, "cannot get 3"),
    (
        "touch out of range after a valid block",
        lambda p: p.touch([p.blocks[4], FOREIGN_OUT_OF_RANGE]),
        InvalidBlockError,
        "touch: block 99",
    ),
    (
        "touch foreign block with a valid id",
        lambda p: p.touch([FOREIGN_IN_RANGE]),
        InvalidBlockError,
        "touch: block 3",
    ),
    (
        "free out of range after a block that reaches 0",
        lambda p: p.free_blocks([p.blocks[3], FOREIGN_OUT_OF_RANGE]),
        InvalidBlockError,
        "free_blocks: block 99",
    ),
    (
        "free of a free block",
        lambda p: p.free_blocks([p.blocks[4]]),
        RefCountError,
        "free_blocks: block 4",
    ),
    (
        "free a ref-1 block twice in one call",
        lambda p: p.free_blocks([p.blocks[3], p.blocks[3]]),
        RefCountError,
        "free_blocks: block 3",
    ),
    (
        "free whose last block is free, after others reach 0",
        lambda p: p.free_blocks(iter([p.blocks[2], p.blocks[3], p.blocks[1], p.blocks[5]])),
        RefCountError,
        "free_blocks: block 5",
    ),
    (
        "free null then a free block",
        lambda p: p.free_blocks([p.null_block, p.blocks[4]]),
        RefCountError,
        "block 4",
    ),
    (
        "cache the null block",
        lambda p: p.cache_block(p.null_block, b"x"),
        CacheStateError,
        "cache_block: block 0 is the null block",
    ),
    (
        "cache an unreferenced block",
        lambda p: p.cache_block(p.blocks[5], b"x"),
        CacheStateError,
        "cache_block: block 5 has ref_cnt 0",
    ),
    (
        "cache an already hashed block",
        lambda p: p.cache_block(p.blocks[2], b"x"),
        CacheStateError,
        "cache_block: block 2 is already cached",
    ),
    (
        "cache a foreign block",
        lambda p: p.cache_block(FOREIGN_IN_RANGE, b"x"),
        InvalidBlockError,
        "cache_block: block 3",
    ),
    (
        "cache_full_blocks with a hashed block after an uncached one",
        lambda p: p.cache_full_blocks([b"a", b"b"], [p.blocks[3], p.blocks[1]], 0, 2),
        CacheStateError,
        "block 1 is already cached",
    ),
    (
        "cache_full_blocks with the same block twice",
        lambda p: p.cache_full_blocks([b"a", b"b"], [p.blocks[3], p.blocks[3]], 0, 2),
        CacheStateError,
        "block 3 appears twice",
    ),
    (
        "cache_full_blocks with too few hashes",
        lambda p: p.cache_full_blocks([b"a"], [p.blocks[3], p.blocks[1]], 0, 2),
        InvalidArgumentError,
        "1 block hashes given",
    ),
    (
        "fork the null block",
        lambda p: p.fork_block(p.null_block),
        InvalidBlockError,
        "fork_block: block 0 is the null block",
    ),
    (
        "fork a free block",
        lambda p: p.fork_block(p.blocks[4]),
        RefCountError,
        "fork_block: block 4 has ref_cnt 0",
    ),
    (
        "fork a foreign block",
        lambda p: p.fork_block(FOREIGN_OUT_OF_RANGE),
        InvalidBlockError,
        "fork_block: block 99",
    ),
    (
        "a float count",
        lambda p: p.get_new_blocks(1.5),
        InvalidArgumentError,
        "get_new_blocks: num_blocks=1.5; expected a non-negative int",
    ),
    ("a NaN count", lambda p: p.get_new_blocks(float("nan")), InvalidArgumentError, "nan"),
    ("a bool count", lambda p: p.get_new_blocks(True), InvalidArgumentError, "True"),
    ("a str count", lambda p: p.get_new_blocks("2"), InvalidArgumentError, "'2'"),
    ("a None count", lambda p: p.get_new_blocks(None), InvalidArgumentError, "None"),
    (
        "free an id after a block that reaches 0",
        lambda p: p.free_blocks([p.blocks[3], 2]),
        InvalidBlockError,
        "free_blocks: got 2; expected a KVCacheBlock of this pool",
    ),
    ("free a non-iterable", lambda p: p.free_blocks(3), InvalidArgumentError, "iterable"),
    ("touch an id", lambda p: p.touch([2]), InvalidBlockError, "touch: got 2"),
    ("touch None", lambda p: p.touch(None), InvalidArgumentError, "touch: blocks=None"),
    (
        "cache under a None hash",
        lambda p: p.cache_block(p.blocks[3], None),
        InvalidArgumentError,
        "cache_block: block_hash=None; expected bytes",
    ),
    ("cache under an int hash", lambda p: p.cache_block(p.blocks[3], 123),
     InvalidArgumentError, "block_hash=123"),
    ("cache under a str hash", lambda p: p.cache_block(p.blocks[3], "h"),
     InvalidArgumentError, "block_hash='h'"),
    ("cache in a bool group", lambda p: p.cache_block(p.blocks[3], b"x", True),
     InvalidArgumentError, "group id True"),
    ("cache in a group beyond 4 bytes", lambda p: p.cache_block(p.blocks[3], b"x", 2**32),
     InvalidArgumentError, "group id 4294967296"),
    ("cache an id", lambda p: p.cache_block(3, b"x"), InvalidBlockError, "cache_block: got 3"),
    (
        "cache_full_blocks with a None hash",
        lambda p: p.cache_full_blocks([b"a", None], [p.blocks[1], p.blocks[3]], 1, 2),
        InvalidArgumentError,
        "expected bytes",
    ),
    (
        "cache_full_blocks with a float count",
        lambda p: p.cache_full_blocks([b"a"], [p.blocks[3]], 0, 1.0),
        InvalidArgumentError,
        "num_full_blocks=1.0",
    ),
    (
        "cache_full_blocks with an id among the blocks",
        lambda p: p.cache_full_blocks([b"a", b"b"], [p.blocks[3], 5], 0, 2),
        InvalidBlockError,
        "cache_full_blocks: got 5",
    ),
    ("look up a str hash", lambda p: p.get_cached_block("h1"), InvalidArgumentError,
     "get_cached_block: block_hash='h1'"),
    ("look up in a negative group", lambda p: p.get_cached_block(b"h1", [-1]),
     InvalidArgumentError, "group id -1"),
    ("look up in groups that are not a list", lambda p: p.get_cached_block(b"h1", 0),
     InvalidArgumentError, "kv_cache_group_ids=0"),
    ("fork an id", lambda p: p.fork_block(1), InvalidBlockError, "fork_block: got 1"),
    ("evict a bool id", lambda p: p.evict_blocks([True]), InvalidBlockError, "True"),
    (
        "evict a valid then an out-of-range id",
        lambda p: p.evict_blocks([1, 99]),
        InvalidBlockError,
        "evict_blocks: block 99 is out of range",
    ),
]


@pytest.mark.parametrize("profile", ["current", "classic"])
@pytest.mark.parametrize(("name", "op", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_every_observation_unchanged(
    profile: str, name: str, op: Op, error: type[KVCacheError], message: str
) -> None:
    pool = busy_pool(profile)
    before = snapshot(pool)
    with pytest.raises(error, match=message):
        op(pool)
    assert snapshot(pool) == before


@pytest.mark.parametrize("profile", ["current", "classic"])
def test_fork_needing_a_copy_with_no_free_block_is_refused_unchanged(profile: str) -> None:
    pool = busy_pool(profile)
    pool.get_new_blocks(2)
    before = snapshot(pool)
    with pytest.raises(NoFreeBlocksError, match="fork_block: block 1 is shared"):
        pool.fork_block(pool.blocks[1])
    assert snapshot(pool) == before
    assert pool.blocks[1].ref_cnt == 2


def test_classic_free_of_null_then_a_free_block_restores_null_ref_cnt() -> None:
    pool = busy_pool("classic")
    pool.free_blocks([pool.null_block])
    assert pool.null_block.ref_cnt == -1
    with pytest.raises(RefCountError):
        pool.free_blocks([pool.null_block, pool.blocks[4]])
    assert pool.null_block.ref_cnt == -1


def test_cache_block_with_caching_disabled_is_refused_unchanged() -> None:
    pool = BlockPool(4, enable_caching=False)
    (b1,) = pool.get_new_blocks(1)
    before = snapshot(pool)
    with pytest.raises(CacheStateError, match="cache_block: block 1: prefix caching is disabled"):
        pool.cache_block(b1, b"h")
    with pytest.raises(CacheStateError, match="prefix caching is disabled"):
        pool.cache_full_blocks([b"h"], [b1], 0, 1)
    assert snapshot(pool) == before
    assert pool.get_cached_block(b"h") is None


def test_a_refused_float_count_leaves_the_free_count_and_queue_usable() -> None:
    pool = BlockPool(4)
    with pytest.raises(InvalidArgumentError):
        pool.get_new_blocks(1.5)  # type: ignore[arg-type]
    assert pool.get_num_free_blocks() == 3
    assert [b.block_id for b in pool.get_new_blocks(2)] == [1, 2]


def test_a_refused_free_with_an_id_keeps_every_block_where_it_was() -> None:
    pool = BlockPool(4)
    a = pool.get_new_blocks(2)
    with pytest.raises(InvalidBlockError):
        pool.free_blocks([a[0], 2])  # type: ignore[list-item]
    assert a[0].ref_cnt == 1
    pool.free_blocks([a[0]])  # the real free still works: ref 1 -> 0, queued
    assert a[0].ref_cnt == 0 and a[0] in pool.free_block_queue.get_all_free_blocks()


def test_a_bool_count_hands_out_nothing() -> None:
    pool = BlockPool(4)
    with pytest.raises(InvalidArgumentError):
        pool.get_new_blocks(True)
    assert pool.get_num_free_blocks() == 3


@pytest.mark.parametrize(
    "bad", [lambda p: p.touch([2]), lambda p: p.cache_block(p.blocks[1], None),
            lambda p: p.get_new_blocks("2"), lambda p: p.free_blocks([object()]),
            lambda p: p.get_new_blocks(None), lambda p: p.cache_block(p.blocks[1], 123),
            lambda p: p.get_new_blocks(float("nan"))],
)
def test_no_raw_type_or_attribute_error_escapes(bad: Op) -> None:
    pool = BlockPool(4)
    pool.get_new_blocks(1)
    with pytest.raises(KVCacheError) as caught:
        bad(pool)
    assert not isinstance(caught.value, TypeError | AttributeError)
    assert "\n" not in str(caught.value)


def test_refusals_are_value_errors_as_upstream_callers_expect() -> None:
    for error in (InvalidArgumentError, NoFreeBlocksError, InvalidBlockError, RefCountError):
        assert issubclass(error, ValueError)
    assert issubclass(CacheStateError, KVCacheError)
