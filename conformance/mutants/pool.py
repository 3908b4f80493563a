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


# --------------------------------------------------------------------------- several
# blocks under one hash, eviction of one of them, hits on evictable blocks, forks of
# cached blocks: the situations where a pool's bookkeeping has the most cases.


class _EvictEveryCopyMap(BlockHashToBlockMap):
    """``pop`` drops the whole key, whichever block it names."""

    def pop(self, key, block_id):  # type: ignore[no-untyped-def]
        blocks = self._cache.pop(key, None)
        if blocks is None:
            return None
        if isinstance(blocks, KVCacheBlock):
            return blocks if blocks.block_id == block_id else None
        return blocks.get(block_id)


class EvictionDropsEveryCopy(BlockPool):
    """Evicting one of several blocks cached under one hash drops the whole index entry.

    The other copies keep their hash but no lookup finds them: cached content, held in
    blocks, that can never be hit again. Models ``del index[key]`` where the index maps a
    key to several blocks.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.cached_block_hash_to_block = _EvictEveryCopyMap()

    def reset_prefix_cache(self) -> bool:
        if not super().reset_prefix_cache():
            return False
        self.cached_block_hash_to_block = _EvictEveryCopyMap()
        return True


class _PopFirstCopyMap(BlockHashToBlockMap):
    """``pop`` removes the oldest holder of the key, not the block it names."""

    def pop(self, key, block_id):  # type: ignore[no-untyped-def]
        blocks = self._cache.get(key)
        if isinstance(blocks, dict) and blocks:
            first = next(iter(blocks))
            return super().pop(key, first)
        return super().pop(key, block_id)


class EvictionPopsTheWrongCopy(BlockPool):
    """Evicting one of several copies of a hash unindexes the oldest copy instead.

    The evicted block stays in the index while it is handed to a new owner: a lookup then
    returns a block that holds other data. Models popping "a block for this key" rather than
    "this block".
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.cached_block_hash_to_block = _PopFirstCopyMap()

    def reset_prefix_cache(self) -> bool:
        if not super().reset_prefix_cache():
            return False
        self.cached_block_hash_to_block = _PopFirstCopyMap()
        return True


class TouchRevivesInPlace(BlockPool):
    """A hit on an evictable block marks it used but leaves its queue position, to spare
    the unlink; when it is freed again it goes back to that old position.

    The block is then evicted as if it had never been hit: LRU order is lost, and the
    prefix a request just used is the next to go.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._revived: dict[int, int] = {}  # block id -> queue position before the hit

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        queue = self.free_block_queue.get_all_free_blocks()
        for block in blocks:
            if block.ref_cnt == 0 and not block.is_null and block in queue:
                self._revived[block.block_id] = queue.index(block)
        super().touch(blocks)

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        blocks = list(ordered_blocks)
        super().free_blocks(blocks)
        for block in blocks:
            position = self._revived.pop(block.block_id, None)
            if position is None or block.ref_cnt != 0:
                continue
            queue = [b for b in self.free_block_queue.get_all_free_blocks() if b is not block]
            queue.insert(min(position, len(queue)), block)
            for b in self.free_block_queue.get_all_free_blocks():
                self.free_block_queue.remove(b)
            self.free_block_queue.append_n(queue)


class ForkCopiesTheHash(BlockPool):
    """``fork_block`` of a cached block gives the copy the original's hash too.

    The copy is about to be written (that is why it was forked), yet the index now serves
    it for the original prefix. Models copying a block's metadata along with its data.
    """

    def fork_block(self, block: KVCacheBlock) -> KVCacheBlock:
        new_block = super().fork_block(block)
        if new_block is not block and block.block_hash is not None:
            new_block.block_hash = block.block_hash
            self.cached_block_hash_to_block.insert(block.block_hash, new_block)
        return new_block


class ForkUncachesTheOriginal(BlockPool):
    """``fork_block`` of a cached block evicts the original: "it is being modified".

    But the original is not modified (the copy is), and its other holders' prefix leaves
    the cache while they still hold it: the next request with that prefix recomputes it.
    """

    def fork_block(self, block: KVCacheBlock) -> KVCacheBlock:
        new_block = super().fork_block(block)
        if new_block is not block:
            self._maybe_evict_cached_block(block)
        return new_block


class FreeQueuesRepeatsTwice(BlockPool):
    """``free_blocks`` decrements every listed block, then queues every listed block now at
    ref count 0: a block listed twice (two requests sharing it, freed in one call) is queued
    twice, and will be handed to two owners."""

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        blocks = list(ordered_blocks)
        counts: dict[int, int] = {}
        for block in blocks:
            counts[block.block_id] = counts.get(block.block_id, 0) + 1
        if all(n == 1 for n in counts.values()) or any(
            b.ref_cnt < counts[b.block_id] or b.is_null for b in blocks
        ):
            super().free_blocks(blocks)
            return
        for block in blocks:
            block.ref_cnt -= 1
        freed = [b for b in blocks if b.ref_cnt == 0]
        self.free_block_queue.append_n(freed)
