"""The free queue: blocks with ``ref_cnt == 0``, in eviction order.

Why not ``collections.deque``: the pool must remove a block from the *middle* of the queue
whenever a prefix-cache hit revives an eviction candidate (``touch``). A deque makes that
O(n). Linking the blocks through their own ``prev_free_block``/``next_free_block`` fields
makes it O(1) and allocates no Python object per operation: the blocks already exist.
"""

from __future__ import annotations

from collections.abc import Iterator

from kvspec.impl.block import KVCacheBlock
from kvspec.impl.errors import FreeQueueError, InvalidArgumentError, NoFreeBlocksError


class FreeKVCacheBlockQueue:
    """An intrusive doubly linked list of free blocks; the front is evicted first.

    Two sentinel blocks (id -1) bracket the list and are never popped, so every queued block
    has a non-``None`` neighbour on both sides and no operation special-cases the ends. A
    block's pointers are ``None`` exactly when it is not queued; :meth:`remove` relies on
    that to refuse a block that is not here.

    The ``append``/``prepend`` family trusts its caller to pass blocks that are not already
    queued (the pool guarantees it through reference counts); checking would cost a pass.
    """

    __slots__ = ("num_free_blocks", "fake_free_list_head", "fake_free_list_tail")

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self.num_free_blocks: int = len(blocks)
        self.fake_free_list_head = KVCacheBlock(block_id=-1)
        self.fake_free_list_tail = KVCacheBlock(block_id=-1)
        prev = self.fake_free_list_head
        for block in blocks:
            prev.next_free_block = block
            block.prev_free_block = prev
            prev = block
        prev.next_free_block = self.fake_free_list_tail
        self.fake_free_list_tail.prev_free_block = prev

    def __len__(self) -> int:
        return self.num_free_blocks

    def popleft(self) -> KVCacheBlock:
        """Unlink and return the front block. O(1)."""
        head = self.fake_free_list_head
        first = head.next_free_block
        if first is None or first is self.fake_free_list_tail:
            raise NoFreeBlocksError("popleft: no free blocks available; expected a non-empty queue")
        nxt = first.next_free_block
        if nxt is None:
            raise FreeQueueError(
                f"popleft: block {first.block_id} is at the front but has no next pointer; "
                "expected an intact list"
            )
        head.next_free_block = nxt
        nxt.prev_free_block = head
        first.prev_free_block = first.next_free_block = None
        self.num_free_blocks -= 1
        return first

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        """Unlink and return the first ``n`` blocks in queue order. O(n).

        The head is relinked once, after the walk, rather than once per block.
        """
        if n == 0:
            return []
        if n < 0:
            raise InvalidArgumentError(f"popleft_n: got n={n}; expected n >= 0")
        if n > self.num_free_blocks:
            raise NoFreeBlocksError(
                f"popleft_n: asked for {n} blocks; expected at most {self.num_free_blocks}"
            )
        self.num_free_blocks -= n
        result = [None] * n  # one list, filled in place
        curr = self.fake_free_list_head.next_free_block
        for i in range(n):
            result[i] = curr
            last = curr
            curr = curr.next_free_block
            last.prev_free_block = last.next_free_block = None
        self.fake_free_list_head.next_free_block = curr
        curr.prev_free_block = self.fake_free_list_head
        return result  # type: ignore[return-value]

    def remove(self, block: KVCacheBlock) -> None:
        """Unlink ``block`` from wherever it stands. O(1): only its two neighbours change."""
        prev, nxt = block.prev_free_block, block.next_free_block
        if prev is None or nxt is None:
            raise FreeQueueError(
                f"remove: block {block.block_id} is not in the free queue; expected a queued "
                "block (ref_cnt == 0, not null)"
            )
        prev.next_free_block = nxt
        nxt.prev_free_block = prev
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        """Put ``block`` at the back (evicted last). O(1)."""
        tail = self.fake_free_list_tail
        last = tail.prev_free_block
        last.next_free_block = block  # type: ignore[union-attr]
        block.prev_free_block = last
        block.next_free_block = tail
        tail.prev_free_block = block
        self.num_free_blocks += 1

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        """Put ``blocks`` at the back in the given order. O(k)."""
        if not blocks:
            return
        tail = self.fake_free_list_tail
        last = tail.prev_free_block
        for block in blocks:
            block.prev_free_block = last
            last.next_free_block = block  # type: ignore[union-attr]
            last = block
        last.next_free_block = tail
        tail.prev_free_block = last
        self.num_free_blocks += len(blocks)

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        """Put ``blocks`` at the front in the given order (``blocks[0]`` evicted first). O(k).

        A later call lands in front of an earlier call's blocks.
        """
        if not blocks:
            return
        head = self.fake_free_list_head
        first = head.next_free_block
        prev = head
        for block in blocks:
            block.prev_free_block = prev
            prev.next_free_block = block
            prev = block
        prev.next_free_block = first
        first.prev_free_block = prev  # type: ignore[union-attr]
        self.num_free_blocks += len(blocks)

    def __iter__(self) -> Iterator[KVCacheBlock]:
        """Blocks in queue order, front first. Do not mutate the queue while iterating."""
        tail = self.fake_free_list_tail
        curr = self.fake_free_list_head.next_free_block
        while curr is not None and curr is not tail:
            yield curr
            curr = curr.next_free_block

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        """All queued blocks, front (next evicted) first. O(N); for tests and observation."""
        return list(self)
