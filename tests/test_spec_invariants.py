"""Each named pool invariant, shown catching a state that breaks it.

Every case starts from a healthy snapshot of a small pool (three blocks held by a
"request" [1, 2, 3] whose blocks are cached as the chain a -> a.b -> a.b.c, then freed
in reverse) and breaks exactly one thing, the way a buggy allocator would.
"""

from __future__ import annotations

import dataclasses

import pytest
from kvspec.spec import pool as sp
from kvspec.spec.invariants import INVARIANTS, PoolSnapshot, check_all, snapshot


def healthy() -> PoolSnapshot:
    s = sp.init_pool(6)
    a = sp.get_new_blocks(s, 3)
    sp.cache_block(s, a[0], b"a")
    sp.cache_block(s, a[1], b"a.b", parent=b"a")
    sp.cache_block(s, a[2], b"a.b.c", parent=b"a.b")
    sp.free_blocks(s, list(reversed(a)))
    sp.get_new_blocks(s, 1)  # block 4 is in use
    return snapshot(s)


def broken(snap: PoolSnapshot, **changes: object) -> PoolSnapshot:
    return dataclasses.replace(snap, **changes)


def test_the_healthy_pool_breaks_nothing() -> None:
    snap = healthy()
    assert snap.free_queue == (5, 3, 2, 1)
    assert check_all(snap) == {}


def _with_ref(snap: PoolSnapshot, block: int, value: int) -> tuple[int, ...]:
    refs = list(snap.ref_cnt)
    refs[block] = value
    return tuple(refs)


def _with_hash(snap: PoolSnapshot, block: int, value: bytes | None) -> tuple[bytes | None, ...]:
    hashes = list(snap.block_hash)
    hashes[block] = value
    return tuple(hashes)


CASES = {
    # a double free drove block 4 below zero
    "ref-nonnegative": lambda s: broken(s, ref_cnt=_with_ref(s, 4, -1)),
    # touch revived block 1 but left it in the queue
    "free-iff-unreferenced": lambda s: broken(s, ref_cnt=_with_ref(s, 1, 1)),
    # the null block was freed into the queue
    "null-block": lambda s: broken(s, free_queue=(0, *s.free_queue),
                                   num_free_blocks=s.num_free_blocks + 1),
    # block 4 was handed out while someone held it
    "no-double-allocation": lambda s: broken(s, allocated={4: 1}),
    # block 2 kept its hash but the index forgot it
    "hash-index-consistent": lambda s: broken(s, index={b"a": (1,), b"a.b.c": (3,)}),
    # usage counted the null block: 1 - 4/6 instead of 1 - 4/5
    "usage-excludes-null": lambda s: broken(s, usage=1 - 4 / 6),
    # a block is neither free nor referenced: it leaked
    "conservation": lambda s: broken(s, ref_cnt=_with_ref(s, 4, 0), free_queue=s.free_queue),
    # forward-order free: the parent a stands ahead of its child a.b
    "eviction-order": lambda s: broken(s, free_queue=(5, 1, 2, 3)),
}


def test_every_invariant_has_a_breaking_case() -> None:
    assert set(CASES) == set(INVARIANTS)


@pytest.mark.parametrize("name", list(CASES))
def test_invariant_reports_the_state_that_breaks_it(name: str) -> None:
    report = INVARIANTS[name].check(CASES[name](healthy()))
    assert report, f"{name} did not notice"
    assert all(isinstance(line, str) and line for line in report)


def test_eviction_order_is_not_judged_where_queue_order_is_free() -> None:
    snap = broken(healthy(), free_queue=(5, 1, 2, 3), check_queue_order=False)
    assert INVARIANTS["eviction-order"].check(snap) == []


def test_a_partial_index_is_judged_only_on_what_lookups_saw() -> None:
    snap = broken(healthy(), index={b"a": (1,)}, index_complete=False)
    assert INVARIANTS["hash-index-consistent"].check(snap) == []
    lost = broken(snap, index={b"a": ()})
    assert INVARIANTS["hash-index-consistent"].check(lost)
