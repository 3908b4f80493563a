"""A third-party allocator written only from the protocol docs (conformance/pool/protocol.py).

It is correct but makes different choices: it always hands out the *highest* free id and
keeps no LRU order. kvspec's abstract mode must accept it; strict mode must reject it at
the first allocation whose ids differ from the spec's.
"""

from __future__ import annotations

from collections.abc import Sequence


class HighestFreeIdPool:
    def __init__(self, num_blocks: int, *, enable_caching: bool = True,
                 profile: str = "current") -> None:
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.refs = [0] * num_blocks
        self.hashes: list[bytes | None] = [None] * num_blocks
        self.index: dict[bytes, list[int]] = {}
        self.count_null = profile == "classic"

    def _check_ids(self, ids: Sequence[int]) -> None:
        for b in ids:
            if not 0 <= b < self.num_blocks:
                raise IndexError(f"block {b} out of range")

    def _free_ids(self) -> list[int]:
        return [b for b in range(self.num_blocks - 1, 0, -1) if self.refs[b] == 0]

    def get_new_blocks(self, num_blocks: int) -> list[int]:
        free = self._free_ids()
        if not 0 <= num_blocks <= len(free):
            raise ValueError(f"cannot allocate {num_blocks} of {len(free)} free blocks")
        chosen = free[:num_blocks]
        for b in chosen:
            h = self.hashes[b]
            if h is not None:
                self.index[h].remove(b)
                if not self.index[h]:
                    del self.index[h]
                self.hashes[b] = None
            self.refs[b] = 1
        return chosen

    def touch(self, block_ids: Sequence[int]) -> None:
        self._check_ids(block_ids)
        for b in block_ids:
            if b != 0 or self.count_null:
                self.refs[b] += 1

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        self._check_ids(block_ids)
        for b in set(block_ids):
            if b != 0 and self.refs[b] < list(block_ids).count(b):
                raise ValueError(f"block {b} freed more often than referenced")
        for b in block_ids:
            if b != 0 or self.count_null:
                self.refs[b] -= 1

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        self._check_ids([block_id])
        if not self.enable_caching or block_id == 0 or self.refs[block_id] <= 0:
            raise ValueError(f"cannot cache block {block_id}")
        if self.hashes[block_id] is not None:
            raise ValueError(f"block {block_id} already cached")
        self.hashes[block_id] = block_hash
        self.index.setdefault(block_hash, []).append(block_id)

    def get_cached_block(self, block_hash: bytes) -> int | None:
        holders = self.index.get(block_hash) if self.enable_caching else None
        return holders[0] if holders else None

    def reset_prefix_cache(self) -> bool:
        if any(self.refs[1:]):
            return False
        self.index.clear()
        self.hashes = [None] * self.num_blocks
        return True

    def fork_block(self, block_id: int) -> int:
        self._check_ids([block_id])
        if block_id == 0 or self.refs[block_id] <= 0:
            raise ValueError(f"cannot fork block {block_id}")
        if self.refs[block_id] == 1:
            return block_id
        (new,) = self.get_new_blocks(1)
        self.refs[block_id] -= 1
        return new

    def get_num_free_blocks(self) -> int:
        return len(self._free_ids())

    def get_usage(self) -> float:
        usable = self.num_blocks - 1
        return 0.0 if usable == 0 else 1.0 - self.get_num_free_blocks() / usable

    def ref_cnt(self, block_id: int) -> int:
        return self.refs[block_id]

    def block_hash(self, block_id: int) -> bytes | None:
        return self.hashes[block_id]

    def free_block_ids(self) -> list[int]:
        return self._free_ids()


def factory(num_blocks: int, *, enable_caching: bool = True,
            profile: str = "current") -> HighestFreeIdPool:
    return HighestFreeIdPool(num_blocks, enable_caching=enable_caching, profile=profile)
