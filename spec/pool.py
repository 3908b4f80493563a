"""The block pool, as a specification.

State
    ``ref_cnt[b]``     live references to block ``b`` from block tables.
    ``block_hash[b]``  the content hash ``b`` is cached under, or ``None``.
    ``free_queue``     the blocks with no reference, front evicted first (a plain list).
    ``cached``         the prefix-cache index: hash -> the blocks holding it, oldest first.
    ``parent_of``      what the spec has been told about hash chains: hash -> parent hash.

Block 0 is the *null block*: a placeholder that pads block tables, never holds data, is
never queued, never handed out and never hashed.

Each operation is a function ``op(state, ...)`` that first checks its guard, raising
:class:`~kvspec.spec.errors.Refused` *before any change*, and then applies its effect. So a
refused operation leaves the state exactly as it was, by construction.

Nothing here is fast, on purpose: lists are searched, the queue is a list. This file is
what a reviewer reads against ``SEMANTICS.md``, one rule at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvspec.spec import errors
from kvspec.spec.errors import Refused
from kvspec.spec.profiles import CURRENT, Profile

NULL_BLOCK = 0


@dataclass
class PoolState:
    """The whole observable state of one block pool."""

    num_blocks: int
    enable_caching: bool
    profile: Profile
    ref_cnt: list[int]
    block_hash: list[bytes | None]
    free_queue: list[int]
    cached: dict[bytes, list[int]] = field(default_factory=dict)
    parent_of: dict[bytes, bytes | None] = field(default_factory=dict)

    def clone(self) -> PoolState:
        """An independent copy (the profile is immutable and shared)."""
        return PoolState(
            num_blocks=self.num_blocks,
            enable_caching=self.enable_caching,
            profile=self.profile,
            ref_cnt=list(self.ref_cnt),
            block_hash=list(self.block_hash),
            free_queue=list(self.free_queue),
            cached={h: list(bs) for h, bs in self.cached.items()},
            parent_of=dict(self.parent_of),
        )

    def key(self) -> tuple:
        """A hashable summary of the whole state, for search over states."""
        return (
            tuple(self.ref_cnt),
            tuple(self.block_hash),
            tuple(self.free_queue),
            tuple((h, tuple(bs)) for h, bs in sorted(self.cached.items())),
            tuple(sorted(self.parent_of.items(), key=repr)),
        )


def init_pool(
    num_blocks: int, *, enable_caching: bool = True, profile: Profile = CURRENT
) -> PoolState:
    """A fresh pool: every block but the null block is free, in id order.

    The null block is taken out of the queue once, at construction, so it is always
    block 0 and the usable capacity is ``num_blocks - 1``.
    """
    if num_blocks < 1:
        raise ValueError(f"a pool needs at least one block (the null block), got {num_blocks}")
    return PoolState(
        num_blocks=num_blocks,
        enable_caching=enable_caching,
        profile=profile,
        ref_cnt=[0] * num_blocks,
        block_hash=[None] * num_blocks,
        free_queue=list(range(1, num_blocks)),
    )


# --------------------------------------------------------------------------- guards


def _require_in_range(s: PoolState, op: str, block_ids: Sequence[int]) -> None:
    """Every id names a block of this pool; a pool cannot act on a block it lacks."""
    for b in block_ids:
        if not 0 <= b < s.num_blocks:
            raise Refused(
                errors.BLOCK_OUT_OF_RANGE,
                f"{op}: block {b} is not in 0..{s.num_blocks - 1}",
            )


def _skips_null(s: PoolState, b: int) -> bool:
    """Whether ``touch``/``free_blocks`` leave block ``b`` alone (the null block, current)."""
    return b == NULL_BLOCK and not s.profile.count_null_refs


# --------------------------------------------------------------------------- queries


def get_num_free_blocks(s: PoolState) -> int:
    """Free blocks, evictable cached ones included: they can be handed out on demand."""
    return len(s.free_queue)


def get_usage(s: PoolState) -> float:
    """The fraction of usable blocks that are referenced.

    The null block is in neither numerator nor denominator: it is always "used" as a
    placeholder, so counting it would report a busy pool when nothing runs.
    """
    usable = s.num_blocks - 1
    if usable == 0:
        return 0.0
    return 1.0 - get_num_free_blocks(s) / usable


def get_cached_block(s: PoolState, block_hash: bytes) -> int | None:
    """The oldest block still holding ``block_hash``, or ``None``.

    Pure: a lookup does not protect the block. Only ``touch`` does, so a caller must
    touch a hit before anything else can pop it from the free queue.
    """
    if not s.enable_caching:
        return None
    holders = s.cached.get(block_hash, [])
    return holders[0] if holders else None


# --------------------------------------------------------------------------- actions


def _evict(s: PoolState, b: int) -> None:
    """Drop ``b``'s hash from the index: the block is about to hold other data.

    Eviction is lazy: a free block keeps its hash, and stays a possible hit, until the
    moment it is reused. This must happen before the block gets its new reference, or a
    lookup in between would return a block that now belongs to someone else.
    """
    h = s.block_hash[b]
    if h is None:
        return
    s.cached[h].remove(b)
    if not s.cached[h]:
        del s.cached[h]
    s.block_hash[b] = None


def get_new_blocks(s: PoolState, num_blocks: int, choice: Sequence[int] | None = None) -> list[int]:
    """Hand out ``num_blocks`` free blocks, each with one reference.

    Guard: ``0 <= num_blocks <= free``, checked before anything moves, so a short pool
    refuses without side effects.
    Effect: take the blocks from the *front* of the queue (the least valuable ones:
    never-used, unhashed, or least recently freed), evict each one's hash, then set its
    ref count to 1. Allocation never consults the prefix cache.

    ``choice`` (abstract mode) lets a target with another eviction policy pick which
    free blocks it hands out; the spec adopts any choice of distinct free blocks.
    """
    if num_blocks < 0:
        raise Refused(errors.NEGATIVE_COUNT, f"get_new_blocks: asked for {num_blocks} blocks")
    if num_blocks > get_num_free_blocks(s):
        raise Refused(
            errors.NOT_ENOUGH_FREE_BLOCKS,
            f"get_new_blocks: asked for {num_blocks}, only {get_num_free_blocks(s)} free",
        )
    if choice is None:
        chosen = s.free_queue[:num_blocks]
    else:
        chosen = list(choice)
        if len(chosen) != num_blocks or len(set(chosen)) != num_blocks:
            raise Refused(errors.CHOICE_NOT_ALLOWED, f"get_new_blocks: choice {chosen}")
        for b in chosen:
            if b not in s.free_queue:
                raise Refused(
                    errors.CHOICE_NOT_ALLOWED, f"get_new_blocks: block {b} is not free"
                )
    for b in chosen:
        s.free_queue.remove(b)
        if s.enable_caching:
            _evict(s, b)
        s.ref_cnt[b] = 1
    return chosen


def touch(s: PoolState, block_ids: Sequence[int]) -> None:
    """Add a reference to each block: a prefix hit is being adopted.

    A hit block with no reference sits in the free queue as an eviction candidate; it
    must leave the queue, or it could be handed to a second owner while in use.
    Guard: every id is in range.
    """
    _require_in_range(s, "touch", block_ids)
    for b in block_ids:
        if _skips_null(s, b):
            continue
        if b != NULL_BLOCK and s.ref_cnt[b] == 0:
            s.free_queue.remove(b)
        s.ref_cnt[b] += 1


def free_blocks(s: PoolState, block_ids: Sequence[int]) -> None:
    """Drop a reference from each block; blocks reaching 0 become free again.

    The argument is in eviction priority: the first block is evicted first. Callers
    free a request's table in reverse, so its tail (the longest, least shared prefix)
    goes before its head, which every hit needs.

    Guard: every id is in range, and no non-null block would go below 0 (counting an id
    listed twice twice).
    Effect: decrement in order; the blocks that reach 0, in the order they reach it,
    re-enter the queue as one batch: in ``classic`` all at the tail; in ``current``
    unhashed ones at the head (they can never be hit, so reuse them first) and hashed
    ones at the tail (least recently used goes first). The null block is never queued.
    """
    _require_in_range(s, "free_blocks", block_ids)
    for b in set(block_ids):
        if b == NULL_BLOCK:
            continue
        times = list(block_ids).count(b)
        if s.ref_cnt[b] - times < 0:
            raise Refused(
                errors.REF_COUNT_BELOW_ZERO,
                f"free_blocks: block {b} has ref_cnt {s.ref_cnt[b]}, freed {times} time(s)",
            )
    newly_free: list[int] = []
    for b in block_ids:
        if _skips_null(s, b):
            continue
        s.ref_cnt[b] -= 1
        if b != NULL_BLOCK and s.ref_cnt[b] == 0:
            newly_free.append(b)
    if s.profile.prepend_unhashed_on_free:
        unhashed = [b for b in newly_free if s.block_hash[b] is None]
        hashed = [b for b in newly_free if s.block_hash[b] is not None]
        s.free_queue[:0] = unhashed
        s.free_queue.extend(hashed)
    else:
        s.free_queue.extend(newly_free)


def cache_block(
    s: PoolState, block_id: int, block_hash: bytes, parent: bytes | None = None
) -> None:
    """A full block enters the prefix cache under ``block_hash``.

    The index is not deduplicated: a second block with the same content is added beside
    the first, so a request's table never has to change ids after the fact.
    ``parent`` (optional) records the hash of the preceding block in the chain; the
    ``eviction-order`` invariant reads it.

    Guard: caching is on; the block is not the null block (a placeholder holds no data);
    it is referenced (an owner vouches for its content); it has no hash yet (a block is
    hashed once until it is reused or the cache is reset).
    """
    if not s.enable_caching:
        raise Refused(errors.CACHING_DISABLED, "cache_block: prefix caching is disabled")
    _require_in_range(s, "cache_block", [block_id])
    if block_id == NULL_BLOCK:
        raise Refused(errors.CACHE_NULL_BLOCK, "cache_block: the null block is never cached")
    if s.ref_cnt[block_id] <= 0:
        raise Refused(
            errors.CACHE_UNREFERENCED_BLOCK,
            f"cache_block: block {block_id} has ref_cnt {s.ref_cnt[block_id]}, expected > 0",
        )
    if s.block_hash[block_id] is not None:
        raise Refused(
            errors.CACHE_HASHED_BLOCK,
            f"cache_block: block {block_id} already holds hash {s.block_hash[block_id]!r}",
        )
    s.block_hash[block_id] = block_hash
    s.cached.setdefault(block_hash, []).append(block_id)
    if parent is not None or block_hash not in s.parent_of:
        s.parent_of.setdefault(block_hash, parent)


def reset_prefix_cache(s: PoolState) -> bool:
    """Forget every cached hash, but only when no request holds a block.

    A held block's hash is part of a live request's bookkeeping; dropping it under the
    request would let the same content be cached twice inconsistently. So the reset is
    refused (``False``, nothing changes) unless every non-null block is free. The queue
    order is kept: it still says which blocks were used least recently.
    """
    if any(s.ref_cnt[b] > 0 for b in range(1, s.num_blocks)):
        return False
    s.cached.clear()
    s.block_hash = [None] * s.num_blocks
    return True


def fork_block(s: PoolState, block_id: int, choice: int | None = None) -> int:
    """Copy-on-write: give the caller a block it may write to.

    A block with one reference is already exclusive: return it. A shared block must not
    be written, or the other holders would see the change: take a new block, drop the
    caller's reference to the shared one, and return the new block (copying the K/V data
    is the caller's job). Allocation comes first, so an empty pool refuses before the
    shared block changes.

    Guard: not the null block; the block is referenced; a free block exists if a copy is
    needed.
    """
    _require_in_range(s, "fork_block", [block_id])
    if block_id == NULL_BLOCK:
        raise Refused(errors.FORK_NULL_BLOCK, "fork_block: the null block holds no data")
    if s.ref_cnt[block_id] <= 0:
        raise Refused(
            errors.FORK_FREE_BLOCK,
            f"fork_block: block {block_id} has ref_cnt {s.ref_cnt[block_id]}, expected > 0",
        )
    if s.ref_cnt[block_id] == 1:
        return block_id
    (new,) = get_new_blocks(s, 1, None if choice is None else [choice])
    s.ref_cnt[block_id] -= 1
    return new
