"""Named invariants across the groups of a hybrid manager.

Each is a function from a :class:`HybridSnapshot` (what a manager reports, plus what the
scheduler driving it knows on its own) to a list of violations, so the same checks run on
the spec (:mod:`kvspec.spec.hybrid`) and on any target driven through the hybrid protocol.

The scheduler's own knowledge is the *content record*: for each block it caused to be
written, which group wrote it and the token prefix its K/V is a function of (attention
makes a block's K/V depend on every token up to its end, and each group's layers hold
different K/V). A hit whose recorded content is not the requester's own prefix in that
group is wrong, whatever the hash said.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kvspec.spec.hybrid import NULL_BLOCK, SLIDING, GroupSpec, skipped_blocks

#: A block's content: (group id, the token prefix through the block's end).
Content = tuple[int, tuple[int, ...]]


@dataclass(frozen=True)
class RequestView:
    """One request as the snapshot sees it: its tokens, its tables, and the total computed
    tokens its last ``allocate_slots`` counted (the window's position then)."""

    request_id: str
    tokens: tuple[int, ...]
    tables: tuple[tuple[int, ...], ...]
    window_at: int


@dataclass(frozen=True)
class HitView:
    """What a lookup returned for a request: blocks per group and the hit length."""

    request_id: str
    tokens: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...]
    num_tokens: int


@dataclass(frozen=True)
class HybridSnapshot:
    groups: tuple[GroupSpec, ...]
    num_blocks: int
    ref_cnt: tuple[int, ...]
    requests: tuple[RequestView, ...]
    hits: tuple[HitView, ...]
    content: Mapping[int, Content]


def _slots(snap: HybridSnapshot) -> dict[int, list[tuple[str, int, int]]]:
    """Every non-null block -> the (request, group, position) slots that reference it."""
    where: dict[int, list[tuple[str, int, int]]] = {}
    for r in snap.requests:
        for gid, table in enumerate(r.tables):
            for i, b in enumerate(table):
                if b != NULL_BLOCK:
                    where.setdefault(b, []).append((r.request_id, gid, i))
    return where


def one_group_per_block(snap: HybridSnapshot) -> list[str]:
    """A block serves one group: keys end with the group id, so no hit and no allocation
    can legitimately put a block in two groups' tables."""
    out = []
    for b, slots in sorted(_slots(snap).items()):
        groups = sorted({g for _r, g, _i in slots})
        if len(groups) > 1:
            out.append(f"block {b} is in the tables of groups {groups}: "
                       + ", ".join(f"{r!r} group {g} position {i}" for r, g, i in slots))
    return out


def references_counted(snap: HybridSnapshot) -> list[str]:
    """A block's ref count is the number of table slots holding it, over all groups."""
    held = Counter({b: len(s) for b, s in _slots(snap).items()})
    return [f"block {b} has ref_cnt {snap.ref_cnt[b]} but {held[b]} table slot(s) hold it"
            for b in range(1, snap.num_blocks) if snap.ref_cnt[b] != held[b]]


def window_nulls(snap: HybridSnapshot) -> list[str]:
    """A sliding-window table holds the null block exactly at the positions wholly before
    the window of its last allocation, and real blocks everywhere else."""
    out = []
    for r in snap.requests:
        for gid, (g, table) in enumerate(zip(snap.groups, r.tables, strict=True)):
            skip = min(skipped_blocks(g, r.window_at), len(table)) if g.kind == SLIDING else 0
            for i, b in enumerate(table):
                if (b == NULL_BLOCK) != (i < skip):
                    out.append(f"request {r.request_id!r} group {gid} position {i} holds "
                               f"block {b}; expected {'the null block' if i < skip else 'a block'}"
                               f" (window after {r.window_at} computed tokens skips {skip})")
    return out


def hit_aligned(snap: HybridSnapshot) -> list[str]:
    """A hit ends on a block boundary of every group, leaves the last token to compute,
    and gives each group exactly its blocks for that length."""
    out = []
    for h in snap.hits:
        for gid, (g, blocks) in enumerate(zip(snap.groups, h.blocks, strict=True)):
            if h.num_tokens % g.block_size or len(blocks) * g.block_size != h.num_tokens:
                out.append(f"hit of {h.num_tokens} tokens for {h.request_id!r}: group {gid} "
                           f"(block size {g.block_size}) got {len(blocks)} block(s)")
        if h.num_tokens > max(len(h.tokens) - 1, 0):
            out.append(f"hit of {h.num_tokens} tokens for {h.request_id!r} of "
                       f"{len(h.tokens)} tokens; expected at most num_tokens - 1")
    return out


def hit_content(snap: HybridSnapshot) -> list[str]:
    """Each group's hit blocks hold the requester's own prefix, written by that group."""
    out = []
    for h in snap.hits:
        for gid, (g, blocks) in enumerate(zip(snap.groups, h.blocks, strict=True)):
            for i, b in enumerate(blocks):
                want = (gid, h.tokens[:(i + 1) * g.block_size])
                got = snap.content.get(b)
                if b != NULL_BLOCK and got != want:
                    out.append(f"hit for {h.request_id!r} group {gid} position {i}: block {b} "
                               f"holds {_describe(got)}, expected {_describe(want)}")
    return out


def table_content(snap: HybridSnapshot) -> list[str]:
    """Every written block in a table holds that request's prefix for that group and
    position (a block taken from under a holder would show another prefix)."""
    out = []
    for r in snap.requests:
        for gid, (g, table) in enumerate(zip(snap.groups, r.tables, strict=True)):
            for i, b in enumerate(table):
                got = snap.content.get(b)
                if b == NULL_BLOCK or got is None or len(r.tokens) < (i + 1) * g.block_size:
                    continue
                want = (gid, r.tokens[:(i + 1) * g.block_size])
                if got != want:
                    out.append(f"request {r.request_id!r} group {gid} position {i}: block {b} "
                               f"holds {_describe(got)}, expected {_describe(want)}")
    return out


def _describe(c: Content | None) -> str:
    if c is None:
        return "nothing written"
    return f"group {c[0]}'s {len(c[1])} tokens ending {c[1][-3:]}"


@dataclass(frozen=True)
class HybridInvariant:
    name: str
    statement: str
    check: Callable[[HybridSnapshot], list[str]]


HYBRID_INVARIANTS: dict[str, HybridInvariant] = {
    inv.name: inv for inv in (
        HybridInvariant("one-group-per-block", "no block in two groups' tables",
                        one_group_per_block),
        HybridInvariant("references-counted", "ref_cnt = table slots holding the block",
                        references_counted),
        HybridInvariant("window-nulls", "sliding tables hold null exactly outside the window",
                        window_nulls),
        HybridInvariant("hit-aligned", "hits end on every group's boundary, below the cap",
                        hit_aligned),
        HybridInvariant("hit-content", "hit blocks hold the requester's own prefix",
                        hit_content),
        HybridInvariant("table-content", "table blocks hold their request's prefix",
                        table_content),
    )
}


def note_allocation(
    content: dict[int, Content], groups: Sequence[GroupSpec], tokens: Sequence[int],
    tables: Sequence[Sequence[int]], written: int, fresh: set[int],
) -> None:
    """Record what the scheduler writes after an allocation: the blocks handed out
    (``fresh``) hold nothing yet, and every block of the tables below ``written`` tokens
    that holds nothing recorded gets its group's prefix (the model or the connector writes
    it). A hit keeps what it held."""
    for b in fresh:
        content.pop(b, None)
    for gid, (g, table) in enumerate(zip(groups, tables, strict=True)):
        for i, b in enumerate(table):
            if b != NULL_BLOCK and (i + 1) * g.block_size <= written and b not in content:
                content[b] = (gid, tuple(tokens[:(i + 1) * g.block_size]))


def check_all(snap: HybridSnapshot, names: list[str] | None = None) -> dict[str, list[str]]:
    results: dict[str, list[str]] = {}
    for name in names or list(HYBRID_INVARIANTS):
        broken = HYBRID_INVARIANTS[name].check(snap)
        if broken:
            results[name] = broken
    return results
