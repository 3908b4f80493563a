"""Every public method of the pool, the manager and the hybrid coordinator is atomic.

Each test drives one object with a random mix of well-typed and ill-typed calls (wrong types,
bools, floats, NaN, negative and huge numbers, ids where blocks go, blocks of another pool,
repeats) and snapshots every observable before each call. A call that raises must raise one
of kvspec's own errors, with a one-line message that names the operation and what was
expected, and leave the snapshot exactly as it was. So must an ``allocate_slots`` that
returns ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.coordinator import HybridKVCacheCoordinator
from kvspec.impl.errors import KVCacheError
from kvspec.impl.kv_cache_manager import KVCacheManager
from kvspec.impl.request import Request

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

#: Values that are no count, no id, no hash and no block.
JUNK = [None, True, False, 1.5, math.nan, math.inf, -1, 2**64, -(2**64), "2", "", b"", 0.0,
        [], (), [1], {"a": 1}, object(), bytearray(b"h")]


def junk() -> st.SearchStrategy[Any]:
    return st.sampled_from(JUNK)


def mostly(valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four, else ``bad``: progress, with plenty of mistakes."""
    return st.integers(0, 3).flatmap(lambda k: bad if k == 3 else valid)


def containers(element: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists of ``element`` (repeats included), as list, tuple or one-shot iterator."""
    lists = st.lists(element, max_size=4)
    return st.one_of(lists, lists.map(tuple), lists.map(iter))


def check_refusal(name: str, call: Callable[[], Any], snapshot: Callable[[], Any]) -> Any:
    """Make ``call``; if it is refused, the error is kvspec's and nothing changed."""
    before = snapshot()
    try:
        result = call()
    except KVCacheError as error:
        message = str(error)
        assert "\n" not in message and name in message and "expected" in message, message
        assert snapshot() == before, f"{name} refused ({message}) but changed the state"
        return error
    if result is None and name == "allocate_slots":
        assert snapshot() == before, "allocate_slots returned None but changed the state"
    return result


# --------------------------------------------------------------------------- the pool


def pool_snapshot(pool: BlockPool) -> tuple:
    """Every observable: per-block state and links, queue order, counters, the index."""

    def link(block: KVCacheBlock | None) -> int | None:
        return None if block is None else block.block_id

    index = {key: (value.block_id,) if isinstance(value, KVCacheBlock) else tuple(value)
             for key, value in pool.cached_block_hash_to_block._cache.items()}
    return (
        [(b.block_id, b.ref_cnt, b.block_hash, link(b.prev_free_block),
          link(b.next_free_block), b.is_null) for b in pool.blocks],
        [b.block_id for b in pool.free_block_queue.get_all_free_blocks()],
        pool.get_num_free_blocks(),
        pool.get_usage(),
        index,
    )


def check_pool_consistent(pool: BlockPool) -> None:
    queued = [b.block_id for b in pool.free_block_queue.get_all_free_blocks()]
    assert len(queued) == len(set(queued)) == pool.get_num_free_blocks()
    for block in pool.blocks[1:]:
        assert (block.block_id in queued) == (block.ref_cnt == 0) and block.ref_cnt >= 0
        if block.block_hash is not None:
            assert pool.cached_block_hash_to_block.contain(block.block_hash, block.block_id)
    assert 0 not in queued


#: Pool operations; the request life cycle (allocate, cache, look up, share, free) twice.
POOL_OPS = ["get_new_blocks", "touch", "free_blocks", "cache_block", "cache_full_blocks",
            "get_cached_block", "get_cached_prefix", "evict_blocks", "fork_block", "get_block",
            "get_blocks", "reset_prefix_cache", "get_new_blocks", "cache_block",
            "cache_full_blocks", "get_cached_block", "touch", "free_blocks"]


def draw_pool_call(data: st.DataObject, pool: BlockPool, other: BlockPool) -> tuple[str, tuple]:
    """One operation and its arguments, each argument well-typed three times in four."""
    held = [b for b in pool.blocks if b.ref_cnt > 0 and not b.is_null] or pool.blocks
    cacheable = [b for b in held if b.block_hash is None] or held
    keys = list(pool.cached_block_hash_to_block._cache)
    foreign = st.sampled_from([*other.blocks, KVCacheBlock(1), KVCacheBlock(99)])
    bad_block = st.one_of(foreign, junk())
    block = mostly(st.sampled_from(pool.blocks), bad_block)
    held_block = mostly(st.sampled_from(held), bad_block)  # freeable
    cacheable_block = mostly(st.sampled_from(cacheable), bad_block)
    blocks = mostly(containers(st.one_of(block, held_block)), junk())
    count = mostly(st.integers(1, 3) | st.just(0), junk())
    block_id = mostly(st.integers(0, pool.num_gpu_blocks - 1),
                      st.one_of(junk(), st.just(pool.num_gpu_blocks)))
    block_hash = mostly(st.sampled_from([b"a", b"b", b"c"]), junk())
    group = mostly(st.sampled_from([0, 0, 1]), st.one_of(junk(), st.just(2**32)))
    lookup = st.tuples(block_hash, mostly(st.sampled_from([[0], (0,), [1, 0], [1]]),
                                          st.one_of(junk(), st.lists(group, max_size=2))))
    hit = st.sampled_from(keys).map(lambda k: (k[:-4], [int.from_bytes(k[-4:], "big")]))
    args: dict[str, Callable[[], st.SearchStrategy[tuple]]] = {
        "get_new_blocks": lambda: st.tuples(count),
        "touch": lambda: st.tuples(blocks),
        "free_blocks": lambda: st.tuples(blocks),
        "cache_block": lambda: st.tuples(cacheable_block, block_hash, group),
        "cache_full_blocks": lambda: st.lists(cacheable_block, max_size=3).flatmap(
            lambda bs: st.tuples(
                st.lists(block_hash, min_size=len(bs), max_size=len(bs) + 1), st.just(bs),
                mostly(st.integers(0, len(bs)), junk()), mostly(st.just(len(bs)), count),
                group)),
        "get_cached_block": lambda: mostly(hit, lookup) if keys else lookup,
        "get_cached_prefix": lambda: st.tuples(mostly(containers(block_hash), junk()), group),
        "evict_blocks": lambda: st.tuples(containers(block_id)),
        "fork_block": lambda: st.tuples(block),
        "get_block": lambda: st.tuples(block_id),
        "get_blocks": lambda: st.tuples(mostly(containers(block_id), junk())),
        "reset_prefix_cache": lambda: st.just(()),
    }
    name = data.draw(st.sampled_from(POOL_OPS))
    return name, data.draw(args[name]())


def warm_up(pool: BlockPool) -> None:
    """A shared cached block, a free cached one and held uncached ones, as far as they fit:
    hits, revivals and caching then happen from the first call."""
    blocks = pool.get_new_blocks(min(4, pool.get_num_free_blocks()))
    if pool.enable_caching:
        for block, block_hash in zip(blocks[:2], (b"a", b"b"), strict=False):
            pool.cache_block(block, block_hash)
    pool.touch(blocks[:1])
    pool.free_blocks(blocks[1:2])


@SETTINGS
@given(data=st.data(), num_blocks=st.integers(1, 6), caching=st.sampled_from([True, True, False]),
       profile=st.sampled_from(["current", "classic"]))
def test_every_refused_pool_call_leaves_every_observable_unchanged(
    data: st.DataObject, num_blocks: int, caching: bool, profile: str
) -> None:
    pool = BlockPool(num_blocks, enable_caching=caching, profile=profile)
    other = BlockPool(num_blocks)
    warm_up(pool)
    for _ in range(data.draw(st.integers(5, 25))):
        name, args = draw_pool_call(data, pool, other)
        check_refusal(name, lambda: getattr(pool, name)(*args),  # noqa: B023
                      lambda: pool_snapshot(pool))
        if pool.profile.name == "current":  # classic lets the null block's count drift
            check_pool_consistent(pool)


def is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def accepted(build: Callable[[], Any], name: str) -> bool:
    """Whether ``build`` succeeds; a refusal must be one line naming ``name``."""
    try:
        build()
    except KVCacheError as error:
        assert name in str(error) and "expected" in str(error) and "\n" not in str(error)
        return False
    return True


@SETTINGS
@given(value=st.one_of(junk().filter(lambda v: v != 2**64), st.integers(-2, 8),
                       st.sampled_from(["current", "classic"])))
def test_a_pool_is_built_only_from_well_typed_arguments(value: Any) -> None:
    assert accepted(lambda: BlockPool(value), "num_gpu_blocks") == is_count(value, 1)
    assert accepted(lambda: BlockPool(4, value), "enable_caching") == isinstance(value, bool)
    assert accepted(lambda: BlockPool(4, True, value), "profile") == (
        value in ("current", "classic"))


# --------------------------------------------------------------------------- the manager

PROMPTS = ([1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 9, 9, 9], [5, 6, 7, 8], [1, 2])


def manager_snapshot(m: KVCacheManager) -> tuple:
    stats = m.get_prefix_cache_stats()
    return (
        pool_snapshot(m.block_pool),
        {rid: [b.block_id for b in table] for rid, table in m.req_to_blocks.items()},
        dict(m.num_cached_block),
        dict(m._pending_lookups),
        None if stats is None else (stats.requests, stats.queries, stats.hits,
                                    stats.preempted_requests, stats.preempted_queries,
                                    stats.preempted_hits, stats.reset),
        m.usage,
    )


def scheduler_counters(requests: list[Request]) -> list[tuple[int, int]]:
    return [(r.num_computed_tokens, r.num_preemptions) for r in requests]


def manager_step(data: st.DataObject, m: Any, requests: list[Request], others: list[Any],
                 snapshot: Callable[[], Any]) -> None:
    """One call on a manager or coordinator ``m``; the test plays the scheduler around it."""
    request = data.draw(mostly(st.sampled_from(requests), st.one_of(junk(), st.just("r0"))))
    count = mostly(st.integers(0, 6), junk())
    op = data.draw(st.sampled_from(["admit", "admit", "allocate_slots", "allocate_slots",
                                    "cache_blocks", "free", "get_computed_blocks",
                                    "get_block_ids", "reset_prefix_cache", "bad_counter"]))
    if op == "bad_counter" and isinstance(request, Request):
        # A scheduler bug: the request's own counters are no counts.
        name = data.draw(st.sampled_from(["num_computed_tokens", "num_preemptions"]))
        saved = getattr(request, name)
        setattr(request, name, data.draw(junk()))
        check_refusal("allocate_slots", lambda: m.allocate_slots(request, 1), snapshot)
        setattr(request, name, saved)
        return
    if op in ("admit", "allocate_slots") and isinstance(request, Request):
        found = check_refusal("get_computed_blocks", lambda: m.get_computed_blocks(request),
                              snapshot)
        hits, num_hits = found
        if request.num_computed_tokens:  # running: no hits, the next chunk or token
            hits, num_hits = None, 0
        remaining = max(request.num_tokens - request.num_computed_tokens - num_hits, 1)
        new_tokens = data.draw(st.integers(1, remaining))
        lookahead = data.draw(st.integers(0, 2))
        if op == "allocate_slots":  # someone else's hits, another pool's, junk, repeats
            hits = data.draw(mostly(st.just(hits), st.one_of(
                st.sampled_from(others), junk(), st.just(hits).map(lambda h: (h or []) * 2))))
            num_hits = data.draw(mostly(st.just(num_hits), junk()))
            new_tokens = data.draw(mostly(st.just(new_tokens), junk()))
            lookahead = data.draw(mostly(st.just(lookahead), junk()))
        result = check_refusal(
            "allocate_slots",
            lambda: m.allocate_slots(request, new_tokens, num_hits, hits, lookahead),
            snapshot)
        if result is not None and not isinstance(result, KVCacheError):
            request.num_computed_tokens = min(
                request.num_computed_tokens + num_hits + new_tokens, request.num_tokens)
        return
    if op == "cache_blocks":
        num_tokens = data.draw(count)
        check_refusal(op, lambda: m.cache_blocks(request, num_tokens), snapshot)
    elif op == "free":
        if check_refusal(op, lambda: m.free(request), snapshot) is None:
            request.num_computed_tokens = 0
    elif op == "get_computed_blocks":
        check_refusal(op, lambda: m.get_computed_blocks(request), snapshot)
    elif op == "get_block_ids":
        request_id = request.request_id if isinstance(request, Request) else request
        check_refusal(op, lambda: m.get_block_ids(request_id), snapshot)
    elif op == "reset_prefix_cache":
        check_refusal(op, m.reset_prefix_cache, snapshot)


@SETTINGS
@given(data=st.data(), num_blocks=st.integers(2, 8), block_size=st.sampled_from([2, 4]),
       caching=st.booleans(), profile=st.sampled_from(["current", "classic"]),
       max_model_len=st.sampled_from([None, 6, 16]))
def test_every_refused_manager_call_leaves_every_observable_unchanged(
    data: st.DataObject, num_blocks: int, block_size: int, caching: bool, profile: str,
    max_model_len: int | None,
) -> None:
    m = KVCacheManager(num_blocks, block_size, enable_caching=caching, profile=profile,
                       max_model_len=max_model_len)
    requests = [Request(f"r{i}", tokens, block_hasher=m.block_hasher)
                for i, tokens in enumerate(PROMPTS)]
    requests.append(Request("unhashed", PROMPTS[0]))  # built without the manager's hasher
    other = KVCacheManager(num_blocks, block_size)
    other.allocate_slots(Request("x", PROMPTS[0], block_hasher=other.block_hasher), 8)
    others = [other.get_blocks("x")[:1], [1], [m.block_pool.null_block]]
    for _ in range(data.draw(st.integers(1, 25))):
        before = scheduler_counters(requests)
        manager_step(data, m, requests, others, lambda: manager_snapshot(m))
        assert all(isinstance(c, int) for pair in scheduler_counters(requests) for c in pair)
        assert len(before) == len(requests)
        if profile == "current":
            check_pool_consistent(m.block_pool)


@SETTINGS
@given(value=st.one_of(junk(), st.integers(-2, 8), st.sampled_from(["current", "classic"]),
                       st.just(hash)))
def test_a_manager_is_built_only_from_well_typed_arguments(value: Any) -> None:
    def build(**kwargs: Any) -> Callable[[], Any]:
        return lambda: KVCacheManager(**{"num_blocks": 4, "block_size": 4, **kwargs})

    assert accepted(build(block_size=value), "block_size") == is_count(value, 1)
    assert accepted(build(max_model_len=value), "max_model_len") == (
        value is None or is_count(value, 1))
    assert accepted(build(log_stats=value), "log_stats") == isinstance(value, bool)
    assert accepted(build(enable_caching=value), "enable_caching") == isinstance(value, bool)
    assert accepted(build(profile=value), "profile") == (value in ("current", "classic"))
    assert accepted(build(hash_fn=value), "hash_fn") == callable(value)


# --------------------------------------------------------------------------- the coordinator


def coordinator_snapshot(c: HybridKVCacheCoordinator) -> tuple:
    return (
        pool_snapshot(c.block_pool),
        [({rid: [b.block_id for b in t] for rid, t in g.req_to_blocks.items()},
          dict(g.num_cached_block)) for g in c.groups],
        c.usage,
    )


@SETTINGS
@given(data=st.data(), num_blocks=st.integers(2, 10), caching=st.booleans(),
       profile=st.sampled_from(["current", "classic"]),
       max_model_len=st.sampled_from([None, 8]))
def test_every_refused_coordinator_call_leaves_every_observable_unchanged(
    data: st.DataObject, num_blocks: int, caching: bool, profile: str,
    max_model_len: int | None,
) -> None:
    c = HybridKVCacheCoordinator(num_blocks, [4, 2], enable_caching=caching, profile=profile,
                                 max_model_len=max_model_len)
    requests = [Request(f"r{i}", tokens, block_hasher=c.block_hasher)
                for i, tokens in enumerate(PROMPTS)]
    other = BlockPool(4)
    others = [([other.blocks[1]], [other.blocks[1], other.blocks[2]]), ([1], [2, 3]), ([], []),
              ([c.block_pool.null_block], [c.block_pool.null_block] * 2)]
    for _ in range(data.draw(st.integers(1, 25))):
        manager_step(data, c, requests, others, lambda: coordinator_snapshot(c))
        if profile == "current":
            check_pool_consistent(c.block_pool)
