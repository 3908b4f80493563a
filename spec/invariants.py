"""Named invariants of the block pool.

An invariant is a function from a :class:`PoolSnapshot` to a list of violations, each a
readable sentence. A snapshot holds only what can be *observed* through the target
protocol, so the same invariants run on the spec's own state and on any target's
observations: a target bug is then reported by the rule it breaks, not only as "the
numbers differ".

The registry :data:`INVARIANTS` maps each name to its function and a one-line statement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kvspec.spec.pool import NULL_BLOCK, PoolState, get_num_free_blocks, get_usage

USAGE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PoolSnapshot:
    """What an observer sees of a pool after one step.

    ``index`` maps each hash the observer knows to the blocks it found under it. For the
    spec it is the whole index (``index_complete``); for a target only the first holder
    of each hash is observable.
    ``allocated`` maps each block handed out by the last step to its ref count *before*
    that step, so ``no-double-allocation`` can judge the hand-out.
    ``parent_of`` is the hash chain structure the driver knows (hash -> parent hash).
    """

    num_blocks: int
    enable_caching: bool
    count_null_refs: bool
    ref_cnt: tuple[int, ...]
    block_hash: tuple[bytes | None, ...]
    free_queue: tuple[int, ...]
    num_free_blocks: int
    usage: float
    index: Mapping[bytes, tuple[int, ...]]
    index_complete: bool
    allocated: Mapping[int, int] = field(default_factory=dict)
    parent_of: Mapping[bytes, bytes | None] = field(default_factory=dict)
    check_queue_order: bool = True


def snapshot(
    s: PoolState,
    allocated: Mapping[int, int] | None = None,
    *,
    check_queue_order: bool = True,
) -> PoolSnapshot:
    """The spec's own state, seen as an observer would see it."""
    return PoolSnapshot(
        num_blocks=s.num_blocks,
        enable_caching=s.enable_caching,
        count_null_refs=s.profile.count_null_refs,
        ref_cnt=tuple(s.ref_cnt),
        block_hash=tuple(s.block_hash),
        free_queue=tuple(s.free_queue),
        num_free_blocks=get_num_free_blocks(s),
        usage=get_usage(s),
        index={h: tuple(bs) for h, bs in s.cached.items()},
        index_complete=True,
        allocated=dict(allocated or {}),
        parent_of=dict(s.parent_of),
        check_queue_order=check_queue_order,
    )


def _non_null(snap: PoolSnapshot) -> range:
    return range(1, snap.num_blocks)


# --------------------------------------------------------------------------- invariants


def ref_nonnegative(snap: PoolSnapshot) -> list[str]:
    """No non-null block has a negative ref count (the null block's count is not kept)."""
    return [
        f"block {b} has ref_cnt {snap.ref_cnt[b]}" for b in _non_null(snap) if snap.ref_cnt[b] < 0
    ]


def free_iff_unreferenced(snap: PoolSnapshot) -> list[str]:
    """A non-null block is queued exactly when unreferenced; no duplicates; counter agrees."""
    out: list[str] = []
    queued = Counter(snap.free_queue)
    out += [f"block {b} is queued {n} times" for b, n in queued.items() if n > 1]
    for b in _non_null(snap):
        if snap.ref_cnt[b] == 0 and b not in queued:
            out.append(f"block {b} has ref_cnt 0 but is not in the free queue")
        if snap.ref_cnt[b] != 0 and b in queued:
            out.append(f"block {b} has ref_cnt {snap.ref_cnt[b]} but is in the free queue")
    if snap.num_free_blocks != len(snap.free_queue):
        out.append(
            f"free count {snap.num_free_blocks} != free queue length {len(snap.free_queue)}"
        )
    return out


def null_block(snap: PoolSnapshot) -> list[str]:
    """Block 0 is never queued, never handed out, never hashed (and stays at 0 in current)."""
    out: list[str] = []
    if NULL_BLOCK in snap.free_queue:
        out.append("the null block is in the free queue")
    if NULL_BLOCK in snap.allocated:
        out.append("the null block was handed out")
    if snap.block_hash[NULL_BLOCK] is not None:
        out.append(f"the null block holds hash {snap.block_hash[NULL_BLOCK]!r}")
    if not snap.count_null_refs and snap.ref_cnt[NULL_BLOCK] != 0:
        out.append(f"the null block has ref_cnt {snap.ref_cnt[NULL_BLOCK]}, expected 0")
    return out


def no_double_allocation(snap: PoolSnapshot) -> list[str]:
    """A block handed out had no other holder: it was free and now has exactly one owner."""
    out: list[str] = []
    for b, before in snap.allocated.items():
        if before != 0:
            out.append(f"block {b} was handed out while it had ref_cnt {before}")
        elif b != NULL_BLOCK and snap.ref_cnt[b] != 1:
            out.append(f"block {b} was handed out but has ref_cnt {snap.ref_cnt[b]}, expected 1")
        if snap.block_hash[b] is not None:
            out.append(f"block {b} was handed out still holding hash {snap.block_hash[b]!r}")
    return out


def hash_index_consistent(snap: PoolSnapshot) -> list[str]:
    """A block carries hash h exactly when the index maps h to it."""
    out: list[str] = []
    if not snap.enable_caching:
        out += [
            f"block {b} holds hash {h!r} with caching disabled"
            for b, h in enumerate(snap.block_hash)
            if h is not None
        ]
    for h, blocks in snap.index.items():
        out += [
            f"index maps {h!r} to block {b}, which holds {snap.block_hash[b]!r}"
            for b in blocks
            if snap.block_hash[b] != h
        ]
    for b, h in enumerate(snap.block_hash):
        if h is None:
            continue
        if snap.index_complete and b not in snap.index.get(h, ()):
            out.append(f"block {b} holds {h!r} but the index does not map it there")
        if not snap.index_complete and h in snap.index and not snap.index[h]:
            out.append(f"block {b} holds {h!r} but a lookup of {h!r} finds nothing")
    return out


def usage_excludes_null(snap: PoolSnapshot) -> list[str]:
    """usage = 1 - free / (N - 1): the null block counts neither as used nor as capacity."""
    usable = snap.num_blocks - 1
    expected = 0.0 if usable == 0 else 1.0 - snap.num_free_blocks / usable
    out: list[str] = []
    if abs(snap.usage - expected) > USAGE_TOLERANCE:
        out.append(f"usage {snap.usage!r} != 1 - {snap.num_free_blocks}/{usable} = {expected!r}")
    idle = all(snap.ref_cnt[b] <= 0 for b in _non_null(snap))
    if idle and abs(snap.usage) > USAGE_TOLERANCE:
        out.append(f"usage {snap.usage!r} with no block in use, expected 0.0")
    return out


def conservation(snap: PoolSnapshot) -> list[str]:
    """free + referenced non-null blocks = N - 1: every usable block is in exactly one place."""
    used = sum(1 for b in _non_null(snap) if snap.ref_cnt[b] > 0)
    if snap.num_free_blocks + used != snap.num_blocks - 1:
        return [
            f"{snap.num_free_blocks} free + {used} referenced != {snap.num_blocks - 1} usable"
        ]
    return []


def eviction_order(snap: PoolSnapshot) -> list[str]:
    """A queued cached block stands ahead of its parent: a parent is evicted no earlier.

    For a cached block x in the free queue whose parent hash is K, some block holding K
    is referenced or stands behind x. Otherwise evicting along the queue would drop the
    parent first and leave x an orphan: cached, occupying a block, never hit again.

    This is a property of the pool *and its callers*, so it assumes their discipline
    (:data:`CHAIN_DISCIPLINE`). The pool queues freed blocks in the order it is given; it is
    the callers' reverse-order free of hash-chained tables that makes the order respect
    chains. Copy-on-write forks a table's *last* block, the one the next token is written
    into: a fork in the middle of a table would model rewriting a sequence's past, leaving
    the later blocks' hashes describing a prefix the table no longer holds (the table
    ``[copy of a, a.a]`` frees ``a.a`` behind its parent's other copy, a correct pool state
    that no longer respects the chain).
    """
    if not snap.check_queue_order:
        return []
    position = {b: i for i, b in enumerate(snap.free_queue)}
    holders_of: dict[bytes, list[int]] = {}
    for b, hb in enumerate(snap.block_hash):
        if hb is not None:
            holders_of.setdefault(hb, []).append(b)
    out: list[str] = []
    for x in snap.free_queue:
        h = snap.block_hash[x]
        parent = snap.parent_of.get(h) if h is not None else None
        if parent is None:
            continue
        holders = holders_of.get(parent, [])
        safe = any(snap.ref_cnt[b] > 0 or position.get(b, -1) > position[x] for b in holders)
        if not safe:
            where = ", ".join(f"{b}@{position.get(b)}" for b in holders) or "no block"
            out.append(
                f"block {x} (queue position {position[x]}) is cached but its parent "
                f"{parent!r} is held by {where}: the parent is evicted first"
            )
    return out


CHAIN_DISCIPLINE = (
    "every block table is a hash chain over its cached prefix (block i is cached with the "
    "hash of block i - 1 as its parent, in order), tables are freed tail first, and "
    "copy-on-write forks only a table's last block"
)
"""The usage discipline ``eviction-order`` assumes: the machines follow it by construction."""


@dataclass(frozen=True)
class Invariant:
    """A named invariant. ``assumes`` states the callers' usage discipline it relies on
    (``None``: it holds after *any* sequence of operations, since the spec refuses every
    operation that would break it). A sequence outside that discipline is out of the
    invariant's scope, not a spec error."""

    name: str
    statement: str
    check: Callable[[PoolSnapshot], list[str]]
    assumes: str | None = None


INVARIANTS: dict[str, Invariant] = {
    inv.name: inv
    for inv in (
        Invariant("ref-nonnegative", "ref counts never go negative", ref_nonnegative),
        Invariant(
            "free-iff-unreferenced",
            "a block is queued exactly when its ref count is 0; no duplicates",
            free_iff_unreferenced,
        ),
        Invariant("null-block", "block 0 is never queued, handed out or hashed", null_block),
        Invariant(
            "no-double-allocation",
            "a block handed out had no other holder",
            no_double_allocation,
        ),
        Invariant(
            "hash-index-consistent",
            "a block carries hash h exactly when the index maps h to it",
            hash_index_consistent,
        ),
        Invariant(
            "usage-excludes-null",
            "usage = 1 - free/(N-1), 0.0 when idle",
            usage_excludes_null,
        ),
        Invariant("conservation", "free + referenced non-null blocks = N - 1", conservation),
        Invariant(
            "eviction-order",
            "a cached block is evicted no earlier than the block that extends its prefix",
            eviction_order,
            assumes=CHAIN_DISCIPLINE,
        ),
    )
}


def check_all(snap: PoolSnapshot, names: list[str] | None = None) -> dict[str, list[str]]:
    """Run the named invariants (all by default); map each broken one to its violations."""
    results: dict[str, list[str]] = {}
    for name in names or list(INVARIANTS):
        violations = INVARIANTS[name].check(snap)
        if violations:
            results[name] = violations
    return results
