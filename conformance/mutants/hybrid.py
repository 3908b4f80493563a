"""Hybrid-level mutants: each a ``HybridKVCacheCoordinator`` subclass with one realistic bug.

Every class docstring says what real mistake it models; the bug lives in the one method
(or group manager) it overrides.
"""

from __future__ import annotations

from kvspec.conformance.hybrid.targets import hybrid_factory_for
from kvspec.conformance.mutants.zoo import Mutant
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.coordinator import HybridKVCacheCoordinator, SlidingWindowManager
from kvspec.impl.kv_cache_manager import cdiv
from kvspec.impl.request import Request


class TouchAndAllocatePerGroup(HybridKVCacheCoordinator):
    """Admission group by group: each group touches its hits and takes its external-token
    blocks before the next group touches its own (vLLM 0.22.x), so one group's pop can
    take another group's not-yet-touched hit from the free queue."""

    def allocate_new_computed_blocks(
        self, request_id: str, hits: list[list[KVCacheBlock]], num_skipped: list[int],
        total_computed_tokens: int, num_external_computed_tokens: int,
    ) -> None:
        for group, kept, skipped in zip(self.groups, hits, num_skipped, strict=True):
            if kept and self.enable_caching:
                self.block_pool.touch(kept)
            table = group.req_to_blocks.setdefault(request_id, [])
            table.extend([self.block_pool.null_block] * skipped)
            table.extend(kept)
            group.num_cached_block[request_id] = len(table)
            n = cdiv(total_computed_tokens, group.block_size) - len(table)
            if num_external_computed_tokens and n > 0:
                table.extend(self.block_pool.get_new_blocks(n))


class HitAlignedToFinestGroup(HybridKVCacheCoordinator):
    """Hits (and caching) aligned to the smallest block size instead of the lcm: a hit
    can end mid-block in a coarser group."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.scheduler_block_size = min(g.block_size for g in self.groups)


class _EarlyWindow(SlidingWindowManager):
    def get_num_skipped_tokens(self, num_computed_tokens: int) -> int:
        return max(0, num_computed_tokens - self.sliding_window + 1 + self.block_size)


class WindowFreesOneBlockEarly(HybridKVCacheCoordinator):
    """The window's edge counted one block late: a sliding group gives back the last
    block its window still reads."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.groups = [_EarlyWindow(g.group_id, g.block_size, g.sliding_window)
                       if isinstance(g, SlidingWindowManager) else g for g in self.groups]


class SlidingHitOneBlockShort(HybridKVCacheCoordinator):
    """A sliding-window hit asks for one block fewer than the window reads (an off-by-one
    in ``cdiv(sliding_window - 1, block_size)``), so the hit's first window block is a
    null the model then reads."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        for g in self.groups:
            if isinstance(g, SlidingWindowManager):
                g.contiguous_blocks = max(g.contiguous_blocks - 1, 1)


class FixedPointOnePass(HybridKVCacheCoordinator):
    """The hit search stops after one pass over the groups, as if every model were "one
    full-attention type plus one other": a later group's shorter hit never re-checks the
    earlier sliding groups at the shorter length."""

    def _find_longest_cache_hit(
        self, request: Request, max_cache_hit_length: int
    ) -> tuple[tuple[list[KVCacheBlock], ...], int]:
        align = self.scheduler_block_size
        length = max_cache_hit_length - max_cache_hit_length % align
        per_group: list[list[KVCacheBlock]] = [[] for _ in self.groups]
        for group in sorted(self.groups, key=lambda g: g.sliding_window is not None):
            blocks = group.find_longest_cache_hit(
                self.block_pool, self._view(request, group), length, align)
            per_group[group.group_id] = blocks
            length = min(length, len(blocks) * group.block_size)
        return tuple(b[:length // g.block_size]
                     for b, g in zip(per_group, self.groups, strict=True)), length


class _OneKeySpacePool(BlockPool):
    def _key_suffix(self, op: str, group_id: object) -> bytes:
        return super()._key_suffix(op, 0)


class GroupIdDroppedFromKey(HybridKVCacheCoordinator):
    """Every group caches under the same key space (the group id is left out of the key),
    so a group can hit a block another group wrote."""

    def __init__(self, num_blocks: int, *args: object, **kwargs: object) -> None:
        super().__init__(num_blocks, *args, **kwargs)  # type: ignore[arg-type]
        pool = self.block_pool
        self.block_pool = _OneKeySpacePool(num_blocks, enable_caching=pool.enable_caching,
                                           profile=self.profile)
        self._key_suffixes = [self._key_suffixes[0]] * len(self.groups)


def _hybrid(name: str, cls: type[HybridKVCacheCoordinator]) -> Mutant:
    return Mutant(name=name, level="hybrid", factory=hybrid_factory_for(cls),
                  summary=(cls.__doc__ or "").strip().splitlines()[0])


HYBRID_MUTANTS: list[Mutant] = [
    _hybrid("hybrid-touch-per-group", TouchAndAllocatePerGroup),
    _hybrid("hybrid-hit-unaligned", HitAlignedToFinestGroup),
    _hybrid("hybrid-window-frees-early", WindowFreesOneBlockEarly),
    _hybrid("hybrid-sliding-hit-short", SlidingHitOneBlockShort),
    _hybrid("hybrid-fixed-point-one-pass", FixedPointOnePass),
    _hybrid("hybrid-group-id-dropped", GroupIdDroppedFromKey),
]
