"""``BlockPool``: allocation, reference counting, prefix caching and eviction of KV blocks.

The pool owns every :class:`KVCacheBlock`, the :class:`FreeKVCacheBlockQueue` of blocks with
``ref_cnt == 0`` and the :class:`BlockHashToBlockMap` prefix-cache index. Eviction is lazy: a
freed block keeps its hash and stays hittable until ``get_new_blocks`` pops it for reuse, and
only then does its key leave the index.

Every public operation refuses bad input before mutating anything, so a caller that catches
a :class:`~kvspec.impl.errors.KVCacheError` finds the pool unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvspec.impl.block import KVCacheBlock, make_block_hash_with_group_id
from kvspec.impl.block_hash_map import BlockHashToBlockMap
from kvspec.impl.errors import (
    CacheStateError,
    InvalidArgumentError,
    InvalidBlockError,
    NoFreeBlocksError,
    RefCountError,
)
from kvspec.impl.free_queue import FreeKVCacheBlockQueue
from kvspec.impl.profiles import PoolProfile, resolve_profile


class BlockPool:
    """A pool of ``num_gpu_blocks`` KV-cache blocks, block 0 being the null block.

    The null block is popped from the free queue at construction and never returns: it is the
    placeholder a block table holds for positions with no KV data (a sliding window's skipped
    prefix), so it is never handed out, never queued and never hashed. Usable capacity is
    therefore ``num_gpu_blocks - 1``.

    ``profile`` names the upstream behaviour to follow (:mod:`kvspec.impl.profiles`): ``"current"``
    (vLLM >= 0.24) or ``"classic"`` (vLLM 0.22.x).
    """

    def __init__(
        self,
        num_gpu_blocks: int,
        enable_caching: bool = True,
        profile: str | PoolProfile = "current",
    ) -> None:
        if isinstance(num_gpu_blocks, bool) or not isinstance(num_gpu_blocks, int):
            raise InvalidArgumentError(
                f"BlockPool: num_gpu_blocks={num_gpu_blocks!r}; expected a positive int"
            )
        if num_gpu_blocks < 1:
            raise InvalidArgumentError(
                f"BlockPool: num_gpu_blocks={num_gpu_blocks}; expected at least 1 (the null block)"
            )
        self.num_gpu_blocks: int = num_gpu_blocks
        self.enable_caching: bool = bool(enable_caching)
        self.profile: PoolProfile = resolve_profile(profile)
        # Flags copied out of the profile: the hot paths test a local bool.
        self._skip_null_in_touch: bool = self.profile.skip_null_in_touch
        self._skip_null_in_free: bool = self.profile.skip_null_in_free
        self._prepend_unhashed_on_free: bool = self.profile.prepend_unhashed_on_free

        self.blocks: list[KVCacheBlock] = [KVCacheBlock(i) for i in range(num_gpu_blocks)]
        self.free_block_queue = FreeKVCacheBlockQueue(self.blocks)
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        # The queue starts in id order, so this pops block 0.
        self.null_block: KVCacheBlock = self.free_block_queue.popleft()
        self.null_block.is_null = True

    # ------------------------------------------------------------------ validation helpers

    def _check_block(self, op: str, block: KVCacheBlock) -> None:
        """Refuse a block that is not this pool's own object (out of range or foreign)."""
        block_id = block.block_id
        # Identity, not just range: a foreign KVCacheBlock with a valid id would corrupt the
        # queue. Negative ids index from the end and fail the identity test too.
        if block_id >= self.num_gpu_blocks or self.blocks[block_id] is not block:
            raise InvalidBlockError(
                f"{op}: block {block_id} does not belong to this pool; expected one of its "
                f"blocks, ids 0..{self.num_gpu_blocks - 1}"
            )

    def get_block(self, block_id: int, op: str = "get_block") -> KVCacheBlock:
        """The block with id ``block_id``; :class:`InvalidBlockError` if out of range."""
        if isinstance(block_id, bool) or not isinstance(block_id, int):
            raise InvalidBlockError(f"{op}: block id {block_id!r}; expected an int")
        if not 0 <= block_id < self.num_gpu_blocks:
            raise InvalidBlockError(
                f"{op}: block {block_id} is out of range; expected 0..{self.num_gpu_blocks - 1}"
            )
        return self.blocks[block_id]

    def get_blocks(self, block_ids: Iterable[int], op: str = "get_blocks") -> list[KVCacheBlock]:
        """The blocks for ``block_ids``, in order; every id is checked before any is used."""
        return [self.get_block(block_id, op) for block_id in block_ids]

    # ---------------------------------------------------------------------- prefix cache

    def get_cached_block(
        self, block_hash: bytes, kv_cache_group_ids: Sequence[int] = (0,)
    ) -> list[KVCacheBlock] | None:
        """One cached block per group holding ``block_hash``, or ``None`` if any group misses.

        All-or-nothing across groups: a hybrid model can use a prefix only if every group has
        it. Pure: no reference count or queue changes (``touch`` does that for real hits).
        """
        if not self.enable_caching:
            return None
        cached: list[KVCacheBlock] = []
        for group_id in kv_cache_group_ids:
            block = self.cached_block_hash_to_block.get_one_block(
                make_block_hash_with_group_id(block_hash, group_id)
            )
            if block is None:
                return None
            cached.append(block)
        return cached

    def cache_block(self, block: KVCacheBlock, block_hash: bytes, group_id: int = 0) -> None:
        """Index one full, referenced, uncached block under ``block_hash`` in ``group_id``.

        Identical content already cached in another block is not deduplicated (see
        :class:`BlockHashToBlockMap`): both blocks then hold the key.
        """
        self._check_cacheable("cache_block", block)
        key = make_block_hash_with_group_id(block_hash, group_id)
        block.block_hash = key
        self.cached_block_hash_to_block.insert(key, block)

    def cache_full_blocks(
        self,
        block_hashes: Sequence[bytes],
        blocks: Sequence[KVCacheBlock],
        num_cached_blocks: int,
        num_full_blocks: int,
        kv_cache_group_id: int = 0,
    ) -> None:
        """Index a request's newly full blocks ``blocks[num_cached_blocks:num_full_blocks]``.

        ``block_hashes`` is the request's chained hash list in this group's view (entry ``i``
        is the hash of the prefix ending with block ``i``). Null blocks (skipped positions)
        are left uncached. Everything is checked before the first block is hashed.
        """
        if num_cached_blocks >= num_full_blocks:
            return
        op = "cache_full_blocks"
        if num_cached_blocks < 0:
            raise InvalidArgumentError(
                f"{op}: num_cached_blocks={num_cached_blocks}; expected >= 0"
            )
        if len(blocks) < num_full_blocks:
            raise InvalidArgumentError(
                f"{op}: {len(blocks)} blocks given; expected at least num_full_blocks="
                f"{num_full_blocks}"
            )
        if len(block_hashes) < num_full_blocks:
            raise InvalidArgumentError(
                f"{op}: {len(block_hashes)} block hashes given; expected at least "
                f"num_full_blocks={num_full_blocks}"
            )
        new_full_blocks = blocks[num_cached_blocks:num_full_blocks]
        seen: set[int] = set()
        for block in new_full_blocks:
            if block.is_null:
                self._check_block(op, block)
                continue
            self._check_cacheable(op, block)
            if block.block_id in seen:
                raise CacheStateError(
                    f"{op}: block {block.block_id} appears twice among the new full blocks; "
                    "expected each block hashed once"
                )
            seen.add(block.block_id)
        index = self.cached_block_hash_to_block
        for i, block in enumerate(new_full_blocks, start=num_cached_blocks):
            if block.is_null:
                continue
            key = make_block_hash_with_group_id(block_hashes[i], kv_cache_group_id)
            block.block_hash = key
            index.insert(key, block)

    def _check_cacheable(self, op: str, block: KVCacheBlock) -> None:
        if not self.enable_caching:
            raise CacheStateError(
                f"{op}: block {block.block_id}: prefix caching is disabled for this pool; "
                "expected enable_caching=True"
            )
        self._check_block(op, block)
        if block.is_null:
            raise CacheStateError(
                f"{op}: block {block.block_id} is the null block; expected a data block (the "
                "null block is never cached)"
            )
        if block.ref_cnt <= 0:
            raise CacheStateError(
                f"{op}: block {block.block_id} has ref_cnt {block.ref_cnt}; expected a "
                "referenced block (ref_cnt >= 1) holding a request's full block"
            )
        if block.block_hash is not None:
            raise CacheStateError(
                f"{op}: block {block.block_id} is already cached; expected an uncached block "
                "(a block is hashed at most once until it is evicted)"
            )

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        """Drop ``block``'s key from the index and reset its hash; ``False`` if uncached."""
        block_hash = block.block_hash
        if block_hash is None:
            return False
        if self.cached_block_hash_to_block.pop(block_hash, block.block_id) is None:
            # Hashed but not indexed under that key: leave the block as it is, as upstream does.
            return False
        block.reset_hash()
        return True

    def evict_blocks(self, block_ids: Iterable[int]) -> None:
        """Drop the listed blocks from the prefix cache (KV connectors report lost blocks).

        Only hashes go: reference counts and queue membership stay as they are.
        """
        for block in self.get_blocks(list(block_ids), "evict_blocks"):
            self._maybe_evict_cached_block(block)

    def reset_prefix_cache(self) -> bool:
        """Forget every hash, when no request holds a block; ``False`` (no change) otherwise.

        Used after a weight update, when every cached K/V value is stale. Queue order stays.
        """
        # The null block is the one block that is always "used".
        if self.num_gpu_blocks - self.get_num_free_blocks() != 1:
            return False
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        for block in self.blocks:
            block.reset_hash()
        return True

    # ------------------------------------------------------------------ allocation and refs

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Pop ``num_blocks`` blocks from the front of the free queue, each with ``ref_cnt`` 1.

        Never consults the prefix cache. A popped block that is still cached is an eviction
        victim: its key leaves the index *before* its reference count is set, so that no
        lookup can return a block that a new owner is about to overwrite.
        """
        if num_blocks < 0:
            raise InvalidArgumentError(
                f"get_new_blocks: num_blocks={num_blocks}; expected a non-negative count"
            )
        if num_blocks > self.free_block_queue.num_free_blocks:
            raise NoFreeBlocksError(
                f"get_new_blocks: cannot get {num_blocks} free blocks; expected at most "
                f"{self.free_block_queue.num_free_blocks}"
            )
        ret = self.free_block_queue.popleft_n(num_blocks)
        # Two loops rather than a branch per block: caching is fixed for the pool's life.
        if self.enable_caching:
            for block in ret:
                self._maybe_evict_cached_block(block)
                block.ref_cnt += 1
        else:
            for block in ret:
                block.ref_cnt += 1
        return ret

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        """Add one reference to each block: they were hit by a request sharing the prefix.

        A hit with ``ref_cnt == 0`` is an eviction candidate sitting in the free queue; it
        leaves the queue (O(1) ``remove``) before anyone can pop it. ``current`` skips the
        null block; ``classic`` counts it but never dequeues it.
        """
        if not isinstance(blocks, list | tuple):
            blocks = list(blocks)  # validated in one pass, then used in a second
        for block in blocks:
            self._check_block("touch", block)
        skip_null = self._skip_null_in_touch
        for block in blocks:
            if block.is_null:
                if not skip_null:
                    block.ref_cnt += 1
                continue
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference from each block; blocks reaching 0 become evictable.

        ``ordered_blocks`` is in eviction priority order, first evicted first: callers pass a
        request's table reversed, so its tail (the longest, least shared prefix) goes before
        its head, which every hit on the prefix needs.

        Placement of blocks reaching 0, each part in the given order: ``classic`` appends all
        of them; ``current`` prepends the unhashed ones (all of them when caching is off; they
        can never hit, so reuse them first while they are warm) and appends the hashed ones
        (LRU among cached blocks).

        Refused, with nothing changed, if any block would drop below 0, counting repeats.
        """
        blocks = ordered_blocks if isinstance(ordered_blocks, list) else list(ordered_blocks)
        skip_null = self._skip_null_in_free
        split = self._prepend_unhashed_on_free
        caching = self.enable_caching
        to_front: list[KVCacheBlock] = []
        to_back: list[KVCacheBlock] = []
        # Decrement tentatively and undo on a refusal: no queue change happens until every
        # block has passed, and no separate counting pass (or Counter) is needed for repeats.
        for i, block in enumerate(blocks):
            try:
                self._check_block("free_blocks", block)
            except InvalidBlockError:
                self._undo_free(blocks, i)
                raise
            if block.is_null:
                if not skip_null:
                    block.ref_cnt -= 1  # classic: drifts, may go negative, never queued
                continue
            if block.ref_cnt <= 0:
                self._undo_free(blocks, i)
                raise RefCountError(
                    f"free_blocks: block {block.block_id} would drop to ref_cnt "
                    f"{block.ref_cnt - 1}; expected each block freed at most as many times as "
                    "it is referenced"
                )
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if split and (block.block_hash is None or not caching):
                    to_front.append(block)
                else:
                    to_back.append(block)
        self.free_block_queue.prepend_n(to_front)
        self.free_block_queue.append_n(to_back)

    def _undo_free(self, blocks: list[KVCacheBlock], count: int) -> None:
        """Restore the reference counts the first ``count`` entries of a refused free took."""
        skip_null = self._skip_null_in_free
        for block in blocks[:count]:
            if block.is_null and skip_null:
                continue
            block.ref_cnt += 1

    def fork_block(self, block: KVCacheBlock) -> KVCacheBlock:
        """Copy-on-write: a block the caller alone may write.

        With ``ref_cnt > 1`` the block is shared, so the caller gets a fresh block (as from
        ``get_new_blocks(1)``, ``ref_cnt`` 1, no hash) and gives up its reference to the old
        one, which keeps its hash and its other holders' view. Allocation comes first, so a
        pool with no free block refuses before anything changes. With ``ref_cnt == 1`` the
        caller already owns it outright: the same block comes back. Copying the K/V data is
        the caller's job.
        """
        self._check_block("fork_block", block)
        if block.is_null:
            raise InvalidBlockError(
                f"fork_block: block {block.block_id} is the null block; expected a referenced "
                "data block"
            )
        if block.ref_cnt <= 0:
            raise RefCountError(
                f"fork_block: block {block.block_id} has ref_cnt {block.ref_cnt}; expected a "
                "referenced block (ref_cnt >= 1)"
            )
        if block.ref_cnt == 1:
            return block
        if self.free_block_queue.num_free_blocks == 0:
            raise NoFreeBlocksError(
                f"fork_block: block {block.block_id} is shared (ref_cnt {block.ref_cnt}) and "
                "needs a copy; expected at least 1 free block, found 0"
            )
        new_block = self.get_new_blocks(1)[0]
        block.ref_cnt -= 1
        return new_block

    # ---------------------------------------------------------------------------- counters

    def get_num_free_blocks(self) -> int:
        """Blocks in the free queue: evictable cached blocks count, the null block does not."""
        return self.free_block_queue.num_free_blocks

    def get_usage(self) -> float:
        """Fraction of non-null blocks in use, in ``[0, 1]``.

        The null block is in neither numerator nor denominator: it is always "used", so
        counting it would report an idle pool as busy (``1 / num_gpu_blocks``).
        """
        total = self.num_gpu_blocks - 1
        if total == 0:
            return 0.0
        return 1.0 - self.free_block_queue.num_free_blocks / total
