"""Several KV-cache groups with different block sizes sharing one block pool.

Hybrid models put layers with different page sizes into separate groups; to share one
pool every block must have the same byte size, so groups end up with different *tokens*
per block (full attention at 32 beside another group at 16). One ``block_size`` then
cannot express three things this module makes explicit:

* **Hash granularity** (``hash_block_size``, the gcd of group sizes): ``Request``
  hashes are computed once, at the finest size, and each group reads them through a
  coarse view (:class:`BlockHashListWithBlockSize`).
* **Hit alignment** (``scheduler_block_size``, the lcm): a hit must end on a block
  boundary in *every* group. A hit of 80 tokens would end mid-block in the 32-token
  group, which would adopt a cached block only half of which it may read -- and then
  write its own tokens into the shared, hashed other half.
* **Per-group block counts**: ``cdiv(tokens, group_block_size)`` blocks per group, all
  drawn from the one pool, so capacity is checked over the sum.

Groups are full attention (:class:`FullAttentionManager`) or sliding window
(:class:`SlidingWindowManager`: blocks wholly before the window of the next token are
given back and their table slots hold the null block). A KV connector's *external
computed tokens* (``num_external_computed_tokens``) get blocks at admission, after every
group has adopted its hits. Mamba, chunked local and cross attention are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import overload

from kvspec.impl.block import KVCacheBlock, group_id_suffix
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import InvalidArgumentError
from kvspec.impl.kv_cache_manager import AllocationError, cdiv, check_request
from kvspec.impl.kv_cache_utils import PROFILES, HashFn, get_request_block_hasher, sha256
from kvspec.impl.request import Request
from kvspec.impl.validate import (
    as_list,
    check_bool,
    check_callable,
    check_int,
    check_optional_int,
    check_str,
)


def check_block_sizes(op: str, group_block_sizes: Sequence[int]) -> list[int]:
    """The groups' block sizes as a list of ints >= 1, else :class:`InvalidArgumentError`."""
    return [check_int(op, "a group block size", size, minimum=1)
            for size in as_list(op, "group_block_sizes", group_block_sizes)]


def resolve_kv_cache_block_sizes(
    group_block_sizes: Sequence[int],
    cache_block_size: int,
    enable_caching: bool,
    hash_block_size: int | None = None,
) -> tuple[int, int]:
    """``(scheduler_block_size, hash_block_size)`` for groups of the given block sizes.

    One group (or none): both are ``cache_block_size``. Several: the scheduler aligns to
    the lcm (a boundary in every group); hashes are taken at ``hash_block_size`` if given,
    else the gcd (the finest size every group is a multiple of), and only when prefix
    caching is on -- without it hashes are never read, so they stay at the lcm.
    """
    op = "resolve_kv_cache_block_sizes"
    check_int(op, "cache_block_size", cache_block_size, minimum=1)
    group_block_sizes = check_block_sizes(op, group_block_sizes)
    check_bool(op, "enable_caching", enable_caching)
    check_optional_int(op, "hash_block_size", hash_block_size, 1)
    if len(group_block_sizes) <= 1:
        return cache_block_size, cache_block_size
    scheduler_block_size = math.lcm(*group_block_sizes)
    if not enable_caching:
        return scheduler_block_size, scheduler_block_size
    resolved = hash_block_size if hash_block_size is not None else math.gcd(*group_block_sizes)
    if resolved <= 0 or any(bs % resolved for bs in group_block_sizes):
        raise InvalidArgumentError(
            f"resolve_kv_cache_block_sizes: hash_block_size={resolved} does not divide every "
            f"group block size {list(group_block_sizes)}; expected a common divisor")
    return scheduler_block_size, resolved


class BlockHashListWithBlockSize(Sequence[bytes]):
    """A group's view of a request's fine block hashes, at the group's block size.

    Coarse hash ``i`` covers fine hashes ``[i*s, (i+1)*s)``, ``s = target / hash``.
    ``current``: the last of them, which is already chained over the whole prefix and
    so fingerprints the coarse block as well. ``classic``: their byte concatenation.
    Lazy, so a lookup that stops at block 2 never builds the rest.
    """

    def __init__(
        self,
        block_hashes: Sequence[bytes],
        hash_block_size: int,
        target_block_size: int,
        *,
        profile: str = "current",
    ) -> None:
        if hash_block_size <= 0 or target_block_size % hash_block_size:
            raise InvalidArgumentError(
                f"BlockHashListWithBlockSize: target_block_size={target_block_size} is not a "
                f"multiple of hash_block_size={hash_block_size}")
        if profile not in PROFILES:
            raise InvalidArgumentError(
                f"BlockHashListWithBlockSize: unknown profile {profile!r}; expected {PROFILES}")
        self.block_hashes = block_hashes
        self.scale_factor = target_block_size // hash_block_size
        self._concatenate = profile == "classic"

    def __len__(self) -> int:
        return len(self.block_hashes) // self.scale_factor

    @overload
    def __getitem__(self, idx: int) -> bytes: ...
    @overload
    def __getitem__(self, idx: slice) -> list[bytes]: ...

    def __getitem__(self, idx: int | slice) -> bytes | list[bytes]:
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"BlockHashListWithBlockSize: index {idx} out of range 0..{n - 1}")
        s = self.scale_factor
        if self._concatenate:
            return b"".join(self.block_hashes[idx * s:(idx + 1) * s])
        return self.block_hashes[(idx + 1) * s - 1]

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(len(self)))


class FullAttentionManager:
    """One full-attention group's block tables (upstream: ``FullAttentionManager``).

    Every earlier token is attended, so nothing is ever skipped, and a hit is the longest
    cached prefix (scanned left to right: the hash chain makes every block after a miss
    miss too)."""

    sliding_window: int | None = None

    def __init__(self, group_id: int, block_size: int) -> None:
        self.group_id = group_id
        self.block_size = block_size
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_block: dict[str, int] = {}

    def get_num_skipped_tokens(self, num_computed_tokens: int) -> int:
        return 0

    def find_longest_cache_hit(self, pool: BlockPool, block_hashes: Sequence[bytes],
                               max_length: int, alignment: int) -> list[KVCacheBlock]:
        blocks = pool.get_cached_prefix(block_hashes[:max_length // self.block_size],
                                        self.group_id)
        while len(blocks) * self.block_size % alignment:
            blocks.pop()
        return blocks

    def cache_mask(self, start: int, end: int, alignment: int) -> list[bool] | None:
        return None


FullAttentionGroup = FullAttentionManager
"""The name this class had when only full attention was modelled."""


class SlidingWindowManager(FullAttentionManager):
    """One sliding-window group (upstream: ``SlidingWindowManager``).

    The next token attends to itself and the ``sliding_window - 1`` tokens before it, so
    a hit needs only the ``cdiv(sliding_window - 1, block_size)`` blocks before its end;
    earlier positions are the null block. Lookups scan right to left for the last such
    run ending on an aligned boundary (a run from block 0 that is shorter also counts).
    """

    def __init__(self, group_id: int, block_size: int, sliding_window: int) -> None:
        super().__init__(group_id, block_size)
        self.sliding_window = sliding_window
        self.contiguous_blocks = cdiv(sliding_window - 1, block_size)

    def get_num_skipped_tokens(self, num_computed_tokens: int) -> int:
        return max(0, num_computed_tokens - self.sliding_window + 1)

    def find_longest_cache_hit(self, pool: BlockPool, block_hashes: Sequence[bytes],
                               max_length: int, alignment: int) -> list[KVCacheBlock]:
        null = pool.null_block
        num = min(max_length // self.block_size, len(block_hashes))
        run: list[KVCacheBlock] = []
        for i in range(num - 1, -1, -1):
            hit = pool.get_cached_block(block_hashes[i], (self.group_id,))
            if hit is None:
                run = []
                continue
            if not run and (i + 1) * self.block_size % alignment:
                continue  # a hit must end on an aligned boundary
            run.insert(0, hit[0])
            if len(run) >= self.contiguous_blocks:
                return [null] * i + run
        return run  # the run from block 0 (aligned at its end), possibly empty

    def cache_mask(self, start: int, end: int, alignment: int) -> list[bool] | None:
        """Cache only the window's tail of each ``alignment`` segment: hits end on segment
        boundaries and read only that tail, so other blocks could never be hit."""
        per_segment = alignment // self.block_size
        if self.contiguous_blocks >= per_segment:
            return None
        keep = per_segment - self.contiguous_blocks
        return [i % per_segment >= keep for i in range(start, end)]


class HybridKVCacheCoordinator:
    """Prefix caching and allocation for full-attention groups of different block sizes.

    The same operations as :class:`~kvspec.impl.kv_cache_manager.KVCacheManager`, with one
    block list per group wherever the manager has one list, and the same promise: every
    public method checks its arguments before anything changes. Operations that touch
    several groups make one pool call for all of them where a refusal is possible
    (``touch`` of the hits), so no group is changed by a call another group refuses.
    """

    def __init__(
        self,
        num_blocks: int,
        group_block_sizes: Sequence[int],
        *,
        hash_block_size: int | None = None,
        enable_caching: bool = True,
        profile: str = "current",
        max_model_len: int | None = None,
        hash_fn: HashFn = sha256,
        sliding_windows: Sequence[int | None] | None = None,
    ) -> None:
        op = "HybridKVCacheCoordinator"
        group_block_sizes = check_block_sizes(op, group_block_sizes)
        if not group_block_sizes:
            raise InvalidArgumentError(f"{op}: group_block_sizes=[]; expected at least one group")
        windows = (as_list(op, "sliding_windows", sliding_windows)
                   if sliding_windows is not None else [None] * len(group_block_sizes))
        if len(windows) != len(group_block_sizes):
            raise InvalidArgumentError(
                f"{op}: {len(windows)} sliding_windows for {len(group_block_sizes)} groups; "
                "expected one entry per group (None for full attention)")
        for w in windows:
            check_optional_int(op, "a sliding window", w, 1)
        self.scheduler_block_size, self.hash_block_size = resolve_kv_cache_block_sizes(
            group_block_sizes, min(group_block_sizes), enable_caching, hash_block_size)
        self.max_model_len = check_optional_int(op, "max_model_len", max_model_len, 1)
        check_callable(op, "hash_fn", hash_fn)
        self.block_hasher = get_request_block_hasher(self.hash_block_size, hash_fn,
                                                     profile=profile)
        self.block_pool = BlockPool(num_blocks, enable_caching=enable_caching, profile=profile)
        self.enable_caching = enable_caching
        self.profile = profile
        self.groups: list[FullAttentionManager] = [
            FullAttentionManager(i, bs) if w is None else SlidingWindowManager(i, bs, w)
            for i, (bs, w) in enumerate(zip(group_block_sizes, windows, strict=True))]
        self._key_suffixes = [group_id_suffix(op, g.group_id) for g in self.groups]

    def _view(self, request: Request, group: FullAttentionManager) -> Sequence[bytes]:
        if group.block_size == self.hash_block_size:
            return request.block_hashes
        return BlockHashListWithBlockSize(request.block_hashes, self.hash_block_size,
                                          group.block_size, profile=self.profile)

    # -- lookup ---------------------------------------------------------------------------

    def find_longest_cache_hit(
        self, request: Request, max_cache_hit_length: int
    ) -> tuple[tuple[list[KVCacheBlock], ...], int]:
        """Per-group hit blocks and the one hit length every group agrees on.

        A fixed point: starting from the cap floored to the lcm, each group returns its
        longest hit no longer than the current length, aligned to the lcm, and the length
        drops to it; when a full pass leaves it unchanged every group serves it. Full
        attention is downward-closed (a hit of L tokens contains every shorter aligned
        hit), so it is looked up once and then only trimmed.
        """
        op = "find_longest_cache_hit"
        check_request(op, request)
        return self._find_longest_cache_hit(
            request, check_int(op, "max_cache_hit_length", max_cache_hit_length))

    def _find_longest_cache_hit(
        self, request: Request, max_cache_hit_length: int
    ) -> tuple[tuple[list[KVCacheBlock], ...], int]:
        align = self.scheduler_block_size
        hit_length = max_cache_hit_length - max_cache_hit_length % align
        per_group: list[list[KVCacheBlock] | None] = [None] * len(self.groups)
        order = sorted(self.groups, key=lambda g: g.sliding_window is not None)
        while True:
            length = hit_length
            for group in order:
                found = per_group[group.group_id]
                if group.sliding_window is None and found is not None:
                    continue  # downward-closed: trimmed below
                blocks = group.find_longest_cache_hit(
                    self.block_pool, self._view(request, group), length, align)
                per_group[group.group_id] = blocks
                length = min(length, len(blocks) * group.block_size)
            if length == hit_length:
                break
            hit_length = length
        return tuple((b or [])[:hit_length // g.block_size]
                     for b, g in zip(per_group, self.groups, strict=True)), hit_length

    def get_computed_blocks(
        self, request: Request
    ) -> tuple[tuple[list[KVCacheBlock], ...], int]:
        """The longest cached prefix, capped at ``num_tokens - 1``; pure, as for one group."""
        check_request("get_computed_blocks", request)
        if not self.enable_caching:
            return tuple([] for _ in self.groups), 0
        return self._find_longest_cache_hit(request, max(request.num_tokens - 1, 0))

    # -- allocation -----------------------------------------------------------------------

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[Sequence[KVCacheBlock]] | None = None,
        num_lookahead_tokens: int = 0,
        num_external_computed_tokens: int = 0,
    ) -> tuple[list[KVCacheBlock], ...] | None:
        """Slots in every group for ``num_new_tokens`` more tokens; None if they do not fit.

        ``num_external_computed_tokens`` tokens past the hit have K/V supplied by a KV
        connector: they get blocks at admission but are not computed. Out-of-window blocks
        are given back first (even if the allocation then fails). Capacity is summed over
        groups (one pool), counting zero-ref hits; every group's hits are touched (in one
        pool call) before any group pops a block for external or new tokens, so one
        group's allocation cannot evict another group's hit (two-phase admission).
        Returns per group only the blocks popped for new tokens.
        """
        op = "allocate_slots"
        hits = ([as_list(op, "new_computed_blocks[i]", h)
                 for h in as_list(op, "new_computed_blocks", new_computed_blocks)]
                if new_computed_blocks is not None else [[] for _ in self.groups])
        self._check_args(request, num_new_tokens, num_new_computed_tokens, hits,
                         num_lookahead_tokens, num_external_computed_tokens)
        req_id = request.request_id
        total_computed = (request.num_computed_tokens + num_new_computed_tokens
                          + num_external_computed_tokens)
        num_tokens_main = total_computed + num_new_tokens
        num_tokens_need_slot = num_tokens_main + num_lookahead_tokens
        if self.max_model_len is not None:
            num_tokens_need_slot = min(num_tokens_need_slot, self.max_model_len)
        self.remove_skipped_blocks(req_id, total_computed)

        admitting = not any(req_id in g.num_cached_block or g.req_to_blocks.get(req_id)
                            for g in self.groups)
        num_needed = 0
        kept_hits: list[list[KVCacheBlock]] = []
        num_skipped: list[int] = []
        for group, group_hits in zip(self.groups, hits, strict=True):
            table = group.req_to_blocks.get(req_id, [])
            skipped = group.get_num_skipped_tokens(total_computed) // group.block_size
            held = len(table)
            kept: list[KVCacheBlock] = []
            if admitting:
                kept = group_hits[skipped:]
                held = max(skipped, len(group_hits))
                num_needed += sum(1 for b in kept if b.ref_cnt == 0 and not b.is_null)
            kept_hits.append(kept)
            num_skipped.append(skipped)
            num_needed += max(cdiv(num_tokens_need_slot, group.block_size) - held, 0)
        if num_needed > self.block_pool.get_num_free_blocks():
            return None

        if admitting and (any(hits) or num_external_computed_tokens):
            self.allocate_new_computed_blocks(req_id, kept_hits, num_skipped, total_computed,
                                              num_external_computed_tokens)
        new_blocks: list[list[KVCacheBlock]] = []
        for group in self.groups:
            table = group.req_to_blocks.setdefault(req_id, [])
            n = cdiv(num_tokens_need_slot, group.block_size) - len(table)
            blocks = self.block_pool.get_new_blocks(n) if n > 0 else []
            table.extend(blocks)
            new_blocks.append(blocks)

        if self.enable_caching:
            self.cache_blocks(request, min(num_tokens_main, request.num_tokens))
        return tuple(new_blocks)

    def allocate_new_computed_blocks(
        self, request_id: str, hits: list[list[KVCacheBlock]], num_skipped: list[int],
        total_computed_tokens: int, num_external_computed_tokens: int,
    ) -> None:
        """Admission in two phases: every group adopts its hits (one ``touch`` for all
        groups, after the padding nulls of positions before the window), *then* every
        group takes blocks for the external tokens. A hit at ref count 0 is still in the
        free queue until it is touched, so a block popped before every hit is adopted
        could be another group's hit, and would end up in two groups' tables."""
        all_hits = [b for kept in hits for b in kept]
        if all_hits and self.enable_caching:
            self.block_pool.touch(all_hits)
        for group, kept, skipped in zip(self.groups, hits, num_skipped, strict=True):
            table = group.req_to_blocks.setdefault(request_id, [])
            table.extend([self.block_pool.null_block] * skipped)
            table.extend(kept)
            group.num_cached_block[request_id] = len(table)
        if num_external_computed_tokens:
            for group in self.groups:
                table = group.req_to_blocks[request_id]
                n = cdiv(total_computed_tokens, group.block_size) - len(table)
                if n > 0:
                    table.extend(self.block_pool.get_new_blocks(n))

    def remove_skipped_blocks(self, request_id: str, total_computed_tokens: int) -> None:
        """Give back each sliding group's blocks wholly before the window of the next token.

        Their table slots get the null block (positions keep their meaning); they are
        freed latest position first, as a table is. Walking down from the last skipped
        position stops at the first null: everything before it was given back earlier.
        """
        for group in self.groups:
            skipped = group.get_num_skipped_tokens(total_computed_tokens) // group.block_size
            table = group.req_to_blocks.get(request_id)
            if not skipped or not table:
                continue
            removed: list[KVCacheBlock] = []
            for i in range(min(skipped, len(table)) - 1, -1, -1):
                if table[i].is_null:
                    break
                removed.append(table[i])
                table[i] = self.block_pool.null_block
            self.block_pool.free_blocks(removed)

    def cache_blocks(self, request: Request, num_tokens: int) -> None:
        """Cache each group's newly full blocks below ``num_tokens`` floored to the lcm.

        Content past the last lcm boundary can never be part of a hit (hits are lcm
        aligned), so it is not cached: a finer group's block there would only occupy the
        index. Every group is checked to hold its blocks before any group caches.
        """
        op = "cache_blocks"
        check_request(op, request)
        num_tokens = check_int(op, "num_tokens", num_tokens)
        if not self.enable_caching:
            return
        num_tokens -= num_tokens % self.scheduler_block_size
        req_id = request.request_id
        plan = []
        for group in self.groups:
            view = self._view(request, group)
            num_cached = group.num_cached_block.get(req_id, 0)
            num_full = min(num_tokens // group.block_size, len(view))
            if num_cached >= num_full:
                continue
            table = group.req_to_blocks.get(req_id, [])
            if len(table) < num_full:
                raise AllocationError(
                    f"{op}({req_id!r}): group {group.group_id} has {num_full} full blocks to "
                    f"cache but the request holds {len(table)}; expected num_tokens within "
                    "its allocated slots")
            plan.append((group, view, table, num_cached, num_full))
        for group, view, table, num_cached, num_full in plan:
            mask = group.cache_mask(num_cached, num_full, self.scheduler_block_size)
            if mask is None:
                self.block_pool.cache_full_blocks(view, table, num_cached, num_full,
                                                  kv_cache_group_id=group.group_id)
            else:
                for i, keep in enumerate(mask, start=num_cached):
                    if keep:
                        self.block_pool.cache_full_blocks(view, table, i, i + 1,
                                                          kv_cache_group_id=group.group_id)
            group.num_cached_block[req_id] = num_full

    def _check_args(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int,
        hits: list[list[KVCacheBlock]],
        num_lookahead_tokens: int,
        num_external_computed_tokens: int = 0,
    ) -> None:
        check_request("allocate_slots", request)
        req_id = request.request_id
        op = f"allocate_slots({req_id!r})"
        for name, value in (("num_new_tokens", num_new_tokens),
                            ("num_new_computed_tokens", num_new_computed_tokens),
                            ("num_lookahead_tokens", num_lookahead_tokens),
                            ("num_external_computed_tokens", num_external_computed_tokens)):
            check_int(op, name, value)
        if num_new_tokens == 0 and not num_external_computed_tokens and (
                self.profile == "classic" or num_new_computed_tokens == 0):
            raise InvalidArgumentError(
                f"{op}: nothing to allocate (num_new_tokens=0, num_new_computed_tokens="
                f"{num_new_computed_tokens}, no external tokens); expected num_new_tokens > 0")
        if len(hits) != len(self.groups):
            raise AllocationError(
                f"{op}: hits for {len(hits)} groups; expected {len(self.groups)}")
        num_tokens_main = (request.num_computed_tokens + num_new_computed_tokens
                           + num_external_computed_tokens + num_new_tokens)
        if self.max_model_len is not None and num_tokens_main > self.max_model_len:
            raise AllocationError(
                f"{op}: {num_tokens_main} tokens after this step; expected at most "
                f"max_model_len={self.max_model_len}")
        for group, group_hits in zip(self.groups, hits, strict=True):
            if len(group_hits) * group.block_size != num_new_computed_tokens:
                raise AllocationError(
                    f"{op}: group {group.group_id} has {len(group_hits)} hit blocks of "
                    f"{group.block_size} tokens but num_new_computed_tokens="
                    f"{num_new_computed_tokens}; expected the pair returned by "
                    "get_computed_blocks")
        if num_new_computed_tokens:
            self._check_hits(request, hits, num_new_computed_tokens)

    def _check_hits(
        self, request: Request, hits: list[list[KVCacheBlock]], num_new_computed_tokens: int
    ) -> None:
        """Hits only at admission, within the lookup cap, and each still cached under the
        request's hash (in its group's view) at its position."""
        req_id = request.request_id
        op = f"allocate_slots({req_id!r})"
        if not self.enable_caching:
            raise AllocationError(f"{op}: hits with prefix caching disabled; expected none")
        if request.num_computed_tokens or any(g.req_to_blocks.get(req_id) for g in self.groups):
            raise AllocationError(
                f"{op}: hits adopted by a request that already holds blocks or computed "
                "tokens; expected hits only at admission")
        if num_new_computed_tokens > max(request.num_tokens - 1, 0):
            raise AllocationError(
                f"{op}: {num_new_computed_tokens} hit tokens for {request.num_tokens} tokens; "
                "expected a hit that leaves the last token to compute")
        for group, group_hits, suffix in zip(self.groups, hits, self._key_suffixes,
                                             strict=True):
            self.block_pool.check_blocks(op, group_hits)
            view = self._view(request, group)
            for block, block_hash in zip(group_hits, view, strict=False):
                if block.is_null:
                    continue  # a sliding window's position before the window
                key = block.block_hash
                if (key is None or not isinstance(block_hash, bytes)
                        or key != block_hash + suffix):
                    raise AllocationError(
                        f"{op}: hit block {block.block_id} of group {group.group_id} is not "
                        "cached under the request's hash at its position; expected the "
                        "blocks get_computed_blocks returned")

    # -- release and observation ----------------------------------------------------------

    def free(self, request: Request) -> None:
        """Free every group's table, group by group, each tail first.

        The pool cannot refuse these frees: a table holds one reference per entry, and
        nothing else releases them.
        """
        check_request("free", request)
        for group in self.groups:
            blocks = group.req_to_blocks.pop(request.request_id, [])
            group.num_cached_block.pop(request.request_id, None)
            self.block_pool.free_blocks(blocks[::-1])

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()

    @property
    def usage(self) -> float:
        return self.block_pool.get_usage()

    def get_block_ids(self, request_id: str) -> tuple[list[int], ...]:
        """One list of block ids per group; empty lists for an unknown request."""
        check_str("get_block_ids", "request_id", request_id)
        return tuple([b.block_id for b in g.req_to_blocks.get(request_id, ())]
                     for g in self.groups)
