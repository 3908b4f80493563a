"""Free-queue contenders built on ``collections``, with ``FreeKVCacheBlockQueue``'s interface.

Each holds the same :class:`~kvspec.impl.block.KVCacheBlock` objects as the linked list and keeps
its
order semantics exactly (front evicted first; ``prepend_n`` puts ``blocks[0]`` at the very
front), so the benchmark compares data structures, not behaviours; the smoke tests check that
all of them produce the same order for the same operations.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

from kvspec.impl.block import KVCacheBlock
from kvspec.impl.errors import FreeQueueError, InvalidArgumentError, NoFreeBlocksError


def _check_n(op: str, n: int, available: int) -> None:
    if n < 0:
        raise InvalidArgumentError(f"{op}: got n={n}; expected n >= 0")
    if n > available:
        raise NoFreeBlocksError(f"{op}: asked for {n} blocks; expected at most {available}")


class DequeIndexQueue:
    """``deque`` plus a dict index, with lazy deletion: O(1) ``remove``.

    A deque cannot unlink from the middle cheaply, so ``remove`` only forgets the block in
    ``_live`` (block id -> generation of its live entry) and leaves a dead entry behind;
    ``popleft`` discards dead entries as it meets them. A block removed and queued again has two
    entries, so each entry carries the generation it was queued with: a ``(generation, block)``
    tuple, one Python object per enqueue -- the allocation the linked list exists to avoid.
    The deque is rebuilt when dead entries outnumber live ones, keeping memory O(live) and
    ``popleft`` amortised O(1).
    """

    __slots__ = ("_entries", "_live", "_gen")

    def __init__(self, blocks: Iterable[KVCacheBlock]) -> None:
        self._entries: deque[tuple[int, KVCacheBlock]] = deque()
        self._live: dict[int, int] = {}
        self._gen = 0
        self.append_n(list(blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def popleft(self) -> KVCacheBlock:
        entries, live = self._entries, self._live
        while entries:
            gen, block = entries.popleft()
            if live.get(block.block_id) == gen:
                del live[block.block_id]
                return block
        raise NoFreeBlocksError("popleft: no free blocks available; expected a non-empty queue")

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        _check_n("popleft_n", n, len(self._live))
        entries, live = self._entries, self._live
        popleft, get = entries.popleft, live.get
        result: list[KVCacheBlock] = []
        while len(result) < n:
            gen, block = popleft()
            if get(block.block_id) == gen:
                del live[block.block_id]
                result.append(block)
        return result

    def append(self, block: KVCacheBlock) -> None:
        self._gen = gen = self._gen + 1
        self._live[block.block_id] = gen
        self._entries.append((gen, block))

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        gen, live, push = self._gen, self._live, self._entries.append
        for block in blocks:
            gen += 1
            live[block.block_id] = gen
            push((gen, block))
        self._gen = gen

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        gen, live, push = self._gen, self._live, self._entries.appendleft
        for block in reversed(blocks):
            gen += 1
            live[block.block_id] = gen
            push((gen, block))
        self._gen = gen

    def remove(self, block: KVCacheBlock) -> None:
        try:
            del self._live[block.block_id]
        except KeyError:
            raise FreeQueueError(
                f"remove: block {block.block_id} is not in the free queue; expected a queued block"
            ) from None
        if len(self._entries) > 2 * len(self._live) + 64:
            live = self._live
            self._entries = deque(e for e in self._entries if live.get(e[1].block_id) == e[0])

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        live = self._live
        return [block for gen, block in self._entries if live.get(block.block_id) == gen]


class OrderedDictQueue:
    """An ``OrderedDict`` keyed by block id: O(1) everything, in C.

    CPython's ``OrderedDict`` is itself a doubly linked list plus a hash table, written in C;
    this is the "let the standard library keep the list" alternative.
    """

    __slots__ = ("_od",)

    def __init__(self, blocks: Iterable[KVCacheBlock]) -> None:
        self._od: OrderedDict[int, KVCacheBlock] = OrderedDict((b.block_id, b) for b in blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._od)

    def __len__(self) -> int:
        return len(self._od)

    def popleft(self) -> KVCacheBlock:
        try:
            return self._od.popitem(last=False)[1]
        except KeyError:
            raise NoFreeBlocksError(
                "popleft: no free blocks available; expected a non-empty queue"
            ) from None

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        _check_n("popleft_n", n, len(self._od))
        popitem = self._od.popitem
        return [popitem(False)[1] for _ in range(n)]

    def append(self, block: KVCacheBlock) -> None:
        self._od[block.block_id] = block

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        od = self._od
        for block in blocks:
            od[block.block_id] = block

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        od = self._od
        for block in reversed(blocks):
            od[block.block_id] = block
            od.move_to_end(block.block_id, last=False)

    def remove(self, block: KVCacheBlock) -> None:
        try:
            del self._od[block.block_id]
        except KeyError:
            raise FreeQueueError(
                f"remove: block {block.block_id} is not in the free queue; expected a queued block"
            ) from None

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        return list(self._od.values())


class DequeScanQueue:
    """A plain ``deque``; ``remove`` is ``deque.remove``, a linear scan: O(n).

    The obvious design. Everything but removal runs in C.
    """

    __slots__ = ("_dq",)

    def __init__(self, blocks: Iterable[KVCacheBlock]) -> None:
        self._dq: deque[KVCacheBlock] = deque(blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._dq)

    def __len__(self) -> int:
        return len(self._dq)

    def popleft(self) -> KVCacheBlock:
        try:
            return self._dq.popleft()
        except IndexError:
            raise NoFreeBlocksError(
                "popleft: no free blocks available; expected a non-empty queue"
            ) from None

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        _check_n("popleft_n", n, len(self._dq))
        popleft = self._dq.popleft
        return [popleft() for _ in range(n)]

    def append(self, block: KVCacheBlock) -> None:
        self._dq.append(block)

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        self._dq.extend(blocks)

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        self._dq.extendleft(reversed(blocks))

    def remove(self, block: KVCacheBlock) -> None:
        try:
            self._dq.remove(block)  # KVCacheBlock compares by identity: a C-level scan
        except ValueError:
            raise FreeQueueError(
                f"remove: block {block.block_id} is not in the free queue; expected a queued block"
            ) from None

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        return list(self._dq)
