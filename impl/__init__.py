"""kvspec's allocator: a vLLM-v1-style KV-cache block pool.

One module per upstream concept: :mod:`kvspec.impl.block` (``KVCacheBlock`` and prefix-cache keys),
:mod:`kvspec.impl.free_queue` (``FreeKVCacheBlockQueue``), :mod:`kvspec.impl.block_hash_map`
(``BlockHashToBlockMap``), :mod:`kvspec.impl.block_pool` (``BlockPool``),
:mod:`kvspec.impl.profiles`
(named upstream behaviours) and :mod:`kvspec.impl.errors` (the exception hierarchy).

This package never imports ``spec``: the two are written independently so that the
conformance suite can find where they disagree.
"""

from kvspec.impl.block import (
    BlockHash,
    BlockHashWithGroupId,
    KVCacheBlock,
    get_block_hash,
    get_group_id,
    make_block_hash_with_group_id,
)
from kvspec.impl.block_hash_map import BlockHashToBlockMap
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import (
    CacheStateError,
    FreeQueueError,
    InvalidArgumentError,
    InvalidBlockError,
    KVCacheError,
    NoFreeBlocksError,
    RefCountError,
)
from kvspec.impl.free_queue import FreeKVCacheBlockQueue
from kvspec.impl.profiles import CLASSIC, CURRENT, PROFILES, PoolProfile, resolve_profile

__all__ = [
    "BlockHash",
    "BlockHashToBlockMap",
    "BlockHashWithGroupId",
    "BlockPool",
    "CLASSIC",
    "CURRENT",
    "CacheStateError",
    "FreeKVCacheBlockQueue",
    "FreeQueueError",
    "InvalidArgumentError",
    "InvalidBlockError",
    "KVCacheBlock",
    "KVCacheError",
    "NoFreeBlocksError",
    "PROFILES",
    "PoolProfile",
    "RefCountError",
    "get_block_hash",
    "get_group_id",
    "make_block_hash_with_group_id",
    "resolve_profile",
]
