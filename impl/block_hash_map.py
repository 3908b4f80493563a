"""The prefix-cache index: key -> the block or blocks holding that content."""

from __future__ import annotations

from kvspec.impl.block import BlockHashWithGroupId, KVCacheBlock


class BlockHashToBlockMap:
    """Maps a ``BlockHashWithGroupId`` to every cached block holding that content.

    Not deduplicated: when a block fills up and is hashed, the pool does not look for an
    identical cached block to share instead. Swapping the request's block for the older one
    would rewrite an entry of its block table, and block tables must stay append-only with
    stable ids (the model runner has already written KV data into that block). Two physical
    blocks may therefore hold one key.

    A value is a bare :class:`KVCacheBlock` in the common case and a ``dict[block_id, block]``
    only when duplicates exist: one inner dict per key would be thousands of extra objects for
    the garbage collector to traverse, almost all holding a single entry.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[BlockHashWithGroupId, KVCacheBlock | dict[int, KVCacheBlock]] = {}

    def get_one_block(self, key: BlockHashWithGroupId) -> KVCacheBlock | None:
        """A block holding ``key``: the bare block, or the earliest inserted one still here."""
        blocks = self._cache.get(key)
        if blocks is None:
            return None
        if isinstance(blocks, KVCacheBlock):
            return blocks
        return next(iter(blocks.values()))

    def contain(self, key: BlockHashWithGroupId, block_id: int) -> bool:
        """Whether block ``block_id`` is indexed under ``key``."""
        blocks = self._cache.get(key)
        if blocks is None:
            return False
        if isinstance(blocks, KVCacheBlock):
            return blocks.block_id == block_id
        return block_id in blocks

    def insert(self, key: BlockHashWithGroupId, block: KVCacheBlock) -> None:
        """Index ``block`` under ``key``, next to any blocks already holding it."""
        blocks = self._cache.get(key)
        if blocks is None:
            self._cache[key] = block
        elif isinstance(blocks, KVCacheBlock):
            self._cache[key] = {blocks.block_id: blocks, block.block_id: block}
        else:
            blocks[block.block_id] = block

    def pop(self, key: BlockHashWithGroupId, block_id: int) -> KVCacheBlock | None:
        """Remove block ``block_id`` from ``key`` and return it; other holders stay.

        ``None`` when ``key`` is absent or another block holds it. A dict left with one entry
        stays a dict: collapsing it back would cost a branch on every pop to save nothing.
        """
        blocks = self._cache.get(key)
        if blocks is None:
            return None
        if isinstance(blocks, KVCacheBlock):
            if blocks.block_id != block_id:
                return None
            del self._cache[key]
            return blocks
        block = blocks.pop(block_id, None)
        if not blocks:
            del self._cache[key]
        return block

    def __len__(self) -> int:
        """Number of keys (not blocks)."""
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache
