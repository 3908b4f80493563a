"""The KV-cache manager of a hybrid model: several KV-cache groups sharing one block pool.

A hybrid model (Gemma-style sliding window beside full attention, say) keeps one block
table per *group* of layers, and every group draws its blocks from the same pool
(:mod:`kvspec.spec.pool`). All blocks have one byte size, so groups whose layers need
different bytes per token hold different numbers of *tokens* per block. Each rule below is
one action: its guard, then its effect, with why.

Groups
    A group is full attention (every earlier token is attended, so every block is kept)
    or sliding window of ``sliding_window`` tokens (the next token attends to the previous
    ``sliding_window - 1`` tokens and itself, so a block wholly before that window is
    never read again and is given back, its table slot keeping the null block).

Hashes
    A request's tokens are hashed once, at the finest block size every group is a
    multiple of (the gcd). A group of ``k`` times that size reads them through a coarse
    view: its block ``i`` is fingerprinted by fine hash ``(i + 1) * k - 1``, which is
    chained over the whole prefix (``current``), or by the concatenation of its ``k`` fine
    hashes (``classic``). The key a group caches a block under ends with the group id, so
    two groups never share a key, and a block never serves two groups.

Hits
    A hit of ``L`` tokens means every group adopts blocks covering ``L`` tokens, so ``L``
    ends on a block boundary of every group: a multiple of the lcm of the block sizes.
    Full attention can serve ``L`` when all its blocks before ``L`` are cached; sliding
    window when the blocks the window at ``L`` reads are cached (the rest are nulls). The
    hit is the longest ``L`` every group can serve: a common fixed point.

What is not modelled
    Mamba (one running state block), chunked local attention, cross attention, EAGLE,
    LoRA and cache salts, statistics, KV events, and 0.33.0's sparse retention options.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvspec.spec import pool as sp
from kvspec.spec.errors import Refused
from kvspec.spec.profiles import CURRENT, Profile
from kvspec.spec.request import Request

FULL = "full"
SLIDING = "sliding"
KINDS = (FULL, SLIDING)
NULL_BLOCK = sp.NULL_BLOCK

# Refusal reasons of this module.
BAD_GROUPS = "bad-groups"
ZERO_NEW_TOKENS = "zero-new-tokens"
NEGATIVE_COUNT = "negative-count"
HIT_SHAPE_MISMATCH = "hit-shape-mismatch"
HITS_INTO_RUNNING_REQUEST = "hits-into-running-request"
STALE_HIT = "stale-hit"
HIT_BEYOND_CAP = "hit-beyond-cap"


@dataclass(frozen=True)
class GroupSpec:
    """One KV-cache group: its kind, tokens per block, and window (sliding only)."""

    kind: str
    block_size: int
    sliding_window: int | None = None

    def describe(self) -> str:
        if self.kind == SLIDING:
            return f"sliding window {self.sliding_window} (block size {self.block_size})"
        return f"full attention (block size {self.block_size})"


def check_groups(groups: Sequence[GroupSpec]) -> None:
    """At least one group; sizes >= 1; a window >= 1 exactly for sliding groups."""
    if not groups:
        raise Refused(BAD_GROUPS, "a hybrid manager needs at least one group")
    for g in groups:
        if g.kind not in KINDS or g.block_size < 1:
            raise Refused(BAD_GROUPS, f"group {g}: expected a kind in {KINDS}, block size >= 1")
        if (g.kind == SLIDING) != (g.sliding_window is not None) or (
                g.sliding_window is not None and g.sliding_window < 1):
            raise Refused(BAD_GROUPS, f"group {g}: a window >= 1 exactly for sliding groups")


@dataclass
class HybridState:
    """The pool, and per group each request's table and its count of cached blocks."""

    pool: sp.PoolState
    groups: tuple[GroupSpec, ...]
    tables: list[dict[str, list[int]]]
    num_cached: list[dict[str, int]]
    running: set[str] = field(default_factory=set)

    @property
    def hash_block_size(self) -> int:
        """The finest size every group's block is a multiple of: hashes are taken here.

        Without prefix caching no hash is ever read, so they are taken at the lcm (the
        coarsest size, fewest hashes)."""
        if not self.pool.enable_caching:
            return self.alignment
        return math.gcd(*(g.block_size for g in self.groups))

    @property
    def alignment(self) -> int:
        """The lcm of the block sizes: the only hit lengths every group can adopt."""
        return math.lcm(*(g.block_size for g in self.groups))

    def clone(self) -> HybridState:
        return HybridState(
            pool=self.pool.clone(), groups=self.groups,
            tables=[{r: list(t) for r, t in g.items()} for g in self.tables],
            num_cached=[dict(c) for c in self.num_cached], running=set(self.running),
        )

    def key(self) -> tuple:
        return (self.pool.key(),
                tuple(tuple(sorted((r, tuple(t)) for r, t in g.items())) for g in self.tables),
                tuple(tuple(sorted(c.items())) for c in self.num_cached),
                tuple(sorted(self.running)))


def init_hybrid(
    num_blocks: int, groups: Sequence[GroupSpec], *, enable_caching: bool = True,
    profile: Profile = CURRENT,
) -> HybridState:
    """A fresh manager: one pool for all groups, no tables."""
    check_groups(groups)
    return HybridState(
        pool=sp.init_pool(num_blocks, enable_caching=enable_caching, profile=profile),
        groups=tuple(groups), tables=[{} for _ in groups], num_cached=[{} for _ in groups],
    )


def new_request(m: HybridState, request_id: str, prompt: Sequence[int]) -> Request:
    """A request hashed at the manager's finest block size (its hashes serve every group)."""
    return Request(request_id, tuple(prompt), m.hash_block_size, profile=m.pool.profile)


# --------------------------------------------------------------------------- views


def group_key(block_hash: bytes, group_id: int) -> bytes:
    """The key a group caches a block under: the hash, then the group id (4 bytes)."""
    return block_hash + group_id.to_bytes(4, "big")


def group_hashes(m: HybridState, request: Request, group_id: int) -> list[bytes]:
    """The request's hashes at group ``group_id``'s block size (see the module docstring).

    Only whole coarse blocks have a hash: a coarse block is full only when all its fine
    blocks are."""
    if not m.pool.enable_caching:
        return []  # nothing is cached or looked up
    fine = request.block_hashes
    k = m.groups[group_id].block_size // m.hash_block_size
    if k == 1:
        return list(fine)
    if m.pool.profile.name == "classic":
        return [b"".join(fine[i * k:(i + 1) * k]) for i in range(len(fine) // k)]
    return [fine[(i + 1) * k - 1] for i in range(len(fine) // k)]


def group_keys(m: HybridState, request: Request, group_id: int) -> list[bytes]:
    return [group_key(h, group_id) for h in group_hashes(m, request, group_id)]


def skipped_blocks(g: GroupSpec, num_computed_tokens: int) -> int:
    """Leading blocks no later token reads once ``num_computed_tokens`` are computed.

    The next token attends to itself and the ``sliding_window - 1`` tokens before it, so
    tokens before ``num_computed_tokens - sliding_window + 1`` are out of every future
    window; only whole blocks of them can go. Full attention skips nothing.
    """
    if g.kind != SLIDING:
        return 0
    assert g.sliding_window is not None
    return max(0, num_computed_tokens - g.sliding_window + 1) // g.block_size


def window_blocks(g: GroupSpec) -> int:
    """Blocks a sliding-window hit must hold: those the window of the token right after
    the hit reads, ``sliding_window - 1`` tokens back (sliding groups only)."""
    assert g.sliding_window is not None
    return math.ceil((g.sliding_window - 1) / g.block_size)


# --------------------------------------------------------------------------- lookup


def _cached(m: HybridState, keys: list[bytes], i: int) -> int | None:
    return sp.get_cached_block(m.pool, keys[i]) if i < len(keys) else None


def group_hit(m: HybridState, request: Request, group_id: int, length: int) -> list[int] | None:
    """Group ``group_id``'s blocks for a hit of exactly ``length`` tokens, or None.

    Full attention reads every earlier token, so every block before ``length`` must be
    cached. A sliding window at ``length`` reads only the last ``window_blocks`` blocks
    before it; the earlier positions are nulls (placeholders, nothing to adopt).
    """
    g = m.groups[group_id]
    n = length // g.block_size
    keys = group_keys(m, request, group_id)
    first = 0 if g.kind == FULL else max(0, n - window_blocks(g))
    blocks = [_cached(m, keys, i) for i in range(first, n)]
    if any(b is None for b in blocks):
        return None
    return [NULL_BLOCK] * first + [b for b in blocks if b is not None]


def find_longest_cache_hit(
    m: HybridState, request: Request, max_length: int
) -> tuple[list[list[int]], int]:
    """The longest hit every group can serve, at most ``max_length`` tokens.

    Candidates are the multiples of the lcm (a boundary in every group); the answer is
    the largest one all groups serve, each group's blocks being its :func:`group_hit`.
    Zero tokens is always served (no blocks).
    """
    step = m.alignment
    for length in range(max_length - max_length % step, 0, -step):
        hits = [group_hit(m, request, gid, length) for gid in range(len(m.groups))]
        if all(h is not None for h in hits):
            return [h for h in hits if h is not None], length
    return [[] for _ in m.groups], 0


def get_computed_blocks(m: HybridState, request: Request) -> tuple[list[list[int]], int]:
    """The request's longest hit, capped at ``num_tokens - 1`` (the last token is always
    computed, to produce logits). Pure: nothing is protected until it is adopted."""
    if not m.pool.enable_caching:
        return [[] for _ in m.groups], 0
    return find_longest_cache_hit(m, request, max(request.num_tokens - 1, 0))


# --------------------------------------------------------------------------- allocation


def _check_allocate(
    m: HybridState, request: Request, num_new_tokens: int, num_new_computed_tokens: int,
    hits: list[list[int]], num_lookahead_tokens: int, num_external_computed_tokens: int,
) -> None:
    rid = request.request_id
    op = f"allocate_slots({rid!r})"
    for name, value in (("num_new_tokens", num_new_tokens),
                        ("num_new_computed_tokens", num_new_computed_tokens),
                        ("num_lookahead_tokens", num_lookahead_tokens),
                        ("num_external_computed_tokens", num_external_computed_tokens)):
        if value < 0:
            raise Refused(NEGATIVE_COUNT, f"{op}: {name}={value}")
    # External tokens need slots even with nothing new to compute; adopting hits alone is
    # a step only where the profile allows it.
    adopts_only = num_new_computed_tokens > 0 and m.pool.profile.allow_adopt_only_allocation
    if num_new_tokens == 0 and not (num_external_computed_tokens or adopts_only):
        raise Refused(ZERO_NEW_TOKENS, f"{op}: nothing to allocate")
    if len(hits) != len(m.groups) or any(
            len(h) * g.block_size != num_new_computed_tokens
            for h, g in zip(hits, m.groups, strict=False)):
        raise Refused(HIT_SHAPE_MISMATCH,
                      f"{op}: hits {hits} are not {num_new_computed_tokens} tokens per group")
    if num_new_computed_tokens and (rid in m.running or request.num_computed_tokens):
        raise Refused(HITS_INTO_RUNNING_REQUEST, f"{op}: hits only at admission")
    if num_new_computed_tokens > max(request.num_tokens - 1, 0):
        raise Refused(HIT_BEYOND_CAP, f"{op}: {num_new_computed_tokens} hit tokens for "
                      f"{request.num_tokens} tokens; the last token is always computed")
    for gid, h in enumerate(hits):
        keys = group_keys(m, request, gid)
        for i, b in enumerate(h):
            sp._require_in_range(m.pool, op, [b])
            if b != NULL_BLOCK and (i >= len(keys) or m.pool.block_hash[b] != keys[i]):
                raise Refused(STALE_HIT, f"{op}: group {gid} hit block {b} at {i} is not "
                              "cached under the request's key there")


def remove_skipped_blocks(m: HybridState, request_id: str, num_computed_tokens: int) -> None:
    """Give back every block no future token of the request reads (sliding groups).

    Each is replaced by the null block in the table, so positions keep their meaning,
    and they are released latest position first, as a whole table is (:func:`free`).
    This runs before the capacity check and stays done even if the allocation then
    fails: the blocks are dead to the request either way, and another may use them.
    """
    for gid, g in enumerate(m.groups):
        table = m.tables[gid].get(request_id)
        if not table:
            continue
        n = min(skipped_blocks(g, num_computed_tokens), len(table))
        released = [b for b in reversed(table[:n]) if b != NULL_BLOCK]
        table[:n] = [NULL_BLOCK] * n
        sp.free_blocks(m.pool, released)


def allocate_slots(
    m: HybridState,
    request: Request,
    num_new_tokens: int,
    num_new_computed_tokens: int = 0,
    new_computed_blocks: Sequence[Sequence[int]] | None = None,
    num_lookahead_tokens: int = 0,
    num_external_computed_tokens: int = 0,
) -> list[list[int]] | None:
    """Slots in every group for ``num_new_tokens`` more tokens; None if they do not fit.

    ``new_computed_blocks`` are the hits :func:`get_computed_blocks` returned (one list
    per group, worth ``num_new_computed_tokens`` tokens); ``num_external_computed_tokens``
    more tokens past the hit have K/V supplied by a KV connector, so they need blocks
    (which the connector fills) but no computing.

    1. Out-of-window blocks are given back (:func:`remove_skipped_blocks`).
    2. Capacity, before any other change: the new blocks every group needs, plus every
       hit block with no reference (adopting it takes it out of the free queue), must be
       free, else None.
    3. Two phases: *first* every group adopts its hits (a hit inside the skipped range is
       a null instead), *then* the groups take blocks for the external tokens and the new
       ones. A hit at ref count 0 is still in the free queue, so a block taken before
       every hit is adopted could be another group's hit.
    4. Newly full blocks below the computed tokens, floored to the lcm, are cached.
    Returns, per group, only the blocks taken for the new tokens (not hits, nor external).
    """
    hits = [list(h) for h in new_computed_blocks] if new_computed_blocks is not None \
        else [[] for _ in m.groups]
    _check_allocate(m, request, num_new_tokens, num_new_computed_tokens, hits,
                    num_lookahead_tokens, num_external_computed_tokens)
    rid = request.request_id
    local = request.num_computed_tokens + num_new_computed_tokens
    total_computed = local + num_external_computed_tokens
    need_slots = total_computed + num_new_tokens + num_lookahead_tokens
    remove_skipped_blocks(m, rid, total_computed)

    admitting = rid not in m.running
    needed = 0
    for gid, g in enumerate(m.groups):
        table = m.tables[gid].get(rid, [])
        held = len(table)
        if admitting:
            skip = skipped_blocks(g, total_computed)
            held = max(skip, held + len(hits[gid]))
            adopted = hits[gid][max(0, skip - len(table)):]
            needed += sum(1 for b in adopted if b != NULL_BLOCK and m.pool.ref_cnt[b] == 0)
        needed += max(math.ceil(need_slots / g.block_size) - held, 0)
    if needed > sp.get_num_free_blocks(m.pool):
        return None

    if admitting:
        for gid, g in enumerate(m.groups):  # phase 1: adopt every group's hits
            skip = skipped_blocks(g, total_computed)
            adopted = hits[gid][skip:]
            if m.pool.enable_caching:
                sp.touch(m.pool, adopted)
            table = m.tables[gid].setdefault(rid, [])
            table.extend([NULL_BLOCK] * max(skip, 0) + adopted)
            m.num_cached[gid][rid] = len(table)
        if num_external_computed_tokens:
            for gid, g in enumerate(m.groups):  # phase 2: blocks for external tokens
                table = m.tables[gid][rid]
                n = math.ceil(total_computed / g.block_size) - len(table)
                table.extend(sp.get_new_blocks(m.pool, max(n, 0)))
        m.running.add(rid)
    new_blocks: list[list[int]] = []
    for gid, g in enumerate(m.groups):
        table = m.tables[gid].setdefault(rid, [])
        n = math.ceil(need_slots / g.block_size) - len(table)
        got = sp.get_new_blocks(m.pool, n) if n > 0 else []
        table.extend(got)
        new_blocks.append(got)
    if m.pool.enable_caching:
        cache_blocks(m, request, min(total_computed + num_new_tokens, request.num_tokens))
    return new_blocks


def cached_positions(g: GroupSpec, alignment: int, start: int, end: int) -> list[int]:
    """Which of blocks ``start..end-1`` a group caches.

    A hit ends on a multiple of ``alignment``; a sliding window there reads only the
    last :func:`window_blocks` blocks before it, so in each ``alignment``-long segment
    only that tail can ever be hit. Caching the other blocks would only fill the index.
    """
    per_segment = alignment // g.block_size
    if g.kind == FULL or window_blocks(g) >= per_segment:
        return list(range(start, end))
    keep = per_segment - window_blocks(g)
    return [i for i in range(start, end) if i % per_segment >= keep]


def cache_blocks(m: HybridState, request: Request, num_tokens: int) -> None:
    """Cache each group's blocks that became full below ``num_tokens`` floored to the lcm.

    Content past the last lcm boundary can never be part of a hit (hits are lcm
    aligned), so it is not cached yet. Nulls hold nothing and are never cached. The
    parent key is the group's key of the block before (its chain)."""
    num_tokens -= num_tokens % m.alignment
    rid = request.request_id
    for gid, g in enumerate(m.groups):
        table = m.tables[gid].get(rid, [])
        start = m.num_cached[gid].get(rid, 0)
        end = min(num_tokens // g.block_size, len(table))
        if end <= start:
            continue
        keys = group_keys(m, request, gid)
        for i in cached_positions(g, m.alignment, start, end):
            if table[i] != NULL_BLOCK:
                sp.cache_block(m.pool, table[i], keys[i], keys[i - 1] if i else None)
        m.num_cached[gid][rid] = end


def free(m: HybridState, request_id: str) -> None:
    """Release every group's table, group by group, each tail first (the longest, least
    shared prefix is evicted before the head that every hit needs). No table: no-op."""
    for gid in range(len(m.groups)):
        table = m.tables[gid].pop(request_id, [])
        m.num_cached[gid].pop(request_id, None)
        sp.free_blocks(m.pool, list(reversed(table)))
    m.running.discard(request_id)


def reset_prefix_cache(m: HybridState) -> bool:
    """Forget every cached key, only when no block is held (see the pool's rule)."""
    return sp.reset_prefix_cache(m.pool)


def get_block_ids(m: HybridState, request_id: str) -> list[list[int]]:
    return [list(t.get(request_id, [])) for t in m.tables]
