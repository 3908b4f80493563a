"""Named invariants of the KV-cache manager (request level).

Like :mod:`kvspec.spec.invariants`, each invariant is a function from a snapshot of *observable*
facts to a list of violations, so the same checks run on the spec and on any target
driven through the manager protocol. A :class:`ManagerSnapshot` holds two kinds of fact:

* what the manager reports: block tables, ref counts, prefix-cache statistics, and the
  hits its lookups returned;
* what the driver (the scheduler) knows independently: each request's tokens and computed
  count, the requests it admitted with the hits it adopted, and the true content of every
  block it caused to be written (:func:`note_allocation`).

Comparing the two is what exposes a stale or colliding key: the hash says "same prefix",
the driver's record of what was written says otherwise.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

from kvspec.spec.hashing import LoRARequest
from kvspec.spec.manager import ManagerState, PrefixCacheStats, get_block_ids, prefix_cache_stats
from kvspec.spec.pool import NULL_BLOCK
from kvspec.spec.request import Request

# --------------------------------------------------------------------------- block content


@dataclass(frozen=True)
class BlockContent:
    """What a full block's K/V is a function of.

    Attention makes block i's K/V depend on *every* token up to its end, not only its own
    tokens, and on the adapter and multimodal inputs; the cache salt is a tenant boundary.
    So the content is the whole token prefix through the block plus those keys. Two blocks
    may legitimately share a key only when their contents are equal.
    """

    tokens: tuple[int, ...]
    lora: LoRARequest | None
    cache_salt: str | None
    #: ``(identifier, absolute offset)`` of each multimodal item that starts inside the prefix.
    mm_items: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        tail = self.tokens[-4:]
        parts = [f"{len(self.tokens)} tokens ending {tail}"]
        if self.lora is not None:
            parts.append(f"lora {self.lora.name!r}")
        if self.cache_salt:
            parts.append(f"salt {self.cache_salt!r}")
        if self.mm_items:
            parts.append(f"mm {self.mm_items}")
        return ", ".join(parts)


def block_content(request: Request, index: int) -> BlockContent:
    """The true content of ``request``'s full block ``index``."""
    end = (index + 1) * request.block_size
    if end > request.num_tokens:
        raise ValueError(
            f"block_content: request {request.request_id!r} has {request.num_tokens} tokens, "
            f"block {index} (ending at {end}) is not full"
        )
    return BlockContent(
        tokens=request.all_token_ids[:end],
        lora=request.lora,
        cache_salt=request.cache_salt or None,
        mm_items=tuple((m.identifier, m.offset) for m in request.mm_items if m.offset < end),
    )


def request_content(request: Request) -> tuple[BlockContent, ...]:
    """The true content of each full block of ``request``, in order."""
    return tuple(block_content(request, i) for i in range(request.num_tokens // request.block_size))


def note_allocation(
    contents: MutableMapping[int, BlockContent],
    request: Request,
    block_ids: Sequence[int],
    new_blocks: Sequence[int],
    num_adopted: int,
    num_tokens_written: int,
) -> None:
    """Update the driver's record of block contents after a successful ``allocate_slots``.

    ``block_ids`` is the request's whole table after the call, ``new_blocks`` what the call
    returned, ``num_adopted`` how many leading blocks were adopted hits (the request reads
    them, never writes them), ``num_tokens_written`` the tokens whose K/V this step makes
    final (computed + new, capped at ``num_tokens``; draft slots excluded).

    A newly allocated block's old content is gone (it is about to be overwritten), so its
    record is dropped first; then each of the request's own blocks that is full records
    the request's content. A block that is cached but has no record was never written as
    a full block, and a hit on it is reported by ``hit-content``.
    """
    for b in new_blocks:
        contents.pop(b, None)
    num_full = min(num_tokens_written, request.num_tokens) // request.block_size
    for i in range(num_adopted, min(num_full, len(block_ids))):
        if block_ids[i] != NULL_BLOCK:
            contents[block_ids[i]] = block_content(request, i)


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class RequestView:
    """One live request: the driver's counts and the manager's table for it."""

    request_id: str
    num_tokens: int
    num_computed_tokens: int
    block_ids: tuple[int, ...]


@dataclass(frozen=True)
class HitView:
    """One lookup (``get_computed_blocks``) the manager answered during the step.

    ``request_content`` is the driver's true content of each of the request's full
    blocks, so the hit can be judged block by block.
    """

    request_id: str
    num_tokens: int
    block_ids: tuple[int, ...]
    num_hit_tokens: int
    request_content: tuple[BlockContent, ...]


@dataclass(frozen=True)
class Admission:
    """A request the driver admitted (``allocate_slots`` succeeded for it with an empty
    table and no computed tokens) while it read the prefix cache, with the hit tokens it
    adopted; ``preempted`` when it had been preempted before. The statistics must count
    exactly these."""

    request_id: str
    num_tokens: int
    num_hit_tokens: int
    preempted: bool = False


@dataclass(frozen=True)
class ManagerSnapshot:
    """What an observer sees of a manager after one step, plus what the driver knows.

    ``ref_cnt`` is the pool's per-block ref count (index = block id). ``requests`` lists
    every request that may hold blocks. ``hits`` are the lookups of this step.
    ``block_content`` is the driver's record (:func:`note_allocation`). ``admissions`` is
    the driver's cumulative ledger; ``stats`` the manager's cumulative statistics, or
    ``None`` when the target does not report them.
    """

    block_size: int
    num_blocks: int
    ref_cnt: tuple[int, ...]
    requests: tuple[RequestView, ...]
    hits: tuple[HitView, ...] = ()
    block_content: Mapping[int, BlockContent] = field(default_factory=dict)
    stats: PrefixCacheStats | None = None
    admissions: tuple[Admission, ...] = ()


def request_view(request: Request, block_ids: Sequence[int]) -> RequestView:
    return RequestView(
        request.request_id, request.num_tokens, request.num_computed_tokens, tuple(block_ids)
    )


def hit_view(request: Request, block_ids: Sequence[int], num_hit_tokens: int) -> HitView:
    """A lookup's answer for ``request``, with the request's true content attached."""
    return HitView(
        request.request_id,
        request.num_tokens,
        tuple(block_ids),
        num_hit_tokens,
        request_content(request),
    )


def snapshot(
    m: ManagerState,
    requests: Iterable[Request],
    *,
    hits: Iterable[HitView] = (),
    block_content: Mapping[int, BlockContent] | None = None,
    admissions: Iterable[Admission] = (),
) -> ManagerSnapshot:
    """The spec's manager, seen as an observer would see it, with the driver's facts."""
    return ManagerSnapshot(
        block_size=m.block_size,
        num_blocks=m.pool.num_blocks,
        ref_cnt=tuple(m.pool.ref_cnt),
        requests=tuple(request_view(r, get_block_ids(m, r.request_id)) for r in requests),
        hits=tuple(hits),
        block_content=dict(block_content or {}),
        stats=prefix_cache_stats(m),
        admissions=tuple(admissions),
    )


# --------------------------------------------------------------------------- invariants


def hit_cap(snap: ManagerSnapshot) -> list[str]:
    """A hit is whole blocks and leaves at least the last token to compute.

    The last token must be run to get the logits the next token is sampled from, so a
    hit covers at most ``num_tokens - 1`` tokens, rounded down to a block.
    """
    out: list[str] = []
    bs = snap.block_size
    for h in snap.hits:
        if h.num_hit_tokens != len(h.block_ids) * bs:
            out.append(
                f"request {h.request_id!r}: hit of {h.num_hit_tokens} tokens in "
                f"{len(h.block_ids)} blocks of {bs}: not block aligned"
            )
        if h.num_hit_tokens > max(h.num_tokens - 1, 0):
            out.append(
                f"request {h.request_id!r}: hit of {h.num_hit_tokens} tokens for "
                f"{h.num_tokens} tokens; at most {max(h.num_tokens - 1, 0)} may hit"
            )
    return out


def table_covers_computed(snap: ManagerSnapshot) -> list[str]:
    """Every computed token of a request has a slot in its table."""
    bs = snap.block_size
    return [
        f"request {r.request_id!r}: {r.num_computed_tokens} computed tokens but table "
        f"{list(r.block_ids)} holds {len(r.block_ids) * bs} slots"
        for r in snap.requests
        if len(r.block_ids) * bs < r.num_computed_tokens
    ]


def hit_content(snap: ManagerSnapshot) -> list[str]:
    """A hit's blocks hold exactly the request's prefix, block by block.

    Catches every way a key can lie: a hash that ignores the parent or an extra key, a
    weak hash that collides, a partial block cached, a stale key left on a reused block.

    In ``classic`` it assumes :data:`DISTINCT_IDENTITIES`: vLLM 0.22.x keys a LoRA adapter
    and a cache salt by their bare strings, so an adapter named like a tenant's salt shares
    that tenant's keys, and its lookups hit the tenant's blocks. That is upstream's
    behaviour, which the spec mirrors; 0.24 tagged the keys by kind (``current``).
    """
    out: list[str] = []
    for h in snap.hits:
        for i, b in enumerate(h.block_ids):
            where = f"request {h.request_id!r}: hit block {b} at index {i}"
            if i >= len(h.request_content):
                out.append(f"{where} is beyond the request's {len(h.request_content)} full blocks")
                continue
            expected = h.request_content[i]
            actual = snap.block_content.get(b)
            if actual is None:
                out.append(
                    f"{where} was never written as a full block; expected {expected.describe()}"
                )
            elif actual != expected:
                out.append(f"{where} holds {actual.describe()}; expected {expected.describe()}")
    return out


def shared_iff_counted(snap: ManagerSnapshot) -> list[str]:
    """Each non-null block's ref count equals its number of table slots, across requests.

    So a block is in two tables (or twice in one) only when its count says so; a block in
    two tables with a count of 1 was handed out twice, and one freed by both owners would
    go below zero or be reused under a live request.
    """
    slots: Counter[int] = Counter()
    holders: dict[int, list[str]] = {}
    for r in snap.requests:
        for b in r.block_ids:
            slots[b] += 1
            holders.setdefault(b, []).append(r.request_id)
    out: list[str] = []
    for b in range(1, snap.num_blocks):
        if slots[b] != snap.ref_cnt[b]:
            who = ", ".join(repr(x) for x in holders.get(b, [])) or "no table"
            out.append(
                f"block {b} has ref_cnt {snap.ref_cnt[b]} but {slots[b]} table slot(s) ({who})"
            )
    return out


def stats_match_hits(snap: ManagerSnapshot) -> list[str]:
    """Statistics count each admitted request once, with the hits it actually adopted."""
    if snap.stats is None:
        return []
    first = [a for a in snap.admissions if not a.preempted]
    again = [a for a in snap.admissions if a.preempted]
    expected = PrefixCacheStats(
        requests=len(first),
        queries=sum(a.num_tokens for a in first),
        hits=sum(a.num_hit_tokens for a in first),
        preempted_requests=len(again),
        preempted_queries=sum(a.num_tokens for a in again),
        preempted_hits=sum(a.num_hit_tokens for a in again),
    )
    if snap.stats == expected:
        return []
    out: list[str] = []
    for name in (f.name for f in dataclasses.fields(PrefixCacheStats)):
        got, want = getattr(snap.stats, name), getattr(expected, name)
        if got != want:
            out.append(f"prefix-cache stats {name} = {got}, admissions give {want}")
    return out


DISTINCT_IDENTITIES = (
    "no LoRA adapter is named like a cache salt in use (classic keys both untagged)"
)
"""What ``hit-content`` assumes in the ``classic`` profile."""


@dataclass(frozen=True)
class ManagerInvariant:
    """A named manager invariant. ``assumes`` maps a profile name to the usage discipline
    the invariant relies on in that profile (absent: it holds after any sequence)."""

    name: str
    statement: str
    check: Callable[[ManagerSnapshot], list[str]]
    assumes: Mapping[str, str] = field(default_factory=dict)


MANAGER_INVARIANTS: dict[str, ManagerInvariant] = {
    inv.name: inv
    for inv in (
        ManagerInvariant(
            "hit-cap", "hits are whole blocks and cover at most num_tokens - 1 tokens", hit_cap
        ),
        ManagerInvariant(
            "table-covers-computed",
            "every request's table has a slot for each computed token",
            table_covers_computed,
        ),
        ManagerInvariant(
            "hit-content",
            "a hit's blocks hold exactly the request's prefix (tokens and identity keys)",
            hit_content,
            assumes={"classic": DISTINCT_IDENTITIES},
        ),
        ManagerInvariant(
            "shared-iff-counted",
            "each block's ref count equals its number of table slots across requests",
            shared_iff_counted,
        ),
        ManagerInvariant(
            "stats-match-hits",
            "prefix-cache stats count each admission once, with the hits it adopted",
            stats_match_hits,
        ),
    )
}


def check_all(snap: ManagerSnapshot, names: list[str] | None = None) -> dict[str, list[str]]:
    """Run the named invariants (all by default); map each broken one to its violations."""
    results: dict[str, list[str]] = {}
    for name in names or list(MANAGER_INVARIANTS):
        violations = MANAGER_INVARIANTS[name].check(snap)
        if violations:
            results[name] = violations
    return results
