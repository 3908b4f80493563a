"""Block metadata and the prefix-cache key format.

A :class:`KVCacheBlock` is metadata only: the K/V tensors live elsewhere (a block store
indexed by ``block_id``). The pool creates one object per physical block at start-up and
never allocates another, which is what lets the free queue link blocks through their own
fields.

Keys follow upstream's ``BlockHashWithGroupId``: the content hash followed by the KV-cache
group id as 4 big-endian unsigned bytes. The same content cached in two groups (say a full
attention group and a sliding-window group of a hybrid model) therefore gets two distinct
keys, and a lookup in one group can never return another group's block.
"""

from __future__ import annotations

from typing import NewType

from kvspec.impl.errors import CacheStateError, InvalidArgumentError
from kvspec.impl.validate import is_int, show

BlockHash = NewType("BlockHash", bytes)
"""The chained content hash of one full block (see ``hash_block_tokens`` upstream)."""

BlockHashWithGroupId = NewType("BlockHashWithGroupId", bytes)
"""A prefix-cache key: ``BlockHash`` bytes then the group id as 4 big-endian bytes."""

GROUP_ID_BYTES = 4
MAX_GROUP_ID = (1 << (8 * GROUP_ID_BYTES)) - 1


def group_id_suffix(op: str, group_id: object) -> bytes:
    """The 4 bytes that end every key of group ``group_id``; refused unless an int that fits."""
    if not is_int(group_id) or not 0 <= group_id <= MAX_GROUP_ID:  # type: ignore[operator]
        raise InvalidArgumentError(
            f"{op}: group id {show(group_id)} does not fit in 4 unsigned bytes; expected an "
            f"int in 0..{MAX_GROUP_ID}"
        )
    return int(group_id).to_bytes(GROUP_ID_BYTES, "big")  # type: ignore[call-overload]


def make_block_hash_with_group_id(block_hash: bytes, group_id: int) -> BlockHashWithGroupId:
    """Build the prefix-cache key of ``block_hash`` in KV-cache group ``group_id``."""
    op = "make_block_hash_with_group_id"
    if not isinstance(block_hash, bytes):
        raise InvalidArgumentError(f"{op}: block_hash={show(block_hash)}; expected bytes")
    return BlockHashWithGroupId(block_hash + group_id_suffix(op, group_id))


def get_block_hash(key: BlockHashWithGroupId) -> BlockHash:
    """The content hash of a prefix-cache key (the key without its group id)."""
    return BlockHash(key[:-GROUP_ID_BYTES])


def get_group_id(key: BlockHashWithGroupId) -> int:
    """The KV-cache group id encoded in the last 4 bytes of a prefix-cache key."""
    return int.from_bytes(key[-GROUP_ID_BYTES:], "big")


class KVCacheBlock:
    """Metadata of one physical KV-cache block.

    Slotted, not a dict-backed object: a pool holds tens of thousands of these, and the free
    queue reads and writes their pointer fields on every allocation.

    ``prev_free_block`` and ``next_free_block`` belong to :class:`FreeKVCacheBlockQueue` alone;
    both are ``None`` exactly when the block is not queued. ``_block_hash`` is set while the
    block is full and indexed in the prefix cache, and at most once until :meth:`reset_hash`.
    """

    __slots__ = (
        "block_id",
        "ref_cnt",
        "_block_hash",
        "prev_free_block",
        "next_free_block",
        "is_null",
    )

    def __init__(self, block_id: int, ref_cnt: int = 0, is_null: bool = False) -> None:
        self.block_id: int = block_id
        self.ref_cnt: int = ref_cnt
        self._block_hash: BlockHashWithGroupId | None = None
        self.prev_free_block: KVCacheBlock | None = None
        self.next_free_block: KVCacheBlock | None = None
        self.is_null: bool = is_null

    @property
    def block_hash(self) -> BlockHashWithGroupId | None:
        """The prefix-cache key this block is indexed under, or ``None`` if uncached."""
        return self._block_hash

    @block_hash.setter
    def block_hash(self, block_hash: BlockHashWithGroupId) -> None:
        # A second hash would leave the first key in the index pointing at changed content.
        if self._block_hash is not None:
            raise CacheStateError(
                f"set block_hash: block {self.block_id} already has a hash; expected an "
                "uncached block (call reset_hash() when it is evicted)"
            )
        if block_hash is None:
            raise CacheStateError(
                f"set block_hash: got None for block {self.block_id}; expected a key "
                "(use reset_hash() to clear one)"
            )
        self._block_hash = block_hash

    def reset_hash(self) -> None:
        """Forget the hash; the pool calls this when the block leaves the prefix cache."""
        self._block_hash = None

    # Pickled as a tuple of its fields rather than the default dict of slot names: the
    # conformance engines copy whole pools by pickling, about three times faster this way.
    def __getstate__(self) -> tuple[object, ...]:
        return (self.block_id, self.ref_cnt, self._block_hash, self.prev_free_block,
                self.next_free_block, self.is_null)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        (self.block_id, self.ref_cnt, self._block_hash, self.prev_free_block,  # type: ignore[assignment]
         self.next_free_block, self.is_null) = state

    def __repr__(self) -> str:
        # Neighbours by id only: printing them whole would walk the entire queue.
        prev_id = self.prev_free_block.block_id if self.prev_free_block is not None else None
        next_id = self.next_free_block.block_id if self.next_free_block is not None else None
        return (
            f"KVCacheBlock(block_id={self.block_id}, ref_cnt={self.ref_cnt}, "
            f"block_hash={self._block_hash!r}, prev_free_block={prev_id}, "
            f"next_free_block={next_id}, is_null={self.is_null})"
        )
