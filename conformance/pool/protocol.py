"""The contract a target allocator implements so that kvspec can drive it.

A *pool target* is any object with the methods of :class:`PoolTarget`. kvspec never
looks inside it: every check goes through these methods, so a user's own allocator,
kvspec's ``impl.BlockPool`` and upstream vLLM's ``BlockPool`` (through an adapter) are
driven the same way.

Identifiers
    Blocks are named by integer ids ``0 .. num_blocks - 1``. Block 0 is the *null
    block*: a placeholder that is never handed out, never queued, never hashed.
    A fresh pool's free queue is ``1 .. num_blocks - 1`` in id order (block 1 is handed
    out first). Content hashes are ``bytes``.

Refusals
    A target refuses an operation by raising any exception. A refused operation must
    leave every observation exactly as it was: kvspec checks this after each refusal.

Semantics of each method (the ``current`` profile unless noted; ``classic`` differences
are listed in the README's profile table):

``get_new_blocks(num_blocks)``
    Pop ``num_blocks`` blocks from the front of the free queue and give each a
    reference count of 1. A popped block that still carries a hash (an eviction
    candidate) first loses it: its hash leaves the index *before* the block is handed
    out. Returns the ids in queue order. Refused when ``num_blocks`` exceeds the free
    count or is negative; nothing changes then.
``touch(block_ids)``
    Add one reference to each block (the prefix-cache hit path). A block at ref count 0
    leaves the free queue first. ``current`` skips the null block; ``classic`` counts
    it. Refused for an id out of range; nothing changes then.
``free_blocks(block_ids)``
    Drop one reference from each block. Blocks reaching 0 re-enter the free queue: in
    ``classic`` all at the tail in the given order; in ``current`` unhashed ones at the
    head (``prepend_n``, given order) and hashed ones at the tail (given order). The
    first id is therefore evicted first. Refused when any non-null block would go below
    0 (an id repeated in one call counts each time), or an id is out of range; nothing
    changes then. ``current`` skips the null block; ``classic`` decrements it too (its
    count drifts and may go negative, which is not refused) and never queues it.
``cache_block(block_id, block_hash)``
    A full block enters the prefix cache under ``block_hash``. Several blocks may hold
    the same hash (no deduplication). Refused for the null block, a block with ref
    count 0, or a block that already carries a hash, and always when the pool was built
    with ``enable_caching=False`` (no block ever carries a hash then, and
    ``get_cached_block`` returns ``None``).
``get_cached_block(block_hash)``
    One block holding ``block_hash`` (the first inserted that still holds it), or
    ``None``. Pure: no reference count or queue change.
``reset_prefix_cache()``
    When no non-null block is referenced, drop every hash and return ``True``;
    otherwise change nothing and return ``False``. Queue order is unchanged.
``fork_block(block_id)``
    Copy-on-write. Ref count above 1: take a new block (as ``get_new_blocks(1)``),
    drop one reference from ``block_id`` and return the new id. Ref count exactly 1:
    return ``block_id`` unchanged. Refused for a free block, the null block, or (when
    a copy is needed) an empty free queue; nothing changes then.
``get_num_free_blocks()``
    Length of the free queue (evictable cached blocks included, null excluded).
``get_usage()``
    ``1 - free / (num_blocks - 1)``: the fraction of non-null blocks in use; 0.0 when
    idle. The null block is in neither numerator nor denominator.
``ref_cnt(block_id)``, ``block_hash(block_id)``
    Observations of one block. ``block_hash`` is ``None`` for an uncached block.
``free_block_ids()``
    The free queue, next-evicted first.

A *factory* builds a fresh target: ``factory(num_blocks, *, enable_caching=True,
profile="current")``. ``kvspec check --target module.path:factory`` loads one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

PROFILES = ("current", "classic")


@runtime_checkable
class PoolTarget(Protocol):
    """A block pool that kvspec can drive. See the module docstring for semantics."""

    def get_new_blocks(self, num_blocks: int) -> list[int]: ...
    def touch(self, block_ids: Sequence[int]) -> None: ...
    def free_blocks(self, block_ids: Sequence[int]) -> None: ...
    def cache_block(self, block_id: int, block_hash: bytes) -> None: ...
    def get_cached_block(self, block_hash: bytes) -> int | None: ...
    def reset_prefix_cache(self) -> bool: ...
    def fork_block(self, block_id: int) -> int: ...
    def get_num_free_blocks(self) -> int: ...
    def get_usage(self) -> float: ...
    def ref_cnt(self, block_id: int) -> int: ...
    def block_hash(self, block_id: int) -> bytes | None: ...
    def free_block_ids(self) -> list[int]: ...


class PoolFactory(Protocol):
    """Builds a fresh pool target."""

    def __call__(
        self, num_blocks: int, *, enable_caching: bool = True, profile: str = "current"
    ) -> PoolTarget: ...
