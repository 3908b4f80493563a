"""Hybrid block sizes: what one block_size cannot express.

A full-attention group at 32 tokens per block beside another at 16, sharing one pool,
hashes at 16 (the gcd), hit alignment at 32 (the lcm).
"""

from __future__ import annotations

import pytest
from kvspec.impl.coordinator import (
    BlockHashListWithBlockSize,
    HybridKVCacheCoordinator,
    resolve_kv_cache_block_sizes,
)
from kvspec.impl.errors import InvalidArgumentError
from kvspec.impl.request import Request

PROFILES = ("current", "classic")


def req(c: HybridKVCacheCoordinator, rid: str, tokens) -> Request:
    return Request(rid, list(tokens), block_hasher=c.block_hasher)


def admit(c: HybridKVCacheCoordinator, r: Request):
    hits, n = c.get_computed_blocks(r)
    new = c.allocate_slots(r, r.num_tokens - n, n, hits)
    if new is not None:
        r.num_computed_tokens = r.num_tokens
    return hits, n, new


def ids(per_group) -> tuple[list[int], ...]:
    return tuple([b.block_id for b in blocks] for blocks in per_group)


def test_resolve_block_sizes():
    assert resolve_kv_cache_block_sizes([32, 16], 16, enable_caching=True) == (32, 16)
    assert resolve_kv_cache_block_sizes([32, 48], 16, enable_caching=True) == (96, 16)
    assert resolve_kv_cache_block_sizes([32, 16], 16, enable_caching=False) == (32, 32)
    assert resolve_kv_cache_block_sizes([32, 16], 16, True, hash_block_size=8) == (32, 8)
    assert resolve_kv_cache_block_sizes([16], 16, enable_caching=True) == (16, 16)
    with pytest.raises(InvalidArgumentError, match="does not divide"):
        resolve_kv_cache_block_sizes([32, 16], 16, True, hash_block_size=12)


@pytest.mark.parametrize(("profile", "expected"), [
    ("current", [b"B", b"D"]),
    ("classic", [b"AB", b"CD"]),
])
def test_coarse_view_of_fine_hashes(profile, expected):
    fine = [b"A", b"B", b"C", b"D", b"E"]  # E: half a coarse block, not visible
    view = BlockHashListWithBlockSize(fine, 16, 32, profile=profile)
    assert len(view) == 2
    assert list(view) == expected and view[-1] == expected[-1] and view[0:1] == expected[:1]
    with pytest.raises(IndexError):
        view[2]


def test_per_group_block_counts_from_one_pool():
    c = HybridKVCacheCoordinator(20, [32, 16])
    r = req(c, "r", range(100))
    _, _, new = admit(c, r)
    assert [len(g) for g in new] == [4, 7]  # cdiv(100, 32), cdiv(100, 16)
    assert c.block_pool.get_num_free_blocks() == 19 - 11


@pytest.mark.parametrize("profile", PROFILES)
def test_caching_floors_to_lcm(profile):
    """48 tokens fill three 16-blocks, but a hit can end only at 32: cache one 32-block
    and two 16-blocks."""
    c = HybridKVCacheCoordinator(20, [32, 16], profile=profile)
    r = req(c, "r", range(48))
    admit(c, r)
    assert len(r.block_hashes) == 3  # hashed at 16
    g32, g16 = c.get_block_ids("r")
    blocks = c.block_pool.blocks
    assert [blocks[i].block_hash is not None for i in g32] == [True, False]
    assert [blocks[i].block_hash is not None for i in g16] == [True, True, False]


@pytest.mark.parametrize("profile", PROFILES)
def test_hit_aligned_to_lcm_across_groups(profile):
    """The example one block size cannot express. The 16-group holds 5 cached blocks
    (80 tokens) of the prefix, the 32-group 3 (96 tokens). 80 tokens would end in the
    middle of the 32-group's third block, so the agreed hit is 64 tokens: 2 + 4 blocks."""
    c = HybridKVCacheCoordinator(40, [32, 16], profile=profile)
    prompt = list(range(112))
    a = req(c, "a", prompt)
    admit(c, a)
    a32, a16 = c.get_block_ids("a")
    assert (len(a32), len(a16)) == (4, 7)
    c.free(a)
    c.block_pool.evict_blocks([a16[5]])  # the 16-group loses tokens 80..95

    b = req(c, "b", prompt)
    hits, n = c.get_computed_blocks(b)
    assert n == 64
    assert ids(hits) == (a32[:2], a16[:4])

    # Had the hit been 80 tokens, b would adopt a32[2] (tokens 64..95, cached by a) and
    # then write its own tokens 80..95 into that shared, hashed block. Aligned, b gets a
    # private block for tokens 64..95 and a32[2] stays cached, untouched.
    assert c.allocate_slots(b, b.num_tokens - n, n, hits) is not None
    b32, b16 = c.get_block_ids("b")
    assert b32[:2] == a32[:2] and b32[2] != a32[2]
    assert c.block_pool.blocks[a32[2]].ref_cnt == 0
    assert c.block_pool.blocks[a32[2]].block_hash is not None


def test_profiles_change_hash_bytes_not_hit_lengths():
    results = {}
    for profile in PROFILES:
        c = HybridKVCacheCoordinator(40, [32, 16], profile=profile)
        admit(c, req(c, "a", range(112)))
        g32 = c.get_block_ids("a")[0]
        results[profile] = (c.block_pool.blocks[g32[0]].block_hash,
                            c.get_computed_blocks(req(c, "b", range(112)))[1])
    assert results["current"][0] != results["classic"][0]
    assert results["current"][1] == results["classic"][1] == 96


@pytest.mark.parametrize("profile", PROFILES)
def test_all_groups_hits_touched_before_any_group_allocates(profile):
    """The 16-group's hits stand right behind the 32-group's at the queue front. Had the
    32-group popped its new block before the 16-group touched its hits, it would take
    hit block 6 and hand it out twice."""
    c = HybridKVCacheCoordinator(10, [32, 16], profile=profile)  # 9 usable blocks
    a = req(c, "a", range(64))
    admit(c, a)
    other = req(c, "c", [500] * 32)
    admit(c, other)
    assert c.get_block_ids("a") == ([1, 2], [3, 4, 5, 6])
    c.free(a)
    c.free(other)
    assert [b.block_id for b in c.block_pool.free_block_queue.get_all_free_blocks()] == [
        2, 1, 6, 5, 4, 3, 7, 9, 8]

    b = req(c, "b", list(range(64)) + [1])
    hits, n, new = admit(c, b)
    assert n == 64
    assert c.get_block_ids("b") == ([1, 2, 7], [3, 4, 5, 6, 9])
    assert all(c.block_pool.blocks[i].ref_cnt == 1 for i in range(1, 10) if i != 8)


@pytest.mark.parametrize("profile", PROFILES)
def test_capacity_summed_over_groups_and_failure_changes_nothing(profile):
    c = HybridKVCacheCoordinator(7, [32, 16], profile=profile)  # 6 usable blocks
    r = req(c, "r", range(64))  # needs 2 + 4 = 6
    s = req(c, "s", range(100, 120))  # needs 1 + 2 = 3
    admit(c, s)
    before = ([(b.ref_cnt, b.block_hash) for b in c.block_pool.blocks],
              c.get_block_ids("r"), c.block_pool.get_num_free_blocks())
    assert admit(c, r)[2] is None
    assert before == ([(b.ref_cnt, b.block_hash) for b in c.block_pool.blocks],
                      c.get_block_ids("r"), c.block_pool.get_num_free_blocks())
    c.free(s)
    assert admit(c, r)[2] is not None
    assert c.usage == 1.0


@pytest.mark.parametrize("profile", PROFILES)
def test_capacity_counts_every_groups_evictable_hits(profile):
    c = HybridKVCacheCoordinator(8, [32, 16], profile=profile)  # 7 usable blocks
    a = req(c, "a", range(64))
    admit(c, a)
    c.free(a)  # 6 cached blocks at ref_cnt 0, all 7 free
    b = req(c, "b", list(range(64)) + [1])
    hits, n, new = admit(c, b)  # 6 hits to touch + 2 new blocks = 8 > 7
    assert (n, new) == (64, None)
    assert c.block_pool.get_num_free_blocks() == 7


def test_docs_manager_examples_run_as_written():
    """Both examples in docs/manager.md run, and their commented results hold."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "manager.md"
    single, hybrid = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)
    ns: dict = {}
    exec(compile(single, str(doc), "exec"), ns)
    stats = ns["m"].get_prefix_cache_stats()
    assert (stats.requests, stats.queries, stats.hits) == (2, 96, 32)
    assert ns["m"].usage == 0.0
    ns = {}
    exec(compile(hybrid, str(doc), "exec"), ns)
    assert ns["c"].get_computed_blocks(ns["b"])[1] == 64
