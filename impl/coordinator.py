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

Only full-attention groups are modelled (no sliding window, Mamba or cross attention).
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


class FullAttentionGroup:
    """One full-attention group's block tables (upstream: a ``FullAttentionManager``)."""

    def __init__(self, group_id: int, block_size: int) -> None:
        self.group_id = group_id
        self.block_size = block_size
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_block: dict[str, int] = {}


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
    ) -> None:
        op = "HybridKVCacheCoordinator"
        group_block_sizes = check_block_sizes(op, group_block_sizes)
        if not group_block_sizes:
            raise InvalidArgumentError(f"{op}: group_block_sizes=[]; expected at least one group")
        self.scheduler_block_size, self.hash_block_size = resolve_kv_cache_block_sizes(
            group_block_sizes, min(group_block_sizes), enable_caching, hash_block_size)
        self.max_model_len = check_optional_int(op, "max_model_len", max_model_len, 1)
        check_callable(op, "hash_fn", hash_fn)
        self.block_hasher = get_request_block_hasher(self.hash_block_size, hash_fn,
                                                     profile=profile)
        self.block_pool = BlockPool(num_blocks, enable_caching=enable_caching, profile=profile)
        self.enable_caching = enable_caching
        self.profile = profile
        self.groups = [FullAttentionGroup(i, bs) for i, bs in enumerate(group_block_sizes)]
        self._key_suffixes = [group_id_suffix(op, g.group_id) for g in self.groups]

    def _view(self, request: Request, group: FullAttentionGroup) -> Sequence[bytes]:
        if group.block_size == self.hash_block_size:
            return request.block_hashes
        return BlockHashListWithBlockSize(request.block_hashes, self.hash_block_size,
                                          group.block_size, profile=self.profile)

    # -- lookup ---------------------------------------------------------------------------

    def find_longest_cache_hit(
        self, request: Request, max_cache_hit_length: int
    ) -> tuple[tuple[list[KVCacheBlock], ...], int]:
        """Per-group hit blocks and the one hit length every group agrees on.

        Each group scans left to right to its first miss; the length is floored to the
        lcm so it ends on a block boundary in every group. Full attention is
        downward-closed (a hit of L tokens contains every shorter aligned hit), so the
        agreed length is the minimum, and each group keeps the blocks below it.
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
        per_group: list[list[KVCacheBlock]] = []
        for group in self.groups:
            blocks = self.block_pool.get_cached_prefix(
                self._view(request, group)[:hit_length // group.block_size], group.group_id)
            group_hit = len(blocks) * group.block_size
            hit_length = min(hit_length, group_hit - group_hit % align)
            per_group.append(blocks)
        return tuple(b[:hit_length // g.block_size] for b, g in zip(per_group, self.groups,
                                                                        strict=True)), hit_length

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
    ) -> tuple[list[KVCacheBlock], ...] | None:
        """Slots in every group for ``num_new_tokens`` more tokens; None if they do not fit.

        Capacity is summed over groups (one pool), counting zero-ref hits; all groups'
        hits are touched (in one pool call) before any group pops a new block, so one
        group's allocation cannot evict another group's hit.
        """
        op = "allocate_slots"
        hits = ([as_list(op, "new_computed_blocks[i]", h)
                 for h in as_list(op, "new_computed_blocks", new_computed_blocks)]
                if new_computed_blocks is not None else [[] for _ in self.groups])
        self._check_args(request, num_new_tokens, num_new_computed_tokens, hits,
                         num_lookahead_tokens)
        req_id = request.request_id
        total_computed = request.num_computed_tokens + num_new_computed_tokens
        num_tokens_main = total_computed + num_new_tokens
        num_tokens_need_slot = num_tokens_main + num_lookahead_tokens
        if self.max_model_len is not None:
            num_tokens_need_slot = min(num_tokens_need_slot, self.max_model_len)

        num_new_blocks: list[int] = []
        num_needed = 0
        for group, group_hits in zip(self.groups, hits, strict=True):
            table = group.req_to_blocks.get(req_id, [])
            n = max(cdiv(num_tokens_need_slot, group.block_size) - len(group_hits) - len(table),
                    0)
            num_new_blocks.append(n)
            num_needed += n + sum(1 for b in group_hits if b.ref_cnt == 0 and not b.is_null)
        if num_needed > self.block_pool.get_num_free_blocks():
            return None

        all_hits = [b for group_hits in hits for b in group_hits]
        if all_hits:
            self.block_pool.touch(all_hits)
        for group, group_hits in zip(self.groups, hits, strict=True):
            if group_hits:
                group.req_to_blocks.setdefault(req_id, []).extend(group_hits)
                group.num_cached_block[req_id] = len(group.req_to_blocks[req_id])
        new_blocks: list[list[KVCacheBlock]] = []
        for group, n in zip(self.groups, num_new_blocks, strict=True):
            blocks = self.block_pool.get_new_blocks(n) if n else []
            group.req_to_blocks.setdefault(req_id, []).extend(blocks)
            new_blocks.append(blocks)

        if self.enable_caching:
            self.cache_blocks(request, min(num_tokens_main, request.num_tokens))
        return tuple(new_blocks)

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
            self.block_pool.cache_full_blocks(view, table, num_cached, num_full,
                                              kv_cache_group_id=group.group_id)
            group.num_cached_block[req_id] = num_full

    def _check_args(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int,
        hits: list[list[KVCacheBlock]],
        num_lookahead_tokens: int,
    ) -> None:
        check_request("allocate_slots", request)
        req_id = request.request_id
        op = f"allocate_slots({req_id!r})"
        for name, value in (("num_new_tokens", num_new_tokens),
                            ("num_new_computed_tokens", num_new_computed_tokens),
                            ("num_lookahead_tokens", num_lookahead_tokens)):
            check_int(op, name, value)
        if num_new_tokens == 0 and (self.profile == "classic" or num_new_computed_tokens == 0):
            raise InvalidArgumentError(
                f"{op}: nothing to allocate (num_new_tokens=0, num_new_computed_tokens="
                f"{num_new_computed_tokens}); expected num_new_tokens > 0")
        if len(hits) != len(self.groups):
            raise AllocationError(
                f"{op}: hits for {len(hits)} groups; expected {len(self.groups)}")
        num_tokens_main = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
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
