"""Pool semantics the model checker can run: the spec itself, and its symbolic mutants.

A *symbolic mutant* is one realistic pool bug written twice: as a change to the z3
transition relation (:mod:`kvspec.spec.symbolic.encoding` reads the name) and, here, as an
executable twin of the affected :mod:`kvspec.spec.pool` function. The twin is what the
breadth-first search and the trace decoder run, so the length z3 reports can be checked
against brute force, and a decoded counterexample is re-run on real code before it is
written out. Names match the conformance mutant zoo (``kvspec mutants``), whose impl
mutants model the same mistakes in :mod:`impl`.

Each twin changes as little as it can: the bug, not a rewrite, is what must be found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kvspec.spec import errors, pool
from kvspec.spec.errors import Refused
from kvspec.spec.pool import NULL_BLOCK, PoolState


def _spec(name: str) -> Callable:
    """The spec's ``name``, looked up at call time: the model checker runs whatever
    :mod:`kvspec.spec.pool` says *now*, so a change there (or a test's injected bug) reaches
    the cross-check against z3 instead of a copy taken at import."""

    def call(*args: object, **kwargs: object) -> object:
        return getattr(pool, name)(*args, **kwargs)

    call.__name__ = name
    return call


@dataclass(frozen=True)
class PoolSemantics:
    """The pool functions a request operation calls (defaults: the spec's own)."""

    get_new_blocks: Callable[[PoolState, int], list[int]] = _spec("get_new_blocks")
    touch: Callable[[PoolState, Sequence[int]], None] = _spec("touch")
    free_blocks: Callable[[PoolState, Sequence[int]], None] = _spec("free_blocks")
    cache_block: Callable[[PoolState, int, bytes, bytes | None], None] = _spec("cache_block")
    reset_prefix_cache: Callable[[PoolState], bool] = _spec("reset_prefix_cache")
    fork_block: Callable[[PoolState, int], int] = _spec("fork_block")
    get_usage: Callable[[PoolState], float] = _spec("get_usage")


SPEC = PoolSemantics()


@dataclass(frozen=True)
class SymbolicMutant:
    """A named bug with a z3 twin. ``profile``: the profile it is checked under by default
    (``None``: either). ``breaks``: the invariants its shortest counterexample breaks at
    the default configuration (documentation; the tests compute the truth); empty for a
    bug that breaks none and is found only as a divergence from the spec."""

    name: str
    summary: str
    semantics: PoolSemantics
    profile: str | None = None
    breaks: tuple[str, ...] = ()


# --------------------------------------------------------------------------- twins


def _pop_front(s: PoolState, num_blocks: int, op: str) -> list[int]:
    if num_blocks < 0:
        raise Refused(errors.NEGATIVE_COUNT, f"{op}: asked for {num_blocks} blocks")
    if num_blocks > len(s.free_queue):
        raise Refused(
            errors.NOT_ENOUGH_FREE_BLOCKS,
            f"{op}: asked for {num_blocks}, only {len(s.free_queue)} free",
        )
    chosen = s.free_queue[:num_blocks]
    del s.free_queue[:num_blocks]
    return chosen


def get_new_blocks_keeping_hash(s: PoolState, num_blocks: int) -> list[int]:
    """Lazy eviction forgotten: the popped block keeps its hash and its index entry."""
    chosen = _pop_front(s, num_blocks, "get_new_blocks")
    for b in chosen:
        s.ref_cnt[b] = 1
    return chosen


def get_new_blocks_tolerant_evict(s: PoolState, num_blocks: int) -> list[int]:
    """The spec's ``get_new_blocks``, but a block hashed and missing from the index keeps
    its hash (as upstream's ``_maybe_evict_cached_block`` does) instead of failing."""
    chosen = _pop_front(s, num_blocks, "get_new_blocks")
    for b in chosen:
        h = s.block_hash[b]
        if h is not None and b in s.cached.get(h, []):
            s.cached[h].remove(b)
            if not s.cached[h]:
                del s.cached[h]
            s.block_hash[b] = None
        s.ref_cnt[b] = 1
    return chosen


def touch_leaving_in_queue(s: PoolState, block_ids: Sequence[int]) -> None:
    """A revived zero-ref hit is counted but stays in the free queue."""
    for b in block_ids:
        if b == NULL_BLOCK and not s.profile.count_null_refs:
            continue
        s.ref_cnt[b] += 1


def touch_counting_null(s: PoolState, block_ids: Sequence[int]) -> None:
    """``current`` profile, but ``touch`` still counts the null block (never dequeues it)."""
    for b in block_ids:
        if b != NULL_BLOCK and s.ref_cnt[b] == 0:
            s.free_queue.remove(b)
        s.ref_cnt[b] += 1


def usage_counting_null(s: PoolState) -> float:
    """The null block counts as capacity and as used: ``1 - free / N``."""
    return 1.0 - len(s.free_queue) / s.num_blocks


def free_blocks_queueing_null(s: PoolState, block_ids: Sequence[int]) -> None:
    """Freeing a list holding the null block puts the null block at the queue's tail."""
    pool.free_blocks(s, block_ids)
    if NULL_BLOCK in block_ids and NULL_BLOCK not in s.free_queue:
        s.free_queue.append(NULL_BLOCK)


def free_blocks_forward(s: PoolState, block_ids: Sequence[int]) -> None:
    """The given (eviction-priority) order is reversed: a table's head is evicted first."""
    pool.free_blocks(s, list(reversed(list(block_ids))))


def free_blocks_unguarded(s: PoolState, block_ids: Sequence[int]) -> None:
    """A double free is trusted: every non-null count drops, none is queued, no refusal."""
    if any(s.ref_cnt[b] <= 0 and b != NULL_BLOCK for b in block_ids):
        for b in block_ids:
            if b != NULL_BLOCK:
                s.ref_cnt[b] -= 1
        return
    pool.free_blocks(s, block_ids)


def fork_block_keeping_reference(s: PoolState, block_id: int) -> int:
    """The copy is handed out but the caller's reference to the original is kept."""
    if block_id != NULL_BLOCK and s.ref_cnt[block_id] > 1 and s.free_queue:
        return pool.get_new_blocks(s, 1)[0]
    return pool.fork_block(s, block_id)


def fork_block_copying_exclusive(s: PoolState, block_id: int) -> int:
    """An exclusive block is copied too, and the caller's original is freed."""
    if block_id != NULL_BLOCK and s.ref_cnt[block_id] == 1 and s.free_queue:
        new = pool.get_new_blocks(s, 1)[0]
        pool.free_blocks(s, [block_id])
        return new
    return pool.fork_block(s, block_id)


def free_blocks_appending_all(s: PoolState, block_ids: Sequence[int]) -> None:
    """``current`` profile, but unhashed blocks are appended like hashed ones."""
    profile = s.profile
    s.profile = replace(profile, prepend_unhashed_on_free=False)
    try:
        pool.free_blocks(s, block_ids)
    finally:
        s.profile = profile


def reset_ignoring_holders(s: PoolState) -> bool:
    """``reset_prefix_cache`` without the "no block is held" check."""
    s.cached.clear()
    s.block_hash = [None] * s.num_blocks
    return True


def cache_block_last_writer_wins(
    s: PoolState, block_id: int, block_hash: bytes, parent: bytes | None = None
) -> None:
    """The index keeps one block per hash: a second holder replaces the first, which stays
    hashed but can no longer be found."""
    pool.cache_block(s, block_id, block_hash, parent)
    s.cached[block_hash] = [block_id]


# --------------------------------------------------------------------------- registry

_ALL = (
    SymbolicMutant(
        "forward-free",
        "free_blocks evicts its argument's last element first (a table freed head first)",
        PoolSemantics(free_blocks=free_blocks_forward),
        breaks=("eviction-order",),
    ),
    SymbolicMutant(
        "stale-hash-on-reuse",
        "get_new_blocks hands out a cached block without evicting its hash",
        PoolSemantics(get_new_blocks=get_new_blocks_keeping_hash),
        breaks=("no-double-allocation",),
    ),
    SymbolicMutant(
        "hash-cleared-after-ref-set",
        "eviction runs after the ref count is set and so never fires (same effect as "
        "stale-hash-on-reuse)",
        PoolSemantics(get_new_blocks=get_new_blocks_keeping_hash),
        breaks=("no-double-allocation",),
    ),
    SymbolicMutant(
        "touch-leaves-in-queue",
        "touch revives a zero-ref hit without taking it out of the free queue",
        PoolSemantics(touch=touch_leaving_in_queue),
        breaks=("free-iff-unreferenced", "conservation"),
    ),
    SymbolicMutant(
        "touch-counts-null",
        "current profile, but touch still counts the null block",
        PoolSemantics(touch=touch_counting_null),
        profile="current",
        breaks=("null-block",),
    ),
    SymbolicMutant(
        "usage-counts-null",
        "get_usage divides by all N blocks: an idle pool reports 1/N",
        PoolSemantics(get_usage=usage_counting_null),
        breaks=("usage-excludes-null",),
    ),
    SymbolicMutant(
        "null-returned-to-queue",
        "freeing a list that holds the null block queues the null block",
        PoolSemantics(free_blocks=free_blocks_queueing_null),
        breaks=("null-block",),
    ),
    SymbolicMutant(
        "fork-without-decrement",
        "fork_block hands out a copy but keeps the caller's reference to the original",
        PoolSemantics(fork_block=fork_block_keeping_reference),
        breaks=("table-references",),
    ),
    SymbolicMutant(
        "free-of-ref0-goes-negative",
        "free_blocks trusts its caller: a double free drives a ref count to -1",
        PoolSemantics(free_blocks=free_blocks_unguarded),
        breaks=("ref-nonnegative", "free-iff-unreferenced"),
    ),
    SymbolicMutant(
        "fork-copies-exclusive",
        "fork_block copies an exclusive block too and frees the original (no invariant "
        "breaks; the caller sees a copy where none was due)",
        PoolSemantics(fork_block=fork_block_copying_exclusive),
    ),
    SymbolicMutant(
        "all-frees-appended",
        "current profile, but unhashed freed blocks are appended like hashed ones (no "
        "invariant breaks; the queue order differs)",
        PoolSemantics(free_blocks=free_blocks_appending_all),
        profile="current",
    ),
    SymbolicMutant(
        "reset-while-in-use",
        "reset_prefix_cache drops every hash even while requests hold cached blocks",
        PoolSemantics(reset_prefix_cache=reset_ignoring_holders),
        breaks=("cached-prefix-chained",),
    ),
    SymbolicMutant(
        "collapse-duplicate-hash",
        "the index keeps one block per hash; a second holder hides the first",
        PoolSemantics(
            cache_block=cache_block_last_writer_wins,
            get_new_blocks=get_new_blocks_tolerant_evict,
        ),
        breaks=("hash-index-consistent",),
    ),
)

MUTANTS: dict[str, SymbolicMutant] = {m.name: m for m in _ALL}


def get_mutant(name: str | None) -> SymbolicMutant | None:
    """The mutant called ``name`` (``None`` for the spec); a clear error lists the names."""
    if name is None:
        return None
    try:
        return MUTANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown symbolic mutant {name!r}; expected one of: {', '.join(MUTANTS)}"
        ) from None


def semantics_of(mutant: SymbolicMutant | None) -> PoolSemantics:
    return SPEC if mutant is None else mutant.semantics
