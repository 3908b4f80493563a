"""Pool-level mutants: each a ``BlockPool`` subclass with one realistic bug.

Every class docstring says what real mistake it models. A mutant overrides as little as
it can, so that the bug, not a rewrite, is what the suite has to find.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvspec.impl.block import KVCacheBlock
from kvspec.impl.block_hash_map import BlockHashToBlockMap
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import NoFreeBlocksError


class ForwardOrderFree(BlockPool):
    """Frees a table head first: the shared prefix becomes evictable before its tails.

    Models a caller (or a refactor of ``free_blocks``) that forgets that the first
    element is evicted first and iterates the table in its natural order.
    """

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        super().free_blocks(list(reversed(list(ordered_blocks))))


class StaleHashOnReuse(BlockPool):
    """A reused block keeps its old hash: lazy eviction is forgotten on ``get_new_blocks``.

    A later lookup of the old content returns a block that now holds other data.
    """

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        return False


class HashClearedAfterRefSet(BlockPool):
    """Sets the new owner's ref count first, then evicts "only blocks nobody holds".

    The eviction guard looks sensible in isolation, but because it runs after the ref
    count is set it never fires: the hash survives into the new owner's hands.
    """

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks < 0 or num_blocks > self.free_block_queue.num_free_blocks:
            return super().get_new_blocks(num_blocks)
        blocks = self.free_block_queue.popleft_n(num_blocks)
        for block in blocks:
            block.ref_cnt += 1
            if self.enable_caching and block.ref_cnt == 0:
                self._maybe_evict_cached_block(block)
        return blocks


class TouchLeavesBlockInQueue(BlockPool):
    """``touch`` revives a cached free block without taking it out of the free queue.

    The block is now referenced *and* evictable: the next allocation can hand it to a
    second owner.
    """

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        for block in blocks:
            self._check_block("touch", block)
        for block in blocks:
            if block.is_null and self._skip_null_in_touch:
                continue
            block.ref_cnt += 1


class UsageCountsNull(BlockPool):
    """``get_usage`` divides by all blocks and counts the null block as used."""

    def get_usage(self) -> float:
        return 1.0 - self.free_block_queue.num_free_blocks / self.num_gpu_blocks


class NullReturnedToQueue(BlockPool):
    """Freeing a table that starts with the null placeholder queues the null block."""

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        blocks = list(ordered_blocks)
        super().free_blocks(blocks)
        if any(b.is_null for b in blocks) and self.null_block.prev_free_block is None:
            self.free_block_queue.append(self.null_block)


class ForkWithoutDecrement(BlockPool):
    """``fork_block`` hands out the copy but keeps the caller's reference to the original."""

    def fork_block(self, block: KVCacheBlock) -> KVCacheBlock:
        if block.ref_cnt > 1 and not block.is_null and self.free_block_queue.num_free_blocks:
            return self.get_new_blocks(1)[0]
        return super().fork_block(block)


class ForkCopiesExclusiveBlock(BlockPool):
    """``fork_block`` copies even an exclusive block (``ref_cnt == 1``).

    Wasteful, and it frees the caller's block, which then loses its data.
    """

    def fork_block(self, block: KVCacheBlock) -> KVCacheBlock:
        if block.ref_cnt == 1 and not block.is_null and self.free_block_queue.num_free_blocks:
            new_block = self.get_new_blocks(1)[0]
            self.free_blocks([block])
            return new_block
        return super().fork_block(block)


class FreeOfUnreferencedGoesNegative(BlockPool):
    """``free_blocks`` trusts its caller: a double free drives a ref count to -1 silently."""

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        blocks = list(ordered_blocks)
        if any(b.ref_cnt <= 0 and not b.is_null for b in blocks):
            for block in blocks:
                if not block.is_null:
                    block.ref_cnt -= 1
            return
        super().free_blocks(blocks)


class ResetWhileInUse(BlockPool):
    """``reset_prefix_cache`` forgets the "nothing is held" check."""

    def reset_prefix_cache(self) -> bool:
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        for block in self.blocks:
            block.reset_hash()
        return True


class OverAllocationMutatesBeforeRaising(BlockPool):
    """Pops what it can, then notices the shortage: the refusal leaves blocks dangling."""

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        available = self.free_block_queue.num_free_blocks
        if num_blocks > available:
            for block in self.free_block_queue.popleft_n(available):
                block.ref_cnt += 1
            raise NoFreeBlocksError(f"get_new_blocks: cannot get {num_blocks} blocks")
        return super().get_new_blocks(num_blocks)


class _LastWriterWinsMap(BlockHashToBlockMap):
    """A prefix-cache index that stores one block per hash (the newest)."""

    def insert(self, key, block):  # type: ignore[no-untyped-def]
        self._cache[key] = block


class DuplicateHashCollapsed(BlockPool):
    """The index keeps one block per hash: a second block with the same content replaces
    the first, which stays hashed but unreachable (and evicting the second forgets both).
    Models "deduplicating" the map with a plain dict."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.cached_block_hash_to_block = _LastWriterWinsMap()

    def reset_prefix_cache(self) -> bool:
        if not super().reset_prefix_cache():
            return False
        self.cached_block_hash_to_block = _LastWriterWinsMap()
        return True


class TouchCountsNull(BlockPool):
    """``current`` profile, but ``touch`` still counts the null block (a half-done port)."""

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        super().touch(blocks)
        if self.profile.skip_null_in_touch:
            for block in blocks:
                if block.is_null:
                    block.ref_cnt += 1


class AllFreedBlocksAppended(BlockPool):
    """``current`` profile, but unhashed blocks are appended like hashed ones.

    Never-hit blocks then sit behind cached ones and cached prefixes are evicted first.
    """

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        split = self._prepend_unhashed_on_free
        self._prepend_unhashed_on_free = False
        try:
            super().free_blocks(ordered_blocks)
        finally:
            self._prepend_unhashed_on_free = split
