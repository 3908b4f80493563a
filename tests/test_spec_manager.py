"""Examples of the spec's KV-cache manager and its request-level invariants."""

from __future__ import annotations

import dataclasses

import pytest
from kvspec.spec import invariants as pool_invariants
from kvspec.spec import manager_invariants as mi
from kvspec.spec import pool
from kvspec.spec.errors import Refused
from kvspec.spec.hashing import LoRARequest, sha256_hash
from kvspec.spec.manager import (
    ManagerState,
    PrefixCacheStats,
    allocate_slots,
    free,
    get_block_ids,
    get_computed_blocks,
    get_num_blocks_to_allocate,
    init_manager,
    is_running,
    prefix_cache_stats,
    reset_prefix_cache,
    usage,
)
from kvspec.spec.profiles import CLASSIC, CURRENT, PROFILES, Profile
from kvspec.spec.request import Request

BS = 16
PROFILE_PARAMS = pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))


def prompt(*block_fills: int, extra: int = 0) -> tuple[int, ...]:
    """A prompt of full blocks, block k filled with token ``block_fills[k]``, plus ``extra``."""
    tokens: tuple[int, ...] = ()
    for fill in block_fills:
        tokens += (fill,) * BS
    return tokens + (99,) * extra


def admit(m: ManagerState, r: Request, num_new_tokens: int | None = None) -> list[int] | None:
    """What a scheduler does for a waiting request: look up, then allocate, then compute."""
    hits, num_hit_tokens = get_computed_blocks(m, r)
    new = r.num_tokens - num_hit_tokens if num_new_tokens is None else num_new_tokens
    out = allocate_slots(m, r, new, num_hit_tokens, hits)
    if out is not None:
        r.num_computed_tokens = num_hit_tokens + new
    return out


def assert_pool_ok(m: ManagerState) -> None:
    assert pool_invariants.check_all(pool_invariants.snapshot(m.pool)) == {}


# --------------------------------------------------------------------------- lookups


@PROFILE_PARAMS
def test_hits_stop_at_num_tokens_minus_one(profile: Profile) -> None:
    """A fully cached 48-token prompt (block size 16) hits 2 blocks, 32 tokens, not 3.

    The model must still run the prompt's last token to get the logits the first output
    token is sampled from, so at most 47 tokens can come from the cache; hits are whole
    blocks, so 47 // 16 = 2 blocks, and the third block is recomputed.
    """
    m = init_manager(8, BS, profile=profile)
    first = Request("first", prompt(1, 2, 3), BS, profile=profile)
    admit(m, first)
    assert len(first.block_hashes) == 3
    assert all(m.pool.block_hash[b] is not None for b in get_block_ids(m, "first"))

    again = Request("again", prompt(1, 2, 3), BS, profile=profile)
    hits, num_hit_tokens = get_computed_blocks(m, again)
    assert hits == get_block_ids(m, "first")[:2]
    assert num_hit_tokens == 32

    one_more = Request("one-more", prompt(1, 2, 3, extra=1), BS, profile=profile)
    assert get_computed_blocks(m, one_more) == (get_block_ids(m, "first"), 48)


@PROFILE_PARAMS
def test_get_computed_blocks_is_pure(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("a", prompt(1, 2, 3), BS, profile=profile))
    free(m, "a")
    before = m.key()
    hits, _ = get_computed_blocks(m, Request("b", prompt(1, 2, 3), BS, profile=profile))
    assert hits and all(m.pool.ref_cnt[b] == 0 for b in hits)
    assert m.key() == before


def test_hits_stop_at_the_first_miss() -> None:
    """A cached block after a missing one is another prefix's block: never a hit."""
    m = init_manager(8, BS)
    a = Request("a", prompt(1, 2, 3, extra=1), BS)
    admit(m, a)
    b1, b2, b3, _ = get_block_ids(m, "a")
    free(m, "a")
    pool._evict(m.pool, b2)  # as if block 2 had been reused
    hits, num_hit_tokens = get_computed_blocks(m, Request("b", prompt(1, 2, 3, extra=1), BS))
    assert (hits, num_hit_tokens) == ([b1], 16)
    assert m.pool.block_hash[b3] is not None


def test_caching_off_finds_nothing_and_hashes_nothing() -> None:
    m = init_manager(8, BS, enable_caching=False)
    admit(m, Request("a", prompt(1, 2, 3), BS))
    assert all(h is None for h in m.pool.block_hash)
    assert get_computed_blocks(m, Request("b", prompt(1, 2, 3), BS)) == ([], 0)
    free(m, "a")
    assert m.pool.free_queue[:3] == [3, 2, 1]  # unhashed: prepended, in reversed table order


def test_a_request_that_skips_reading_still_writes() -> None:
    m = init_manager(8, BS)
    admit(m, Request("a", prompt(1, 2, 3), BS))
    logprobs = Request("lp", prompt(1, 2, 3), BS, skip_reading_prefix_cache=True)
    assert get_computed_blocks(m, logprobs) == ([], 0)
    admit(m, logprobs)
    assert all(m.pool.block_hash[b] is not None for b in get_block_ids(m, "lp"))
    assert prefix_cache_stats(m) == PrefixCacheStats(requests=1, queries=48, hits=0)


# --------------------------------------------------------------------------- free order


def _two_requests_sharing_a_prefix(profile: Profile) -> tuple[ManagerState, list[int]]:
    """SEMANTICS section 8: A holds [a1, a2, a3], B holds [a1, a2, b3], all cached."""
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("A", prompt(1, 2, 3), BS, profile=profile))
    b = Request("B", prompt(1, 2, 4), BS, profile=profile)
    hits, _ = get_computed_blocks(m, b)
    assert hits == get_block_ids(m, "A")[:2]
    admit(m, b)
    a1, a2, a3 = get_block_ids(m, "A")
    b3 = get_block_ids(m, "B")[2]
    assert get_block_ids(m, "B") == [a1, a2, b3]
    assert (m.pool.ref_cnt[a1], m.pool.ref_cnt[a2]) == (2, 2)
    return m, [a1, a2, a3, b3]


@PROFILE_PARAMS
def test_free_in_reverse_keeps_the_shared_prefix_evicted_last(profile: Profile) -> None:
    m, (a1, a2, a3, b3) = _two_requests_sharing_a_prefix(profile)
    free(m, "A")
    free(m, "B")
    assert m.pool.free_queue[-4:] == [a3, b3, a2, a1]
    assert_pool_ok(m)


@PROFILE_PARAMS
def test_free_in_forward_order_breaks_eviction_order(profile: Profile) -> None:
    m, (a1, a2, a3, b3) = _two_requests_sharing_a_prefix(profile)
    for rid in ("A", "B"):
        pool.free_blocks(m.pool, m.req_to_blocks.pop(rid))  # forward: head first
        m.num_cached_block.pop(rid)
    assert m.pool.free_queue[-4:] == [a3, a1, a2, b3]
    broken = pool_invariants.check_all(pool_invariants.snapshot(m.pool))
    assert list(broken) == ["eviction-order"]
    # Reusing the front up to a1 orphans a2 and b3: still cached, never reachable.
    pool.get_new_blocks(m.pool, m.pool.free_queue.index(a1) + 1)
    assert m.pool.block_hash[a2] is not None and m.pool.block_hash[b3] is not None
    assert get_computed_blocks(m, Request("C", prompt(1, 2, 4), BS, profile=profile)) == ([], 0)


@PROFILE_PARAMS
def test_freeing_an_unknown_or_freed_request_changes_nothing(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("a", prompt(1, extra=3), BS, profile=profile))
    free(m, "a")
    before = m.key()
    free(m, "a")
    free(m, "never-seen")
    assert m.key() == before


# --------------------------------------------------------------------------- capacity


def _cached_prefix_then_freed(num_blocks: int, profile: Profile) -> ManagerState:
    """A 33-token request caches two blocks (its third is partial), then finishes."""
    m = init_manager(num_blocks, BS, profile=profile)
    admit(m, Request("a", prompt(1, 2, extra=1), BS, profile=profile))
    free(m, "a")
    return m


@PROFILE_PARAMS
def test_capacity_check_counts_evictable_hits_exact_fit_succeeds(profile: Profile) -> None:
    m = _cached_prefix_then_freed(6, profile)  # 5 usable blocks, all free
    b = Request("b", prompt(1, 2, 5, 6, 7), BS, profile=profile)  # 80 tokens, 5 blocks
    hits, num_hit_tokens = get_computed_blocks(m, b)
    assert len(hits) == 2 and all(m.pool.ref_cnt[h] == 0 for h in hits)
    # 3 new blocks + 2 hits taken out of the free queue = 5 = free.
    assert get_num_blocks_to_allocate(m, b, 80, hits) == 5 == pool.get_num_free_blocks(m.pool)
    new = allocate_slots(m, b, 48, num_hit_tokens, hits)
    assert new is not None and len(new) == 3 and not set(new) & set(hits)
    assert get_block_ids(m, "b") == hits + new
    assert_pool_ok(m)


@PROFILE_PARAMS
def test_capacity_check_one_block_short_returns_none_and_changes_nothing(
    profile: Profile,
) -> None:
    m = _cached_prefix_then_freed(6, profile)
    admit(m, Request("c", (7,) * 10, BS, profile=profile))  # holds one block: 4 free
    b = Request("b", prompt(1, 2, 5, 6, 7), BS, profile=profile)
    hits, num_hit_tokens = get_computed_blocks(m, b)
    assert len(hits) == 2
    # Counting only the 3 new blocks would say "fits in 4"; the 2 zero-ref hits leave 2.
    assert get_num_blocks_to_allocate(m, b, 80, hits) == 5 > pool.get_num_free_blocks(m.pool)
    before = m.key()
    assert allocate_slots(m, b, 48, num_hit_tokens, hits) is None
    assert m.key() == before


@PROFILE_PARAMS
def test_hits_are_touched_before_new_blocks_are_taken(profile: Profile) -> None:
    """The zero-ref hits stand at the queue front; popping first would hand them out."""
    m = _cached_prefix_then_freed(6, profile)
    hits, _ = get_computed_blocks(m, Request("probe", prompt(1, 2, 5), BS, profile=profile))
    # Bring the hits to the queue front, where get_new_blocks pops first.
    m.pool.free_queue = hits + [b for b in m.pool.free_queue if b not in hits]
    b = Request("b", prompt(1, 2, 5), BS, profile=profile)
    new = admit(m, b)
    assert new is not None and not set(new) & set(hits)
    assert get_block_ids(m, "b")[:2] == hits
    assert mi.check_all(mi.snapshot(m, [b]), ["shared-iff-counted"]) == {}


# --------------------------------------------------------------------------- new tokens


def test_zero_new_tokens_adopting_hits_is_allowed_in_current() -> None:
    m = _cached_prefix_then_freed(8, CURRENT)
    b = Request("b", prompt(1, 2, 5), BS)
    hits, num_hit_tokens = get_computed_blocks(m, b)
    assert allocate_slots(m, b, 0, num_hit_tokens, hits) == []
    assert get_block_ids(m, "b") == hits
    assert is_running(m, "b")
    assert all(m.pool.ref_cnt[h] == 1 for h in hits)


@PROFILE_PARAMS
def test_zero_new_tokens_without_hits_is_refused(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    r = Request("r", prompt(1), BS, profile=profile)
    before = m.key()
    with pytest.raises(Refused) as refused:
        allocate_slots(m, r, 0)
    assert refused.value.reason == "zero-new-tokens"
    assert m.key() == before


def test_zero_new_tokens_adopting_hits_is_refused_in_classic() -> None:
    m = _cached_prefix_then_freed(8, CLASSIC)
    b = Request("b", prompt(1, 2, 5), BS, profile=CLASSIC)
    hits, num_hit_tokens = get_computed_blocks(m, b)
    before = m.key()
    with pytest.raises(Refused, match="zero-new-tokens"):
        allocate_slots(m, b, 0, num_hit_tokens, hits)
    assert m.key() == before


@PROFILE_PARAMS
def test_lookahead_slots_are_allocated_but_never_cached(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    r = Request("r", prompt(1, extra=4), BS, profile=profile)  # 20 tokens
    new = allocate_slots(m, r, 20, num_lookahead_tokens=12)  # 32 slots: 2 full blocks
    assert new is not None and len(new) == 2
    assert m.pool.block_hash[new[0]] is not None
    assert m.pool.block_hash[new[1]] is None
    assert m.num_cached_block["r"] == 1


@PROFILE_PARAMS
def test_partial_block_is_cached_only_once_full(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    r = Request("r", prompt(1, 2, extra=8), BS, profile=profile)  # 40 tokens
    admit(m, r)
    first, second, third = get_block_ids(m, "r")
    assert m.pool.block_hash[third] is None and m.num_cached_block["r"] == 2
    r.append_output_token_ids([5] * 8)  # decode fills block 3 (as the spec sees it)
    assert allocate_slots(m, r, 8) == []
    assert m.pool.block_hash[third] == r.block_hashes[2]
    assert m.num_cached_block["r"] == 3


@PROFILE_PARAMS
def test_a_recomputed_full_block_is_cached_beside_the_first(profile: Profile) -> None:
    """The capped hit recomputes block 3; its copy joins the index, no table changes."""
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("a", prompt(1, 2, 3), BS, profile=profile))
    admit(m, Request("b", prompt(1, 2, 3), BS, profile=profile))
    a3, b3 = get_block_ids(m, "a")[2], get_block_ids(m, "b")[2]
    assert a3 != b3
    assert m.pool.cached[m.pool.block_hash[a3]] == [a3, b3]
    assert_pool_ok(m)


@PROFILE_PARAMS
def test_a_first_chunk_shorter_than_a_block_leaves_the_request_untracked(
    profile: Profile,
) -> None:
    m = init_manager(8, BS, profile=profile)
    r = Request("r", prompt(1, 2), BS, profile=profile)
    assert admit(m, r, num_new_tokens=10) is not None
    assert not is_running(m, "r") and len(get_block_ids(m, "r")) == 1
    assert allocate_slots(m, r, 22) is not None
    assert is_running(m, "r") and m.num_cached_block["r"] == 2


# --------------------------------------------------------------------------- guards


@PROFILE_PARAMS
def test_hits_are_adopted_only_by_a_request_without_blocks(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("a", prompt(1, 2, 3), BS, profile=profile))
    b = Request("b", prompt(1, 2, 3), BS, profile=profile)
    hits, num_hit_tokens = get_computed_blocks(m, b)
    admit(m, b, num_new_tokens=1)  # adopts the hits and one token
    before = m.key()
    with pytest.raises(Refused, match="hits-into-running-request"):
        allocate_slots(m, b, 1, num_hit_tokens, hits)
    assert m.key() == before


@PROFILE_PARAMS
def test_a_hit_that_no_longer_holds_the_request_hash_is_refused(profile: Profile) -> None:
    m = _cached_prefix_then_freed(8, profile)
    b = Request("b", prompt(1, 2, 5), BS, profile=profile)
    hits, num_hit_tokens = get_computed_blocks(m, b)
    pool._evict(m.pool, hits[1])
    before = m.key()
    with pytest.raises(Refused, match="stale-hit"):
        allocate_slots(m, b, 16, num_hit_tokens, hits)
    assert m.key() == before


@PROFILE_PARAMS
def test_hits_past_the_cap_or_of_the_wrong_length_are_refused(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("a", prompt(1, 2, 3), BS, profile=profile))
    table = get_block_ids(m, "a")
    b = Request("b", prompt(1, 2, 3), BS, profile=profile)
    with pytest.raises(Refused, match="hit-beyond-cap"):
        allocate_slots(m, b, 1, 48, table)
    with pytest.raises(Refused, match="hit-length-mismatch"):
        allocate_slots(m, b, 16, 16, table[:2])


# --------------------------------------------------------------------------- stats, reset


@PROFILE_PARAMS
def test_stats_count_each_admission_once(profile: Profile) -> None:
    m = _cached_prefix_then_freed(5, profile)  # 4 usable blocks; "a" (33 tokens) counted
    blocker = Request("x", (7,) * 20, BS, profile=profile)
    admit(m, blocker)  # holds 2 blocks; 2 free, both the cached hits
    assert prefix_cache_stats(m) == PrefixCacheStats(requests=2, queries=53, hits=0)
    b = Request("b", prompt(1, 2, 5), BS, profile=profile)
    for _ in range(3):  # three scheduling attempts that do not fit
        assert admit(m, b) is None
    assert prefix_cache_stats(m) == PrefixCacheStats(requests=2, queries=53, hits=0)
    free(m, "x")
    assert admit(m, b) is not None
    b.append_output_token_ids(9)
    assert allocate_slots(m, b, 1) is not None  # decode: not an admission
    assert prefix_cache_stats(m) == PrefixCacheStats(requests=3, queries=101, hits=32)
    free(m, "b")  # preempted
    b.num_computed_tokens = 0
    b.num_preemptions += 1
    assert admit(m, b) is not None  # readmitted with 49 tokens: counted apart
    assert prefix_cache_stats(m) == PrefixCacheStats(
        requests=3,
        queries=101,
        hits=32,
        preempted_requests=1,
        preempted_queries=49,
        preempted_hits=48,
    )


@PROFILE_PARAMS
def test_reset_prefix_cache_waits_until_no_block_is_held(profile: Profile) -> None:
    m = init_manager(8, BS, profile=profile)
    admit(m, Request("a", prompt(1, 2, 3), BS, profile=profile))
    assert usage(m) == pytest.approx(3 / 7)
    assert reset_prefix_cache(m) is False
    free(m, "a")
    assert usage(m) == 0.0
    assert reset_prefix_cache(m) is True
    assert get_computed_blocks(m, Request("b", prompt(1, 2, 3), BS, profile=profile)) == ([], 0)


# --------------------------------------------------------------------------- invariants


class Driver:
    """A minimal scheduler keeping the facts the manager invariants need."""

    def __init__(self, m: ManagerState) -> None:
        self.m = m
        self.live: dict[str, Request] = {}
        self.adopted: dict[str, int] = {}
        self.contents: dict[int, mi.BlockContent] = {}
        self.admissions: list[mi.Admission] = []
        self.hits: list[mi.HitView] = []

    def admit(self, r: Request) -> list[int] | None:
        hits, num_hit_tokens = get_computed_blocks(self.m, r)
        self.hits = [mi.hit_view(r, hits, num_hit_tokens)]
        new = allocate_slots(self.m, r, r.num_tokens - num_hit_tokens, num_hit_tokens, hits)
        if new is None:
            return None
        self.live[r.request_id] = r
        self.adopted[r.request_id] = len(hits)
        self.admissions.append(mi.Admission(r.request_id, r.num_tokens, num_hit_tokens))
        r.num_computed_tokens = r.num_tokens
        mi.note_allocation(
            self.contents,
            r,
            get_block_ids(self.m, r.request_id),
            new,
            len(hits),
            r.num_computed_tokens,
        )
        return new

    def finish(self, rid: str) -> None:
        free(self.m, rid)
        del self.live[rid]

    def snapshot(self) -> mi.ManagerSnapshot:
        return mi.snapshot(
            self.m,
            self.live.values(),
            hits=self.hits,
            block_content=self.contents,
            admissions=self.admissions,
        )


@PROFILE_PARAMS
def test_a_correct_run_keeps_every_manager_invariant(profile: Profile) -> None:
    d = Driver(init_manager(12, BS, profile=profile))
    steps = [
        Request("a", prompt(1, 2, 3), BS, profile=profile),
        Request("b", prompt(1, 2, 4), BS, profile=profile),
        Request("c", prompt(1, 2, 3, extra=2), BS, profile=profile, lora=LoRARequest("l")),
    ]
    for r in steps:
        assert d.admit(r) is not None
        assert mi.check_all(d.snapshot()) == {}
    d.finish("a")
    d.finish("c")
    assert d.admit(Request("d", prompt(1, 2, 3, extra=1), BS, profile=profile)) is not None
    assert d.hits[0].num_hit_tokens == 48
    assert mi.check_all(d.snapshot()) == {}


def _good_snapshot() -> tuple[Driver, mi.ManagerSnapshot]:
    d = Driver(init_manager(8, BS))
    d.admit(Request("a", prompt(1, 2, 3), BS))
    d.admit(Request("b", prompt(1, 2, 4), BS))
    snap = d.snapshot()
    assert mi.check_all(snap) == {}
    return d, snap


def test_hit_cap_reports_a_hit_of_every_token() -> None:
    d, snap = _good_snapshot()
    r = d.live["a"]
    uncapped = mi.hit_view(r, get_block_ids(d.m, "a"), 48)
    misaligned = mi.hit_view(r, get_block_ids(d.m, "a")[:1], 20)
    broken = dataclasses.replace(snap, hits=(uncapped, misaligned))
    assert len(mi.check_all(broken)["hit-cap"]) == 2


def test_table_covers_computed_reports_a_short_table() -> None:
    _, snap = _good_snapshot()
    short = dataclasses.replace(snap.requests[0], block_ids=snap.requests[0].block_ids[:2])
    broken = dataclasses.replace(snap, requests=(short, snap.requests[1]))
    assert mi.check_all(broken, ["table-covers-computed"]) == {
        "table-covers-computed": [
            f"request 'a': 48 computed tokens but table {list(short.block_ids)} holds 32 slots"
        ]
    }


def test_hit_content_reports_a_block_of_another_prefix() -> None:
    d, snap = _good_snapshot()
    a1, a2, a3 = get_block_ids(d.m, "a")
    b3 = get_block_ids(d.m, "b")[2]
    # A lookup for a's prompt that (wrongly) returned b's third block at index 2.
    r = Request("q", prompt(1, 2, 3, extra=1), BS)
    broken = dataclasses.replace(snap, hits=(mi.hit_view(r, [a1, a2, b3], 48),))
    (violation,) = mi.check_all(broken)["hit-content"]
    assert f"hit block {b3} at index 2" in violation
    unwritten = dataclasses.replace(snap, hits=(mi.hit_view(r, [a1, 7], 32),))
    assert "never written" in mi.check_all(unwritten)["hit-content"][0]


def test_hit_content_catches_a_weak_hash_collision() -> None:
    """With a one-byte hash, some other first block collides with prompt 1's key."""

    def weak(value: object) -> bytes:
        return sha256_hash(value)[:1]

    d = Driver(init_manager(8, BS))
    a = Request("a", prompt(1, extra=1), BS, hash_fn=weak)
    d.admit(a)
    fill = next(
        f
        for f in range(2, 2000)
        if Request("p", prompt(f, extra=1), BS, hash_fn=weak).block_hashes == a.block_hashes
    )
    d.admit(Request("b", prompt(fill, extra=1), BS, hash_fn=weak))
    assert d.hits[0].block_ids == tuple(get_block_ids(d.m, "a")[:1])
    assert list(mi.check_all(d.snapshot())) == ["hit-content"]


def test_hit_content_sees_identity_keys_not_only_tokens() -> None:
    d, snap = _good_snapshot()
    a1 = get_block_ids(d.m, "a")[0]
    other_tenant = Request("t", prompt(1, 2), BS, cache_salt="tenant-b")
    broken = dataclasses.replace(snap, hits=(mi.hit_view(other_tenant, [a1], 16),))
    assert "salt 'tenant-b'" in mi.check_all(broken)["hit-content"][0]


def test_shared_iff_counted_reports_a_block_in_two_tables_counted_once() -> None:
    d, snap = _good_snapshot()
    a3 = get_block_ids(d.m, "a")[2]
    b_view = snap.requests[1]
    stolen = dataclasses.replace(b_view, block_ids=b_view.block_ids[:2] + (a3,))
    broken = dataclasses.replace(snap, requests=(snap.requests[0], stolen))
    violations = mi.check_all(broken)["shared-iff-counted"]
    assert f"block {a3} has ref_cnt 1 but 2 table slot(s) ('a', 'b')" in violations


def test_stats_match_hits_keeps_readmissions_apart() -> None:
    d, snap = _good_snapshot()
    readmitted = mi.Admission("b", 48, 32, preempted=True)
    broken = dataclasses.replace(snap, admissions=(snap.admissions[0], readmitted))
    assert mi.check_all(broken)["stats-match-hits"] == [
        "prefix-cache stats requests = 2, admissions give 1",
        "prefix-cache stats queries = 96, admissions give 48",
        "prefix-cache stats hits = 32, admissions give 0",
        "prefix-cache stats preempted_requests = 0, admissions give 1",
        "prefix-cache stats preempted_queries = 0, admissions give 48",
        "prefix-cache stats preempted_hits = 0, admissions give 32",
    ]


def test_stats_match_hits_reports_stats_counted_per_attempt() -> None:
    _, snap = _good_snapshot()
    per_attempt = PrefixCacheStats(requests=3, queries=144, hits=32)
    broken = dataclasses.replace(snap, stats=per_attempt)
    assert mi.check_all(broken) == {
        "stats-match-hits": [
            "prefix-cache stats requests = 3, admissions give 2",
            "prefix-cache stats queries = 144, admissions give 96",
        ]
    }


def test_every_manager_invariant_has_a_name_and_statement() -> None:
    assert list(mi.MANAGER_INVARIANTS) == [
        "hit-cap",
        "table-covers-computed",
        "hit-content",
        "shared-iff-counted",
        "stats-match-hits",
    ]
    assert all(inv.statement for inv in mi.MANAGER_INVARIANTS.values())
