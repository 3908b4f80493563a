"""Examples of the spec's block pool: each operation's guard and effect, in both profiles."""

from __future__ import annotations

import dataclasses

import pytest
from kvspec.spec import invariants
from kvspec.spec.errors import Refused
from kvspec.spec.pool import (
    NULL_BLOCK,
    PoolState,
    cache_block,
    fork_block,
    free_blocks,
    get_cached_block,
    get_new_blocks,
    get_num_free_blocks,
    get_usage,
    init_pool,
    reset_prefix_cache,
    touch,
)
from kvspec.spec.profiles import CLASSIC, CURRENT, PROFILES, Profile

PROFILE_PARAMS = pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
H1, H2, H3 = b"h1", b"h2", b"h3"


def assert_ok(s: PoolState) -> None:
    assert invariants.check_all(invariants.snapshot(s)) == {}


def refused_unchanged(s: PoolState, reason: str, op, *args) -> None:
    before = s.key()
    with pytest.raises(Refused) as refused:
        op(s, *args)
    assert refused.value.reason == reason
    assert s.key() == before


@PROFILE_PARAMS
def test_a_fresh_pool_queues_every_block_but_the_null_block(profile: Profile) -> None:
    s = init_pool(5, profile=profile)
    assert s.free_queue == [1, 2, 3, 4]
    assert get_num_free_blocks(s) == 4
    assert get_usage(s) == 0.0
    assert_ok(s)


@PROFILE_PARAMS
def test_get_new_blocks_pops_the_front_with_one_reference(profile: Profile) -> None:
    s = init_pool(5, profile=profile)
    assert get_new_blocks(s, 2) == [1, 2]
    assert (s.ref_cnt[1], s.ref_cnt[2]) == (1, 1)
    assert s.free_queue == [3, 4]
    assert get_usage(s) == pytest.approx(0.5)
    assert_ok(s)


@PROFILE_PARAMS
def test_reusing_a_cached_block_drops_its_hash_first(profile: Profile) -> None:
    s = init_pool(3, profile=profile)
    (b,) = get_new_blocks(s, 1)
    cache_block(s, b, H1)
    free_blocks(s, [b])
    assert get_cached_block(s, H1) == b  # free but still a possible hit
    assert b in get_new_blocks(s, 2)
    assert s.block_hash[b] is None and get_cached_block(s, H1) is None
    assert_ok(s)


@PROFILE_PARAMS
def test_get_new_blocks_refuses_more_than_free_or_negative(profile: Profile) -> None:
    s = init_pool(3, profile=profile)
    refused_unchanged(s, "not-enough-free-blocks", get_new_blocks, 3)
    refused_unchanged(s, "negative-count", get_new_blocks, -1)


@PROFILE_PARAMS
def test_touch_takes_a_zero_ref_hit_out_of_the_queue(profile: Profile) -> None:
    s = init_pool(4, profile=profile)
    (b,) = get_new_blocks(s, 1)
    cache_block(s, b, H1)
    free_blocks(s, [b])
    touch(s, [b])
    assert s.ref_cnt[b] == 1 and b not in s.free_queue
    touch(s, [b])
    assert s.ref_cnt[b] == 2
    assert_ok(s)


def test_null_block_is_skipped_by_touch_and_free_in_current() -> None:
    s = init_pool(3, profile=CURRENT)
    touch(s, [NULL_BLOCK])
    free_blocks(s, [NULL_BLOCK])
    assert s.ref_cnt[NULL_BLOCK] == 0 and NULL_BLOCK not in s.free_queue


def test_null_block_ref_count_drifts_in_classic() -> None:
    s = init_pool(3, profile=CLASSIC)
    touch(s, [NULL_BLOCK])
    assert s.ref_cnt[NULL_BLOCK] == 1
    free_blocks(s, [NULL_BLOCK, NULL_BLOCK])
    assert s.ref_cnt[NULL_BLOCK] == -1 and NULL_BLOCK not in s.free_queue
    assert_ok(s)


@pytest.mark.parametrize(
    ("profile", "expected"),
    [(CLASSIC, [4, 5, 6, 7, 3, 2, 1]), (CURRENT, [3, 4, 5, 6, 7, 2, 1])],
    ids=["classic", "current"],
)
def test_free_places_a_requests_blocks_per_profile(profile: Profile, expected: list[int]) -> None:
    """SEMANTICS 1.1: a 40-token request (block size 16) holds [1, 2, 3], 1 and 2 hashed."""
    s = init_pool(8, profile=profile)
    assert get_new_blocks(s, 3) == [1, 2, 3]
    cache_block(s, 1, H1)
    cache_block(s, 2, H2, parent=H1)
    free_blocks(s, [3, 2, 1])
    assert s.free_queue == expected
    assert_ok(s)


@PROFILE_PARAMS
def test_free_refuses_below_zero_counting_repeated_ids(profile: Profile) -> None:
    s = init_pool(4, profile=profile)
    get_new_blocks(s, 2)
    touch(s, [1])  # block 1 has 2 references
    refused_unchanged(s, "ref-count-below-zero", free_blocks, [1, 2, 2])
    refused_unchanged(s, "block-out-of-range", free_blocks, [4])
    free_blocks(s, [1, 1, 2])
    assert s.ref_cnt[1:] == [0, 0, 0]
    assert_ok(s)


@PROFILE_PARAMS
def test_cache_block_guards(profile: Profile) -> None:
    s = init_pool(4, profile=profile)
    (b,) = get_new_blocks(s, 1)
    refused_unchanged(s, "cache-null-block", cache_block, NULL_BLOCK, H1)
    refused_unchanged(s, "cache-unreferenced-block", cache_block, 2, H1)
    cache_block(s, b, H1)
    refused_unchanged(s, "cache-hashed-block", cache_block, b, H2)
    off = init_pool(4, enable_caching=False, profile=profile)
    get_new_blocks(off, 1)
    refused_unchanged(off, "caching-disabled", cache_block, 1, H1)


@PROFILE_PARAMS
def test_duplicate_content_is_cached_beside_the_first_and_lookup_finds_the_oldest(
    profile: Profile,
) -> None:
    s = init_pool(4, profile=profile)
    a, b = get_new_blocks(s, 2)
    cache_block(s, a, H1)
    cache_block(s, b, H1)
    assert s.cached[H1] == [a, b]
    assert get_cached_block(s, H1) == a
    free_blocks(s, [a])
    get_new_blocks(s, get_num_free_blocks(s))  # reuses a: its key now names only b
    assert get_cached_block(s, H1) == b
    assert_ok(s)


@PROFILE_PARAMS
def test_reset_prefix_cache_only_when_nothing_is_held(profile: Profile) -> None:
    s = init_pool(4, profile=profile)
    a, b = get_new_blocks(s, 2)
    cache_block(s, a, H1)
    assert reset_prefix_cache(s) is False
    assert get_cached_block(s, H1) == a
    free_blocks(s, [b, a])
    queue = list(s.free_queue)
    assert reset_prefix_cache(s) is True
    assert s.cached == {} and all(h is None for h in s.block_hash)
    assert s.free_queue == queue
    assert_ok(s)


@PROFILE_PARAMS
def test_fork_of_a_shared_block_leaves_the_other_holder_unchanged(profile: Profile) -> None:
    s = init_pool(4, profile=profile)
    (shared,) = get_new_blocks(s, 1)
    cache_block(s, shared, H1)
    touch(s, [shared])  # two requests hold it
    copy = fork_block(s, shared)
    assert copy != shared
    assert (s.ref_cnt[shared], s.ref_cnt[copy]) == (1, 1)
    assert s.block_hash[shared] == H1 and s.block_hash[copy] is None
    assert fork_block(s, shared) == shared  # now exclusive: no copy
    assert_ok(s)


@PROFILE_PARAMS
def test_fork_refuses_before_changing_anything(profile: Profile) -> None:
    s = init_pool(3, profile=profile)
    a, _ = get_new_blocks(s, 2)
    touch(s, [a])
    refused_unchanged(s, "not-enough-free-blocks", fork_block, a)
    refused_unchanged(s, "fork-null-block", fork_block, NULL_BLOCK)
    free_blocks(s, [a, a])
    refused_unchanged(s, "fork-free-block", fork_block, a)


def test_pool_invariants_report_a_broken_snapshot() -> None:
    s = init_pool(4)
    get_new_blocks(s, 1)
    good = invariants.snapshot(s)
    leaked = dataclasses.replace(good, free_queue=(2, 3, 3), num_free_blocks=3)
    broken = invariants.check_all(leaked)
    assert "free-iff-unreferenced" in broken and "conservation" in broken
