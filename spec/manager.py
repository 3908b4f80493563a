"""The KV-cache manager (one full-attention group), as a specification.

State
    ``pool``              the block pool (:mod:`kvspec.spec.pool`); every pool effect goes through
                          its functions.
    ``req_to_blocks``     request id -> its block table, block i holding tokens
                          ``[i * block_size, (i + 1) * block_size)``.
    ``num_cached_block``  request id -> how many leading table blocks are in the prefix
                          cache. A request with an entry is *running*: it can no longer
                          adopt hits.
    ``stats``             prefix-cache statistics, counted once per admitted request.

Each operation checks its guard first, raising :class:`~kvspec.spec.errors.Refused` before any
change, then applies its effect. ``allocate_slots`` has a second, non-error failure: it
returns ``None`` when the pool cannot hold the request ("cannot schedule"), and that too
leaves the state exactly as it was.

The scheduler, not the manager, owns the :class:`~kvspec.spec.request.Request`: it advances
``num_computed_tokens`` after a step and resets it on preemption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvspec.spec import errors, pool
from kvspec.spec.errors import Refused
from kvspec.spec.pool import PoolState
from kvspec.spec.profiles import CURRENT, Profile
from kvspec.spec.request import Request

# Refusal reasons of the manager (the pool's are in spec/errors.py).
BLOCK_SIZE_MISMATCH = "block-size-mismatch"
ZERO_NEW_TOKENS = "zero-new-tokens"
HIT_LENGTH_MISMATCH = "hit-length-mismatch"
HITS_INTO_RUNNING_REQUEST = "hits-into-running-request"
HIT_BEYOND_CAP = "hit-beyond-cap"
STALE_HIT = "stale-hit"


@dataclass
class PrefixCacheStats:
    """Prefix-cache statistics: admitted requests, tokens they queried, tokens that hit.

    Counted when ``allocate_slots`` admits a request, not when ``get_computed_blocks``
    looks: a waiting request is looked up again on every scheduling attempt until it fits,
    and counting each attempt would report one request's hit many times. A request
    readmitted after preemption (``num_preemptions > 0``) is counted in the ``preempted_``
    fields instead, so ``requests`` counts each request once and its hit rate is not
    inflated by recomputing what the request itself had cached (upstream 0.33.0 splits
    them the same way).
    """

    requests: int = 0
    queries: int = 0
    hits: int = 0
    preempted_requests: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.requests,
            self.queries,
            self.hits,
            self.preempted_requests,
            self.preempted_queries,
            self.preempted_hits,
        )


@dataclass
class ManagerState:
    """The whole state of one manager."""

    pool: PoolState
    block_size: int
    max_model_len: int | None = None
    req_to_blocks: dict[str, list[int]] = field(default_factory=dict)
    num_cached_block: dict[str, int] = field(default_factory=dict)
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)

    @property
    def profile(self) -> Profile:
        return self.pool.profile

    @property
    def enable_caching(self) -> bool:
        return self.pool.enable_caching

    def clone(self) -> ManagerState:
        """An independent copy."""
        return ManagerState(
            pool=self.pool.clone(),
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            req_to_blocks={r: list(t) for r, t in self.req_to_blocks.items()},
            num_cached_block=dict(self.num_cached_block),
            stats=PrefixCacheStats(*self.stats.as_tuple()),
        )

    def key(self) -> tuple:
        """A hashable summary of everything observable."""
        return (
            self.pool.key(),
            tuple(sorted((r, tuple(t)) for r, t in self.req_to_blocks.items())),
            tuple(sorted(self.num_cached_block.items())),
            self.stats.as_tuple(),
        )


def init_manager(
    num_blocks: int,
    block_size: int,
    *,
    enable_caching: bool = True,
    profile: Profile = CURRENT,
    max_model_len: int | None = None,
) -> ManagerState:
    """A fresh manager over a fresh pool of ``num_blocks`` blocks (block 0 is null)."""
    if block_size < 1:
        raise ValueError(f"init_manager: block_size {block_size}, expected >= 1")
    return ManagerState(
        pool=pool.init_pool(num_blocks, enable_caching=enable_caching, profile=profile),
        block_size=block_size,
        max_model_len=max_model_len,
    )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def allows_adopt_only(profile: Profile) -> bool:
    """Whether ``allocate_slots(num_new_tokens=0)`` may adopt computed tokens alone.

    ``current`` (0.33.0) accepts a call that only adopts hits; ``classic`` (0.22.x) refuses
    any call without new tokens (it has no external-token path in this spec).
    """
    return profile.allow_adopt_only_allocation


# --------------------------------------------------------------------------- queries


def usage(m: ManagerState) -> float:
    """The pool's usage: referenced fraction of the usable (non-null) blocks."""
    return pool.get_usage(m.pool)


def get_block_ids(m: ManagerState, request_id: str) -> list[int]:
    """A copy of the request's block table; ``[]`` for an unknown request."""
    return list(m.req_to_blocks.get(request_id, []))


def is_running(m: ManagerState, request_id: str) -> bool:
    """Whether the request has a ``num_cached_block`` entry (and so cannot adopt hits).

    The entry appears when hits are adopted or a step caches at least one block; a first
    chunk shorter than a block leaves the request untracked.
    """
    return request_id in m.num_cached_block


def prefix_cache_stats(m: ManagerState) -> PrefixCacheStats:
    """A copy of the prefix-cache statistics."""
    return PrefixCacheStats(*m.stats.as_tuple())


def max_hit_blocks(m: ManagerState, request: Request) -> int:
    """How many block hashes a lookup may look at: ``(num_tokens - 1) // block_size``.

    The last token must be run through the model to get the logits the next token is
    sampled from, so at most ``num_tokens - 1`` tokens can come from the cache; hits are
    whole blocks, so that rounds down (a fully cached 48-token prompt with block size 16
    hits 2 blocks, not 3).
    """
    return max(request.num_tokens - 1, 0) // m.block_size


def get_computed_blocks(m: ManagerState, request: Request) -> tuple[list[int], int]:
    """The longest cached prefix of ``request``: ``(hit blocks, hit tokens)``.

    Scans ``request.block_hashes`` left to right, at most :func:`max_hit_blocks` of them,
    and stops at the first miss: hashes are chained, so a later block can only be valid
    content after every earlier one, and a hit after a gap would be a block for another
    prefix. Caching off, or a request that skips reading the cache, gets no hit.

    Pure: nothing is referenced or counted. A hit at ref count 0 is still an eviction
    candidate until ``allocate_slots`` touches it.
    """
    if request.block_size != m.block_size:
        raise Refused(
            BLOCK_SIZE_MISMATCH,
            f"get_computed_blocks: request {request.request_id!r} has block_size "
            f"{request.block_size}, the manager {m.block_size}",
        )
    if not m.enable_caching or request.skip_reading_prefix_cache:
        return [], 0
    hits: list[int] = []
    for block_hash in request.block_hashes[: max_hit_blocks(m, request)]:
        block = pool.get_cached_block(m.pool, block_hash)
        if block is None:
            break
        hits.append(block)
    return hits, len(hits) * m.block_size


def get_num_blocks_to_allocate(
    m: ManagerState, request: Request, num_slots: int, new_computed_blocks: Sequence[int]
) -> int:
    """Free blocks a successful allocation would consume.

    New blocks: ``cdiv(num_slots, block_size)`` minus what the table and the hits already
    provide. Plus every hit at ref count 0: it sits in the free queue and counts as free,
    so touching it takes it away from the blocks a new allocation could pop. Forgetting
    this lets the check pass and the pop then run dry after the touches.
    """
    table = m.req_to_blocks.get(request.request_id, [])
    new = max(_cdiv(num_slots, m.block_size) - (len(new_computed_blocks) + len(table)), 0)
    evictable_hits = sum(
        1 for b in new_computed_blocks if b != pool.NULL_BLOCK and m.pool.ref_cnt[b] == 0
    )
    return new + evictable_hits


# --------------------------------------------------------------------------- actions


def _check_allocate_guards(
    m: ManagerState,
    request: Request,
    num_new_tokens: int,
    num_new_computed_tokens: int,
    new_computed_blocks: Sequence[int],
    num_lookahead_tokens: int,
) -> None:
    """The caller mistakes ``allocate_slots`` refuses, each before any change."""
    op = f"allocate_slots({request.request_id!r})"
    for name, value in (
        ("num_new_tokens", num_new_tokens),
        ("num_new_computed_tokens", num_new_computed_tokens),
        ("num_lookahead_tokens", num_lookahead_tokens),
    ):
        if value < 0:
            raise Refused(errors.NEGATIVE_COUNT, f"{op}: {name} is {value}, expected >= 0")
    if request.block_size != m.block_size:
        raise Refused(
            BLOCK_SIZE_MISMATCH,
            f"{op}: request block_size {request.block_size}, manager {m.block_size}",
        )
    if num_new_tokens == 0 and not (allows_adopt_only(m.profile) and num_new_computed_tokens > 0):
        allowed = "only when adopting computed tokens" if allows_adopt_only(m.profile) else "never"
        raise Refused(
            ZERO_NEW_TOKENS,
            f"{op}: num_new_tokens is 0 with {num_new_computed_tokens} new computed tokens; "
            f"allowed {allowed} in profile {m.profile.name}",
        )
    if num_new_computed_tokens != len(new_computed_blocks) * m.block_size:
        raise Refused(
            HIT_LENGTH_MISMATCH,
            f"{op}: {num_new_computed_tokens} new computed tokens but "
            f"{len(new_computed_blocks)} hit blocks of {m.block_size} tokens",
        )
    if not new_computed_blocks:
        return
    if not m.enable_caching:
        raise Refused(errors.CACHING_DISABLED, f"{op}: hits passed with prefix caching off")
    if (
        m.req_to_blocks.get(request.request_id)
        or is_running(m, request.request_id)
        or request.num_computed_tokens != 0
    ):
        raise Refused(
            HITS_INTO_RUNNING_REQUEST,
            f"{op}: hits adopted by a request with table "
            f"{get_block_ids(m, request.request_id)} and {request.num_computed_tokens} "
            "computed tokens; expected an empty table and 0 computed tokens",
        )
    if len(new_computed_blocks) > max_hit_blocks(m, request):
        raise Refused(
            HIT_BEYOND_CAP,
            f"{op}: {len(new_computed_blocks)} hit blocks for {request.num_tokens} tokens; "
            f"at most {max_hit_blocks(m, request)}",
        )
    for b in new_computed_blocks:
        if not 0 <= b < m.pool.num_blocks:
            raise Refused(
                errors.BLOCK_OUT_OF_RANGE,
                f"{op}: hit block {b} is not in 0..{m.pool.num_blocks - 1}",
            )
    for i, b in enumerate(new_computed_blocks):
        if m.pool.block_hash[b] != request.block_hashes[i]:
            raise Refused(
                STALE_HIT,
                f"{op}: hit block {b} at index {i} holds {m.pool.block_hash[b]!r}, expected "
                f"the request's hash {request.block_hashes[i]!r}",
            )


def _record_admission(m: ManagerState, request: Request, num_new_computed_tokens: int) -> None:
    """Count a request's lookup once, when it is admitted with the hits it adopts.

    A request is being admitted when it has no blocks and no computed tokens (a new or a
    preempted request). Requests that did not read the cache are not counted, as no lookup
    happened.
    """
    if not m.enable_caching or request.skip_reading_prefix_cache:
        return
    if request.num_preemptions > 0:
        m.stats.preempted_requests += 1
        m.stats.preempted_queries += request.num_tokens
        m.stats.preempted_hits += num_new_computed_tokens
    else:
        m.stats.requests += 1
        m.stats.queries += request.num_tokens
        m.stats.hits += num_new_computed_tokens


def allocate_slots(
    m: ManagerState,
    request: Request,
    num_new_tokens: int,
    num_new_computed_tokens: int = 0,
    new_computed_blocks: Sequence[int] = (),
    num_lookahead_tokens: int = 0,
) -> list[int] | None:
    """Give ``request`` the blocks for its next step; return only the newly allocated ones.

    Guard (Refused, nothing changes): non-negative counts; ``num_new_tokens == 0`` only when
    adopting computed tokens and the profile allows it; the hits are exactly
    ``num_new_computed_tokens`` worth of blocks, adopted only into an empty table of a
    request with no computed tokens, within the hit cap, each holding the request's own
    hash at its index (a stale hit would be another prefix's data).

    Capacity (``None``, nothing changes): the blocks to consume, counting hits at ref
    count 0 as consumed free blocks (:func:`get_num_blocks_to_allocate`), exceed the free
    count. An exact fit succeeds. The check precedes every mutation, so a refusal cannot
    leave a hit touched or a block popped.

    Effect, in this order:

    1. Touch the hits and append them to the (empty) table; the request is now running
       (``num_cached_block`` = number of hits). Touching *first* takes zero-ref hits out
       of the free queue, so the pops below cannot hand them to this request a second
       time under another index.
    2. Pop ``cdiv(slots, block_size) - len(table)`` new blocks from the queue front, where
       ``slots = computed + new + lookahead`` (capped at ``max_model_len``).
    3. With caching on, cache table blocks ``[num_cached_block, min(computed + new,
       num_tokens) // block_size)``, each under the request's hash at its index with its
       parent hash. Lookahead (draft) slots and a partial last block are never cached:
       their content is not final.
    4. If the request was being admitted (no blocks, no computed tokens), count it in the
       statistics with the hits it adopted (in the ``preempted_`` fields when readmitted).
    """
    _check_allocate_guards(
        m,
        request,
        num_new_tokens,
        num_new_computed_tokens,
        new_computed_blocks,
        num_lookahead_tokens,
    )
    rid = request.request_id
    admitting = not m.req_to_blocks.get(rid) and request.num_computed_tokens == 0
    total_computed = request.num_computed_tokens + num_new_computed_tokens
    if m.max_model_len is not None:
        total_computed = min(total_computed, m.max_model_len)
    num_tokens_main = total_computed + num_new_tokens
    num_slots = num_tokens_main + num_lookahead_tokens
    if m.max_model_len is not None:
        num_slots = min(num_slots, m.max_model_len)

    needed = get_num_blocks_to_allocate(m, request, num_slots, new_computed_blocks)
    if needed > pool.get_num_free_blocks(m.pool):
        return None

    table = m.req_to_blocks.setdefault(rid, [])
    if new_computed_blocks:
        pool.touch(m.pool, new_computed_blocks)
        table.extend(new_computed_blocks)
        m.num_cached_block[rid] = len(table)

    num_new_blocks = _cdiv(num_slots, m.block_size) - len(table)
    new_blocks = pool.get_new_blocks(m.pool, num_new_blocks) if num_new_blocks > 0 else []
    table.extend(new_blocks)

    if m.enable_caching:
        _cache_blocks(m, request, min(num_tokens_main, request.num_tokens))
    if admitting:
        _record_admission(m, request, num_new_computed_tokens)
    return new_blocks


def _cache_blocks(m: ManagerState, request: Request, num_tokens: int) -> None:
    """Cache the request's blocks that became full, ``[num_cached_block, full)``.

    ``full`` also stops at the hashes the request has, so only blocks whose content is
    final get a key. The parent hash is passed so the pool can check eviction order.
    """
    rid = request.request_id
    start = m.num_cached_block.get(rid, 0)
    full = min(num_tokens, len(request.block_hashes) * m.block_size) // m.block_size
    if start >= full:
        return
    table = m.req_to_blocks[rid]
    for i in range(start, full):
        parent = request.block_hashes[i - 1] if i > 0 else None
        pool.cache_block(m.pool, table[i], request.block_hashes[i], parent=parent)
    m.num_cached_block[rid] = full


def free(m: ManagerState, request_id: str) -> None:
    """Release a finished, aborted or preempted request's blocks.

    The table is freed *reversed*: ``free_blocks`` queues its first argument nearest the
    front (evicted first), so the tail (longest, least shared prefix) goes before the head
    that every hit on this prefix needs. In forward order the head would be evicted first
    and its cached children would become orphans: keyed, occupying blocks, never reachable
    again (lookup scans from block 0). An unknown or already freed request is a no-op.
    """
    table = m.req_to_blocks.pop(request_id, [])
    m.num_cached_block.pop(request_id, None)
    pool.free_blocks(m.pool, list(reversed(table)))


def reset_prefix_cache(m: ManagerState) -> bool:
    """Drop every cached hash, only when no block is referenced (see spec.pool).

    Statistics are cumulative and are not cleared.
    """
    return pool.reset_prefix_cache(m.pool)
