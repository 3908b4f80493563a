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

from kvspec.impl.block import KVCacheBlock, group_id_suffix
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
from kvspec.impl.validate import as_list, check_bool, check_bytes, check_int, is_int, show

_GROUP_0_SUFFIX = group_id_suffix("BlockPool", 0)


class BlockPool:
    """A pool of ``num_gpu_blocks`` KV-cache blocks, block 0 being the null block.

    The null block is popped from the free queue at construction and never returns: it is the
    placeholder a block table holds for positions with no KV data (a sliding window's skipped
    prefix), so it is never handed out, never queued and never hashed. Usable capacity is
    therefore ``num_gpu_blocks - 1``.

    ``profile`` names the upstream behaviour to follow (:mod:`kvspec.impl.profiles`): ``"current"``
    (vLLM >= 0.24) or ``"classic"`` (vLLM 0.22.x).

    Every public method checks its arguments before it changes anything (types too: a
    ``bool`` or a ``float`` is not a count, an ``int`` is not a block), so a refused call
    leaves every observable as it was. The checks are written for the hot paths: an exact
    type test first, the precise diagnosis only once something is wrong.
    """

    def __init__(
        self,
        num_gpu_blocks: int,
        enable_caching: bool = True,
        profile: str | PoolProfile = "current",
    ) -> None:
        if not is_int(num_gpu_blocks) or num_gpu_blocks < 1:
            raise InvalidArgumentError(
                f"BlockPool: num_gpu_blocks={show(num_gpu_blocks)}; expected an int >= 1 "
                "(the null block)"
            )
        self.num_gpu_blocks: int = int(num_gpu_blocks)
        self.enable_caching: bool = check_bool("BlockPool", "enable_caching", enable_caching)
        self.profile: PoolProfile = resolve_profile(profile)
        # Flags copied out of the profile: the hot paths test a local bool.
        self._skip_null_in_touch: bool = self.profile.skip_null_in_touch
        self._skip_null_in_free: bool = self.profile.skip_null_in_free
        self._prepend_unhashed_on_free: bool = self.profile.prepend_unhashed_on_free

        self.blocks: list[KVCacheBlock] = [KVCacheBlock(i) for i in range(self.num_gpu_blocks)]
        # This pool's block objects, for one membership test per argument list, run in C:
        # blocks hash by identity, so a foreign block with a valid id is not a member.
        self._own_blocks: frozenset[KVCacheBlock] = frozenset(self.blocks)
        # Key suffix of every group id checked so far: every lookup and every cached block
        # appends these 4 bytes to a hash, so they are encoded (and checked) once per group.
        self._key_suffixes: dict[int, bytes] = {0: _GROUP_0_SUFFIX}
        self.free_block_queue = FreeKVCacheBlockQueue(self.blocks)
        self.cached_block_hash_to_block = BlockHashToBlockMap()
        # The queue starts in id order, so this pops block 0.
        self.null_block: KVCacheBlock = self.free_block_queue.popleft()
        self.null_block.is_null = True

    # ------------------------------------------------------------------ validation helpers

    def _check_block(self, op: str, block: object) -> None:
        """Refuse anything but one of this pool's own block objects."""
        try:
            if block in self._own_blocks:
                return
        except TypeError:  # unhashable, so certainly not a block
            pass
        if isinstance(block, KVCacheBlock):
            # Identity, not just range: a foreign KVCacheBlock with a valid id would corrupt
            # the queue.
            raise InvalidBlockError(
                f"{op}: block {block.block_id} does not belong to this pool; expected one of "
                f"its blocks, ids 0..{self.num_gpu_blocks - 1}"
            )
        raise InvalidBlockError(f"{op}: got {show(block)}; expected a KVCacheBlock of this pool")

    def check_blocks(self, op: str, blocks: Sequence[object]) -> None:
        """Refuse ``blocks`` unless every entry is this pool's own block object (one pass, in
        C); ``op`` names the refused operation. Managers check hits with it."""
        try:
            if self._own_blocks.issuperset(blocks):
                return
        except TypeError:
            pass
        for block in blocks:  # find the first offender for the message
            self._check_block(op, block)

    def _key_suffix(self, op: str, group_id: object) -> bytes:
        """The checked key suffix of ``group_id``, remembered for the next lookup."""
        suffix = self._key_suffixes.get(group_id) if group_id.__class__ is int else None  # type: ignore[call-overload]
        if suffix is None:  # first use, or not a plain int: check it
            suffix = group_id_suffix(op, group_id)
            self._key_suffixes[int(group_id)] = suffix  # type: ignore[call-overload]
        return suffix

    def get_block(self, block_id: int, op: str = "get_block") -> KVCacheBlock:
        """The block with id ``block_id``; :class:`InvalidBlockError` if out of range."""
        if not is_int(block_id):
            raise InvalidBlockError(f"{op}: block id {show(block_id)}; expected an int")
        if not 0 <= block_id < self.num_gpu_blocks:
            raise InvalidBlockError(
                f"{op}: block {block_id} is out of range; expected 0..{self.num_gpu_blocks - 1}"
            )
        return self.blocks[block_id]

    def get_blocks(self, block_ids: Iterable[int], op: str = "get_blocks") -> list[KVCacheBlock]:
        """The blocks for ``block_ids``, in order; every id is checked before any is used."""
        return [self.get_block(block_id, op) for block_id in as_list(op, "block_ids", block_ids)]

    # ---------------------------------------------------------------------- prefix cache

    def get_cached_block(
        self, block_hash: bytes, kv_cache_group_ids: Sequence[int] = (0,)
    ) -> list[KVCacheBlock] | None:
        """One cached block per group holding ``block_hash``, or ``None`` if any group misses.

        All-or-nothing across groups: a hybrid model can use a prefix only if every group has
        it. Pure: no reference count or queue changes (``touch`` does that for real hits).
        """
        # A manager calls this once per block of every prompt, nearly always for one group,
        # so that case reads the index in place (no key helper, no map method call).
        try:
            (group_id,) = kv_cache_group_ids
        except (TypeError, ValueError):
            return self._get_cached_block_in_groups(block_hash, kv_cache_group_ids)
        if group_id == 0 and group_id.__class__ is int:  # one-group models: every lookup
            suffix = _GROUP_0_SUFFIX
        else:
            suffix = self._key_suffix("get_cached_block", group_id)
        if block_hash.__class__ is not bytes:
            check_bytes("get_cached_block", "block_hash", block_hash)
        if not self.enable_caching:
            return None
        block = self.cached_block_hash_to_block._cache.get(block_hash + suffix)
        if block is None:
            return None
        if block.__class__ is dict:  # duplicates: the earliest inserted still holding the key
            block = next(iter(block.values()))  # type: ignore[union-attr]
        return [block]  # type: ignore[list-item]

    def get_cached_prefix(
        self, block_hashes: Sequence[bytes], kv_cache_group_id: int = 0
    ) -> list[KVCacheBlock]:
        """The cached blocks of the longest cached prefix of ``block_hashes`` in one group.

        One block per hash, left to right, stopping at the first miss: hashes are chained, so
        no later block can be a hit once one misses. This is a manager's whole lookup of a
        request in one call, where ``get_cached_block`` takes one call per block; the result
        is what those calls would give. Every hash is checked, including those after the
        miss. Pure, like ``get_cached_block``.
        """
        op = "get_cached_prefix"
        if kv_cache_group_id == 0 and kv_cache_group_id.__class__ is int:
            suffix = _GROUP_0_SUFFIX
        else:
            suffix = self._key_suffix(op, kv_cache_group_id)
        if block_hashes.__class__ is not list and block_hashes.__class__ is not tuple:
            block_hashes = as_list(op, "block_hashes", block_hashes)
        index = self.cached_block_hash_to_block._cache if self.enable_caching else {}
        blocks: list[KVCacheBlock] = []
        for block_hash in block_hashes:
            if block_hash.__class__ is not bytes:
                check_bytes(op, "a block hash", block_hash)
            block = index.get(block_hash + suffix)
            if block is None:
                break
            if block.__class__ is dict:  # duplicates: the earliest inserted still holding it
                block = next(iter(block.values()))  # type: ignore[union-attr]
            blocks.append(block)  # type: ignore[arg-type]
        else:
            return blocks
        for block_hash in block_hashes[len(blocks) + 1:]:  # not looked up, only checked
            if block_hash.__class__ is not bytes:
                check_bytes(op, "a block hash", block_hash)
        return blocks

    def _get_cached_block_in_groups(
        self, block_hash: bytes, kv_cache_group_ids: Iterable[int]
    ) -> list[KVCacheBlock] | None:
        op = "get_cached_block"
        check_bytes(op, "block_hash", block_hash)
        suffixes = [self._key_suffix(op, group_id)
                    for group_id in as_list(op, "kv_cache_group_ids", kv_cache_group_ids)]
        if not self.enable_caching:
            return None
        cached: list[KVCacheBlock] = []
        get_one_block = self.cached_block_hash_to_block.get_one_block
        for suffix in suffixes:
            block = get_one_block(block_hash + suffix)  # type: ignore[arg-type]
            if block is None:
                return None
            cached.append(block)
        return cached

    def cache_block(self, block: KVCacheBlock, block_hash: bytes, group_id: int = 0) -> None:
        """Index one full, referenced, uncached block under ``block_hash`` in ``group_id``.

        Identical content already cached in another block is not deduplicated (see
        :class:`BlockHashToBlockMap`): both blocks then hold the key.
        """
        op = "cache_block"
        self._check_block(op, block)
        check_bytes(op, "block_hash", block_hash)
        key = block_hash + self._key_suffix(op, group_id)
        self._check_cacheable(op, block)
        block._block_hash = key  # the setter's checks were just made
        self.cached_block_hash_to_block.insert(key, block)  # type: ignore[arg-type]

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
        are left uncached. Everything is checked, and every key built, before the first
        block is hashed.
        """
        op = "cache_full_blocks"
        if (num_cached_blocks.__class__ is not int or num_full_blocks.__class__ is not int
                or num_cached_blocks < 0 or num_full_blocks < 0):
            num_cached_blocks = check_int(op, "num_cached_blocks", num_cached_blocks)
            num_full_blocks = check_int(op, "num_full_blocks", num_full_blocks)
        suffix = self._key_suffix(op, kv_cache_group_id)
        if num_cached_blocks >= num_full_blocks:
            return
        try:
            num_blocks, num_hashes = len(blocks), len(block_hashes)
            new_full_blocks = blocks[num_cached_blocks:num_full_blocks]
        except TypeError:
            raise InvalidArgumentError(
                f"{op}: block_hashes={show(block_hashes)}, blocks={show(blocks)}; expected "
                "two sequences"
            ) from None
        if num_blocks < num_full_blocks:
            raise InvalidArgumentError(
                f"{op}: {num_blocks} blocks given; expected at least num_full_blocks="
                f"{num_full_blocks}"
            )
        if num_hashes < num_full_blocks:
            raise InvalidArgumentError(
                f"{op}: {num_hashes} block hashes given; expected at least "
                f"num_full_blocks={num_full_blocks}"
            )
        self.check_blocks(op, new_full_blocks)
        if len(new_full_blocks) > 1 and len(set(new_full_blocks)) != len(new_full_blocks):
            self._check_no_repeats(op, new_full_blocks)
        caching = self.enable_caching
        keys: list[bytes | None] = []  # one per block, None for a null block
        index = num_cached_blocks
        for block in new_full_blocks:
            block_hash = block_hashes[index]
            index += 1
            if block.is_null:
                keys.append(None)
                continue
            if block.ref_cnt <= 0 or block._block_hash is not None or not caching:
                self._check_cacheable(op, block)  # raises the precise refusal
            if block_hash.__class__ is not bytes:
                check_bytes(op, f"hash of block {block.block_id}", block_hash)
            keys.append(block_hash + suffix)
        insert = self.cached_block_hash_to_block.insert
        for block, key in zip(new_full_blocks, keys, strict=False):  # equal lengths
            if key is not None:
                block._block_hash = key
                insert(key, block)  # type: ignore[arg-type]

    def _check_no_repeats(self, op: str, blocks: Sequence[KVCacheBlock]) -> None:
        """Refuse a data block listed twice (null blocks may repeat: skipped positions)."""
        seen: set[int] = set()
        for block in blocks:
            if block.is_null:
                continue
            if block.block_id in seen:
                raise CacheStateError(
                    f"{op}: block {block.block_id} appears twice among the new full blocks; "
                    "expected each block hashed once"
                )
            seen.add(block.block_id)

    def _check_cacheable(self, op: str, block: KVCacheBlock) -> None:
        if not self.enable_caching:
            raise CacheStateError(
                f"{op}: block {block.block_id}: prefix caching is disabled for this pool; "
                "expected enable_caching=True"
            )
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
        block_hash = block._block_hash
        if block_hash is None:
            return False
        if self.cached_block_hash_to_block.pop(block_hash, block.block_id) is None:
            # Hashed but not indexed under that key: leave the block as it is, as upstream does.
            return False
        block._block_hash = None
        return True

    def evict_blocks(self, block_ids: Iterable[int]) -> None:
        """Drop the listed blocks from the prefix cache (KV connectors report lost blocks).

        Only hashes go: reference counts and queue membership stay as they are. Every id is
        checked before the first hash goes.
        """
        for block in self.get_blocks(block_ids, "evict_blocks"):
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
        queue = self.free_block_queue
        if num_blocks.__class__ is not int or num_blocks < 0:
            num_blocks = check_int("get_new_blocks", "num_blocks", num_blocks)
        if num_blocks > queue.num_free_blocks:
            raise NoFreeBlocksError(
                f"get_new_blocks: cannot get {num_blocks} free blocks; expected at most "
                f"{queue.num_free_blocks}"
            )
        ret = queue.popleft_n(num_blocks)
        # Two loops rather than a branch per block: caching is fixed for the pool's life.
        if self.enable_caching:
            for block in ret:
                if block._block_hash is not None:  # a cached block: an eviction victim
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
        if blocks.__class__ is not list and blocks.__class__ is not tuple:
            blocks = as_list("touch", "blocks", blocks)
        self.check_blocks("touch", blocks)
        skip_null = self._skip_null_in_touch
        queue, null = self.free_block_queue, self.null_block
        for block in blocks:
            if block is null:  # the blocks are checked to be ours: identity is enough
                if not skip_null:
                    block.ref_cnt += 1
                continue
            if block.ref_cnt == 0:
                queue.remove(block)
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

        Refused, with nothing changed, if any entry is not this pool's block or any block
        would drop below 0, counting repeats.
        """
        blocks = (ordered_blocks if ordered_blocks.__class__ is list
                  else as_list("free_blocks", "ordered_blocks", ordered_blocks))
        self.check_blocks("free_blocks", blocks)
        skip_null = self._skip_null_in_free
        # Where a block reaching 0 goes: current prepends the unhashed ones (all of them when
        # caching is off) and appends the hashed ones; classic appends all.
        prepend = self._prepend_unhashed_on_free
        by_hash = prepend and self.enable_caching
        to_front: list[KVCacheBlock] = []
        to_back: list[KVCacheBlock] = []
        unsplit = to_front if prepend else to_back
        # Decrement tentatively and undo on a refusal: no queue change happens until every
        # block has passed, and no separate counting pass (or Counter) is needed for repeats.
        null = self.null_block
        for i, block in enumerate(blocks):
            ref_cnt = block.ref_cnt
            if block is null:
                if not skip_null:
                    block.ref_cnt = ref_cnt - 1  # classic: drifts, may go negative, never queued
            elif ref_cnt > 1:
                block.ref_cnt = ref_cnt - 1
            elif ref_cnt == 1:
                block.ref_cnt = 0
                if by_hash:
                    (to_back if block._block_hash is not None else to_front).append(block)
                else:
                    unsplit.append(block)
            else:
                self._undo_free(blocks, i)
                raise RefCountError(
                    f"free_blocks: block {block.block_id} would drop to ref_cnt "
                    f"{ref_cnt - 1}; expected each block freed at most as many times as "
                    "it is referenced"
                )
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
