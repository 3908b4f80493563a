"""FreeKVCacheBlockQueue: an intrusive doubly linked list through the blocks' own fields."""

from __future__ import annotations

import pytest
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.errors import FreeQueueError, InvalidArgumentError, NoFreeBlocksError
from kvspec.impl.free_queue import FreeKVCacheBlockQueue


def make_queue(n: int) -> tuple[list[KVCacheBlock], FreeKVCacheBlockQueue]:
    blocks = [KVCacheBlock(i) for i in range(n)]
    return blocks, FreeKVCacheBlockQueue(blocks)


def ids(queue: FreeKVCacheBlockQueue) -> list[int]:
    return [b.block_id for b in queue.get_all_free_blocks()]


def assert_well_formed(queue: FreeKVCacheBlockQueue, all_blocks: list[KVCacheBlock]) -> None:
    """Links agree both ways, the counter matches, and unqueued blocks have no pointers."""
    forward = []
    node = queue.fake_free_list_head
    while node.next_free_block is not None:
        assert node.next_free_block.prev_free_block is node
        node = node.next_free_block
        forward.append(node)
    assert node is queue.fake_free_list_tail
    queued = forward[:-1]
    assert len(queued) == queue.num_free_blocks == len(queue)
    assert len({id(b) for b in queued}) == len(queued)
    assert queue.fake_free_list_head.prev_free_block is None
    for block in all_blocks:
        if not any(block is q for q in queued):
            assert block.prev_free_block is None and block.next_free_block is None


class WriteCountingBlock(KVCacheBlock):
    """A block that records which blocks had a pointer written, to show O(1) work."""

    writes: list[int] = []

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("prev_free_block", "next_free_block"):
            WriteCountingBlock.writes.append(self.block_id)
        super().__setattr__(name, value)


def test_construction_links_blocks_in_the_given_order() -> None:
    blocks, queue = make_queue(5)
    assert ids(queue) == [0, 1, 2, 3, 4]
    assert_well_formed(queue, blocks)


def test_empty_queue_links_head_to_tail() -> None:
    queue = FreeKVCacheBlockQueue([])
    assert queue.fake_free_list_head.next_free_block is queue.fake_free_list_tail
    assert queue.num_free_blocks == 0
    assert ids(queue) == []


def test_popleft_returns_front_and_clears_its_pointers() -> None:
    blocks, queue = make_queue(3)
    first = queue.popleft()
    assert first.block_id == 0
    assert first.prev_free_block is None and first.next_free_block is None
    assert ids(queue) == [1, 2]
    assert_well_formed(queue, blocks)


def test_popleft_on_empty_queue_raises_no_free_blocks() -> None:
    queue = FreeKVCacheBlockQueue([])
    with pytest.raises(NoFreeBlocksError, match="popleft"):
        queue.popleft()
    assert isinstance(NoFreeBlocksError("x"), ValueError)


def test_popleft_n_takes_front_blocks_in_order() -> None:
    blocks, queue = make_queue(5)
    assert [b.block_id for b in queue.popleft_n(3)] == [0, 1, 2]
    assert ids(queue) == [3, 4]
    assert queue.popleft_n(0) == []
    assert [b.block_id for b in queue.popleft_n(2)] == [3, 4]
    assert ids(queue) == []
    assert_well_formed(queue, blocks)


def test_popleft_n_beyond_free_count_raises_and_changes_nothing() -> None:
    blocks, queue = make_queue(3)
    with pytest.raises(NoFreeBlocksError, match="popleft_n: asked for 4 blocks"):
        queue.popleft_n(4)
    with pytest.raises(InvalidArgumentError):
        queue.popleft_n(-1)
    assert ids(queue) == [0, 1, 2]
    assert_well_formed(queue, blocks)


def test_remove_from_middle_touches_only_the_block_and_its_neighbours() -> None:
    for n in (5, 200):
        blocks = [WriteCountingBlock(i) for i in range(n)]
        queue = FreeKVCacheBlockQueue(blocks)
        WriteCountingBlock.writes = []
        queue.remove(blocks[n // 2])
        # The same four pointer writes whatever the queue length: O(1).
        assert sorted(WriteCountingBlock.writes) == sorted([n // 2 - 1, n // 2 + 1, n // 2, n // 2])
        assert blocks[n // 2] not in queue.get_all_free_blocks()
        assert queue.num_free_blocks == n - 1
        assert_well_formed(queue, blocks)


def test_remove_of_unqueued_block_raises_free_queue_error() -> None:
    blocks, queue = make_queue(3)
    popped = queue.popleft()
    with pytest.raises(FreeQueueError, match="remove: block 0 is not in the free queue"):
        queue.remove(popped)
    assert isinstance(FreeQueueError("x"), RuntimeError)
    assert ids(queue) == [1, 2]


def test_append_puts_block_at_back() -> None:
    blocks, queue = make_queue(3)
    first = queue.popleft()
    queue.append(first)
    assert ids(queue) == [1, 2, 0]
    assert_well_formed(queue, blocks)


def test_append_n_keeps_given_order_at_back() -> None:
    blocks, queue = make_queue(5)
    popped = queue.popleft_n(3)
    queue.append_n([popped[2], popped[0]])
    assert ids(queue) == [3, 4, 2, 0]
    queue.append_n([])
    assert ids(queue) == [3, 4, 2, 0]
    assert_well_formed(queue, blocks)


def test_prepend_n_keeps_given_order_and_second_call_lands_in_front() -> None:
    blocks, queue = make_queue(6)
    popped = queue.popleft_n(4)
    queue.prepend_n([popped[1], popped[0]])
    assert ids(queue) == [1, 0, 4, 5]
    queue.prepend_n([popped[3], popped[2]])
    assert ids(queue) == [3, 2, 1, 0, 4, 5]
    queue.prepend_n([])
    assert queue.num_free_blocks == 6
    assert_well_formed(queue, blocks)


def test_prepend_and_append_work_on_an_emptied_queue() -> None:
    blocks, queue = make_queue(3)
    popped = queue.popleft_n(3)
    queue.prepend_n([popped[2]])
    queue.append_n([popped[0]])
    queue.prepend_n([popped[1]])
    assert ids(queue) == [1, 2, 0]
    assert_well_formed(queue, blocks)


def test_removed_block_can_be_reappended_and_popped_in_order() -> None:
    blocks, queue = make_queue(4)
    queue.remove(blocks[0])
    queue.remove(blocks[3])
    queue.append(blocks[0])
    assert [queue.popleft().block_id for _ in range(3)] == [1, 2, 0]
    assert_well_formed(queue, blocks)
