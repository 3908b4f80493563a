"""KVCacheBlock, prefix-cache keys, and the non-deduplicating BlockHashToBlockMap."""

from __future__ import annotations

import pytest
from kvspec.impl.block import (
    KVCacheBlock,
    get_block_hash,
    get_group_id,
    make_block_hash_with_group_id,
)
from kvspec.impl.block_hash_map import BlockHashToBlockMap
from kvspec.impl.errors import CacheStateError, InvalidArgumentError, KVCacheError


def test_block_is_slotted_metadata() -> None:
    block = KVCacheBlock(3)
    assert not hasattr(block, "__dict__")
    assert (block.block_id, block.ref_cnt, block.block_hash, block.is_null) == (3, 0, None, False)
    assert block.prev_free_block is None and block.next_free_block is None


def test_block_hash_is_set_once_until_reset() -> None:
    block = KVCacheBlock(5)
    key = make_block_hash_with_group_id(b"abc", 0)
    block.block_hash = key
    with pytest.raises(CacheStateError, match="block 5 already has a hash"):
        block.block_hash = make_block_hash_with_group_id(b"xyz", 0)
    assert block.block_hash == key
    block.reset_hash()
    assert block.block_hash is None
    block.block_hash = key
    assert block.block_hash == key


def test_key_is_hash_then_four_big_endian_group_id_bytes() -> None:
    key = make_block_hash_with_group_id(b"\x01\x02", 258)
    assert key == b"\x01\x02\x00\x00\x01\x02"
    assert get_block_hash(key) == b"\x01\x02"
    assert get_group_id(key) == 258


def test_same_content_in_two_groups_gives_two_keys() -> None:
    assert make_block_hash_with_group_id(b"h", 0) != make_block_hash_with_group_id(b"h", 1)


def test_group_id_outside_four_bytes_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="group id"):
        make_block_hash_with_group_id(b"h", 1 << 32)
    with pytest.raises(InvalidArgumentError):
        make_block_hash_with_group_id(b"h", -1)


def test_all_errors_share_one_base() -> None:
    assert issubclass(CacheStateError, KVCacheError)
    assert issubclass(InvalidArgumentError, ValueError)


KEY = make_block_hash_with_group_id(b"content", 0)


def test_map_holds_a_bare_block_until_a_duplicate_arrives() -> None:
    index = BlockHashToBlockMap()
    a, b = KVCacheBlock(1), KVCacheBlock(2)
    index.insert(KEY, a)
    assert index._cache[KEY] is a
    index.insert(KEY, b)
    assert index._cache[KEY] == {1: a, 2: b}
    assert len(index) == 1  # keys, not blocks


def test_duplicates_get_one_block_returns_first_inserted_still_holding_key() -> None:
    index = BlockHashToBlockMap()
    a, b, c = KVCacheBlock(1), KVCacheBlock(2), KVCacheBlock(3)
    for block in (a, b, c):
        index.insert(KEY, block)
    assert index.get_one_block(KEY) is a
    assert index.pop(KEY, 1) is a
    assert index.get_one_block(KEY) is b
    assert index.pop(KEY, 3) is c
    assert index.get_one_block(KEY) is b


def test_pop_removes_only_that_block_and_keeps_the_other_holder() -> None:
    index = BlockHashToBlockMap()
    a, b = KVCacheBlock(1), KVCacheBlock(2)
    index.insert(KEY, a)
    index.insert(KEY, b)
    assert index.pop(KEY, 2) is b
    assert index.contain(KEY, 1) and not index.contain(KEY, 2)
    assert index.get_one_block(KEY) is a
    assert index.pop(KEY, 1) is a
    assert index.get_one_block(KEY) is None
    assert len(index) == 0


def test_pop_of_absent_key_or_other_block_returns_none_and_keeps_entry() -> None:
    index = BlockHashToBlockMap()
    a = KVCacheBlock(1)
    assert index.pop(KEY, 1) is None
    index.insert(KEY, a)
    assert index.pop(KEY, 7) is None
    assert index.get_one_block(KEY) is a
    index.insert(KEY, KVCacheBlock(2))
    assert index.pop(KEY, 7) is None
    assert len(index) == 1
