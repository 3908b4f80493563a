"""``kvspec bench upstream``: kvspec's allocator against upstream vLLM 0.33.0's, on the same work.

``python -m kvspec.benchmarks.upstream [--ops N] [--requests R] [--repeats K] [--trace FILE |
--save-trace FILE] [--no-gc] [--quick]``

Three comparisons, each a ratio of median times measured in the same run, repeats interleaved
(``kvspec.benchmarks._harness``), every repeat on a fresh pool or manager built outside the
timing. The timed loops call the two libraries' own objects directly: no protocol adapter, no
id-to-block translation, one replay function for both sides that differs only in the bound
methods and the trailing arguments it is handed.

Pool, per-block and batched (this module)
    One recorded trace of pool operations (:func:`record_ops`), replayed per request the way a
    KV-cache manager calls its pool: ``get_cached_block`` per block hash until the first miss,
    ``touch`` of the hits, ``get_new_blocks`` for the rest, caching of the new full blocks, and
    ``free_blocks`` of the table reversed at departure. Caching has the two call shapes that
    matter: *per-block*, one ``cache_full_blocks`` call per newly full block (how a decode step
    caches), and *batched*, one call per request for all its new full blocks (how a prefill
    chunk caches, and how ``KVCacheManager.cache_blocks`` calls the pool). Upstream's
    ``cache_full_blocks`` reads the hashes from ``request.block_hashes``; it is handed an
    object holding the request's hash list, built once per request outside the timing, as the
    real request object exists before the manager sees it.

Manager (:mod:`kvspec.benchmarks.scheduler_trace`)
    kvspec's ``KVCacheManager`` against upstream's on one recorded scheduler trace.

Before timing, each side replays its trace once with checks: every lookup hits as recorded
and both sides end in the same observable state, so the timed runs provably did the same work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvspec.benchmarks import scheduler_trace
from kvspec.benchmarks._harness import (
    CPU_CLOCK,
    WALL_CLOCK,
    Clock,
    Run,
    format_machine_info,
    measure_interleaved,
)
from kvspec.benchmarks.comparison import Comparison, check_hits, format_comparison
from kvspec.benchmarks.pool_trace import TraceShape, record_trace
from kvspec.conformance.pool.protocol import PoolTarget

TRACE_FORMAT = "kvspec-pool-ops/1"
DEFAULT_OPS = 100_000
#: Big enough that eviction by reuse happens all the time, small enough to stay in cache.
DEFAULT_SHAPE = TraceShape(
    num_gpu_blocks=2048,
    num_prompts=16,
    prompt_blocks=(4, 32),
    unique_blocks=(1, 8),
    max_live=32,
    num_requests=100_000,  # more than any --ops needs; the recording is cut at --ops
    seed=0,
)
QUICK_OPS = 2_000
#: Each timed run is short (0.05-0.5 s), so a burst of load elsewhere can spoil one; nine
#: interleaved runs keep the medians, and the ratios, steady on a shared machine.
DEFAULT_REPEATS = 9
#: Tokens per block given to upstream's ``cache_full_blocks``; equal to its pool's
#: ``hash_block_size``, so upstream uses the request's hashes as they are.
HASH_BLOCK_SIZE = 16
#: Both pools are asked about the one KV-cache group a full-attention model has.
GROUP_IDS = [0]

# One recorded operation (a tuple):
#   ("get_cached_block", req, hash, hit)   hit: whether the recording pool found it
#   ("touch", req)                         touch the hits collected for req
#   ("get_new_blocks", req, n)             append n new blocks to req's table
#   ("cache_block", req, index, hash)      cache req's table[index] under hash
#   ("free_blocks", req)                   free req's table in reverse
Op = tuple
OPS_NAMES = ("get_cached_block", "touch", "get_new_blocks", "cache_block", "free_blocks")

# One request-level event of the replay, compiled from the operations:
#   ("admit", req, lookups, touch, num_new, hashes, num_hits, num_cached)
#       lookups: the hashes looked up; touch: whether the hits are touched; num_new: blocks
#       taken (None when the trace ends before); hashes: the request's chained hash list;
#       blocks [num_hits, num_cached) of its table are cached.
#   ("free", req)
Event = tuple
SHAPES = ("per-block", "batched")
CLOCKS = {"cpu": CPU_CLOCK, "wall": WALL_CLOCK}


@dataclass(frozen=True)
class PoolTrace:
    """A recorded operation list and the pool it was recorded on."""

    num_gpu_blocks: int
    ops: tuple[Op, ...]
    shape: TraceShape | None = None  # None when loaded from a file written elsewhere
    evictions: int | None = None  # cached blocks popped for reuse, counted while recording

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(OPS_NAMES, 0)
        for op in self.ops:
            out[op[0]] += 1
        return out

    def hits(self) -> int:
        return sum(1 for op in self.ops if op[0] == "get_cached_block" and op[3])


def count_calls(events: Sequence[Event], per_block: bool) -> int:
    """Pool calls :func:`replay` makes: per-block, one per recorded operation; batched, one
    ``cache_full_blocks`` per admission instead of one per block."""
    calls = 0
    for event in events:
        if event[0] == "free":
            calls += 1
            continue
        _, _, lookups, touch, num_new, _, start, end = event
        cache_calls = end - start if per_block else int(end > start)
        calls += len(lookups) + touch + (num_new is not None) + cache_calls
    return calls


def record_ops(factory: Callable[..., PoolTarget], shape: TraceShape, num_ops: int) -> PoolTrace:
    """Run the request mix on a pool from ``factory`` and record its first ``num_ops`` calls."""
    pool = factory(shape.num_gpu_blocks, enable_caching=True, profile="current")
    ops: list[Op] = []
    tables: dict[int, list[int]] = {}
    evictions = 0
    for event in record_trace(shape):
        if event[0] == "admit":
            _, req, chain, partial = event
            hits: list[int] = []
            for block_hash in chain:
                found = pool.get_cached_block(block_hash)
                ops.append(("get_cached_block", req, block_hash, found is not None))
                if found is None:
                    break
                hits.append(found)
            if hits:
                pool.touch(hits)
                ops.append(("touch", req))
            missing = chain[len(hits) :]
            n = len(missing) + (1 if partial else 0)
            evictions += sum(1 for b in pool.free_block_ids()[:n] if pool.block_hash(b) is not None)
            new = pool.get_new_blocks(n)
            ops.append(("get_new_blocks", req, n))
            table = hits + new
            for index, block_hash in enumerate(missing, start=len(hits)):
                pool.cache_block(table[index], block_hash)
                ops.append(("cache_block", req, index, block_hash))
            tables[req] = table
        else:
            table = tables.pop(event[1])
            pool.free_blocks(table[::-1])
            ops.append(("free_blocks", event[1]))
        if len(ops) >= num_ops:
            break
    if len(ops) < num_ops:
        raise ValueError(
            f"record_ops: the request mix made only {len(ops)} operations; expected {num_ops} "
            "(raise num_requests in the trace shape)"
        )
    return PoolTrace(shape.num_gpu_blocks, tuple(ops[:num_ops]), shape, evictions)


def compile_events(ops: Sequence[Op]) -> list[Event]:
    """Group the operations of each request into one admission or departure event.

    The operations of one admission are consecutive (lookups, touch, allocation, caching), so
    each run of operations on one request becomes one event. The last admission may be cut
    short by the end of the trace: its missing steps are left out (``num_new`` is None when
    the allocation is missing), so the replay makes exactly the recorded calls.
    """
    events: list[Event] = []
    i, n = 0, len(ops)
    while i < n:
        op = ops[i]
        req = op[1]
        if op[0] == "free_blocks":
            events.append(("free", req))
            i += 1
            continue
        lookups: list[bytes] = []
        hit_hashes: list[bytes] = []
        while i < n and ops[i][0] == "get_cached_block" and ops[i][1] == req:
            lookups.append(ops[i][2])
            if ops[i][3]:
                hit_hashes.append(ops[i][2])
            i += 1
        touch = i < n and ops[i][0] == "touch" and ops[i][1] == req
        i += touch
        num_new = None
        if i < n and ops[i][0] == "get_new_blocks" and ops[i][1] == req:
            num_new = ops[i][2]
            i += 1
        cached: list[bytes] = []
        while i < n and ops[i][0] == "cache_block" and ops[i][1] == req:
            cached.append(ops[i][3])
            i += 1
        hashes = hit_hashes + cached
        events.append(("admit", req, tuple(lookups), touch, num_new, hashes,
                       len(hit_hashes), len(hashes)))
    return events


def replay(
    pool: Any,
    events: Sequence[Event],
    hash_args: Sequence[Any],
    cache_args: tuple,
    per_block: bool,
    hits_out: list[int] | None = None,
) -> dict[int, list[Any]]:
    """Drive ``pool`` (kvspec's or upstream's ``BlockPool``) through ``events``: the timed loop.

    ``hash_args[req]`` is what ``cache_full_blocks`` takes as its first argument (kvspec: the
    hash list; upstream: a request holding it) and ``cache_args`` its trailing arguments
    (kvspec: the group id; upstream: block size and group id). With ``hits_out``, the number
    of hits of every admission is appended to it. Returns the tables still held.
    """
    tables: dict[int, list[Any]] = {}
    get_cached_block, touch, get_new_blocks = (
        pool.get_cached_block, pool.touch, pool.get_new_blocks)
    cache_full_blocks, free_blocks = pool.cache_full_blocks, pool.free_blocks
    groups = GROUP_IDS
    for event in events:
        if event[0] == "free":
            free_blocks(tables.pop(event[1])[::-1])
            continue
        _, req, lookups, touched, num_new, _, start, end = event
        hits: list[Any] = []
        for block_hash in lookups:
            found = get_cached_block(block_hash, groups)
            if found is None:
                break
            hits.append(found[0])
        if hits_out is not None:
            hits_out.append(len(hits))
        if touched:
            touch(hits)
        if num_new is None:
            break  # the trace ended inside this admission
        table = hits + get_new_blocks(num_new)
        tables[req] = table
        hashes = hash_args[req]
        if per_block:
            for i in range(start, end):
                cache_full_blocks(hashes, table, i, i + 1, *cache_args)
        elif start < end:
            cache_full_blocks(hashes, table, start, end, *cache_args)
    return tables


# ------------------------------------------------------------------ the two pools


class _RequestHashes:
    """What upstream's ``cache_full_blocks`` reads from a request (KV events off)."""

    __slots__ = ("block_hashes",)

    def __init__(self, block_hashes: list[bytes]) -> None:
        self.block_hashes = block_hashes


@dataclass(frozen=True)
class PoolContender:
    """How to build one library's pool and call its ``cache_full_blocks``."""

    label: str
    make_pool: Callable[[int], Any]
    wrap_hashes: Callable[[list[bytes]], Any]
    cache_args: tuple


def _impl_pool(num_blocks: int) -> Any:
    from kvspec.impl.block_pool import BlockPool

    return BlockPool(num_blocks)


def _vllm_pool(num_blocks: int) -> Any:
    from kvspec.conformance.upstream.vllm_pool import VllmPool

    return VllmPool(num_blocks).pool


def pool_contenders() -> dict[str, PoolContender]:
    return {
        "impl": PoolContender("kvspec impl.BlockPool", _impl_pool, list, (0,)),
        "vllm": PoolContender("vLLM 0.33.0 BlockPool", _vllm_pool, _RequestHashes,
                              (HASH_BLOCK_SIZE, 0)),
    }


def hash_args_for(events: Sequence[Event], contender: PoolContender) -> list[Any]:
    """Per request, the first argument of its ``cache_full_blocks`` calls (built untimed)."""
    num_requests = 1 + max((ev[1] for ev in events), default=-1)
    args: list[Any] = [None] * num_requests
    for ev in events:
        if ev[0] == "admit":
            args[ev[1]] = contender.wrap_hashes(ev[5])
    return args


def end_state(pool: Any, tables: dict[int, list[Any]]) -> dict[str, object]:
    """What both pools must agree on after a replay: every block, the queue, the tables."""
    return {
        "ref_cnt": [b.ref_cnt for b in pool.blocks],
        "block_hash": [None if b.block_hash is None else bytes(b.block_hash[:-4])
                       for b in pool.blocks],
        "free_queue": [b.block_id for b in pool.free_block_queue.get_all_free_blocks()],
        "num_free_blocks": pool.get_num_free_blocks(),
        "tables": {req: [b.block_id for b in table] for req, table in tables.items()},
    }


def replay_checked(
    contender: PoolContender, trace: PoolTrace, events: Sequence[Event], shape: str
) -> dict[str, object]:
    """Replay once untimed; every admission must hit exactly as recorded. Returns the end."""
    pool = contender.make_pool(trace.num_gpu_blocks)
    hits: list[int] = []
    expected = [ev[6] for ev in events if ev[0] == "admit"]
    try:
        tables = replay(pool, events, hash_args_for(events, contender), contender.cache_args,
                        shape == "per-block", hits)
    except Exception:
        check_hits(contender.label, hits, expected)  # a divergence explains the failure
        raise
    check_hits(contender.label, hits, expected)
    return end_state(pool, tables)


# ------------------------------------------------------------------ trace files


def save_trace(trace: PoolTrace, path: Path) -> None:
    """Write ``trace`` as JSON (hashes as latin-1 text, so any bytes round-trip)."""

    def encode(op: Op) -> list:
        return [x.decode("latin-1") if isinstance(x, bytes) else x for x in op]

    data = {
        "format": TRACE_FORMAT,
        "num_gpu_blocks": trace.num_gpu_blocks,
        "shape": None if trace.shape is None else asdict(trace.shape),
        "evictions": trace.evictions,
        "ops": [encode(op) for op in trace.ops],
    }
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def load_trace(path: Path) -> PoolTrace:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != TRACE_FORMAT:
        raise ValueError(
            f"load_trace: {path} has format {data.get('format')!r}; expected {TRACE_FORMAT!r}"
        )
    hash_at = {"get_cached_block": 2, "cache_block": 3}

    def decode(op: list) -> Op:
        at = hash_at.get(op[0])
        if at is not None:
            op[at] = op[at].encode("latin-1")
        return tuple(op)

    shape = data.get("shape")
    if shape is not None:
        shape = TraceShape(**{k: tuple(v) if isinstance(v, list) else v for k, v in shape.items()})
    ops = tuple(decode(op) for op in data["ops"])
    return PoolTrace(int(data["num_gpu_blocks"]), ops, shape, data.get("evictions"))


# ------------------------------------------------------------------ the comparison


def compare_pools(
    trace: PoolTrace, shape: str, *, repeats: int = 5, gc_enabled: bool = True,
    clock: Clock = CPU_CLOCK,
) -> Comparison:
    """Time both pools on ``trace`` in call ``shape``, after one checked replay each."""
    events = compile_events(trace.ops)
    contenders = pool_contenders()
    ends = {name: replay_checked(c, trace, events, shape) for name, c in contenders.items()}
    if ends["impl"] != ends["vllm"]:
        raise AssertionError(
            "compare_pools: kvspec's pool and upstream's ended the trace in different states; "
            "the timed runs would not do the same work (run kvspec check --target vllm)"
        )
    per_block = shape == "per-block"

    def setup_for(contender: PoolContender) -> Callable[[int], Run]:
        hash_args = hash_args_for(events, contender)

        def setup(ops: int) -> Run:
            pool = contender.make_pool(trace.num_gpu_blocks)
            return lambda: replay(pool, events, hash_args, contender.cache_args, per_block)

        return setup

    calls = count_calls(events, per_block)
    measured = measure_interleaved(
        {name: setup_for(c) for name, c in contenders.items()},
        repeats=repeats, ops=calls, gc_enabled=gc_enabled, clock=clock,
    )
    return Comparison(f"pool, {shape} caching", calls,
                      {name: c.label for name, c in contenders.items()}, measured)


def format_trace(trace: PoolTrace) -> str:
    counts = trace.counts()
    mix = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    return "\n".join([
        f"trace: {len(trace.ops):,} pool operations on {trace.num_gpu_blocks:,} blocks "
        + (f"(seed {trace.shape.seed})" if trace.shape else "(loaded)"),
        f"  {mix}; {trace.hits():,} of {counts['get_cached_block']:,} lookups hit"
        + ("" if trace.evictions is None else f"; {trace.evictions:,} cached blocks evicted"),
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops", type=int, default=None,
        help=f"pool operations in the pool trace (default {DEFAULT_OPS:,})",
    )
    parser.add_argument(
        "--requests", type=int, default=None,
        help="requests in the scheduler trace of the manager comparison "
        f"(default {scheduler_trace.DEFAULT_SHAPE.num_requests:,})",
    )
    parser.add_argument(
        "--repeats", type=int, default=None,
        help=f"timed runs per contender, interleaved; the median is reported (default "
        f"{DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SHAPE.seed, help="seed of both request mixes"
    )
    parser.add_argument(
        "--trace", type=Path, default=None,
        help="replay this recorded pool trace file instead of recording one",
    )
    parser.add_argument(
        "--save-trace", type=Path, default=None,
        help="write the recorded pool trace to this file (JSON)",
    )
    parser.add_argument("--no-gc", action="store_true", help="time with the garbage collector off")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="cpu",
        help="cpu (default): this process's CPU time, steady on a busy machine; wall: elapsed",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK_OPS:,} pool operations, a small scheduler trace, 3 repeats: checks that "
        "it runs",
    )


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.upstream.vllm_pool import VllmNotInstalledError

    ops = args.ops or (QUICK_OPS if args.quick else DEFAULT_OPS)
    repeats = args.repeats or (3 if args.quick else DEFAULT_REPEATS)
    if args.trace is not None:
        trace = load_trace(args.trace)
    else:
        from kvspec.conformance.pool.targets import impl_pool_factory

        shape = TraceShape(**{**asdict(DEFAULT_SHAPE), "seed": args.seed})
        trace = record_ops(impl_pool_factory, shape, ops)
    if args.save_trace is not None:
        save_trace(trace, args.save_trace)
    schedule = scheduler_trace.record_schedule(
        scheduler_trace.shape_for(args.requests, args.seed, quick=args.quick))
    gc_enabled, clock = not args.no_gc, CLOCKS[args.clock]
    print(format_machine_info())
    print(
        f"== upstream: kvspec against vLLM 0.33.0, called directly, {repeats} runs each, "
        f"interleaved, median of {args.clock} time; garbage collector "
        f"{'off' if args.no_gc else 'on'}"
    )
    print(format_trace(trace))
    sys.stdout.flush()
    try:
        for shape in SHAPES:
            print(format_comparison(
                compare_pools(trace, shape, repeats=repeats, gc_enabled=gc_enabled,
                              clock=clock)))
            sys.stdout.flush()
        manager = scheduler_trace.compare_managers(
            schedule, repeats=repeats, gc_enabled=gc_enabled, clock=clock)
    except VllmNotInstalledError as exc:
        print(f"kvspec bench upstream: {exc}", file=sys.stderr)
        return 2
    print(scheduler_trace.format_trace(schedule))
    print(format_comparison(manager))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvspec bench upstream",
        description="kvspec's BlockPool and KVCacheManager against upstream vLLM 0.33.0's",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
