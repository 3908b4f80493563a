"""``kvspec bench pool``: ``BlockPool`` throughput on a recorded, deterministic mixed trace.

No contender: the number is a baseline so that a later change to the pool (or the queue under
it) can be compared on identical work. The trace is generated once from a seed, outside the
timing, as a list of request arrivals and departures, the way a serving engine drives a pool:

* an arrival looks up its chain of block hashes (``get_cached_block`` per block, stopping at
  the first miss), ``touch``-es the hits (reviving eviction candidates out of the free queue),
  takes the rest with ``get_new_blocks`` (popping -- and so evicting -- the oldest free cached
  blocks once the never-used ones run out) and caches its new full blocks (``cache_block``);
* a departure frees the request's table in reverse (``free_blocks``).

Requests share one of a few system prompts with skewed popularity, add a unique suffix and
end in an unhashed partial block, so the trace mixes hits, misses, evictions, prepends (the
partial blocks) and appends (the hashed ones).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvspec.benchmarks._harness import Measurement, Run, format_table, measure_interleaved
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.block_pool import BlockPool


@dataclass(frozen=True)
class TraceShape:
    """Sizes of a trace; the defaults make about 20k events on a 4,096-block pool."""

    num_gpu_blocks: int = 4096
    num_prompts: int = 12
    prompt_blocks: tuple[int, int] = (8, 64)  # min, max full blocks of a system prompt
    unique_blocks: tuple[int, int] = (1, 8)  # min, max full blocks of a request's own suffix
    max_live: int = 48
    num_requests: int = 10_000
    seed: int = 0


QUICK_SHAPE = TraceShape(num_gpu_blocks=256, num_prompts=4, prompt_blocks=(2, 8),
                         unique_blocks=(1, 3), max_live=8, num_requests=200)

# An event: ("admit", request index, hash chain, partial block?) or ("free", request index).
Event = tuple


def record_trace(shape: TraceShape = TraceShape()) -> list[Event]:
    """The trace for ``shape``: deterministic in its seed, independent of the pool."""
    rng = random.Random(shape.seed)
    prompts = [
        [f"p{p}-{i}".encode() for i in range(rng.randint(*shape.prompt_blocks))]
        for p in range(shape.num_prompts)
    ]
    # Zipf-like popularity: prompt k is chosen with weight 1 / (k + 1).
    weights = [1.0 / (k + 1) for k in range(shape.num_prompts)]
    worst = shape.prompt_blocks[1] + shape.unique_blocks[1] + 1
    if shape.max_live * worst > shape.num_gpu_blocks - 1:
        raise ValueError(
            f"record_trace: {shape.max_live} live requests of up to {worst} blocks may not fit "
            f"in {shape.num_gpu_blocks - 1} usable blocks; expected a trace that never fails"
        )
    events: list[Event] = []
    live: list[int] = []
    admitted = 0
    while admitted < shape.num_requests or live:
        arrive = admitted < shape.num_requests and (
            len(live) < shape.max_live // 2 or (len(live) < shape.max_live and rng.random() < 0.5)
        )
        if arrive:
            prompt = rng.choices(prompts, weights)[0]
            own = [f"r{admitted}-{i}".encode() for i in range(rng.randint(*shape.unique_blocks))]
            events.append(("admit", admitted, (*prompt, *own), rng.random() < 0.75))
            live.append(admitted)
            admitted += 1
        else:
            events.append(("free", live.pop(rng.randrange(len(live)))))
    return events


@dataclass
class TraceStats:
    """What one replay did: pool calls made and blocks hit, allocated and evicted."""

    events: int = 0
    pool_calls: int = 0
    hit_blocks: int = 0
    revived: int = 0  # hits at ref_cnt 0: touch removed them from the middle of the queue
    new_blocks: int = 0
    evictions: int = 0


def replay(pool: BlockPool, events: Sequence[Event], stats: TraceStats | None = None) -> None:
    """Drive ``pool`` through ``events``. With ``stats``, count as it goes (slower: untimed)."""
    tables: dict[int, list[KVCacheBlock]] = {}
    get_cached_block, touch = pool.get_cached_block, pool.touch
    get_new_blocks, cache_block, free_blocks = (
        pool.get_new_blocks,
        pool.cache_block,
        pool.free_blocks,
    )
    for event in events:
        if event[0] == "admit":
            _, req, chain, partial = event
            hits: list[KVCacheBlock] = []
            lookups = 0
            for block_hash in chain:
                lookups += 1
                found = get_cached_block(block_hash)
                if found is None:
                    break
                hits.append(found[0])
            if stats is not None:
                stats.revived += sum(1 for b in hits if b.ref_cnt == 0)
            if hits:
                touch(hits)
            missing = chain[len(hits):]
            new = get_new_blocks(len(missing) + (1 if partial else 0))
            for block, block_hash in zip(new, missing, strict=False):
                cache_block(block, block_hash)
            tables[req] = hits + new
            if stats is not None:
                stats.pool_calls += lookups + (1 if hits else 0) + 1 + len(missing)
                stats.hit_blocks += len(hits)
                stats.new_blocks += len(new)
        else:
            table = tables.pop(event[1])
            free_blocks(table[::-1])
            if stats is not None:
                stats.pool_calls += 1
        if stats is not None:
            stats.events += 1


def trace_stats(
    events: Sequence[Event], num_gpu_blocks: int, profile: str = "current"
) -> TraceStats:
    """Replay once, untimed, counting; evictions = cached blocks that lost their hash."""
    pool = BlockPool(num_gpu_blocks, profile=profile)
    stats = TraceStats()
    replay(pool, events, stats)
    # Every block cached is a full block that missed; a hash is dropped only when its block is
    # popped for reuse, so evictions = blocks cached - blocks still cached at the end.
    cached = stats.new_blocks - sum(1 for e in events if e[0] == "admit" and e[3])
    still_cached = sum(1 for b in pool.blocks if b.block_hash is not None)
    stats.evictions = cached - still_cached
    return stats


@dataclass(frozen=True)
class PoolResult:
    shape: TraceShape
    profile: str
    stats: TraceStats
    measurement: Measurement  # ops = events; see calls_per_s

    @property
    def calls_per_s(self) -> float:
        return self.stats.pool_calls / self.measurement.median_s


PROFILES = ("current", "classic")


def run_pool_bench(
    shape: TraceShape = TraceShape(), *, profiles: Sequence[str] = PROFILES, repeats: int = 5
) -> list[PoolResult]:
    """Time the same recorded trace on a fresh pool per repeat, per profile, interleaved."""
    events = record_trace(shape)

    def setup_for(profile: str) -> Callable[[int], Run]:
        def setup(ops: int) -> Run:
            pool = BlockPool(shape.num_gpu_blocks, profile=profile)
            return lambda: replay(pool, events)

        return setup

    measured = measure_interleaved(
        {profile: setup_for(profile) for profile in profiles}, repeats=repeats, ops=len(events)
    )
    return [
        PoolResult(shape, p, trace_stats(events, shape.num_gpu_blocks, p), measured[p])
        for p in profiles
    ]


def format_results(results: Sequence[PoolResult]) -> str:
    lines = []
    header = ["pool", "events/s", "pool calls/s", "median s", "runs"]
    rows = []
    for result in results:
        s, shape, m = result.stats, result.shape, result.measurement
        lines.append(
            f"trace ({result.profile}): {shape.num_requests:,} requests on "
            f"{shape.num_gpu_blocks:,} blocks (seed {shape.seed}): {s.events:,} events, "
            f"{s.pool_calls:,} pool calls, {s.hit_blocks:,} blocks hit ({s.revived:,} revived "
            "from the free queue), "
            f"{s.new_blocks:,} allocated, {s.evictions:,} evicted"
        )
        rows.append(
            [
                f"impl.BlockPool ({result.profile})",
                f"{m.ops_per_s:,.0f}",
                f"{result.calls_per_s:,.0f}",
                f"{m.median_s:.4f}",
                str(len(m.seconds)),
            ]
        )
    return "\n".join(lines) + "\n" + format_table(header, rows)
